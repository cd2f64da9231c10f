//! tlcap: transfer-learning experiments on images, driven from a terminal dashboard.
//!
//! Modules, one job each:
//! - [`doctor`]: checks that libtorch is usable and reports what the machine offers.
//! - [`data`]: image folders, the split, decoding once, batched augmentation, normalisation.
//! - [`config`]: experiment files: schema, defaults, validation with positions, diff.

pub mod config;
pub mod data;
pub mod doctor;
