//! `dpc`: compile, convert and evaluate DeePMD-kit models without DeePMD-kit.

/// `writeln!` into a `String` (cannot fail).
macro_rules! outln {
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($out, $($arg)*);
    }};
}

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod build_args;
mod commands;
mod conf;
mod device_args;
mod source;

use std::io::Write;
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
    /// Time evaluation on an fcc Cu/Au system (atoms/s, µs/step/atom, peak memory).
    Bench(commands::bench::Args),
    /// Test a model on a deepmd/npy system and print errors like `dp test`.
    Test(commands::test::Args),
    /// Compile a model; `--emit-ir` prints the tensor graph.
    Compile(commands::compile::Args),
    /// Write a model in another format, chosen by the output's extension.
    Convert(commands::convert::ConvertArgs),
    /// Write a model in the format named by `--format`.
    Emit(commands::convert::EmitArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info(a) => commands::info::run(a),
        Command::Eval(a) => commands::eval::run(a),
        Command::Test(a) => commands::test::run(a),
        Command::Bench(a) => commands::bench::run(a),
        Command::Compile(a) => commands::compile::run(a),
        Command::Convert(a) => commands::convert::convert(a),
        Command::Emit(a) => commands::convert::emit(a),
    };
    match result {
        Ok(text) => {
            // A closed pipe (`dpc ... | head`) is not an error worth a message.
            let mut stdout = std::io::stdout().lock();
            match stdout
                .write_all(text.as_bytes())
                .and_then(|_| stdout.flush())
            {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    eprintln!("error: writing the output: {e}");
                    ExitCode::FAILURE
                }
                _ => ExitCode::SUCCESS,
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
