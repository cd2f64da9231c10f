//! `tlcap-tui`: command line entry point.

use std::process::ExitCode;

use std::path::PathBuf;

use anyhow::bail;
use clap::{Parser, Subcommand};

/// Transfer-learning experiments on images, watched and steered from a terminal.
#[derive(Parser, Debug)]
#[command(
    name = "tlcap-tui",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// With no command: open the dashboard on this folder of experiment files, or on
    /// one file (default: experiments/). When stdout is not a terminal, the
    /// experiments run headless instead, one after the other.
    path: Option<PathBuf>,
    /// Where run folders go (dashboard and headless fallback).
    #[arg(long, default_value = "runs", value_name = "DIR")]
    runs: PathBuf,
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
    /// Train an experiment without the dashboard: one line per epoch on stdout.
    Run {
        /// The experiment file.
        file: PathBuf,
        /// One JSON object per epoch (keys: epoch, phase, loss, accuracy, val_loss,
        /// val_accuracy, lr, seconds, images_per_sec, stalled, suggestion, ...).
        #[arg(long)]
        json: bool,
        /// Which phases to run.
        #[arg(long, value_enum, default_value = "both")]
        phase: PhaseArg,
        /// Stop after this many epochs in total.
        #[arg(long, value_name = "N")]
        max_epochs: Option<u32>,
        /// Where run folders go.
        #[arg(long, default_value = "runs", value_name = "DIR")]
        runs: PathBuf,
        /// Also write model.safetensors (backbone + head) in the run folder at the end.
        #[arg(long)]
        export_model: bool,
    },
    /// Run experiments one after another (headless) and compare them: prints a table,
    /// writes runs/shootout-<timestamp>/results.csv and results.md.
    Shootout {
        /// Experiment files, or folders of them (every valid file in each).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Where run folders go.
        #[arg(long, default_value = "runs", value_name = "DIR")]
        runs: PathBuf,
        /// Stop each experiment after this many epochs in total.
        #[arg(long, value_name = "N")]
        max_epochs: Option<u32>,
    },
    /// Continue a run folder from its last finished epoch, in the right phase.
    Resume {
        /// A run folder (runs/<experiment>/<timestamp>).
        run_dir: PathBuf,
        /// One JSON object per epoch.
        #[arg(long)]
        json: bool,
        /// Stop after this many epochs in total (counting the ones already done).
        #[arg(long, value_name = "N")]
        max_epochs: Option<u32>,
    },
    /// Class and probability per image from a trained run (or one of its checkpoints).
    Predict {
        /// A run folder (uses best.safetensors) or a checkpoint inside one.
        checkpoint_or_run_dir: PathBuf,
        /// Image files.
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// List a backbone's layers (what `unfreeze_last` counts) and what N would unfreeze.
    Layers {
        /// e.g. mobilenet_v2, resnet50, efficientnet_lite0, small_cnn.
        backbone: String,
        /// Mark the layers `finetune.unfreeze_last: N` would make trainable.
        #[arg(long, value_name = "N")]
        unfreeze_last: Option<usize>,
    },
    /// Measure speed on generated images: data loading, frozen epochs (uncached,
    /// cached, fp32, bf16), fine-tuning with and without the prefix cache, with
    /// GFLOP/s against a matrix-multiply peak measured in the same run.
    Bench {
        /// Comma-separated backbones.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "resnet18,resnet50,mobilenet_v2"
        )]
        backbones: Vec<String>,
        /// Generated images in all (a fifth is held out for validation).
        #[arg(long, default_value_t = 96)]
        images: usize,
        /// Square input size.
        #[arg(long, default_value_t = 224)]
        size: u32,
        /// Images per batch.
        #[arg(long, default_value_t = 16)]
        batch_size: usize,
        /// Where to measure: cpu, cuda, cuda:N, mps or auto.
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Read weight files safely (.pth zip or legacy, .ot, .safetensors): inspect, convert.
    Weights {
        #[command(subcommand)]
        action: WeightsCommand,
    },
}

/// `--phase` of `run`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum PhaseArg {
    Frozen,
    Finetune,
    Both,
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
    let Some(command) = cli.command else {
        let target = cli.path.unwrap_or_else(|| PathBuf::from("experiments"));
        return finish(dashboard(&target, cli.runs));
    };
    let result = match command {
        Command::Doctor => tlcap::doctor::run().map(|report| println!("{report}")),
        Command::Schema => {
            println!("{}", tlcap::config::json_schema());
            Ok(())
        }
        Command::Check { files } => check(&files),
        Command::Data { file } => data_report(&file),
        Command::Weights { action } => weights(action),
        Command::Run {
            file,
            json,
            phase,
            max_epochs,
            runs,
            export_model,
        } => run(&file, json, phase, max_epochs, runs, export_model),
        Command::Resume {
            run_dir,
            json,
            max_epochs,
        } => resume(&run_dir, json, max_epochs),
        Command::Shootout {
            paths,
            runs,
            max_epochs,
        } => shootout(&paths, runs, max_epochs),
        Command::Predict {
            checkpoint_or_run_dir,
            images,
        } => tlcap::predict::run(&checkpoint_or_run_dir, &images),
        Command::Layers {
            backbone,
            unfreeze_last,
        } => layers(&backbone, unfreeze_last),
        Command::Bench {
            backbones,
            images,
            size,
            batch_size,
            device,
        } => bench(&backbones, images, size, batch_size, device),
    };
    finish(result)
}

/// Prints an error (no backtrace) and turns the result into the exit code.
fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `tlcap-tui [PATH]`: the dashboard, or headless runs when stdout is not a terminal.
fn dashboard(target: &std::path::Path, runs: PathBuf) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() {
        return tlcap::dashboard::run(target, runs);
    }
    eprintln!(
        "stdout is not a terminal: running {} headless",
        target.display()
    );
    for exp in tlcap::headless::valid_experiments(target)? {
        eprintln!("experiment {}", exp.name);
        let options = tlcap::train::Options {
            runs_root: runs.clone(),
            ..Default::default()
        };
        tlcap::headless::run(exp, options, false, None)?;
    }
    Ok(())
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

/// `tlcap-tui run`: trains headless.
fn run(
    file: &std::path::Path,
    json: bool,
    phase: PhaseArg,
    max_epochs: Option<u32>,
    runs: PathBuf,
    export_model: bool,
) -> anyhow::Result<()> {
    // Absolute, so that the watcher's reloads resolve relative paths the same way.
    let file = &file.canonicalize().unwrap_or_else(|_| file.to_path_buf());
    let exp = tlcap::config::load_file(file)?;
    let phases = match phase {
        PhaseArg::Frozen => tlcap::train::Phases::Frozen,
        PhaseArg::Finetune => tlcap::train::Phases::Finetune,
        PhaseArg::Both => tlcap::train::Phases::Both,
    };
    let options = tlcap::train::Options {
        runs_root: runs,
        phases,
        max_epochs,
        export_model,
        ..Default::default()
    };
    tlcap::headless::run(exp, options, json, Some(file)).map(|_| ())
}

/// `tlcap-tui shootout`: every experiment headless, then the comparison.
fn shootout(paths: &[PathBuf], runs: PathBuf, max_epochs: Option<u32>) -> anyhow::Result<()> {
    // Every valid file; invalid ones are reported and skipped.
    let mut experiments = Vec::new();
    for path in paths {
        for (file, loaded) in tlcap::config::load_all(path)? {
            match loaded {
                Ok(exp) => experiments.push(*exp),
                Err(errors) => {
                    for e in errors {
                        eprintln!("error   {e}");
                    }
                    eprintln!("skipping {}", file.display());
                }
            }
        }
    }
    let started = std::time::Instant::now();
    let mut rows = Vec::new();
    for (i, exp) in experiments.into_iter().enumerate() {
        eprintln!("== shootout {}: {}", i + 1, exp.name);
        let options = tlcap::train::Options {
            runs_root: runs.clone(),
            max_epochs,
            ..Default::default()
        };
        // One failed experiment does not end the shootout.
        let name = exp.name.clone();
        match tlcap::headless::run(exp, options, false, None)
            .and_then(|run| run.map(|r| tlcap::shootout::summarize(&r)).transpose())
        {
            Ok(row) => rows.extend(row.flatten()),
            Err(e) => eprintln!("error: {name}: {e:#}"),
        }
    }
    let out = tlcap::shootout::export(&runs, &rows)?;
    println!("{}", tlcap::shootout::markdown(&rows));
    println!(
        "{} experiments in {:.0} s; results in {}",
        rows.len(),
        started.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}

/// `tlcap-tui resume`: continues a run folder headless.
fn resume(run_dir: &std::path::Path, json: bool, max_epochs: Option<u32>) -> anyhow::Result<()> {
    let exp = tlcap::train::run_dir::read_config(run_dir)?;
    let options = tlcap::train::Options {
        resume: Some(run_dir.to_path_buf()),
        max_epochs,
        ..Default::default()
    };
    tlcap::headless::run(exp, options, json, None).map(|_| ())
}

/// `tlcap-tui layers`: the layer table of a backbone.
/// A backbone by its file name (`resnet50`).
fn backbone_kind(name: &str) -> anyhow::Result<tlcap::config::Backbone> {
    serde_yaml::from_str(name)
        .map_err(|_| anyhow::anyhow!("unknown backbone `{name}`; see `tlcap-tui schema`"))
}

/// `tlcap-tui bench`.
fn bench(
    backbones: &[String],
    images: usize,
    size: u32,
    batch_size: usize,
    device: String,
) -> anyhow::Result<()> {
    if size < 32 {
        bail!("--size must be at least 32");
    }
    // A device that is not there is a one-line error before anything is generated.
    tlcap::runtime::select_device(&device)?;
    let options = tlcap::bench::BenchOptions {
        backbones: backbones
            .iter()
            .map(|b| backbone_kind(b.trim()))
            .collect::<anyhow::Result<_>>()?,
        images,
        size,
        batch_size: batch_size.max(1),
        device,
    };
    tlcap::bench::run(&options)
}

fn layers(backbone: &str, unfreeze_last: Option<usize>) -> anyhow::Result<()> {
    let kind = backbone_kind(backbone)?;
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
