//! The set-up script as a user runs it (after `make setup` has run once, as `make test` does).

use std::process::Command;

fn setup(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new("python3");
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/setup.py"))
        .args(args);
    cmd.env_remove("LIBTORCH")
        .env_remove("LIBTORCH_USE_PYTORCH");
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
    assert!(text.contains("libtorch 2.13.0 (CPU) is ready at"), "{text}");
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
