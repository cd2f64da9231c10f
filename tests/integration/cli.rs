//! The binary as a user runs it: `doctor`, `bench`, `--help`, `--version`.

use std::process::Command;

fn tlcap() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tlcap-tui"));
    cmd.env_remove("LD_LIBRARY_PATH").env_remove("LIBTORCH");
    cmd
}

#[test]
fn doctor_reports_libtorch_2_13_without_ld_library_path() {
    let out = tlcap().arg("doctor").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "doctor failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("libtorch version   2.13.0"), "{stdout}");
    assert!(stdout.contains("tch version        0.26.0"), "{stdout}");
    assert!(stdout.contains("sums to 134 (ok)"), "{stdout}");
    assert!(stdout.contains("intra-op per trainer"), "{stdout}");
    assert!(stdout.contains("1 input thread per run"), "{stdout}");
    assert!(stdout.contains("avx512-bf16"), "{stdout}");
    // Which libtorch this is, and what it sees.
    let build = match tlcap::runtime::LIBTORCH_VARIANT {
        "cuda" => "libtorch build     CUDA build",
        _ => "libtorch build     CPU build",
    };
    assert!(stdout.contains(build), "{stdout}");
}

/// Under `ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2` (how an AVX2 CPU is
/// measured on a newer one) doctor says bf16 is limited where the CPU has it, as the
/// trainer's `precision: auto` then stays fp32; without the limits it says native.
/// On a CPU without bf16 instructions both say emulated.
#[test]
fn doctor_says_when_kernel_limits_keep_bf16_off() {
    let line = |limited: bool| {
        let mut cmd = tlcap();
        cmd.arg("doctor")
            .env_remove("ATEN_CPU_CAPABILITY")
            .env_remove("ONEDNN_MAX_CPU_ISA");
        if limited {
            cmd.env("ATEN_CPU_CAPABILITY", "avx2")
                .env("ONEDNN_MAX_CPU_ISA", "AVX2");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success());
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        stdout
            .lines()
            .find(|l| l.starts_with("bf16 kernels"))
            .unwrap_or_else(|| panic!("no bf16 line: {stdout}"))
            .to_string()
    };
    let (plain, limited) = (line(false), line(true));
    if tlcap::runtime::CpuFeatures::detect().native_bf16() {
        assert!(plain.contains("native"), "{plain}");
        assert!(
            limited.contains("limited by ATEN_CPU_CAPABILITY"),
            "{limited}"
        );
        assert!(limited.contains("stays fp32"), "{limited}");
    } else {
        assert!(plain.contains("emulated"), "{plain}");
        assert_eq!(plain, limited);
    }
}

/// The binary tunes malloc so that libtorch's freed tensors are reused: doctor makes and
/// frees a 64 MiB tensor 16 times and counts the pages faulted in. Tuned, only the first
/// tensor or few are fresh pages (2 here, 3 on one CI machine: the kernel's own faults
/// vary); under `TLCAP_ALLOCATOR=system` glibc gives each back, so every one is.
#[test]
fn doctor_shows_the_tuned_allocator_reusing_freed_tensors() {
    let times = tlcap::doctor::ALLOCATOR_PROBE_TENSORS as u64;
    let faults = |system: bool| {
        let mut cmd = tlcap();
        cmd.arg("doctor");
        for (name, _) in std::env::vars() {
            if name.starts_with("MALLOC_") || name == "GLIBC_TUNABLES" {
                cmd.env_remove(name);
            }
        }
        if system {
            cmd.env("TLCAP_ALLOCATOR", "system");
        } else {
            cmd.env_remove("TLCAP_ALLOCATOR");
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "{stdout}");
        let line = stdout
            .lines()
            .find(|l| l.contains(&format!("a 64 MiB tensor made and freed {times} times")))
            .unwrap_or_else(|| panic!("{stdout}"));
        let number = |after: &str| -> u64 {
            let rest = &line[line.find(after).unwrap() + after.len()..];
            rest.split_whitespace()
                .next()
                .unwrap()
                .trim_start_matches('(')
                .parse()
                .unwrap()
        };
        let (faults, per_tensor) = (number(&format!("{times} times: ")), number("faulted in ("));
        (stdout, faults, per_tensor)
    };
    let (stdout, tuned, per_tensor) = faults(false);
    assert!(
        stdout.contains("memory allocator   glibc malloc tuned"),
        "{stdout}"
    );
    assert!(
        tuned <= times / 2 * per_tensor,
        "{tuned} pages for {times} tensors of {per_tensor}: {stdout}"
    );
    let (stdout, system, _) = faults(true);
    assert!(
        stdout.contains("memory allocator   the C library's"),
        "{stdout}"
    );
    let thp_always = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|s| s.contains("[always]"));
    if !thp_always {
        assert!(
            system > times * 3 / 4 * per_tensor,
            "{system} pages for {times} tensors of {per_tensor}"
        );
    }
}

/// A device that is not there is one line on stderr, exit 1, before any work starts.
#[test]
fn a_missing_device_is_a_one_line_error() {
    if tlcap::runtime::cuda_devices() > 0 {
        return; // a GPU machine: cuda is there
    }
    for device in ["cuda", "cuda:1"] {
        let out = tlcap()
            .args(["bench", "--device", device])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains(&format!("device `{device}` asked for"))
                && stderr.contains("sees 0 CUDA device(s)"),
            "{stderr}"
        );
    }
}

#[test]
fn doctor_with_a_broken_libtorch_setting_says_how_to_fix_it() {
    let out = tlcap()
        .arg("doctor")
        .env("LIBTORCH", "/nonexistent/libtorch")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("LIBTORCH=/nonexistent/libtorch is not a directory"),
        "{stderr}"
    );
    assert!(stderr.contains("fix: run `make setup`"), "{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
    assert!(
        stderr.lines().count() <= 3,
        "a short message, not a wall: {stderr}"
    );
    // With LIBTORCH_USE_PYTORCH, torch-sys ignores LIBTORCH, and so does doctor.
    let out = tlcap()
        .arg("doctor")
        .env("LIBTORCH", "/nonexistent/libtorch")
        .env("LIBTORCH_USE_PYTORCH", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_subcommand_has_help_and_there_is_a_version() {
    let out = tlcap().arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("tlcap-tui "));
    let out = tlcap().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout).to_string();
    let subcommands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|s| *s != "help")
        .collect();
    assert!(subcommands.contains(&"doctor"), "{help}");
    for sub in subcommands {
        let out = tlcap().args([sub, "--help"]).output().unwrap();
        assert!(out.status.success(), "{sub} --help failed");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage: tlcap-tui"),
            "{sub} --help"
        );
    }
}

/// A small `bench` prints every row of its table with figures, and the ratios.
#[test]
fn bench_prints_a_table_of_figures() {
    let out = tlcap()
        .args([
            "bench",
            "--backbones",
            "mobilenet_v2",
            "--images",
            "20",
            "--size",
            "64",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("matmul peak"), "{stdout}");
    assert!(stdout.contains("data load (decode + resize"), "{stdout}");
    for mode in [
        "frozen fp32, no cache (epoch 1)",
        "frozen bf16, no cache (epoch 1)",
        "frozen fp32, features cached (epoch 2)",
        "frozen fp32, augmented, input thread",
        "fine-tune last 6 layers fp32, no cache",
        "fine-tune last 6 layers fp32, prefix cached",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.contains(mode))
            .unwrap_or_else(|| panic!("no row `{mode}`: {stdout}"));
        let rate: f64 = line[13 + 1 + 44..]
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no img/s in `{line}`"));
        assert!(rate > 0.0, "{line}");
    }
    let ratios = stdout
        .lines()
        .find(|l| l.starts_with("mobilenet_v2  ") && l.ends_with('x'));
    assert!(ratios.is_some(), "{stdout}");
}
