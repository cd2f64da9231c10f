//! Training: the pieces the trainer thread is built from. So far: plateau detection
//! ([`stall`]) and validation metrics ([`metrics`]); the trainer itself is issue #5.

pub mod metrics;
pub mod stall;
