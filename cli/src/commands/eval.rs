//! `dpc eval MODEL [--input conf.json] [--output out.json]`

use std::path::PathBuf;

use anyhow::{Context, Result};
use dpc_runtime::Frame;

use crate::conf::{output_json, parse_frames};
use crate::source::{read_tree, sample_input};

#[derive(clap::Args)]
pub struct Args {
    /// Model file (.dp, .yaml, ...) or a built-in model such as `builtin:water`.
    model: String,
    /// Configurations as JSON: {"coord", "atype", "box", "fparam"?, "aparam"?} or a list of them.
    /// Optional for built-in models, which carry a sample configuration.
    #[arg(short, long)]
    input: Option<PathBuf>,
    /// Where to write the results (default: standard output).
    #[arg(short, long)]
    output: Option<PathBuf>,
    #[command(flatten)]
    build: crate::build_args::BuildArgs,
    #[command(flatten)]
    device: crate::device_args::DeviceArgs,
}

/// Returns what to print on standard output.
pub fn run(a: Args) -> Result<String> {
    let mut out = String::new();
    let text = match (&a.input, sample_input(&a.model)) {
        (Some(p), _) => {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
        }
        (None, Some(sample)) => sample.to_string(),
        (None, None) => anyhow::bail!("--input conf.json is required for model files"),
    };
    let (frames, is_list) = parse_frames(&text).context("reading the input configurations")?;
    let (tree, _) = read_tree(&a.model)?;
    let pot = a.device.attach(a.build.load(tree)?)?;
    let mut results = Vec::with_capacity(frames.len());
    for (i, f) in frames.iter().enumerate() {
        let frame = Frame {
            coord: &f.coord,
            atype: &f.atype,
            cell: f.cell.as_deref(),
            fparam: f.fparam.as_deref(),
            aparam: f.aparam.as_deref(),
        };
        let out = pot
            .compute(&frame, true)
            .with_context(|| format!("frame {i}"))?;
        results.push(output_json(&out));
    }
    let mut text = if is_list {
        format!("[{}]", results.join(",\n"))
    } else {
        results.pop().unwrap()
    };
    text.push('\n');
    match a.output {
        Some(p) => std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?,
        None => out.push_str(&text),
    }
    Ok(out)
}
