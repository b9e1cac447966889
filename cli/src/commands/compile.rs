//! `dpc compile MODEL --emit-ir` and `dpc compile MODEL --compress`: the tensor graph, and
//! the compression tables with their error against the networks.

use anyhow::{bail, Result};
use dpc_compiler::build::compress::tables;
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
    #[command(flatten)]
    build: crate::build_args::BuildArgs,
}

/// Returns what to print on standard output.
pub fn run(a: Args) -> Result<String> {
    let mut out = String::new();
    if !a.emit_ir && !a.build.compress {
        bail!("only `--emit-ir` and `--compress` (the table report) are available today; compiling to device executables (.xlo/.hlo) is not implemented yet");
    }
    let (tree, _) = read_tree(&a.model)?;
    let model = Model::from_tree(&tree)?;
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
    let (mut e0, mut e1, mut bytes) = (0.0f64, 0.0f64, 0usize);
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
    }
    outln!(
        out,
        "all  max err {e0:.2e}, max err of the derivative {e1:.2e}, {:.1} MiB of tables",
        bytes as f64 / (1024.0 * 1024.0)
    );
}
