//! Time from an editor's save to the dashboard's file event, for the ways editors
//! save: rename a temp file over (vim, VS Code, JetBrains), truncate and write (nano,
//! `sed -i`, shell `>`), and several writes in a row. Target: at most 300 ms.
//!
//! Run: `cargo bench --bench watch` (or `make bench`).

use std::io::Write;
use std::time::{Duration, Instant};

use tlcap::watch::FileEvent;

const TEXT: &str = "data: { dir: data }\nmodel: { backbone: small_cnn }\n";
const SAVES: usize = 15;

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let file = root.join("exp.yaml");
    std::fs::write(&file, TEXT).unwrap();
    let (tx, rx) = flume::unbounded();
    let _w = tlcap::watch::watch(&root, tx).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    println!(
        "save -> file event, {SAVES} saves each (debounce {} ms)",
        tlcap::watch::DEBOUNCE.as_millis()
    );
    type Save = fn(&std::path::Path, &str);
    let styles: [(&str, Save); 3] = [
        ("rename a temp file over", |f, t| {
            let tmp = f.with_extension("yaml.tmp");
            std::fs::write(&tmp, t).unwrap();
            std::fs::rename(&tmp, f).unwrap();
        }),
        ("truncate and write", |f, t| std::fs::write(f, t).unwrap()),
        ("several writes", |f, t| {
            let mut file = std::fs::File::create(f).unwrap();
            for chunk in t.as_bytes().chunks(8) {
                file.write_all(chunk).unwrap();
                file.flush().unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
        }),
    ];
    for (name, save) in styles {
        let mut ms = Vec::new();
        for i in 0..SAVES {
            let t = Instant::now();
            save(&file, &format!("{TEXT}seed: {i}\n"));
            loop {
                let ev = rt
                    .block_on(async {
                        tokio::time::timeout(Duration::from_secs(5), rx.recv_async()).await
                    })
                    .expect("no event within 5 s")
                    .unwrap();
                // The save is seen when the event carries its content.
                if matches!(&ev, FileEvent::Changed(p, Ok(e))
                    if *p == file && e.seed == i as u64)
                {
                    break;
                }
            }
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
            // Let trailing events of this save pass before the next one.
            std::thread::sleep(Duration::from_millis(250));
            while rx.try_recv().is_ok() {}
        }
        ms.sort_by(f64::total_cmp);
        println!(
            "{name:<26} median {:5.0} ms  max {:5.0} ms  (target <= 300 ms)",
            ms[ms.len() / 2],
            ms[ms.len() - 1]
        );
    }
}
