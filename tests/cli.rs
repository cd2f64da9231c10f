//! The binary as a user runs it: `doctor`, `--help`, `--version`.

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
    assert!(stdout.contains("intra-op threads"), "{stdout}");
    assert!(stdout.contains("avx512-bf16"), "{stdout}");
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
