//! `export` and `predict` on real runs: a TorchScript model loaded back with
//! `tch::CModule` gives the same probabilities as `predict` on the run folder (max
//! difference ≤ 1e-5, batch sizes other than the traced one), for a small CNN and for
//! MobileNetV2 with its ImageNet weights; the safetensors export and its card;
//! `predict` on folders, with `--json` and `--threshold`, from exported models; both
//! commands' one wording for a run where no epoch has finished yet.

use std::path::{Path, PathBuf};

use crate::util::{make_images, tlcap};
use tch::{Kind, Tensor};
use tlcap::export::ModelCard;
use tlcap::predict::Predictor;

/// Trains `yaml` headless into `root/runs`; returns the run folder.
fn train(root: &Path, yaml: &str) -> PathBuf {
    let file = root.join("exp.yaml");
    std::fs::write(&file, yaml).unwrap();
    let runs = root.join("runs");
    let (ok, _, err) = tlcap(&[
        "run",
        file.to_str().unwrap(),
        "--runs",
        runs.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let exp_dir = std::fs::read_dir(&runs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::read_dir(exp_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
}

/// The validation images of a run, decoded as `predict` decodes them.
fn val_batch(run: &Path, predictor: &Predictor) -> (Vec<PathBuf>, Tensor) {
    let split: tlcap::train::run_dir::Split =
        serde_json::from_str(&std::fs::read_to_string(run.join("split.json")).unwrap()).unwrap();
    let files: Vec<PathBuf> = split.val.iter().map(|(p, _)| p.clone()).take(5).collect();
    let size = predictor.experiment.data.image_size;
    let per = 3 * (size.height * size.width) as usize;
    let mut buf = vec![0u8; per * files.len()];
    for (f, dst) in files.iter().zip(buf.chunks_mut(per)) {
        let decoding = tlcap::data::Decoding::of(&predictor.experiment.data);
        tlcap::data::decode_into(f, &decoding, dst).unwrap();
    }
    let x = Tensor::from_slice(&buf).view([
        files.len() as i64,
        3,
        size.height as i64,
        size.width as i64,
    ]);
    (files, x)
}

/// TorchScript export of `run`, loaded back: its probabilities against `predict`'s.
fn torchscript_matches_predict(run: &Path, dir: &Path) -> f64 {
    let model = dir.join("model.pt");
    let (ok, out, err) = tlcap(&[
        "export",
        run.to_str().unwrap(),
        "--format",
        "torchscript",
        "-o",
        model.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("model.json"), "{out}");
    let card = ModelCard::read_for(&model).unwrap();
    let predictor = Predictor::load(run).unwrap();
    assert_eq!(card.classes, predictor.classes);
    assert_eq!(card.epoch, predictor.epoch, "best by default");
    assert!(card.metrics.is_some());
    let module = tch::CModule::load(&model).unwrap();
    let (files, x) = val_batch(run, &predictor);
    // Enough copies for more images than the frozen part takes in one pass on a CPU.
    let n = files.len() as i64;
    // (Twice the float32 pass: a bf16 frozen part takes twice as many images.)
    let per_pass = 2 * tlcap::model::classifier::CPU_PASS_PIXELS / (x.size()[2] * x.size()[3]);
    let copies = n * (per_pass / n + 1);
    let batch = Tensor::cat(&vec![&x; (copies / n) as usize], 0);
    let scripted = tch::no_grad(|| module.forward_ts(&[&batch])).unwrap();
    assert_eq!(scripted.kind(), Kind::Float);
    assert_eq!(scripted.size()[0], copies);
    let native = predictor.predict(&files);
    let mut max = 0.0f64;
    for (i, p) in (0..copies as usize).map(|i| (i, &native[i % files.len()])) {
        let p = p.as_ref().unwrap();
        for (c, want) in p.probabilities.iter().enumerate() {
            let got = scripted.double_value(&[i as i64, c as i64]);
            // f64::max ignores NaN: check the values themselves first.
            assert!(got.is_finite() && want.is_finite(), "{got} {want}");
            max = max.max((got - want).abs());
        }
    }
    assert!(max <= 1e-5, "TorchScript and predict differ by {max}");
    max
}

#[test]
fn small_cnn_exports_that_serve_like_predict() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_images(&data, &["left", "right"], 20, 40);
    let run = train(
        dir.path(),
        &format!(
            "data: {{ dir: {}, image_size: 40, batch_size: 8 }}\nmodel: {{ backbone: small_cnn }}\n\
             frozen: {{ epochs: 2 }}\nfinetune: {{ epochs: 1 }}\nseed: 3\n",
            data.display()
        ),
    );
    let max = torchscript_matches_predict(&run, dir.path());
    eprintln!("small_cnn: TorchScript vs predict, max difference {max:e}");

    // report: the tables printed and in report.md, with its three charts.
    let (ok, out, err) = tlcap(&["report", run.to_str().unwrap()]);
    assert!(ok, "{err}");
    let md = std::fs::read_to_string(run.join("report.md")).unwrap();
    for needle in [
        "## Epochs",
        "| true \\ predicted | left | right | precision | recall | F1 | images |",
        "## Most badly predicted validation images",
        "![confusion matrix](confusion.svg)",
    ] {
        assert!(
            md.contains(needle) && out.contains(needle),
            "{needle}:\n{md}"
        );
    }
    assert_eq!(md.matches("| frozen |").count(), 2, "{md}");
    // Each epoch row shows the balanced accuracy of its confusion matrix.
    assert!(md.contains("| val_acc | val_bal_acc | val_auc |"), "{md}");
    let metrics = tlcap::train::run_dir::read_metrics(&run).unwrap();
    let first = &metrics[0];
    assert!(
        md.contains(&format!(
            "| {:.4} | {:.4} |",
            first.val_accuracy,
            first.confusion.balanced_accuracy()
        )),
        "{md}"
    );
    assert!(
        out.contains("(with accuracy.svg, loss.svg, lr.svg, confusion.svg)"),
        "{out}"
    );
    for chart in ["accuracy.svg", "loss.svg", "lr.svg", "confusion.svg"] {
        let svg = std::fs::read_to_string(run.join(chart)).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{chart}"
        );
    }

    // predict on the exported TorchScript model, a folder, JSON lines.
    let model = dir.path().join("model.pt");
    let (ok, out, err) = tlcap(&[
        "predict",
        model.to_str().unwrap(),
        data.join("right").to_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 20, "every image of the folder");
    let (_, native, _) = tlcap(&[
        "predict",
        run.to_str().unwrap(),
        data.join("right").to_str().unwrap(),
        "--json",
    ]);
    let native: Vec<serde_json::Value> = native
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (a, b) in lines.iter().zip(&native) {
        assert_eq!(a["class"], b["class"]);
        let (pa, pb) = (
            a["probability"].as_f64().unwrap(),
            b["probability"].as_f64().unwrap(),
        );
        assert!((pa - pb).abs() <= 1e-5, "{a} {b}");
        assert!(a["probabilities"]["left"].is_number() && a["probabilities"]["right"].is_number());
    }
    // --threshold 0: everything is the second class; 1.0 nearly nothing is.
    let (ok, out, _) = tlcap(&[
        "predict",
        run.to_str().unwrap(),
        data.to_str().unwrap(),
        "--threshold",
        "0",
    ]);
    assert!(ok);
    assert_eq!(out.lines().count(), 40);
    assert!(
        out.lines().all(|l| l.split('\t').nth(1) == Some("right")),
        "{out}"
    );
    let (ok, _, err) = tlcap(&[
        "predict",
        run.to_str().unwrap(),
        data.to_str().unwrap(),
        "--threshold",
        "1.5",
    ]);
    assert!(!ok && err.contains("between 0 and 1"), "{err}");

    // The safetensors export: the card in its metadata and beside it; predict reads it
    // and answers exactly as the run folder does.
    let weights = dir.path().join("model.safetensors");
    let (ok, _, err) = tlcap(&[
        "export",
        run.to_str().unwrap(),
        "--format",
        "safetensors",
        "--checkpoint",
        "last",
        "-o",
        weights.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let bytes = std::fs::read(&weights).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let card: ModelCard =
        serde_json::from_str(&meta.metadata().as_ref().unwrap()["tlcap_model"]).unwrap();
    assert_eq!(card, ModelCard::read_for(&weights).unwrap());
    assert_eq!(card.epoch, 3, "the last epoch");
    let (ok, exported, err) =
        tlcap(&["predict", weights.to_str().unwrap(), data.to_str().unwrap()]);
    assert!(ok, "{err}");
    let (_, from_run, _) = tlcap(&[
        "predict",
        run.join("last.safetensors").to_str().unwrap(),
        data.to_str().unwrap(),
    ]);
    assert_eq!(exported, from_run);
}

#[test]
fn mobilenet_v2_torchscript_serves_like_predict() {
    tlcap::model::imagenet_weights(tlcap::config::Backbone::MobilenetV2)
        .expect("run `make setup` first");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_images(&data, &["left", "right"], 10, 64);
    let run = train(
        dir.path(),
        &format!(
            "data: {{ dir: {}, image_size: 64, batch_size: 8 }}\nmodel: {{ backbone: mobilenet_v2 }}\n\
             frozen: {{ epochs: 1 }}\nfinetune: {{ epochs: 1, unfreeze_last: 4 }}\ndevice: cpu\n",
            data.display()
        ),
    );
    let max = torchscript_matches_predict(&run, dir.path());
    eprintln!("mobilenet_v2: TorchScript vs predict, max difference {max:e}");
}

/// A run folder where no epoch has finished yet (its `config.yaml`, no checkpoint):
/// `predict` and `export` refuse it in the same words, and write nothing.
#[test]
fn predict_and_export_say_alike_that_no_epoch_finished() {
    let dir = tempfile::tempdir().unwrap();
    let exp = crate::util::experiment(dir.path(), "model: { backbone: small_cnn }\n");
    let run_dir = tlcap::train::run_dir::RunDir::create(&dir.path().join("runs"), &exp).unwrap();
    let run = run_dir.path.clone();
    assert!(run.join("config.yaml").is_file());
    let images = dir.path().to_str().unwrap();
    let model = dir.path().join("m.pt");
    // The line that says why, from a failed command's stderr.
    let why = |(ok, _, err): (bool, String, String)| {
        assert!(!ok, "{err}");
        err.lines()
            .find(|l| l.contains("no epoch finished there yet"))
            .unwrap_or_else(|| panic!("{err}"))
            .to_string()
    };
    let said = |file: &str| {
        format!(
            "error: {} has no {file}: no epoch finished there yet",
            run.display()
        )
    };

    // The run folder: predict takes best, else last; export --checkpoint last.
    let predicted = why(tlcap(&["predict", run.to_str().unwrap(), images]));
    let exported = why(tlcap(&[
        "export",
        run.to_str().unwrap(),
        "--checkpoint",
        "last",
        "-o",
        model.to_str().unwrap(),
    ]));
    assert_eq!(predicted, said("last.safetensors"));
    assert_eq!(exported, predicted);

    // export's default (best), and predict on the best checkpoint's path.
    let exported = why(tlcap(&[
        "export",
        run.to_str().unwrap(),
        "-o",
        model.to_str().unwrap(),
    ]));
    let predicted = why(tlcap(&[
        "predict",
        run.join("best.safetensors").to_str().unwrap(),
        images,
    ]));
    assert_eq!(exported, said("best.safetensors"));
    assert_eq!(predicted, exported);
    assert!(!model.exists() && !dir.path().join("m.json").exists());
}

/// `evaluate`: a run trained on train/ and val/ folders scored once on the test/
/// folder beside them: the figures equal a hand computation from `predict --json` on
/// the same images, an unreadable test image is skipped and counted, test.json is
/// written and `report` shows it; a CSV's test rows score the same way; without a
/// test set the error says how to give one.
#[test]
fn evaluate_scores_the_held_out_test_set_as_predict_answers() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let data = root.join("data");
    make_images(&data.join("train"), &["left", "right"], 16, 32);
    make_images(&data.join("val"), &["left", "right"], 6, 32);
    make_images(&data.join("test"), &["left", "right"], 10, 32);
    std::fs::write(data.join("test/right/broken.png"), b"not a png").unwrap();
    let run = train(
        root,
        "data: { dir: data, image_size: 32 }\nmodel: { backbone: small_cnn }\n\
         frozen: { epochs: 2 }\nfinetune: { epochs: 0 }\ndevice: cpu\nseed: 4\n",
    );
    let run_s = run.to_str().unwrap();
    let (ok, out, err) = tlcap(&["evaluate", run_s, "--json"]);
    assert!(ok, "{err}");
    let scores: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(scores["images"], 20);
    assert_eq!(scores["skipped"].as_array().unwrap().len(), 1);

    // By hand, from predict's answers on the same folder.
    let (_, answers, _) = tlcap(&[
        "predict",
        run_s,
        data.join("test").to_str().unwrap(),
        "--json",
    ]);
    let (mut right, mut loss, mut n) = (0usize, 0.0f64, 0usize);
    let mut confusion = [[0u64; 2]; 2];
    for line in answers.lines() {
        let a: serde_json::Value = serde_json::from_str(line).unwrap();
        if a.get("error").is_some() {
            continue;
        }
        let path = a["path"].as_str().unwrap();
        let truth = if path.contains("/left/") {
            "left"
        } else {
            "right"
        };
        let t = usize::from(truth == "right");
        let p = usize::from(a["class"] == "right");
        confusion[t][p] += 1;
        right += usize::from(t == p);
        loss -= a["probabilities"][truth].as_f64().unwrap().max(1e-12).ln();
        n += 1;
    }
    assert_eq!(n, 20);
    let close = |a: &serde_json::Value, b: f64| (a.as_f64().unwrap() - b).abs() < 1e-9;
    assert!(close(&scores["accuracy"], right as f64 / 20.0), "{scores}");
    assert!(close(&scores["loss"], loss / 20.0), "{scores}");
    let counts: Vec<u64> = scores["confusion"]["counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(counts, confusion.concat());
    assert!(scores["auc"].as_f64().is_some());
    assert!(run.join("test.json").is_file());
    let (ok, report, err) = tlcap(&["report", run_s]);
    assert!(ok, "{err}");
    assert!(
        report.contains("Test set") && report.contains("20 images, 1 skipped"),
        "{report}"
    );

    // A CSV's test rows (paths relative to the run's data.dir).
    let csv = root.join("test.csv");
    let mut rows = String::from("path,label,split\n");
    for i in 0..10 {
        rows.push_str(&format!("test/left/{i}.png,left,test\n"));
        rows.push_str(&format!("train/right/{i}.png,right,train\n"));
    }
    std::fs::write(&csv, rows).unwrap();
    let (ok, out, err) = tlcap(&["evaluate", run_s, "--test", csv.to_str().unwrap(), "--json"]);
    assert!(ok, "{err}");
    let scores: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(scores["images"], 10, "only the test rows");

    // No test set.
    std::fs::remove_dir_all(data.join("test")).unwrap();
    let (ok, _, err) = tlcap(&["evaluate", run_s]);
    assert!(!ok);
    assert!(
        err.contains("no test set") && err.contains("--test"),
        "{err}"
    );

    // A run from a label file without a split column: its rows trained the model, so
    // they are no test set.
    let other = root.join("other");
    std::fs::create_dir_all(&other).unwrap();
    let mut rows = String::from("path,label\n");
    for i in 0..16 {
        rows.push_str(&format!(
            "train/left/{i}.png,left\ntrain/right/{i}.png,right\n"
        ));
    }
    std::fs::write(other.join("labels.csv"), rows).unwrap();
    let run = train(
        &other,
        &format!(
            "data: {{ dir: {}, labels: labels.csv, image_size: 32 }}\n\
             model: {{ backbone: small_cnn }}\nfrozen: {{ epochs: 1 }}\nfinetune: {{ epochs: 0 }}\n\
             device: cpu\n",
            data.display()
        ),
    );
    let (ok, _, err) = tlcap(&["evaluate", run.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("has no `split` column"), "{err}");
}
