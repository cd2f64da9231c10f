//! tlcap: transfer-learning experiments on images, driven from a terminal dashboard.
//!
//! Modules, one job each:
//! - [`doctor`]: checks that libtorch is usable and reports what the machine offers.

pub mod doctor;
