//! `deploy/slurm` on a real Slurm: a single-node cluster (slurmctld, slurmd and its own
//! munged, Debian's `slurm-wlm` and `munge`) stood up as root in a temporary folder
//! with its own config, state, spool, socket and loopback ports, and torn down at the
//! end. Three small experiments share one runs folder:
//! - `a` runs as array task 0 to completion;
//! - `b` (array task 1) is cancelled with `scancel` while it runs: stopped, not lost;
//! - `long`, its own job with `--time=1 --signal=B:TERM@50`, is sent SIGTERM by Slurm,
//!   stops at a batch boundary with everything on disk, requeues itself, and its next
//!   attempt resumes the same folder to completion (epochs contiguous, none twice);
//!   a pause and a resume sent through its control file reach it while it runs;
//! - `attach`'s poller shows all three as they are.
//!
//! Runs where Slurm can be started (root, the binaries installed: `.ci/run` installs
//! them); elsewhere it says so and passes, except under CI (`CI=true`), where it fails.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util;
use tlcap::app::{update, App, RunStatus};

/// A single-node Slurm cluster; dropping it stops every daemon it started.
struct Cluster {
    dir: PathBuf,
    conf: PathBuf,
}

impl Cluster {
    /// Starts munged, slurmctld and slurmd under `dir`; None (with the reason) when
    /// this machine cannot.
    fn start(dir: &Path) -> Result<Cluster, String> {
        // SAFETY: getuid has no preconditions.
        if unsafe { libc::getuid() } != 0 {
            return Err("not root".into());
        }
        for bin in [
            "/usr/sbin/munged",
            "/usr/sbin/slurmctld",
            "/usr/sbin/slurmd",
            "/usr/bin/sbatch",
        ] {
            if !Path::new(bin).exists() {
                return Err(format!(
                    "{bin} is not installed (apt-get install slurm-wlm munge)"
                ));
            }
        }
        for sub in ["state", "spool", "log", "run"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        // munged, ours: own key, socket, pid and log.
        let key: Vec<u8> = (0..1024).map(|i| (i * 7919 % 251) as u8 ^ 0x5a).collect();
        std::fs::write(dir.join("munge.key"), key).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir.join("munge.key"),
            std::fs::Permissions::from_mode(0o400),
        )
        .unwrap();
        let socket = dir.join("munge.sock");
        let munged = Command::new("/usr/sbin/munged")
            .arg("--force")
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--key-file={}", dir.join("munge.key").display()))
            .arg(format!(
                "--pid-file={}",
                dir.join("run/munged.pid").display()
            ))
            .arg(format!(
                "--log-file={}",
                dir.join("log/munged.log").display()
            ))
            .arg(format!("--seed-file={}", dir.join("munged.seed").display()))
            .status()
            .map_err(|e| format!("munged: {e}"))?;
        if !munged.success() {
            return Err(format!("munged exited with {munged}"));
        }
        let port = || {
            TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let (ctld, slurmd) = (port(), port());
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let d = dir.display();
        let conf = dir.join("slurm.conf");
        std::fs::write(
            &conf,
            format!(
                "ClusterName=tlcaptest\n\
                 SlurmctldHost=localhost(127.0.0.1)\n\
                 SlurmctldPort={ctld}\nSlurmdPort={slurmd}\n\
                 SlurmUser=root\nSlurmdUser=root\n\
                 AuthType=auth/munge\nAuthInfo=socket={}\n\
                 StateSaveLocation={d}/state\nSlurmdSpoolDir={d}/spool\n\
                 SlurmctldPidFile={d}/run/slurmctld.pid\nSlurmdPidFile={d}/run/slurmd.pid\n\
                 SlurmctldLogFile={d}/log/slurmctld.log\nSlurmdLogFile={d}/log/slurmd.log\n\
                 ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n\
                 SelectType=select/cons_tres\nSelectTypeParameters=CR_CPU\n\
                 JobAcctGatherType=jobacct_gather/none\n\
                 AccountingStorageType=accounting_storage/none\n\
                 MpiDefault=none\nReturnToService=2\nMinJobAge=600\n\
                 NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=4000 State=UNKNOWN\n\
                 PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP\n",
                socket.display()
            ),
        )
        .unwrap();
        let cluster = Cluster {
            dir: dir.to_path_buf(),
            conf,
        };
        for (daemon, args) in [
            ("/usr/sbin/slurmctld", vec![]),
            ("/usr/sbin/slurmd", vec!["-N", "localhost"]),
        ] {
            let status = Command::new(daemon)
                .arg("-f")
                .arg(&cluster.conf)
                .args(args)
                .status()
                .map_err(|e| format!("{daemon}: {e}"))?;
            if !status.success() {
                return Err(format!("{daemon} exited with {status}: {}", cluster.logs()));
            }
        }
        let start = Instant::now();
        loop {
            let state = cluster.run("sinfo", &["-h", "-o", "%t"]);
            if state.trim() == "idle" {
                return Ok(cluster);
            }
            if start.elapsed() > Duration::from_secs(60) {
                return Err(format!(
                    "the node never came up ({state}): {}",
                    cluster.logs()
                ));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// A Slurm command against this cluster; its stdout.
    fn run(&self, cmd: &str, args: &[&str]) -> String {
        let out = Command::new(cmd)
            .args(args)
            .env("SLURM_CONF", &self.conf)
            .output()
            .unwrap_or_else(|e| panic!("{cmd}: {e}"));
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    /// The daemons' and the jobs' last log lines, for failure messages.
    fn logs(&self) -> String {
        let mut files: Vec<PathBuf> = ["slurmctld.log", "slurmd.log", "munged.log"]
            .iter()
            .map(|f| self.dir.join("log").join(f))
            .collect();
        if let Ok(d) = std::fs::read_dir(self.dir.parent().unwrap()) {
            files.extend(
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "out")),
            );
        }
        let mut out = String::new();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| !l.starts_with("epoch") && !l.starts_with("compute"))
                .collect();
            let tail = &lines[lines.len().saturating_sub(8)..];
            out += &format!("--- {}\n{}\n", f.display(), tail.join("\n"));
        }
        out
    }

    /// `scontrol show job ID` as one line of `Key=Value` fields.
    fn job(&self, id: &str) -> String {
        self.run("scontrol", &["-o", "show", "job", id])
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("scancel")
            .env("SLURM_CONF", &self.conf)
            .args(["--full", "--user=root"])
            .status();
        for pid in ["slurmd.pid", "slurmctld.pid", "munged.pid"] {
            let Ok(text) = std::fs::read_to_string(self.dir.join("run").join(pid)) else {
                continue;
            };
            if let Ok(pid) = text.trim().parse::<i32>() {
                // SAFETY: a signal to a process this test started.
                unsafe { libc::kill(pid, libc::SIGTERM) };
                let start = Instant::now();
                while unsafe { libc::kill(pid, 0) } == 0
                    && start.elapsed() < Duration::from_secs(10)
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

fn experiment(dir: &Path, name: &str, frozen_epochs: u32) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join(format!("{name}.yaml")),
        format!(
            "name: {name}\ndata: {{ dir: ../data, image_size: 32, batch_size: 8 }}\n\
             model: {{ backbone: small_cnn }}\nfrozen: {{ epochs: {frozen_epochs} }}\n\
             finetune: {{ epochs: 0 }}\ndevice: cpu\nseed: 5\n"
        ),
    )
    .unwrap();
}

/// The one run folder of experiment `name`, once it exists.
fn run_folder(runs: &Path, name: &str) -> Option<PathBuf> {
    std::fs::read_dir(runs.join(name))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("config.yaml").is_file())
}

fn summary(run: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).ok()?).ok()
}

fn status(run: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(run.join("status.json")).ok()?).ok()
}

/// Waits up to `limit` for `done`, failing with `what` and the cluster's view.
fn wait(cluster: &Cluster, what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < limit,
            "timed out waiting for {what}\n{}\n{}\n{}",
            cluster.run("squeue", &["-a"]),
            cluster.run("scontrol", &["-o", "show", "job"]),
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn the_slurm_array_runs_requeues_is_steered_and_attached() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = match Cluster::start(&dir.path().join("slurm")) {
        Ok(c) => c,
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI must run the Slurm test, but Slurm cannot be started: {why}")
        }
        Err(why) => {
            eprintln!("slurm test not run: {why}");
            return;
        }
    };
    let started = Instant::now();
    let root = dir.path();
    util::make_images(&root.join("data"), &["left", "right"], 16, 32);
    let (array, alone, runs) = (root.join("array"), root.join("alone"), root.join("runs"));
    experiment(&array, "a", 3);
    experiment(&array, "b", 20000);
    experiment(&alone, "long", 2500);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/slurm/tlcap-array.sbatch");
    let sbatch = |experiments: &Path, extra: &[&str]| -> String {
        let mut args = vec![
            "--parsable".to_string(),
            "--cpus-per-task=1".into(),
            "--mem=100".into(),
            "--gres=none".into(),
            format!("--output={}/slurm-%A_%a.out", root.display()),
            format!(
                "--export=ALL,EXPERIMENTS={},RUNS={},TLCAP={}",
                experiments.display(),
                runs.display(),
                env!("CARGO_BIN_EXE_tlcap-tui")
            ),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(script.display().to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = cluster.run("sbatch", &args);
        let id = out.trim().split(';').next().unwrap_or("").to_string();
        assert!(id.parse::<u64>().is_ok(), "sbatch: {out}");
        id
    };
    // `long` first, on its own with a 1-minute limit and TERM 50 s before it.
    let long_job = sbatch(&alone, &["--array=0", "--time=1", "--signal=B:TERM@50"]);
    let array_job = sbatch(&array, &["--array=0-1", "--time=10"]);

    // The control file reaches the running task: pause, then resume.
    let long = {
        let mut found = None;
        wait(
            &cluster,
            "long's run folder",
            Duration::from_secs(60),
            || {
                found = run_folder(&runs, "long").filter(|r| r.join("status.json").is_file());
                found.is_some()
            },
        );
        found.unwrap()
    };
    tlcap::train::control::append(&long, &tlcap::train::Command::Pause).unwrap();
    wait(
        &cluster,
        "the pause to reach the task",
        Duration::from_secs(20),
        || status(&long).is_some_and(|s| s["state"] == "paused"),
    );
    tlcap::train::control::append(&long, &tlcap::train::Command::Resume).unwrap();
    wait(
        &cluster,
        "the resume to reach the task",
        Duration::from_secs(20),
        || status(&long).is_some_and(|s| s["state"] == "running"),
    );

    // `a` completes; then `b` runs and is cancelled: stopped, not lost.
    let mut b = None;
    wait(
        &cluster,
        "a to finish and b to run",
        Duration::from_secs(180),
        || {
            b = run_folder(&runs, "b").filter(|r| {
                std::fs::read_to_string(r.join("metrics.jsonl"))
                    .is_ok_and(|t| t.lines().count() >= 1)
            });
            b.is_some()
        },
    );
    let b = b.unwrap();
    let a = run_folder(&runs, "a").expect("a ran");
    assert_eq!(summary(&a).expect("a finished")["reason"], "completed");
    cluster.run("scancel", &[&format!("{array_job}_1")]);
    wait(&cluster, "b's stop", Duration::from_secs(60), || {
        summary(&b).is_some()
    });
    assert_eq!(summary(&b).unwrap()["reason"], "stopped");
    // Cancelled stays cancelled: the script does not requeue it.
    let b_task = format!("{array_job}_1");
    wait(&cluster, "b's task to end", Duration::from_secs(60), || {
        cluster.job(&b_task).contains("JobState=CANCELLED")
    });
    std::thread::sleep(Duration::from_secs(2));
    let job = cluster.job(&b_task);
    assert!(
        job.contains("Restarts=0"),
        "a cancelled task was requeued: {job}"
    );

    // Slurm's TERM before the limit: `long` stops with everything on disk and
    // requeues itself; then its next attempt (given time) resumes the same folder.
    wait(
        &cluster,
        "Slurm to stop long",
        Duration::from_secs(120),
        || summary(&long).is_some_and(|s| s["stopped_by"] == "SIGTERM"),
    );
    let stopped_at = summary(&long).unwrap()["epochs"].as_u64().unwrap();
    assert!(long.join("stopped.safetensors").is_file() || long.join("last.safetensors").is_file());
    let task = format!("{long_job}_0");
    wait(
        &cluster,
        "long to be requeued",
        Duration::from_secs(60),
        || {
            let job = cluster.job(&task);
            job.contains("Restarts=1") || job.contains("JobState=PENDING")
        },
    );
    // Slurm holds a requeued job a while (its old credential is revoked by the second:
    // a start within that second fails); release it after 3 s, with time to finish.
    std::thread::sleep(Duration::from_secs(3));
    cluster.run(
        "scontrol",
        &[
            "update",
            &format!("JobId={task}"),
            "TimeLimit=10",
            "StartTime=now",
        ],
    );
    // Meanwhile attach sees the three: a done, b stopped, long stopped or running.
    let mut app = App::attached(runs.clone());
    let (tx, rx) = flume::unbounded();
    let poller = tlcap::dashboard::Poller::start(runs.clone(), tx);
    // The second attempt, once it runs past the stop, is told through its control file
    // to end 20 epochs later: a `set` reaches a requeued task, and the test stays short
    // however busy the machine is.
    let first_pid = status(&long).unwrap()["pid"].clone();
    let mut resumed_at = 0;
    wait(
        &cluster,
        "long's second attempt to run",
        Duration::from_secs(120),
        || {
            let st = status(&long);
            resumed_at = st.as_ref().map_or(0, |s| s["epoch"].as_u64().unwrap_or(0));
            st.is_some_and(|s| s["pid"] != first_pid && s["state"] == "running")
                && resumed_at > stopped_at + 1
        },
    );
    let total = resumed_at + 20;
    tlcap::train::control::append(
        &long,
        &tlcap::train::Command::Set {
            settings: serde_json::json!({"frozen": {"epochs": total}}),
        },
    )
    .unwrap();
    wait(
        &cluster,
        "long's second attempt to finish",
        Duration::from_secs(240),
        || {
            while let Ok(ev) = rx.try_recv() {
                update(&mut app, ev);
            }
            summary(&long).is_some_and(|s| s["reason"] == "completed")
        },
    );
    std::thread::sleep(tlcap::dashboard::ATTACH_POLL * 2);
    while let Ok(ev) = rx.try_recv() {
        update(&mut app, ev);
    }
    drop(poller);
    let shown = |name: &str| {
        app.entries
            .iter()
            .find(|e| e.path.to_string_lossy().contains(&format!("/{name}/")))
            .and_then(|e| e.run.as_ref())
            .map(|r| r.status.clone())
    };
    use tlcap::train::EndReason;
    assert_eq!(shown("a"), Some(RunStatus::Done(EndReason::Completed)));
    assert_eq!(shown("b"), Some(RunStatus::Done(EndReason::Stopped)));
    assert_eq!(shown("long"), Some(RunStatus::Done(EndReason::Completed)));
    // The resumed folder: every epoch once, in order, past the stop.
    let epochs: Vec<u32> = tlcap::train::run_dir::read_metrics(&long)
        .unwrap()
        .iter()
        .map(|m| m.epoch)
        .collect();
    assert_eq!(epochs, (1..=total as u32).collect::<Vec<u32>>());
    assert!(stopped_at < total);
    let job = cluster.job(&task);
    assert!(job.contains("Restarts=1"), "{job}");
    eprintln!(
        "slurm test: {:.0} s with the cluster up (long stopped by Slurm after {stopped_at} epochs, \
         resumed, told to end at {total})",
        started.elapsed().as_secs_f64()
    );
}
