//! `dpc compile MODEL --emit-ir`

use anyhow::{bail, Result};
use dpc_compiler::build::{build_graph, BuildOptions};
use dpc_compiler::graph::{print, verify::verify};
use dpc_compiler::model::Model;

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
}

/// Returns what to print on standard output.
pub fn run(a: Args) -> Result<String> {
    let mut out = String::new();
    if !a.emit_ir {
        bail!("only `--emit-ir` is available today; compiling to device executables (.xlo/.hlo) is not implemented yet");
    }
    let (tree, _) = read_tree(&a.model)?;
    let model = Model::from_tree(&tree)?;
    let graph = build_graph(
        &model,
        BuildOptions {
            atomic_virial: a.atomic_virial,
            unfused: false,
        },
    )?;
    if let Err(e) = verify(&graph) {
        bail!("the built graph fails verification (a dpc bug):\n{e}");
    }
    if a.summary {
        outln!(out, "{}", print::summary(&graph));
    } else {
        out.push_str(&print::print(&graph));
    }
    Ok(out)
}
