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
    let sent = Instant::now();
    control(&ra, r#"{"command": "pause"}"#);
    until("a paused", || status(&ra)["state"] == "paused");
    // Printed, not asserted (the issue's target: 1 s, with batches of 4 images).
    eprintln!("a control line to a paused heartbeat: {:?}", sent.elapsed());
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

/// `deploy/kubernetes` against the Kubernetes OpenAPI schema (`kubernetes-validate
/// --strict`, from PyPI: unknown fields are errors), and a copy with a misspelled
/// field fails it, so the check can fail. The validator comes from
/// `TLCAP_KUBERNETES_VALIDATE` or `PATH` (`.ci/run` installs it in the set-up cache);
/// without it the test says so and passes, except under CI.
#[test]
fn the_kubernetes_manifest_validates_against_the_schema() {
    let validator =
        std::env::var("TLCAP_KUBERNETES_VALIDATE").unwrap_or_else(|_| "kubernetes-validate".into());
    let runs = Command::new(&validator).arg("--version").output();
    if !runs.as_ref().is_ok_and(|o| o.status.success()) {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI must validate deploy/kubernetes, but {validator} does not run"
        );
        eprintln!("kubernetes manifest not validated: {validator} is not installed");
        return;
    }
    let manifest = Path::new(ROOT).join("deploy/kubernetes/tlcap-indexed-job.yaml");
    let check = |file: &Path| {
        Command::new(&validator)
            .args(["--strict", "--kubernetes-version", "1.33"])
            .arg(file)
            .output()
            .unwrap()
    };
    let out = check(&manifest);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.yaml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    assert!(text.contains("completionMode:"));
    std::fs::write(&broken, text.replace("completionMode:", "completionMod:")).unwrap();
    assert!(
        !check(&broken).status.success(),
        "a misspelled field passed"
    );
}

fn shootout(exps: &Path, runs: &Path, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tlcap-tui"))
        .args(["shootout", "--workers", "2", "--runs"])
        .arg(runs)
        .args(extra)
        .arg(exps)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// `shootout --workers 2` stopped by SIGTERM, then the same command again: the
/// experiment that finished is kept (not run twice), the two the signal stopped
/// resume their own folders (every epoch once), and the comparison has all three.
#[test]
fn an_interrupted_shootout_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    util::make_images(&dir.path().join("data"), &["left", "right"], 12, 32);
    let exps = dir.path().join("exps");
    std::fs::create_dir_all(&exps).unwrap();
    for (name, epochs) in [("quick", 2), ("slow1", 5000), ("slow2", 5000)] {
        std::fs::write(
            exps.join(format!("{name}.yaml")),
            format!(
                "data: {{ dir: ../data, image_size: 32 }}\nmodel: {{ backbone: small_cnn }}\n\
                 frozen: {{ epochs: {epochs} }}\nfinetune: {{ epochs: 0 }}\n\
                 stall: {{ patience: 10000 }}\ndevice: cpu\n"
            ),
        )
        .unwrap();
    }
    let runs = dir.path().join("runs");
    let first = shootout(&exps, &runs, &[]);
    let (quick, slow1) = (run_of(&runs, "quick"), run_of(&runs, "slow1"));
    until("quick to finish", || quick.join("summary.json").is_file());
    let slow2 = run_of(&runs, "slow2");
    until("both slow runs to finish an epoch", || {
        !epochs(&slow1).is_empty() && !epochs(&slow2).is_empty()
    });
    // SAFETY: a signal to the child this test started.
    unsafe { libc::kill(first.id() as i32, libc::SIGTERM) };
    let out = first.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{stderr}");
    assert!(stderr.contains("1 of 3 experiments finished"), "{stderr}");
    let progress: Value =
        serde_json::from_slice(&std::fs::read(runs.join("shootout-progress.json")).unwrap())
            .unwrap();
    assert_eq!(progress["done"].as_array().unwrap().len(), 1, "{progress}");
    let stopped: Vec<usize> = [&slow1, &slow2].iter().map(|r| epochs(r).len()).collect();
    for run in [&slow1, &slow2] {
        let summary: Value =
            serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap();
        assert_eq!(summary["stopped_by"], "SIGTERM");
    }

    // Again, with an end in sight: 10 epochs past the later stop.
    let total = stopped.iter().max().unwrap() + 10;
    let out = shootout(&exps, &runs, &["--max-epochs", &total.to_string()])
        .wait_with_output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("resuming the interrupted shootout of these 3 files: 1 finished"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("[quick] started"),
        "quick ran twice: {stderr}"
    );
    for (name, run) in [("slow1", &slow1), ("slow2", &slow2)] {
        let folders = std::fs::read_dir(runs.join(name)).unwrap().count();
        assert_eq!(folders, 1, "{name} got a second folder");
        let got: Vec<u32> = epochs(run).iter().map(|m| m.epoch).collect();
        assert_eq!(got, (1..=total as u32).collect::<Vec<_>>(), "{name}");
    }
    assert_eq!(std::fs::read_dir(runs.join("quick")).unwrap().count(), 1);
    let table = String::from_utf8_lossy(&out.stdout);
    for name in ["quick", "slow1", "slow2"] {
        assert!(table.contains(&format!("| {name} |")), "{table}");
    }
    assert!(
        !runs.join("shootout-progress.json").exists(),
        "a finished shootout leaves nothing to resume"
    );
}

/// A worker whose earlier attempt died before its first epoch (a folder with its
/// config, an events.log and a stale heartbeat, nothing else) starts again in that
/// folder instead of leaving it empty beside a new one.
#[test]
fn a_worker_restarts_in_the_folder_of_an_attempt_that_died_before_its_first_epoch() {
    let dir = tempfile::tempdir().unwrap();
    util::make_images(&dir.path().join("data"), &["left", "right"], 12, 32);
    let exps = dir.path().join("exps");
    std::fs::create_dir_all(&exps).unwrap();
    let text = "name: solo\ndata: { dir: ../data, image_size: 32 }\n\
                model: { backbone: small_cnn }\nfrozen: { epochs: 2 }\n\
                finetune: { epochs: 0 }\ndevice: cpu\n";
    std::fs::write(exps.join("solo.yaml"), text).unwrap();
    let runs = dir.path().join("runs");
    let earlier = runs.join("solo").join("20260101-000000");
    std::fs::create_dir_all(&earlier).unwrap();
    std::fs::write(earlier.join("config.yaml"), text).unwrap();
    std::fs::write(earlier.join("events.log"), "2026-01-01T00:00:00Z started\n").unwrap();
    std::fs::write(earlier.join("metrics.jsonl"), "").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tlcap-tui"))
        .args(["worker", "--index", "0", "--runs"])
        .arg(&runs)
        .arg(&exps)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("starting again in"), "{stderr}");
    assert_eq!(std::fs::read_dir(runs.join("solo")).unwrap().count(), 1);
    let got: Vec<u32> = epochs(&earlier).iter().map(|m| m.epoch).collect();
    assert_eq!(got, vec![1, 2]);
    let log = std::fs::read_to_string(earlier.join("events.log")).unwrap();
    assert!(log.starts_with("2026-01-01T00:00:00Z started\n"), "{log}");
    assert!(log.contains("started again in this folder"), "{log}");
    let summary: Value =
        serde_json::from_slice(&std::fs::read(earlier.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["reason"], "completed");
}
