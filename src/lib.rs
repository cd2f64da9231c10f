//! tlcap: transfer-learning experiments on images, driven from a terminal dashboard.
//!
//! Modules, one job each:
//! - [`doctor`]: checks that libtorch is usable and reports what the machine offers.
//! - [`config`]: experiment files: schema, defaults, validation with positions, diff.

pub mod config;
pub mod doctor;
