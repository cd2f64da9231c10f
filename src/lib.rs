//! tlcap: transfer-learning experiments on images, driven from a terminal dashboard.
//!
//! Modules, one job each:
//! - [`runtime`]: what the machine and libtorch offer (CPU features, CUDA/MPS devices,
//!   precision of the frozen part, threads); read by doctor, train, predict and bench.
//! - [`doctor`]: checks that libtorch is usable and reports what the machine offers.
//! - [`data`]: image folders, the split, decoding once, batched augmentation, normalisation.
//! - [`config`]: experiment files: schema, defaults, validation with positions, diff.
//! - [`weights`]: weight files (.pth zip/legacy, .ot, .safetensors) read without executing anything.
//! - [`model`]: backbones as ordered, named layers in segments; freezing; loading
//!   weights by name; the frozen part in bf16/fp32.
//! - [`fsutil`]: atomic file writes.
//! - [`app`]: dashboard state and the pure `update(state, event) -> actions`.
//! - [`ui`]: drawing the state with ratatui.
//! - [`dashboard`]: the tokio event loop, terminal set-up and restore.
//! - [`watch`]: watching experiment files (notify, debounced).
//! - [`train`]: the trainer thread: phases, metrics, stall detection, run folders,
//!   caches of the frozen part of the backbone.
//! - [`headless`]: `run`/`resume` without a dashboard, one line per epoch.
//! - [`predict`]: class and probability for images from a trained run.
//! - [`results`]: the best epoch of a run and a run folder as one comparable row.
//! - [`shootout`]: comparing experiments; results.csv / results.md.
//! - [`text`]: how typed trainer events read for people (dashboard and headless).
//! - [`bench`]: `tlcap-tui bench`, speed per mode against a matmul peak.

pub mod app;
pub mod bench;
pub mod config;
pub mod dashboard;
pub mod data;
pub mod doctor;
pub mod fsutil;
pub mod headless;
pub mod model;
pub mod predict;
pub mod results;
pub mod runtime;
pub mod shootout;
pub mod text;
pub mod train;
pub mod ui;
pub mod watch;
pub mod weights;
