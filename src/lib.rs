//! tlcap: transfer-learning experiments on images, driven from a terminal dashboard.
//!
//! Modules, one job each, by layer (a module imports only from layers below it; see
//! ARCHITECTURE.md):
//! 1. [`fsutil`]: atomic file writes. [`stdout`]: printing where a closed pipe is
//!    the reader finishing. [`config`]: experiment files: schema, defaults,
//!    validation with positions, the diff and the live-edit merge, reading files.
//! 2. [`runtime`]: what the machine and libtorch offer (CPU features, CUDA/MPS
//!    devices, precision of the frozen part, threads). [`weights`]: weight files
//!    (.pth zip/legacy, .ot, .safetensors) read without executing anything. [`data`]:
//!    image folders, the split, decoding once, batched augmentation, normalisation.
//!    [`watch`]: watching experiment files (notify, debounced), as file events.
//! 3. [`model`]: backbones as ordered, named layers in segments; freezing; loading
//!    weights by name; the frozen part in bf16/fp32.
//! 4. [`train`]: the trainer thread: phases, epochs, validation, stall detection, run
//!    folders, caches of the frozen part of the backbone.
//! 5. [`results`]: a run folder as one comparable row. [`text`]: how typed trainer
//!    events read for people. [`model_card`]: an exported model's card, and a trained
//!    network read back for prediction.
//! 6. [`app`]: dashboard state and the pure `update(state, event) -> actions`.
//!    [`headless`]: `run`/`resume` without a dashboard, one line per epoch.
//!    [`predict`]: class and probability for images from a trained run or an
//!    exported model. [`export`]: a run's model as TorchScript or safetensors.
//!    [`report`]: a run's results as text, markdown and SVG charts. [`check`]:
//!    every problem of experiment files before training. [`bench`]:
//!    speed per mode against a matmul peak. [`doctor`]: checks that libtorch is
//!    usable and reports what the machine offers.
//! 7. [`ui`]: drawing the state with ratatui. [`shootout`]: comparing experiments;
//!    results.csv / results.md.
//!    [`worker`]: one task of a Slurm or Kubernetes array.
//! 8. [`dashboard`]: the tokio event loop, its effects and background jobs, the
//!    editor hand-over, terminal set-up and restore.

pub mod app;
pub mod bench;
pub mod check;
pub mod config;
pub mod dashboard;
pub mod data;
pub mod doctor;
pub mod evaluate;
pub mod export;
pub mod fsutil;
pub mod headless;
pub mod model;
pub mod model_card;
pub mod predict;
pub mod report;
pub mod results;
pub mod runtime;
pub mod shootout;
pub mod stdout;
pub mod text;
pub mod train;
pub mod ui;
pub mod watch;
pub mod weights;
pub mod worker;
