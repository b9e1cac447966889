//! `dpc compile MODEL -o OUT.hlo`: the model lowered to StableHLO in the `.hlo`/`.xlo` file
//! DeePMD-kit's JAX backend loads. `--emit-ir` prints the tensor graph, `--emit-stablehlo`
//! the lowered module, and `--compress` reports the compression tables with their error
//! against the networks.

use anyhow::{bail, Result};
use dpc_compiler::build::compress::tables;
use dpc_compiler::build::{build_graph, BuildOptions};
use dpc_compiler::graph::{print, verify::verify};
use dpc_compiler::lower::hlo_file::{hlo_tree, HloOptions, Platform};
use dpc_compiler::lower::stablehlo::{export, LowerOptions, Variant};
use dpc_compiler::model::Model;
use dpc_formats::Format;

use crate::source::read_tree;

#[derive(clap::Args)]
pub struct Args {
    /// Model file or built-in model.
    model: String,
    /// Print the tensor IR (forward pass, forces and virials) instead of compiling.
    #[arg(long)]
    emit_ir: bool,
    /// Include the per-atom virial correction in the graph.
    #[arg(long)]
    atomic_virial: bool,
    /// Print only a one-line summary of the graph.
    #[arg(long)]
    summary: bool,
    /// Write the compiled model here (`.hlo` or `.xlo`: DeePMD-kit's JAX container holding
    /// StableHLO).
    #[arg(short, long, value_name = "OUT.hlo")]
    output: Option<std::path::PathBuf>,
    /// The platform(s) the exports are for: cpu, cuda, or cpu,cuda (one file for both).
    #[arg(long, default_value = "cpu", value_name = "cpu|cuda|cpu,cuda")]
    device: String,
    /// Print the StableHLO module of DeePMD-kit's `call_common_lower` (with ghosts, without
    /// atomic virial; with `--atomic-virial`, with it).
    #[arg(long)]
    emit_stablehlo: bool,
    #[command(flatten)]
    build: crate::build_args::BuildArgs,
}

/// Returns what to print on standard output.
pub fn run(a: Args) -> Result<String> {
    let mut out = String::new();
    if !a.emit_ir && !a.build.compress && !a.emit_stablehlo && a.output.is_none() {
        bail!("nothing to do: give `-o OUT.hlo` to compile, or `--emit-ir`, `--emit-stablehlo` or `--compress` (the table report)");
    }
    let (tree, _) = read_tree(&a.model)?;
    let model = Model::from_tree(&tree)?;
    if a.output.is_some() || a.emit_stablehlo {
        return stablehlo(&a, &tree, &model);
    }
    let graph = build_graph(
        &model,
        BuildOptions {
            atomic_virial: a.atomic_virial,
            ..a.build.options()?
        },
    )?;
    if let Err(e) = verify(&graph) {
        bail!("the built graph fails verification (a dpc bug):\n{e}");
    }
    if a.build.compress {
        report(&mut out, &graph);
        if !a.emit_ir {
            return Ok(out);
        }
    }
    if a.summary {
        outln!(out, "{}", print::summary(&graph));
    } else {
        out.push_str(&print::print(&graph));
    }
    Ok(out)
}

/// `-o OUT.hlo` and `--emit-stablehlo`.
fn stablehlo(a: &Args, tree: &dpc_formats::Value, model: &Model) -> Result<String> {
    let opts = a.build.options()?;
    let (precision, compress) = (opts.precision, opts.compress);
    let Some(platform) = Platform::parse(&a.device) else {
        bail!("--device {}: use cpu, cuda or cpu,cuda", a.device);
    };
    let mut out = String::new();
    if a.emit_stablehlo {
        let variant = Variant {
            atomic_virial: a.atomic_virial,
            ghosts: true,
        };
        out.push_str(
            &export(
                model,
                variant,
                LowerOptions {
                    precision,
                    sizes: None,
                    compress,
                    platform_index: false,
                },
            )?
            .mlir,
        );
    }
    if let Some(path) = &a.output {
        match Format::from_path(path)? {
            Format::Hlo => {}
            other => bail!(
                "dpc compile writes .hlo/.xlo (StableHLO); for .{} use `dpc convert`",
                other.name()
            ),
        }
        let hlo = hlo_tree(
            tree,
            model,
            HloOptions {
                platform,
                precision,
                compress,
            },
        )?;
        let bytes = dpc_formats::dp::write(&hlo)?;
        std::fs::write(path, &bytes)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
        if !a.emit_stablehlo {
            outln!(
                out,
                "wrote {} ({} KiB): StableHLO of call_common_lower for {}, 4 variants (atomic virial or not, ghosts or not)",
                path.display(),
                bytes.len() / 1024,
                platform.name()
            );
        }
    }
    Ok(out)
}

/// One line per table: the network, the range, the size and the error against the network.
fn report(out: &mut String, graph: &dpc_compiler::graph::Graph) {
    let tables = tables(graph);
    outln!(
        out,
        "compressed {} embedding network(s); error is the largest |table - net| over every output at 5 points per interval",
        tables.len()
    );
    outln!(
        out,
        "{:<4} {:<18} {:>26} {:>9} {:>9} {:>10} {:>10}",
        "net",
        "widths",
        "range (fine | coarse)",
        "intervals",
        "KiB",
        "max err",
        "max err'"
    );
    let (mut e0, mut e1, mut bytes, mut kinked) = (0.0f64, 0.0f64, 0usize, 0usize);
    for (k, t) in tables.iter().enumerate() {
        outln!(
            out,
            "{:<4} {:<18} {:>26} {:>9} {:>9.0} {:>10.2e} {:>10.2e}",
            k,
            format!("{:?}", t.widths),
            format!("[{}, {} | {}]", t.lower, t.upper, t.max),
            t.intervals,
            t.bytes as f64 / 1024.0,
            t.max_err,
            t.max_err_deriv
        );
        e0 = e0.max(t.max_err);
        e1 = e1.max(t.max_err_deriv);
        bytes += t.bytes;
        kinked += t.kinked;
    }
    outln!(
        out,
        "all  max err {e0:.2e}, max err of the derivative {e1:.2e}, {:.1} MiB of tables",
        bytes as f64 / (1024.0 * 1024.0)
    );
    if kinked > 0 {
        outln!(
            out,
            "     {kinked} interval(s) hold a relu kink, which a quintic cannot follow: inputs \
             there go through the network (DeePMD-kit's tables follow the quintic)"
        );
    }
    if e0 > 1e-7 || e1 > 1e-6 {
        outln!(
            out,
            "warning: the tables are off their networks by up to {e0:.1e} ({e1:.1e} in the \
             derivative); a smaller --compress-stride narrows it"
        );
    }
}
