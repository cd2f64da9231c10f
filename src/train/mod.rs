//! Training: the trainer thread ([`engine`]) with its typed commands and events
//! ([`events`]), plateau detection ([`stall`]), validation metrics ([`metrics`]) and
//! the run folder ([`run_dir`]) and the outputs of the frozen backbone kept between
//! epochs ([`cache`]).

pub mod cache;
pub mod engine;
pub mod events;
pub mod metrics;
pub mod run_dir;
pub mod stall;

pub use engine::{spawn, Options, Phases, TrainerHandle};
pub use events::{Command, EndReason, EpochMetrics, Event, Phase};
