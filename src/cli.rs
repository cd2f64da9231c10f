//! The command line: clap's types for `tlcap-tui` and its subcommands.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Transfer-learning experiments on images, watched and steered from a terminal.
#[derive(Parser, Debug)]
#[command(
    name = "tlcap-tui",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// With no command: open the dashboard on this folder of experiment files, or on
    /// one file (default: experiments/). When stdout is not a terminal, the
    /// experiments run headless instead, one after the other.
    pub path: Option<PathBuf>,
    /// Where run folders go (dashboard and headless fallback).
    #[arg(long, default_value = "runs", value_name = "DIR")]
    pub runs: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum Command {
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
        /// Run up to N experiments at once, as separate processes, each with its
        /// share of the cores.
        #[arg(long, value_name = "N", default_value_t = 1)]
        workers: usize,
        /// Start every experiment anew even if the same shootout was interrupted in
        /// this runs folder (by default an interrupted --workers shootout resumes).
        #[arg(long)]
        fresh: bool,
        /// Run each experiment once per seed (e.g. 1,2,3,4,5) and report mean and
        /// spread of its bests over the seeds.
        #[arg(long, value_name = "LIST", value_delimiter = ',')]
        seeds: Vec<u64>,
    },
    /// One task of a scheduler's array: the experiment at this task's index (from
    /// --index, SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX), run headless, or resumed
    /// if an earlier attempt of the task left it unfinished.
    Worker {
        /// Experiment files, or folders of them; sorted, task i takes the i-th.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// The task index (default: from the scheduler's environment).
        #[arg(long, value_name = "N")]
        index: Option<usize>,
        /// Where run folders go (shared storage on a cluster).
        #[arg(long, default_value = "runs", value_name = "DIR")]
        runs: PathBuf,
        /// The tagged JSON event stream on stdout.
        #[arg(long)]
        json: bool,
        /// Stop after this many epochs in total (counting a resumed run's earlier ones).
        #[arg(long, value_name = "N")]
        max_epochs: Option<u32>,
    },
    /// The dashboard on every run folder under RUNS_DIR, wherever their processes run
    /// (scripts, tmux, Slurm, Kubernetes): live state, charts, and p/u/x through each
    /// run's control file.
    Attach {
        /// A runs folder (runs/<experiment>/<timestamp>/...), e.g. on shared storage.
        runs_dir: PathBuf,
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
    /// Class and probability per image from a trained run, one of its checkpoints, or
    /// an exported model (NAME.pt or NAME.safetensors, with its card NAME.json).
    Predict {
        /// A run folder (uses best.safetensors, else last.safetensors), a checkpoint
        /// inside one, or an exported model.
        checkpoint_or_run_dir: PathBuf,
        /// Image files or folders (searched recursively).
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// One JSON object per image, with every class's probability.
        #[arg(long)]
        json: bool,
        /// Two classes: predict the second class when its probability is at least P;
        /// multi-label: every label's threshold.
        #[arg(long, value_name = "P", value_parser = probability)]
        threshold: Option<f64>,
    },
    /// Score a run's model once on held-out test images (never used in training):
    /// accuracy, loss, the confusion matrix, per-class and (two classes) precision,
    /// recall, F1 and AUC; written to RUN_DIR/test.json and shown by `report`.
    Evaluate {
        /// A run folder (runs/<experiment>/<timestamp>).
        run_dir: PathBuf,
        /// The test images: a folder of class folders, or a CSV of labels (its test
        /// rows; paths relative to the run's data.dir). Default: the run's label file's
        /// test rows, or the test/ folder beside train/ and val/.
        #[arg(long, value_name = "DIR|CSV")]
        test: Option<PathBuf>,
        /// Which checkpoint.
        #[arg(long, value_enum, default_value = "best")]
        checkpoint: CheckpointArg,
        /// The scores as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// A run's results: epoch table, confusion matrix with per-class scores, the worst
    /// validation images; printed, and written to RUN_DIR/report.md with SVG charts.
    Report {
        /// A run folder (runs/<experiment>/<timestamp>).
        run_dir: PathBuf,
    },
    /// Write a run's model to serve elsewhere: TorchScript (preprocessing inside: uint8
    /// images in, probabilities out) or safetensors, with a JSON model card beside it
    /// (the model's name with .json: -o m.pt writes m.pt and m.json).
    Export {
        /// A run folder (runs/<experiment>/<timestamp>).
        run_dir: PathBuf,
        /// Which checkpoint.
        #[arg(long, value_enum, default_value = "best")]
        checkpoint: CheckpointArg,
        /// What to write.
        #[arg(long, value_enum, default_value = "torchscript")]
        format: FormatArg,
        /// The model file (e.g. m.pt); its card goes beside it, the same name with
        /// .json for the extension (m.json).
        #[arg(short, long)]
        output: PathBuf,
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
        /// Only these groups of rows (comma-separated; all by default).
        #[arg(long, value_delimiter = ',')]
        only: Vec<tlcap::bench::Part>,
    },
    /// Read weight files safely (.pth zip or legacy, .ot, .safetensors): inspect, convert.
    Weights {
        #[command(subcommand)]
        action: WeightsCommand,
    },
    /// The on-disk decoded-image cache ($TLCAP_IMAGE_CACHE, else
    /// ~/.cache/tlcap/images): list its stores with their sizes, or clean them.
    Cache {
        #[command(subcommand)]
        action: Option<CacheCommand>,
    },
}

#[derive(Subcommand, Debug)]
pub enum CacheCommand {
    /// List the stores (one per image size and resampling) with images and sizes.
    List,
    /// Delete stores: all of them, or those no run used for DAYS days.
    Clean {
        /// Only stores unused for at least this many days.
        #[arg(long, value_name = "DAYS")]
        unused_days: Option<u64>,
    },
}

/// `--checkpoint` of `export` and `evaluate`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum CheckpointArg {
    Best,
    Last,
}

impl From<CheckpointArg> for tlcap::export::Checkpoint {
    fn from(arg: CheckpointArg) -> Self {
        match arg {
            CheckpointArg::Best => tlcap::export::Checkpoint::Best,
            CheckpointArg::Last => tlcap::export::Checkpoint::Last,
        }
    }
}

/// `--format` of `export`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum FormatArg {
    Torchscript,
    Safetensors,
}

/// A probability: a number in [0, 1].
fn probability(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("`{text}` is not a probability between 0 and 1")),
    }
}

/// `--phase` of `run`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum PhaseArg {
    Frozen,
    Finetune,
    Both,
}

#[derive(Subcommand, Debug)]
pub enum WeightsCommand {
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
