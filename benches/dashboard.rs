//! What the dashboard costs the trainer, two ways, in one run:
//! - the CPU time the dashboard loop itself uses (updates and drawing into ratatui's
//!   TestBackend), as a share of the CPU the machine offers while it runs: precise;
//! - training images/s of the same experiment headless and with the dashboard,
//!   alternated over rounds: the direct figure, but noisy on a shared machine.
//!
//! Target: under 3%.
//!
//! Run: `cargo bench --bench dashboard` (or `make bench`).

mod common;
use common::thread_cpu_seconds;

use std::path::Path;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use image::{Rgb, RgbImage};
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use tlcap::app::{App, AppEvent, FileState};
use tlcap::dashboard::{event_loop, LoopOptions};
use tlcap::train::{self, Event, Options};

const EPOCHS: u32 = 4;
const ROUNDS: u32 = 3;

fn make_data(root: &Path) {
    for (c, name) in ["a", "b"].iter().enumerate() {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..200u32 {
            let img = RgbImage::from_fn(64, 64, |x, y| {
                let on = if c == 0 { x < 32 } else { x >= 32 };
                let v = if on { 190 } else { 50 } + ((x * 7 + y * 13 + i * 5) % 40) as u8;
                Rgb([v, v, v])
            });
            img.save(dir.join(format!("{i}.png"))).unwrap();
        }
    }
}

fn mean_images_per_sec(rows: &[f64]) -> f64 {
    // The first epoch warms up allocators and caches: leave it out.
    let rest = &rows[1..];
    rest.iter().sum::<f64>() / rest.len() as f64
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    make_data(&dir.path().join("data"));
    let file = dir.path().join("bench.yaml");
    std::fs::write(
        &file,
        format!(
            "data: {{ dir: data, image_size: 64, batch_size: 16 }}\nmodel: {{ backbone: small_cnn }}\n\
             frozen: {{ epochs: {EPOCHS} }}\nfinetune: {{ epochs: 0 }}\ndevice: cpu\n"
        ),
    )
    .unwrap();
    let exp = tlcap::config::load_file(&file).unwrap();
    let runs = dir.path().join("runs");
    let mut headless = Vec::new();
    let mut dashboard = Vec::new();
    let (mut ui_cpu, mut ui_wall) = (0.0, 0.0);
    // Alternate to spread the machine's noise over both.
    for round in 0..ROUNDS {
        eprintln!("round {} of {ROUNDS}: headless", round + 1);
        let handle = train::spawn(
            exp.clone(),
            Options {
                runs_root: runs.clone(),
                autostart: true,
                ..Default::default()
            },
        );
        for e in handle.events.iter() {
            if let Event::EpochEnd(m) = e {
                headless.push(m.images_per_sec);
            }
        }
        handle.join();
        eprintln!("round {} of {ROUNDS}: dashboard", round + 1);
        let app = App::new(vec![(
            file.clone(),
            FileState::Valid(Box::new(exp.clone())),
        )]);
        let mut terminal = Terminal::new(TestBackend::new(120, 40)).unwrap();
        let start = AppEvent::Key(KeyEvent::new(KeyCode::Char('s'), KeyModifiers::NONE));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let options = LoopOptions {
            keys: false,
            script: vec![start],
            quit_when_done: true,
        };
        let (cpu0, wall0) = (thread_cpu_seconds(), std::time::Instant::now());
        runtime
            .block_on(event_loop(
                &mut terminal,
                app,
                dir.path(),
                runs.clone(),
                options,
            ))
            .unwrap();
        ui_cpu += thread_cpu_seconds() - cpu0;
        ui_wall += wall0.elapsed().as_secs_f64();
        let run = std::fs::read_dir(runs.join("bench"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .max()
            .unwrap();
        let rows = tlcap::train::run_dir::read_metrics(&run).unwrap();
        dashboard.extend(rows.iter().map(|m| m.images_per_sec));
    }
    let h = mean_images_per_sec(&headless);
    let d = mean_images_per_sec(&dashboard);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    println!("small_cnn 64 px, 320 training images x {EPOCHS} epochs x {ROUNDS} rounds, CPU");
    println!(
        "dashboard loop CPU: {:.2} s over {:.1} s on {cores} cores = {:.2}% of the machine (target: under 3%)",
        ui_cpu,
        ui_wall,
        ui_cpu / (ui_wall * cores) * 100.0
    );
    println!("headless   {h:8.1} images/s (training)");
    println!("dashboard  {d:8.1} images/s (training, loop drawing to a 120x40 TestBackend)");
    println!(
        "throughput difference: {:+.1}% (noisy on a shared machine: compare the CPU share)",
        (h - d) / h * 100.0
    );
}
