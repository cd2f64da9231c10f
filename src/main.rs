//! `tlcap-tui`: command line entry point.

use std::process::ExitCode;

use std::path::PathBuf;

use anyhow::bail;
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
    /// Print the JSON Schema of experiment files (for yaml-language-server and editors).
    Schema,
    /// Validate experiment files (or every .yaml in a folder) and print every error.
    Check {
        /// Experiment files or folders.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Load an experiment's images and print a dataset report (classes, split, skipped files, speed).
    Data {
        /// The experiment file.
        file: PathBuf,
    },
    /// List a backbone's layers (what `unfreeze_last` counts) and what N would unfreeze.
    Layers {
        /// e.g. mobilenet_v2, resnet50, efficientnet_lite0, small_cnn.
        backbone: String,
        /// Mark the layers `finetune.unfreeze_last: N` would make trainable.
        #[arg(long, value_name = "N")]
        unfreeze_last: Option<usize>,
    },
    /// Read weight files safely (.pth zip or legacy, .ot, .safetensors): inspect, convert.
    Weights {
        #[command(subcommand)]
        action: WeightsCommand,
    },
}

#[derive(Subcommand, Debug)]
enum WeightsCommand {
    /// Convert a weight file to .safetensors (dtypes kept; nothing in the input is executed).
    Import {
        /// A .pth (zip or legacy pickle), .ot or .safetensors file.
        input: PathBuf,
        /// The .safetensors file to write (atomically).
        #[arg(short, long)]
        output: PathBuf,
    },
    /// List a weight file's tensors with dtypes and shapes.
    Inspect {
        /// A .pth (zip or legacy pickle), .ot or .safetensors file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Doctor => tlcap::doctor::run().map(|report| println!("{report}")),
        Command::Schema => {
            println!("{}", tlcap::config::json_schema());
            Ok(())
        }
        Command::Check { files } => check(&files),
        Command::Data { file } => data_report(&file),
        Command::Weights { action } => weights(action),
        Command::Layers {
            backbone,
            unfreeze_last,
        } => layers(&backbone, unfreeze_last),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `tlcap-tui check`: prints `ok` or every error per file; fails if any file is invalid.
fn check(paths: &[PathBuf]) -> anyhow::Result<()> {
    let mut files = Vec::new();
    let mut invalid = 0;
    for path in paths {
        if !path.is_dir() {
            files.push(path.clone());
            continue;
        }
        match tlcap::config::experiment_files(path) {
            Ok(found) if found.is_empty() => {
                invalid += 1;
                println!(
                    "error   {}: no *.yaml or *.yml files in this folder",
                    path.display()
                );
            }
            Ok(found) => files.extend(found),
            Err(e) => {
                invalid += 1;
                println!("error   {}: cannot read folder: {e}", path.display());
            }
        }
    }
    for file in &files {
        match tlcap::config::load_file(file) {
            Ok(exp) => println!("ok      {} ({})", file.display(), exp.name),
            Err(errors) => {
                invalid += 1;
                for e in &errors.0 {
                    println!("error   {e}");
                }
            }
        }
    }
    if invalid > 0 {
        bail!(
            "{invalid} of {} experiment file(s) or folder(s) invalid",
            files.len().max(invalid)
        );
    }
    Ok(())
}

/// `tlcap-tui layers`: the layer table of a backbone.
fn layers(backbone: &str, unfreeze_last: Option<usize>) -> anyhow::Result<()> {
    let kind: tlcap::config::Backbone = serde_yaml::from_str(backbone)
        .map_err(|_| anyhow::anyhow!("unknown backbone `{backbone}`; see `tlcap-tui schema`"))?;
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let mut net = tlcap::model::Backbone::new(&vs.root(), kind, false);
    if let Some(n) = unfreeze_last {
        net.table_mut().unfreeze_last(n);
    }
    print!("{}", tlcap::model::describe_layers(net.table()));
    Ok(())
}

/// `tlcap-tui weights import|inspect`.
fn weights(action: WeightsCommand) -> anyhow::Result<()> {
    use anyhow::Context;
    match action {
        WeightsCommand::Inspect { file } => {
            let wf = tlcap::weights::read_file(&file)
                .with_context(|| format!("cannot load {}", file.display()))?;
            print!("{}", tlcap::weights::describe(&wf));
        }
        WeightsCommand::Import { input, output } => {
            let wf = tlcap::weights::read_file(&input)
                .with_context(|| format!("cannot load {}", input.display()))?;
            let source = input
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let metadata = std::collections::HashMap::from([
                ("source".to_owned(), source),
                ("source_format".to_owned(), wf.format.to_string()),
            ]);
            tlcap::weights::write_safetensors(&output, &wf.tensors, Some(metadata))?;
            let bytes = std::fs::metadata(&output).map(|m| m.len()).unwrap_or(0);
            println!(
                "wrote {} tensors ({:.1} MB) from {} ({}) to {}",
                wf.tensors.len(),
                bytes as f64 / 1e6,
                input.display(),
                wf.format,
                output.display()
            );
        }
    }
    Ok(())
}

/// `tlcap-tui data`: loads the images with a progress line on stderr, prints the report.
fn data_report(file: &std::path::Path) -> anyhow::Result<()> {
    use std::io::{IsTerminal, Write};
    let exp = tlcap::config::load_file(file)?;
    let tty = std::io::stderr().is_terminal();
    let progress = |done: usize, total: usize| {
        if tty {
            eprint!("\rdecoding {done}/{total} images");
            let _ = std::io::stderr().flush();
        }
    };
    let dataset = tlcap::data::Dataset::load(&exp, &progress)?;
    if tty {
        eprintln!();
    }
    println!("experiment           {} ({})", exp.name, file.display());
    println!("data folder          {}", exp.data.dir.display());
    println!("{dataset}");
    Ok(())
}
