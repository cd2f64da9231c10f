//! `tlcap-tui`: command line entry point.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Transfer-learning experiments on images, watched and steered from a terminal.
#[derive(Parser, Debug)]
#[command(name = "tlcap-tui", version, about, arg_required_else_help = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check that libtorch works and report versions, threads, CPU features and CUDA.
    Doctor,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Doctor => tlcap::doctor::run().map(|report| println!("{report}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
