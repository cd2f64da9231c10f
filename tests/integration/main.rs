//! The integration tests as one binary (ripgrep's layout): one link against libtorch
//! instead of one per file. Each file here is a module of that binary; `util` holds
//! the helpers they share (`use crate::util;`). Snapshots live in `snapshots/` beside
//! these files, named `integration__<module>__<name>.snap` as insta names them.
//! A new test file needs its `mod` line here: `autotests = false` in Cargo.toml.

mod util;

mod architecture;
mod attach;
mod backbones;
mod cli;
mod config_files;
mod dashboard;
mod dashboard_pty;
mod data;
mod export;
mod finetune_schedule;
mod headless;
mod image_cache;
mod multilabel;
mod setup_script;
mod slurm;
mod train;
mod tta;
mod watch;
mod weights;
mod workers;
