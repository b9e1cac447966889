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

/// mimalloc's `mi_option_purge_delay` (its position in the `mi_option_e` of mimalloc 3, which
/// the sys crate builds; the crate names the options either side of it but not it; a test
/// checks its default).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keep freed memory mapped instead of returning it to the kernel after a delay: a graph run
/// frees and reallocates tensors of tens of MB, and each one handed back costs a page fault
/// and a zeroing pass per page when it is allocated again (DPA-3 at 2048 atoms: 16,000
/// faults and about 10% of the time per evaluation). The process never holds more than its
/// peak.
fn keep_freed_memory() {
    // SAFETY: setting an option is allowed at any time and only changes when pages are purged.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

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
    keep_freed_memory();
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_purge_delay_option_is_the_one_set() {
        // mimalloc 3's default purge_delay is 1000 (ms, src/options.c); a different value
        // here means the enum moved and the constant names another option.
        // SAFETY: reading an option.
        let v = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert_eq!(v, 1000);
    }
}
