//! The set-up script as a user runs it (after `make setup` has run once, as `make test` does).

use std::process::Command;

fn setup(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new("python3");
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/setup.py"))
        .args(args);
    cmd.env_remove("LIBTORCH")
        .env_remove("LIBTORCH_USE_PYTORCH")
        .env_remove("TLCAP_LIBTORCH");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("python3 runs");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn a_second_libtorch_setup_downloads_nothing() {
    let (ok, text) = setup(&["libtorch"], &[]);
    assert!(ok, "{text}");
    assert!(
        text.contains("libtorch 2.13.0 (CPU, linux-x86_64;"),
        "{text}"
    );
    assert!(text.contains("is ready at"), "{text}");
    assert!(!text.contains("downloading"), "{text}");
}

#[test]
fn a_user_libtorch_setting_makes_setup_step_aside() {
    let (ok, text) = setup(&["libtorch"], &[("LIBTORCH", "/opt/my-libtorch")]);
    assert!(ok && text.contains("stepping aside"), "{text}");
    let (ok, text) = setup(&["libtorch"], &[("LIBTORCH_USE_PYTORCH", "1")]);
    assert!(ok && text.contains("stepping aside"), "{text}");
}

#[test]
fn an_unknown_step_prints_usage_and_fails() {
    let (ok, text) = setup(&["everything"], &[]);
    assert!(
        !ok && text.contains("python3 scripts/setup.py libtorch"),
        "{text}"
    );
}

/// `setup.py plan` for a platform and driver that may not be this machine's.
fn plan(args: &[&str], env: &[(&str, &str)]) -> Result<serde_json::Value, String> {
    let mut all = vec!["plan"];
    all.extend_from_slice(args);
    let (ok, text) = setup(&all, env);
    if ok {
        Ok(serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")))
    } else {
        Err(text)
    }
}

fn wheel_files(plan: &serde_json::Value) -> Vec<String> {
    plan["wheels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["file"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_selection_table_picks_the_pinned_wheel_for_each_platform() {
    let linux = plan(
        &["--system", "Linux", "--machine", "x86_64", "--driver", "no"],
        &[],
    )
    .unwrap();
    assert_eq!(linux["platform"], "linux-x86_64");
    assert_eq!(linux["variant"], "cpu");
    let files = wheel_files(&linux);
    assert!(files[0].ends_with("manylinux_2_28_x86_64.whl"), "{files:?}");
    assert!(files.iter().all(|f| !f.contains("cudnn")), "{files:?}");
    assert!(linux["dir"]
        .as_str()
        .unwrap()
        .ends_with("libtorch-2.13.0-linux-x86_64-cpu"));

    let arm = plan(
        &[
            "--system",
            "Linux",
            "--machine",
            "aarch64",
            "--driver",
            "no",
        ],
        &[],
    )
    .unwrap();
    assert_eq!(arm["platform"], "linux-aarch64");
    let files = wheel_files(&arm);
    assert!(files.iter().all(|f| f.contains("aarch64")), "{files:?}");

    let mac = plan(
        &["--system", "Darwin", "--machine", "arm64", "--driver", "no"],
        &[],
    )
    .unwrap();
    assert_eq!(mac["platform"], "macos-arm64");
    assert_eq!(
        wheel_files(&mac),
        ["torch-2.13.0-cp311-cp311-macosx_14_0_arm64.whl"]
    );
    // Every pinned wheel carries its sha256.
    for p in [&linux, &arm, &mac] {
        for w in p["wheels"].as_array().unwrap() {
            let sha = w["sha256"].as_str().unwrap();
            assert!(
                sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()),
                "{w}"
            );
        }
    }
}

#[test]
fn a_driver_or_the_override_chooses_the_cuda_build() {
    let with_driver = plan(
        &[
            "--system",
            "Linux",
            "--machine",
            "x86_64",
            "--driver",
            "yes",
        ],
        &[],
    )
    .unwrap();
    assert_eq!(with_driver["variant"], "cuda");
    let files = wheel_files(&with_driver);
    for needed in [
        "nvidia_cudnn_cu13",
        "nvidia_cublas",
        "nvidia_nccl_cu13",
        "torch-2.13.0",
    ] {
        assert!(
            files.iter().any(|f| f.starts_with(needed)),
            "{needed}: {files:?}"
        );
    }
    assert!(with_driver["dir"].as_str().unwrap().ends_with("-cuda"));
    // The override wins over the driver, both ways.
    let forced_cpu = plan(
        &[
            "--system",
            "Linux",
            "--machine",
            "x86_64",
            "--driver",
            "yes",
        ],
        &[("TLCAP_LIBTORCH", "cpu")],
    )
    .unwrap();
    assert_eq!(forced_cpu["variant"], "cpu");
    let forced_cuda = plan(
        &["--system", "Linux", "--machine", "x86_64", "--driver", "no"],
        &[("TLCAP_LIBTORCH", "cuda")],
    )
    .unwrap();
    assert_eq!(forced_cuda["variant"], "cuda");
    // No CUDA build is pinned for ARM Linux: auto quietly takes the CPU one.
    let arm = plan(
        &[
            "--system",
            "Linux",
            "--machine",
            "aarch64",
            "--driver",
            "yes",
        ],
        &[],
    )
    .unwrap();
    assert_eq!(arm["variant"], "cpu");
}

#[test]
fn an_unsupported_platform_or_variant_is_a_clear_error() {
    let err = plan(&["--system", "Windows", "--machine", "AMD64"], &[]).unwrap_err();
    assert!(
        err.contains("no pinned torch 2.13.0 wheel for Windows AMD64")
            && err.contains("linux-x86_64")
            && err.contains("LIBTORCH="),
        "{err}"
    );
    let err = plan(
        &["--system", "Darwin", "--machine", "arm64"],
        &[("TLCAP_LIBTORCH", "cuda")],
    )
    .unwrap_err();
    assert!(
        err.contains("no CUDA libtorch is pinned for macos-arm64"),
        "{err}"
    );
    let err = plan(&[], &[("TLCAP_LIBTORCH", "rocm")]).unwrap_err();
    assert!(
        err.contains("set TLCAP_LIBTORCH to cpu, cuda or auto"),
        "{err}"
    );
}
