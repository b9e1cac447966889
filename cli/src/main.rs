//! `dpc`: compile, convert and evaluate DeePMD-kit models without DeePMD-kit.

mod commands;
mod conf;
mod source;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "dpc",
    version,
    about = "A compiler and runtime for DeePMD-kit deep-potential models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Describe a model: format, descriptor, types, cutoff, sizes.
    Info(commands::info::Args),
    /// Evaluate energies, forces and virials of configurations (JSON in, JSON out).
    Eval(commands::eval::Args),
    /// Test a model on a deepmd/npy system and print errors like `dp test`.
    Test(commands::test::Args),
    /// Compile a model; `--emit-ir` prints the tensor graph.
    Compile(commands::compile::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info(a) => commands::info::run(a),
        Command::Eval(a) => commands::eval::run(a),
        Command::Test(a) => commands::test::run(a),
        Command::Compile(a) => commands::compile::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
