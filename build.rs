//! Embeds an rpath to the libtorch that torch-sys linked against, so `cargo run`,
//! `cargo test` and `target/release/tlcap-tui` need no `LD_LIBRARY_PATH`, and records
//! whether that libtorch is a CPU or a CUDA build (`doctor` reports it).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB")
        .expect("torch-sys did not report its libtorch lib dir (DEP_TCH_LIBTORCH_LIB)");
    // Resolve links (.libtorch -> the cache) so the binary keeps working if the repo moves.
    let lib = std::fs::canonicalize(&lib)
        .map(|p| p.display().to_string())
        .unwrap_or(lib);
    let macos = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("macos");
    if macos {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    } else {
        println!("cargo:rustc-link-arg=-Wl,-rpath={lib}");
        // Keep libtorch.so in DT_NEEDED: with a CUDA libtorch it pulls libtorch_cuda, so
        // GPUs are seen.
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch");
    }
    let cuda = std::path::Path::new(&lib).join("libtorch_cuda.so").exists();
    println!(
        "cargo:rustc-env=TLCAP_LIBTORCH_VARIANT={}",
        if cuda { "cuda" } else { "cpu" }
    );
    println!("cargo:rustc-env=TLCAP_LIBTORCH_LIB={lib}");
}
