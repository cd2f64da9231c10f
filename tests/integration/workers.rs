//! Many experiments on a scheduler that already exists: three workers as separate
//! processes pick their experiments by task index exactly as the Slurm and Kubernetes
//! deploy files start them, are steered through their run folders, one is SIGKILLed
//! and its requeued task resumes it; and the deploy files are checked.

use crate::util;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn worker(experiments: &Path, runs: &Path, var: &str, index: usize) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tlcap-tui"))
        .args(["worker"])
        .arg(experiments)
        .arg("--runs")
        .arg(runs)
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX")
        .env(var, index.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The run folder of experiment `name` once it exists.
fn run_of(runs: &Path, name: &str) -> PathBuf {
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no run of {name}"
        );
        if let Ok(mut dirs) = std::fs::read_dir(runs.join(name)) {
            if let Some(Ok(d)) = dirs.next() {
                return d.path();
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn epochs(run: &Path) -> Vec<tlcap::train::EpochMetrics> {
    tlcap::train::run_dir::read_metrics(run).unwrap_or_default()
}

fn until(what: &str, test: impl Fn() -> bool) {
    let start = Instant::now();
    while !test() {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn status(run: &Path) -> Value {
    std::fs::read_to_string(run.join("status.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null)
}

fn control(run: &Path, line: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(run.join("control.jsonl"))
        .unwrap();
    writeln!(f, "{line}").unwrap();
}

#[test]
fn three_workers_are_steered_killed_and_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    util::make_images(&root.join("data"), &["left", "right"], 48, 32);
    let experiments = root.join("experiments");
    std::fs::create_dir_all(&experiments).unwrap();
    let exp = |name: &str, frozen: u32, finetune: u32| {
        let text = format!(
            "name: {name}\ndata: {{ dir: ../data, image_size: 32, batch_size: 4 }}\n\
             model: {{ backbone: small_cnn }}\nfrozen: {{ epochs: {frozen} }}\n\
             finetune: {{ epochs: {finetune}, unfreeze_last: 2 }}\n\
             stall: {{ patience: 100 }}\ndevice: cpu\n"
        );
        std::fs::write(experiments.join(format!("{name}.yaml")), text).unwrap();
    };
    // Sorted by file name: a (task 0), b (task 1), c (task 2).
    exp("a", 3, 1);
    exp("b", 40, 2);
    exp("c", 8, 0);
    let runs = root.join("runs");
    let mut a = worker(&experiments, &runs, "SLURM_ARRAY_TASK_ID", 0);
    let mut b = worker(&experiments, &runs, "JOB_COMPLETION_INDEX", 1);
    let mut c = worker(&experiments, &runs, "SLURM_ARRAY_TASK_ID", 2);
    let (ra, rb, rc) = (run_of(&runs, "a"), run_of(&runs, "b"), run_of(&runs, "c"));

    // a: paused through its control file; its heartbeat says so; then resumed.
    until("a's first epoch", || !epochs(&ra).is_empty());
    control(&ra, r#"{"command": "pause"}"#);
    until("a paused", || status(&ra)["state"] == "paused");
    let paused_at = epochs(&ra).len();
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(epochs(&ra).len(), paused_at, "a trained while paused");
    control(&ra, r#"{"command": "resume"}"#);

    // b: unfrozen early through its control file; 2 fine-tune epochs, then done.
    until("b's first epoch", || !epochs(&rb).is_empty());
    control(&rb, r#"{"command": "unfreeze"}"#);

    // c: killed without warning after an epoch; its heartbeat goes stale.
    until("c's first checkpoint", || {
        rc.join("last.safetensors").is_file()
    });
    c.kill().unwrap();
    c.wait().unwrap();
    let done_c = epochs(&rc).len();
    assert!(done_c < 8, "c finished before the kill");
    let stale = status(&rc);
    assert_eq!(stale["state"], "running");
    assert!(!rc.join("summary.json").exists());

    // A dashboard attached to the shared runs folder sees all three; c as lost.
    let mut app = tlcap::app::App::attached(runs.clone());
    let (tx, rx) = flume::unbounded();
    let poller = tlcap::dashboard::Poller::start(runs.clone(), tx);
    let lost = |app: &tlcap::app::App| {
        app.entries.len() == 3
            && app.entries.iter().any(|e| {
                e.path == rc
                    && e.run
                        .as_ref()
                        .is_some_and(|r| matches!(r.status, tlcap::app::RunStatus::Lost { .. }))
            })
    };
    let start = Instant::now();
    while !lost(&app) {
        assert!(
            start.elapsed() < Duration::from_secs(tlcap::app::LOST_AFTER_SECONDS as u64 + 20),
            "the attached view never showed c as lost"
        );
        while let Ok(ev) = rx.try_recv() {
            tlcap::app::update(&mut app, ev);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(poller);

    assert!(a.wait().unwrap().success());
    assert!(b.wait().unwrap().success());
    // The requeued task 2 resumes c's folder rather than starting anew.
    let mut c2 = worker(&experiments, &runs, "SLURM_ARRAY_TASK_ID", 2);
    assert!(c2.wait().unwrap().success());
    assert_eq!(std::fs::read_dir(runs.join("c")).unwrap().count(), 1);

    // Every folder is complete and consistent.
    for (run, n) in [(&ra, 4), (&rc, 8)] {
        let rows = epochs(run);
        assert_eq!(rows.len(), n, "{}", run.display());
        for (i, m) in rows.iter().enumerate() {
            assert_eq!(m.epoch as usize, i + 1, "{}", run.display());
        }
    }
    let rows_b = epochs(&rb);
    let tuned = rows_b
        .iter()
        .filter(|m| m.phase == tlcap::train::Phase::Finetune)
        .count();
    assert!(tuned >= 2, "b fine-tuned {tuned} epochs");
    assert!(rows_b.len() < 40, "b ran its whole frozen phase");
    for run in [&ra, &rb, &rc] {
        let summary = tlcap::train::run_dir::read_summary(run).unwrap();
        assert_eq!(summary.reason, tlcap::train::EndReason::Completed);
        assert_eq!(status(run)["state"], "finished");
        for file in [
            "best.safetensors",
            "last.safetensors",
            "config.yaml",
            "split.json",
        ] {
            assert!(run.join(file).is_file(), "{}: {file}", run.display());
        }
    }
    let log = std::fs::read_to_string(ra.join("events.log")).unwrap();
    assert!(
        log.contains("control.jsonl line 1") && log.contains("Paused"),
        "{log}"
    );
}

#[test]
fn a_task_index_out_of_range_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tlcap-tui"))
        .args(["worker"])
        .arg(Path::new(ROOT).join("experiments"))
        .args(["--index", "99", "--runs"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("task index 99, but there are"), "{stderr}");
}

/// The Slurm script parses as bash and handles the time-limit signal; the Kubernetes
/// manifest is an Indexed Job that runs the worker with a grace period long enough
/// for the stop checkpoint and a shared runs volume.
#[test]
fn the_deploy_files_are_well_formed() {
    let sbatch = Path::new(ROOT).join("deploy/slurm/tlcap-array.sbatch");
    let out = Command::new("bash")
        .arg("-n")
        .arg(&sbatch)
        .output()
        .unwrap();
    util::stdout_of_success(&out);
    let text = std::fs::read_to_string(&sbatch).unwrap();
    for needed in [
        "#SBATCH --signal=B:TERM@",
        "#SBATCH --requeue",
        " worker ",
        "--runs",
        "scontrol requeue",
        "trap on_term TERM",
    ] {
        assert!(text.contains(needed), "sbatch lacks {needed}");
    }

    let manifest = Path::new(ROOT).join("deploy/kubernetes/tlcap-indexed-job.yaml");
    let job: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(manifest).unwrap()).unwrap();
    assert_eq!(job["apiVersion"].as_str(), Some("batch/v1"));
    assert_eq!(job["kind"].as_str(), Some("Job"));
    let spec = &job["spec"];
    assert_eq!(spec["completionMode"].as_str(), Some("Indexed"));
    assert!(spec["completions"].as_u64().unwrap() >= 1);
    let pod = &spec["template"]["spec"];
    assert!(pod["terminationGracePeriodSeconds"].as_u64().unwrap() >= 60);
    let container = &pod["containers"][0];
    let command: Vec<&str> = container["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(&command[..2], ["tlcap-tui", "worker"]);
    let runs_at = command[command.iter().position(|c| *c == "--runs").unwrap() + 1];
    let mounts = container["volumeMounts"].as_sequence().unwrap();
    let runs_mount = mounts
        .iter()
        .find(|m| m["mountPath"].as_str() == Some(runs_at))
        .expect("the runs folder is a mounted volume");
    let volume = runs_mount["name"].as_str().unwrap();
    let volumes = pod["volumes"].as_sequence().unwrap();
    assert!(volumes
        .iter()
        .any(|v| v["name"].as_str() == Some(volume) && v["persistentVolumeClaim"].is_mapping()));
}

/// `shootout --workers 2`: three experiments, at most two at once as separate
/// processes, every one in the exported comparison.
#[test]
fn a_shootout_runs_experiments_in_parallel_processes() {
    let dir = tempfile::tempdir().unwrap();
    util::make_images(&dir.path().join("data"), &["left", "right"], 12, 32);
    let exps = dir.path().join("exps");
    std::fs::create_dir_all(&exps).unwrap();
    for name in ["one", "two", "three"] {
        std::fs::write(
            exps.join(format!("{name}.yaml")),
            "data: { dir: ../data, image_size: 32 }\nmodel: { backbone: small_cnn }\n\
             frozen: { epochs: 2 }\nfinetune: { epochs: 0 }\ndevice: cpu\n",
        )
        .unwrap();
    }
    let runs = dir.path().join("runs");
    let out = Command::new(env!("CARGO_BIN_EXE_tlcap-tui"))
        .args(["shootout", "--workers", "2", "--runs"])
        .arg(&runs)
        .arg(&exps)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("3 experiments, 2 at once"), "{stderr}");
    assert!(
        stderr.contains("[two] "),
        "child output is prefixed: {stderr}"
    );
    let table = String::from_utf8_lossy(&out.stdout);
    for name in ["one", "two", "three"] {
        assert!(
            table.contains(&format!("| {name} | small_cnn |")),
            "{table}"
        );
    }
    assert!(table.contains("with 2 workers"), "{table}");
}
