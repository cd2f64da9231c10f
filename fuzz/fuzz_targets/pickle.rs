//! Fuzzes the pickle reader: any input must end in a value or an error, never a panic,
//! a hang or an unbounded allocation. The reader is compiled straight from the crate's
//! source (it depends only on std and thiserror), so fuzzing needs no libtorch.
#![no_main]

#[path = "../../src/weights/pickle.rs"]
#[allow(dead_code)]
mod pickle;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = pickle::read(data, pickle::Policy::StateDict);
    let _ = pickle::read(data, pickle::Policy::TorchScriptArchive);
});
