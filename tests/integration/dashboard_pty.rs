//! End to end: the real binary in a pseudo-terminal (portable-pty), its screen read
//! through a vt100 parser. Start a run, see an epoch row, press u, see fine-tuning,
//! quit with confirmation; the terminal is restored and the run folder holds the
//! epochs shown. SIGTERM restores the terminal too.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use image::{Rgb, RgbImage};
use portable_pty::{native_pty_system, CommandBuilder, PtySize};

const ROWS: u16 = 30;
const COLS: u16 = 100;

fn make_data(root: &Path) {
    for (c, name) in ["left", "right"].iter().enumerate() {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..24u32 {
            let img = RgbImage::from_fn(32, 32, |x, y| {
                let on = if c == 0 { x < 16 } else { x >= 16 };
                let v = if on { 200 } else { 40 } + ((x * 7 + y * 3 + i) % 30) as u8;
                Rgb([v, v, v])
            });
            img.save(dir.join(format!("{i}.png"))).unwrap();
        }
    }
}

struct Session {
    child: Box<dyn portable_pty::Child + Send + Sync>,
    writer: Box<dyn Write + Send>,
    screen: Arc<Mutex<vt100::Parser>>,
    raw: Arc<Mutex<Vec<u8>>>,
}

impl Session {
    fn start(dir: &Path) -> Session {
        Session::start_with(dir, &[])
    }

    /// Starts the dashboard with these extra environment variables.
    fn start_with(dir: &Path, env: &[(&str, &str)]) -> Session {
        let pair = native_pty_system()
            .openpty(PtySize {
                rows: ROWS,
                cols: COLS,
                pixel_width: 0,
                pixel_height: 0,
            })
            .unwrap();
        let mut cmd = CommandBuilder::new(env!("CARGO_BIN_EXE_tlcap-tui"));
        cmd.arg(dir.join("experiments"));
        cmd.arg("--runs");
        cmd.arg(dir.join("runs"));
        cmd.env("TERM", "xterm-256color");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.cwd(dir);
        let child = pair.slave.spawn_command(cmd).unwrap();
        drop(pair.slave);
        let mut reader = pair.master.try_clone_reader().unwrap();
        let writer = pair.master.take_writer().unwrap();
        let screen = Arc::new(Mutex::new(vt100::Parser::new(ROWS, COLS, 0)));
        let raw = Arc::new(Mutex::new(Vec::new()));
        let (s, r) = (screen.clone(), raw.clone());
        std::thread::spawn(move || {
            let _master = pair.master; // keep the pty open while reading
            let mut buf = [0u8; 8192];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                s.lock().unwrap().process(&buf[..n]);
                r.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Session {
            child,
            writer,
            screen,
            raw,
        }
    }

    fn contents(&self) -> String {
        self.screen.lock().unwrap().screen().contents()
    }

    fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let text = self.contents();
            if pred(&text) {
                return text;
            }
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "timed out waiting for {what}:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn press(&mut self, keys: &str) {
        self.writer.write_all(keys.as_bytes()).unwrap();
        self.writer.flush().unwrap();
    }

    fn wait_exit(&mut self) -> portable_pty::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(200)); // let the reader drain
                return status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the dashboard did not exit"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last thing the program did to the terminal was to leave the alternate
    /// screen and show the cursor.
    fn assert_restored(&self) {
        let raw = self.raw.lock().unwrap();
        let text = String::from_utf8_lossy(&raw);
        let entered = text
            .rfind("\x1b[?1049h")
            .expect("entered the alternate screen");
        let left = text
            .rfind("\x1b[?1049l")
            .expect("left the alternate screen");
        assert!(left > entered, "alternate screen not left at exit");
        assert!(!self.screen.lock().unwrap().screen().alternate_screen());
    }
}

fn setup(frozen_epochs: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    make_data(&dir.path().join("data"));
    std::fs::create_dir_all(dir.path().join("experiments")).unwrap();
    std::fs::write(
        dir.path().join("experiments/pty.yaml"),
        format!(
            "data: {{ dir: ../data, image_size: 32, batch_size: 4 }}\nmodel: {{ backbone: small_cnn }}\n\
             frozen: {{ epochs: {frozen_epochs} }}\nfinetune: {{ epochs: 200, lr: 1.0e-4 }}\ndevice: cpu\n"
        ),
    )
    .unwrap();
    dir
}

#[test]
fn start_unfreeze_quit_in_a_real_terminal() {
    let dir = setup(200);
    let mut s = Session::start(dir.path());
    s.wait_for("the experiment list", |t| {
        t.contains("pty") && t.contains("idle")
    });
    s.press("s");
    s.wait_for("an epoch row", |t| t.contains("frozen   0."));
    s.press("u");
    let screen = s.wait_for("the fine-tune phase", |t| {
        t.contains("phase finetune") && t.contains("finetune 0.")
    });
    assert!(screen.contains("running"));
    s.press("q");
    let shown = s.wait_for("the quit confirmation", |t| t.contains("Quit and stop it?"));
    // Epoch numbers visible in the table when quitting.
    let shown_epochs: Vec<u32> = shown
        .lines()
        .filter(|l| l.contains("frozen   0.") || l.contains("finetune 0."))
        .filter_map(|l| {
            let cell = l
                .split('│')
                .find(|c| c.contains("frozen   0.") || c.contains("finetune 0."))?;
            cell.split_whitespace()
                .next()?
                .trim_end_matches(['*', '!'])
                .parse()
                .ok()
        })
        .collect();
    assert!(!shown_epochs.is_empty(), "{shown}");
    s.press("y");
    let status = s.wait_exit();
    assert!(status.success(), "{status:?}");
    s.assert_restored();
    // The run folder holds every epoch shown.
    let runs = dir.path().join("runs/pty");
    let run = std::fs::read_dir(&runs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let saved: Vec<u32> = tlcap::train::run_dir::read_metrics(&run)
        .unwrap()
        .iter()
        .map(|m| m.epoch)
        .collect();
    for e in shown_epochs {
        assert!(saved.contains(&e), "epoch {e} shown but not in {saved:?}");
    }
    assert!(run.join("stopped.safetensors").is_file() || run.join("last.safetensors").is_file());
}

#[test]
fn sigterm_restores_the_terminal() {
    let dir = setup(200);
    let mut s = Session::start(dir.path());
    s.wait_for("the experiment list", |t| t.contains("idle"));
    s.press("s");
    s.wait_for("an epoch row", |t| t.contains("frozen   0."));
    let pid = s.child.process_id().unwrap();
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    s.wait_exit();
    s.assert_restored();
}

/// `e` hands the terminal to the editor and takes it back in a terminal that never
/// answers a cursor-position query (this pty, as tmux sometimes does after an editor):
/// the dashboard and the run go on. `p` and `x` say at once what they asked, then the
/// confirmation, and both stay in the log.
#[test]
fn the_editor_key_keeps_the_dashboard_and_the_run_and_keys_answer_at_once() {
    let dir = setup(200);
    // An editor that exits at once, as `:q` does.
    let mut s = Session::start_with(dir.path(), &[("EDITOR", "true"), ("VISUAL", "true")]);
    s.wait_for("the experiment list", |t| t.contains("idle"));
    s.press("s");
    s.wait_for("an epoch row", |t| t.contains("frozen   0."));
    s.press("p");
    let asked = Instant::now();
    s.wait_for("the pause said at once", |t| {
        t.contains("pausing at the next batch") || t.contains("paused")
    });
    assert!(asked.elapsed() < Duration::from_secs(2));
    s.wait_for("the pause confirmed", |t| t.contains("pty: paused"));
    s.press("p");
    s.wait_for("the resume confirmed", |t| t.contains("pty: resumed"));
    s.press("e");
    // Back from the editor: the screen is the dashboard's again, the run goes on.
    std::thread::sleep(Duration::from_millis(500));
    // The epoch in the header goes on.
    let epoch = |t: &str| -> u32 {
        t.split("epoch ")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    let before = epoch(&s.contents());
    s.wait_for("another epoch after the editor", |t| {
        epoch(t) > before && t.contains("running")
    });
    assert!(s.child.try_wait().unwrap().is_none(), "the dashboard ended");
    s.press("x");
    s.wait_for("the stop said at once", |t| {
        t.contains("stopping at the next batch") || t.contains("stopped")
    });
    s.wait_for("the stop confirmed", |t| t.contains("pty: stopped"));
    s.press("q");
    let status = s.wait_exit();
    assert!(status.success(), "{status:?}");
    s.assert_restored();
    let runs = dir.path().join("runs/pty");
    let run = std::fs::read_dir(&runs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["reason"], "stopped");
    assert!(summary["epochs"].as_u64().unwrap() >= 2, "{summary}");
}
