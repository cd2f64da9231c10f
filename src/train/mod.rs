//! Training, one job per file:
//! - [`controller`]: the trainer thread, its phases, and the one place every command
//!   is handled; [`inbox`]: the commands and control-file lines it takes, as one
//!   request type; [`state`]: a run in progress and the options it runs with;
//! - [`resume`]: opening a new run folder or resuming one;
//! - [`epoch`]: one epoch with its input thread; [`validate`]: the validation pass;
//! - [`live_edit`]: applying a saved experiment file at an epoch boundary;
//! - [`plan`]: what to cache of the frozen part, and how an epoch computes;
//! - [`cache`]: the kept outputs of the frozen part of the backbone;
//! - [`stall`]: plateau detection and the best-epoch rule;
//! - [`metrics`]: validation metrics; [`events`]: the typed commands and events;
//! - [`run_dir`]: the run folder on disk; [`predictions`]: the best epoch's
//!   validation predictions in it; [`control`]: its control file, read as
//!   commands; [`status`]: its heartbeat.

pub mod cache;
pub mod control;
pub mod controller;
mod epoch;
pub mod events;
mod inbox;
mod live_edit;
pub mod metrics;
pub mod plan;
pub mod predictions;
mod resume;
pub mod run_dir;
pub mod schedule;
pub mod stall;
mod state;
pub mod status;
mod validate;

pub use controller::{spawn, TrainerHandle, THREAD_PREFIX};
pub use events::Phases;
pub use events::{Command, EndReason, EpochMetrics, Event, Phase};
pub use state::Options;
