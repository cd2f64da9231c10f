//! `tlcap-tui`: command line entry point.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::Parser;
use cli::{CacheCommand, Cli, Command, PhaseArg, WeightsCommand};

fn main() -> ExitCode {
    // Before any thread starts: libtorch's tensors then reuse freed memory.
    tlcap::runtime::tune_allocator();
    let cli = Cli::parse();
    let Some(command) = cli.command else {
        let target = cli.path.unwrap_or_else(|| PathBuf::from("experiments"));
        return finish(dashboard(&target, cli.runs));
    };
    let result = match command {
        Command::Doctor => tlcap::doctor::run().and_then(tlcap::stdout::line),
        Command::Schema => tlcap::stdout::line(tlcap::config::json_schema()),
        Command::Check { files } => tlcap::check::run(&files),
        Command::Data { file } => tlcap::data::report(&file),
        Command::Cache { action } => match action {
            None | Some(CacheCommand::List) => tlcap::data::cache::print_list(),
            Some(CacheCommand::Clean { unused_days }) => {
                tlcap::data::cache::print_clean(unused_days)
            }
        },
        Command::Weights { action } => tlcap::weights::run_cli(match action {
            WeightsCommand::Import { input, output } => {
                tlcap::weights::WeightsAction::Import { input, output }
            }
            WeightsCommand::Inspect { file } => tlcap::weights::WeightsAction::Inspect { file },
        }),
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
        } => tlcap::headless::resume(&run_dir, json, max_epochs),
        Command::Shootout {
            paths,
            runs,
            max_epochs,
            workers,
            fresh,
            seeds,
        } => tlcap::shootout::run_headless(&paths, runs, max_epochs, workers, fresh, &seeds),
        Command::Attach { runs_dir } => tlcap::dashboard::attach(runs_dir),
        Command::Worker {
            paths,
            index,
            runs,
            json,
            max_epochs,
        } => tlcap::worker::run(&paths, index, runs, json, max_epochs),
        Command::Predict {
            checkpoint_or_run_dir,
            images,
            json,
            threshold,
        } => tlcap::predict::run(
            &checkpoint_or_run_dir,
            &images,
            tlcap::predict::PredictOptions { json, threshold },
        ),
        Command::Report { run_dir } => tlcap::report::run(&run_dir),
        Command::Evaluate {
            run_dir,
            test,
            checkpoint,
            json,
        } => tlcap::evaluate::run(&run_dir, test.as_deref(), Some(checkpoint.into()), json),
        Command::Export {
            run_dir,
            checkpoint,
            format,
            output,
        } => tlcap::export::run(
            &run_dir,
            checkpoint.into(),
            match format {
                cli::FormatArg::Torchscript => tlcap::export::Format::Torchscript,
                cli::FormatArg::Safetensors => tlcap::export::Format::Safetensors,
            },
            &output,
        ),
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
            only,
        } => bench(&backbones, images, size, batch_size, device, only),
    };
    finish(result)
}

/// Prints an error (no backtrace) and turns the result into the exit code.
/// The signal that stopped a run, anywhere in an error's chain.
fn interrupted_by(err: &anyhow::Error) -> Option<i32> {
    err.chain()
        .find_map(|c| c.downcast_ref::<tlcap::headless::Interrupted>())
        .map(|i| i.signal)
}

/// A run stopped by a signal exits with 128 + its number (130 for SIGINT, 143 for
/// SIGTERM, 129 for SIGHUP), as shells and schedulers expect; a closed stdout is the
/// reader having finished, status 0.
fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if tlcap::stdout::reader_gone(&err) => ExitCode::SUCCESS,
        Err(err) if interrupted_by(&err).is_some() => {
            let signal = interrupted_by(&err).unwrap_or(0);
            eprintln!("{err:#}");
            ExitCode::from((128 + signal).clamp(0, 255) as u8)
        }
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
    parts: Vec<tlcap::bench::Part>,
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
        parts,
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
    tlcap::stdout::line(tlcap::model::describe_layers(&net).trim_end())?;
    Ok(())
}
