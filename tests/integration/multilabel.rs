//! Multi-label tasks (`task: multilabel`, or inferred from the label file): the two CSV
//! forms and every bad-row kind, the settings' checks, the positive-weighted loss on a
//! fixed batch, and a headless run on generated images with known findings that must
//! learn them, through `predict --json`, `evaluate`, `report` and `export`.

use crate::util::tlcap;
use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use tlcap::config::parse_str;
use tlcap::data::Dataset;

/// The findings a generated image may have, each drawn on its own.
const LABELS: [&str; 3] = ["bar", "left", "right"];

/// Writes `n` noisy 32x32 images under `root/img/` where each finding is present with
/// probability 0.4, independently: `left` a bright blob on the left, `right` one on
/// the right, `bar` a bright band along the top. Returns each file (relative to
/// `root`) with its findings.
fn make_findings(root: &Path, n: usize, seed: u64) -> Vec<(String, Vec<&'static str>)> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    std::fs::create_dir_all(root.join("img")).unwrap();
    let mut out = Vec::new();
    for i in 0..n {
        let has: Vec<&'static str> = LABELS.into_iter().filter(|_| rng.gen_bool(0.4)).collect();
        let mut img = RgbImage::new(32, 32);
        let jx: i64 = rng.gen_range(-2..=2);
        let jy: i64 = rng.gen_range(-2..=2);
        for (x, y, px) in img.enumerate_pixels_mut() {
            let (x, y) = (x as i64, y as i64);
            let near = |cx: i64, cy: i64| (x - cx - jx).pow(2) + (y - cy - jy).pow(2) <= 25;
            let on = (has.contains(&"left") && near(8, 18))
                || (has.contains(&"right") && near(24, 18))
                || (has.contains(&"bar") && y < 6);
            // Faint: on 100-190, off 60-150 (it takes some epochs to learn).
            let v = if on { 100 } else { 60 } + rng.gen_range(0..90u8);
            *px = Rgb([v, v, v]);
        }
        let name = format!("img/{seed}-{i}.png");
        img.save(root.join(&name)).unwrap();
        out.push((name, has));
    }
    out
}

/// `path,labels` rows with the findings joined by `|` (an empty cell: none).
fn joined_csv(rows: &[(String, Vec<&str>)]) -> String {
    let mut text = String::from("path,labels\n");
    for (path, has) in rows {
        text.push_str(&format!("{path},{}\n", has.join("|")));
    }
    text
}

fn no_progress(_: usize, _: usize) {}

fn exp(root: &Path, data: &str, extra: &str) -> tlcap::config::Experiment {
    let text = format!(
        "data: {{ dir: {}, image_size: 32, {data} }}\nmodel: {{ backbone: small_cnn }}\n{extra}",
        root.display()
    );
    parse_str(&text, &root.join("e.yaml")).unwrap()
}

/// Both CSV forms read the same findings: labels joined by `|` (the task inferred)
/// and one 0/1 column per label (in the order named); images without a finding are
/// kept and counted; the split stratifies and the report counts each label.
#[test]
fn both_label_file_forms_read_the_same_findings() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let rows = make_findings(root, 40, 1);
    std::fs::write(root.join("joined.csv"), joined_csv(&rows)).unwrap();
    let mut columns = String::from("path,right,left,bar\n");
    for (path, has) in &rows {
        let f = |l: &str| u8::from(has.contains(&l));
        columns.push_str(&format!(
            "{path},{},{},{}\n",
            f("right"),
            f("left"),
            f("bar")
        ));
    }
    std::fs::write(root.join("columns.csv"), columns).unwrap();

    let joined = Dataset::load(
        &exp(
            root,
            "labels: joined.csv, columns: { label: labels }, image_cache: off",
            "",
        ),
        &no_progress,
    )
    .unwrap();
    assert!(joined.is_multilabel());
    assert_eq!(joined.classes, ["bar", "left", "right"]);
    let by_columns = Dataset::load(
        &exp(
            root,
            "labels: columns.csv, columns: { labels: [right, left, bar] }, image_cache: off",
            "",
        ),
        &no_progress,
    )
    .unwrap();
    assert_eq!(by_columns.classes, ["right", "left", "bar"]);
    for ds in [&joined, &by_columns] {
        assert_eq!(ds.len(), 40);
        for (i, file) in ds.files.iter().enumerate() {
            let (_, has) = rows.iter().find(|(p, _)| root.join(p) == *file).unwrap();
            let mut names = ds.label_names(i);
            names.sort();
            let mut want: Vec<String> = has.iter().map(|s| s.to_string()).collect();
            want.sort();
            assert_eq!(names, want, "{}", file.display());
        }
        // The label tensor is the multi-hot float matrix.
        let y = ds.label_tensor(&[0, 1]);
        assert_eq!(y.size(), [2, 3]);
        assert_eq!(y.kind(), tch::Kind::Float);
        // Each label validates about a fifth of its images, on both sides.
        for (t, v) in ds.split_counts() {
            assert!(t > 0 && v > 0, "{:?}", ds.split_counts());
        }
    }
    let report = joined.to_string();
    for needle in ["label ", "(no label)", "multi-label"] {
        assert!(report.contains(needle), "{needle}:\n{report}");
    }
    let none = rows.iter().filter(|(_, h)| h.is_empty()).count();
    assert!(none > 0, "the generator makes images without findings");
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("(no label)") && l.trim_end().ends_with(&none.to_string())),
        "{report}"
    );
    // `task: single_label` reads `a|b` as one class name.
    let single = tlcap::data::find(&exp(
        root,
        "labels: joined.csv, columns: { label: labels }",
        "task: single_label",
    ));
    let err = single.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        err.contains("empty label"),
        "images without findings: {err}"
    );
}

/// Every bad row of a multi-label file is named with its line, all in one error; a
/// label no image has is refused; the settings' checks name the setting.
#[test]
fn bad_multilabel_rows_and_settings_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let rows = make_findings(root, 4, 2);
    let p = |i: usize| rows[i].0.clone();
    std::fs::write(
        root.join("bad.csv"),
        format!(
            "path,labels\n{},left||bar\n{},right|\n,left\n{},left\n{},right\nimg/missing.png,left\n",
            p(0),
            p(1),
            p(2),
            p(2)
        ),
    )
    .unwrap();
    let err = tlcap::data::find(&exp(
        root,
        "labels: bad.csv, columns: { label: labels }",
        "",
    ))
    .err()
    .unwrap()
    .to_string();
    for needle in [
        "line 2: an empty label in `left||bar`",
        "line 3: an empty label in `right|`",
        "line 4: empty path",
        "line 6: ",
        "is also on line 5",
        "line 7: ",
        "missing.png not found",
    ] {
        assert!(err.contains(needle), "{needle}: {err}");
    }
    std::fs::write(
        root.join("cols.csv"),
        format!("path,left,right\n{},1,maybe\n{},0,1\n", p(0), p(1)),
    )
    .unwrap();
    let err = tlcap::data::find(&exp(
        root,
        "labels: cols.csv, columns: { labels: [left, right, bar] }",
        "",
    ))
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("needs the columns `path`, `left`, `right` and `bar`"),
        "{err}"
    );
    let err = tlcap::data::find(&exp(
        root,
        "labels: cols.csv, columns: { labels: [left, right] }",
        "",
    ))
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("line 2: `right` is `maybe` (0 or 1"), "{err}");
    std::fs::write(
        root.join("zero.csv"),
        format!("path,left,right\n{},1,0\n{},0,0\n", p(0), p(1)),
    )
    .unwrap();
    let err = tlcap::data::find(&exp(
        root,
        "labels: zero.csv, columns: { labels: [left, right] }",
        "",
    ))
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("no image has the label(s) [\"right\"]"),
        "{err}"
    );

    // Settings that only the data shows wrong: a label file inferred multi-label with
    // single-label weighting or sampling, names the data lacks. `check` lists each.
    std::fs::write(
        root.join("good.csv"),
        format!("path,labels\n{},left|bar\n{},\n", p(0), p(1)),
    )
    .unwrap();
    let inferred = exp(
        root,
        "labels: good.csv, columns: { label: labels }, class_weight: balanced, sampling: balanced",
        "multilabel: { thresholds: { lft: 0.3 }, pos_weight: { rigth: 2 } }",
    );
    let problems: Vec<String> = tlcap::check::preflight(&inferred, &root.join("e.yaml"))
        .iter()
        .map(|p| p.to_string())
        .collect();
    for needle in [
        "data.class_weight weighs the classes",
        "data.sampling: balanced draws",
        "multilabel.thresholds names `lft`",
        "multilabel.pos_weight names `rigth`",
    ] {
        assert!(
            problems.iter().any(|p| p.contains(needle)),
            "{needle}: {problems:?}"
        );
    }

    // Settings: each problem names its setting and the valid range.
    let bad = |data: &str, extra: &str| {
        let text = format!(
            "data: {{ dir: {}, {data} }}\nmodel: {{ backbone: small_cnn }}\n{extra}",
            root.display()
        );
        parse_str(&text, &root.join("e.yaml"))
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default()
    };
    let labels = "labels: cols.csv, columns: { labels: [left, right] }";
    for (data, extra, needle) in [
        (
            labels,
            "multilabel: { threshold: 1.5 }",
            "threshold must be between 0 and 1",
        ),
        (
            labels,
            "multilabel: { thresholds: { left: 0 } }",
            "threshold of `left`",
        ),
        (
            labels,
            "multilabel: { pos_weight: { left: -2 } }",
            "pos_weight of `left` must be > 0",
        ),
        (
            labels,
            "multilabel: { pos_weight: sometimes }",
            "pos_weight",
        ),
        (
            "labels: cols.csv, columns: { labels: [left, right] }, class_weight: balanced",
            "",
            "multilabel.pos_weight",
        ),
        (
            "labels: cols.csv, columns: { labels: [left, right] }, sampling: balanced",
            "",
            "balanced sampling draws classes",
        ),
        ("image_size: 32", "task: multilabel", "needs a label file"),
    ] {
        let err = bad(data, extra);
        assert!(err.contains(needle), "{extra} {data}: {needle}: {err}");
    }
}

/// The training loss weighs each label's positives by its positive weight as
/// PyTorch's `BCEWithLogitsLoss(pos_weight=...)` does; the validation loss is the
/// unweighted mean; probabilities are one sigmoid per label.
#[test]
fn positive_weights_change_the_loss_as_pytorch_does() {
    use tch::{Kind, Tensor};
    let dir = tempfile::tempdir().unwrap();
    let e = exp(dir.path(), "labels: x.csv", "task: multilabel");
    let mut net =
        tlcap::model::classifier::Classifier::new_multilabel(&e, 3, tch::Device::Cpu).unwrap();
    let logits = Tensor::from_slice(&[0.5f32, -1.0, 2.0, -0.3, 0.0, 1.2]).view([2, 3]);
    let y = Tensor::from_slice(&[1.0f32, 0.0, 1.0, 0.0, 1.0, 0.0]).view([2, 3]);
    let w = [3.0, 1.0, 0.5];
    let by_hand = |weights: [f64; 3]| {
        let (x, t) = (
            Vec::<f32>::try_from(logits.view([-1])).unwrap(),
            Vec::<f32>::try_from(y.view([-1])).unwrap(),
        );
        let mut sum = 0.0;
        for i in 0..6 {
            let p = 1.0 / (1.0 + (-(x[i] as f64)).exp());
            let pw = weights[i % 3];
            sum -= pw * t[i] as f64 * p.ln() + (1.0 - t[i] as f64) * (1.0 - p).ln();
        }
        sum / 6.0
    };
    let unweighted = net.loss(&logits, &y).double_value(&[]);
    assert!((unweighted - by_hand([1.0; 3])).abs() < 1e-6);
    net.set_pos_weight(Some(&w));
    let weighted = net.train_loss(&logits, &y).double_value(&[]);
    assert!(
        (weighted - by_hand(w)).abs() < 1e-6,
        "{weighted} {}",
        by_hand(w)
    );
    assert!((net.loss(&logits, &y).double_value(&[]) - unweighted).abs() < 1e-9);
    let p = net.probabilities(&logits);
    assert!(p.allclose(&logits.sigmoid(), 1e-6, 1e-6, false));
    assert_eq!(p.size(), [2, 3]);
    let (right, made) = net.right_decisions(&logits, &y);
    // Said (logit >= 0): 1 0 1 / 0 1 1 against 1 0 1 / 0 1 0: 5 of 6.
    assert_eq!((right, made), (5, 6));
    assert_eq!(p.kind(), Kind::Float);
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Mann-Whitney AUC by counting pairs (ties a half), for the hand computation.
fn auc_by_pairs(truth: &[bool], score: &[f64]) -> f64 {
    let (mut wins, mut pairs) = (0.0, 0.0);
    for (i, &ti) in truth.iter().enumerate() {
        for (j, &tj) in truth.iter().enumerate() {
            if ti && !tj {
                pairs += 1.0;
                wins += if score[i] > score[j] {
                    1.0
                } else if score[i] == score[j] {
                    0.5
                } else {
                    0.0
                };
            }
        }
    }
    wins / pairs
}

/// A small CNN learns three findings from generated images (mean validation AUC over
/// 0.9, every label over 0.8); the rows, best-predictions.json and checkpoint carry
/// every label; `predict --json` gives every label's probability and threshold and
/// agrees with validation; `evaluate` on a test CSV equals a hand computation from
/// `predict`'s answers; `report` has the label table; the exported card says
/// multi-label with the thresholds.
#[test]
fn small_cnn_learns_findings_and_every_command_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let rows = make_findings(root, 300, 3);
    let test_rows = make_findings(root, 60, 4);
    std::fs::write(root.join("findings.csv"), joined_csv(&rows)).unwrap();
    std::fs::write(root.join("test.csv"), joined_csv(&test_rows)).unwrap();
    let yaml = "data: { dir: ., labels: findings.csv, columns: { label: labels }, image_size: 32, \
                batch_size: 16, validation_split: 0.25 }\n\
                model: { backbone: small_cnn, dropout: 0.1 }\n\
                frozen: { epochs: 10, lr: 3.0e-3 }\nfinetune: { epochs: 0 }\n\
                stall: { monitor: val_mean_auc }\n\
                multilabel: { tune_thresholds: true }\ndevice: cpu\nseed: 5\n";
    let file = root.join("findings.yaml");
    std::fs::write(&file, yaml).unwrap();
    let runs = root.join("runs");
    let (ok, out, err) = tlcap(&[
        "run",
        file.to_str().unwrap(),
        "--runs",
        runs.to_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "{err}");
    let lines = json_lines(&out);
    let note = lines
        .iter()
        .find(|l| {
            l["event"] == "note"
                && l["text"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("multi-label"))
        })
        .unwrap_or_else(|| panic!("no multi-label note: {out}"));
    assert!(
        note["text"]
            .as_str()
            .unwrap()
            .contains("positive weights in the loss: bar"),
        "{note}"
    );
    let run: PathBuf = std::fs::read_dir(runs.join("findings"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    // split.json keeps each image's labels beside the stratum it was split by.
    let split: tlcap::train::run_dir::Split =
        serde_json::from_str(&std::fs::read_to_string(run.join("split.json")).unwrap()).unwrap();
    assert_eq!(split.val_labels.len(), split.val.len());
    assert_eq!(split.train_labels.len(), split.train.len());
    for ((path, _), labels) in split.val.iter().zip(&split.val_labels) {
        let (_, has) = rows.iter().find(|(p, _)| root.join(p) == *path).unwrap();
        let names: Vec<&str> = labels.iter().map(|&l| LABELS[l]).collect();
        assert_eq!(&names, has, "{}", path.display());
    }
    let metrics = tlcap::train::run_dir::read_metrics(&run).unwrap();
    assert_eq!(metrics.len(), 10, "{out}");
    // The earliest epoch with the highest mean AUC.
    let best = metrics
        .iter()
        .reduce(|b, m| if m.mean_auc() > b.mean_auc() { m } else { b })
        .unwrap();
    let ml = best.multilabel.as_ref().unwrap();
    assert!(ml.mean_auc.unwrap() > 0.9, "it must learn: {ml:?}");
    for (name, l) in LABELS.iter().zip(&ml.labels) {
        assert!(l.auc.unwrap() > 0.8, "{name}: {l:?}");
        assert!(l.threshold > 0.0 && l.threshold < 1.0);
    }
    assert_eq!(best.val_accuracy, ml.label_accuracy);
    // The best epoch is the best mean AUC, its predictions and checkpoint say so.
    let predictions = tlcap::train::predictions::ValPredictions::read(&run).unwrap();
    let aucs: Vec<(u32, Option<f64>)> = metrics.iter().map(|m| (m.epoch, m.mean_auc())).collect();
    assert_eq!(predictions.epoch, best.epoch, "{aucs:?}");
    assert_eq!(predictions.thresholds, ml.thresholds());
    assert_eq!(predictions.classes, LABELS);

    // predict --json: every label, the run's thresholds, the validation probabilities.
    let val: Vec<&tlcap::train::predictions::ValPrediction> =
        predictions.images.iter().take(8).collect();
    let mut args = vec![
        "predict".to_string(),
        run.display().to_string(),
        "--json".into(),
    ];
    args.extend(val.iter().map(|v| v.path.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out, err) = tlcap(&args);
    assert!(ok, "{err}");
    for (answer, v) in json_lines(&out).iter().zip(&val) {
        for (l, name) in LABELS.iter().enumerate() {
            let p = answer["probabilities"][name].as_f64().unwrap();
            assert!(
                (p - v.probabilities[l] as f64).abs() < 1e-4,
                "{answer} {v:?}"
            );
            let t = answer["thresholds"][name].as_f64().unwrap();
            assert!((t - ml.labels[l].threshold).abs() < 1e-12);
            let said = answer["labels"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x == name);
            assert_eq!(said, p >= t, "{answer}");
        }
    }
    let (ok, text, err) = tlcap(&[
        "predict",
        &run.display().to_string(),
        val[0].path.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(text.contains("bar=") && text.contains("right="), "{text}");

    // evaluate on the test CSV equals a hand computation from predict's answers.
    let test_csv = root.join("test.csv");
    let (ok, out, err) = tlcap(&[
        "evaluate",
        run.to_str().unwrap(),
        "--test",
        test_csv.to_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "{err}");
    let scores: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(scores["images"], 60);
    let test_dir = root.join("img");
    let (ok, answers, err) = tlcap(&[
        "predict",
        run.to_str().unwrap(),
        test_dir.to_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "{err}");
    let answers: Vec<serde_json::Value> = json_lines(&answers)
        .into_iter()
        .filter(|a| a["path"].as_str().unwrap().contains("/4-"))
        .collect();
    assert_eq!(answers.len(), 60);
    let (mut right, mut decisions) = (0usize, 0usize);
    let mut per_label: Vec<(Vec<bool>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); 3];
    for a in &answers {
        let path = a["path"].as_str().unwrap();
        let (_, has) = test_rows
            .iter()
            .find(|(p, _)| path.ends_with(p.as_str()))
            .unwrap();
        for (l, name) in LABELS.iter().enumerate() {
            let p = a["probabilities"][name].as_f64().unwrap();
            let t = a["thresholds"][name].as_f64().unwrap();
            let truth = has.contains(name);
            right += usize::from(truth == (p >= t));
            decisions += 1;
            per_label[l].0.push(truth);
            per_label[l].1.push(p);
        }
    }
    let close = |a: &serde_json::Value, b: f64| (a.as_f64().unwrap() - b).abs() < 1e-4;
    assert!(
        close(&scores["accuracy"], right as f64 / decisions as f64),
        "{scores}"
    );
    let aucs: Vec<f64> = per_label.iter().map(|(t, p)| auc_by_pairs(t, p)).collect();
    for (l, auc) in aucs.iter().enumerate() {
        assert!(
            close(&scores["multilabel"]["labels"][l]["auc"], *auc),
            "{l}: {scores}"
        );
    }
    assert!(
        close(&scores["auc"], aucs.iter().sum::<f64>() / 3.0),
        "{scores}"
    );
    // A test file where no row joins two labels still reads as the model's task
    // (its empty cells are images without findings, not empty labels).
    let mut plain = String::from("path,labels\n");
    for (path, has) in test_rows.iter().filter(|(_, h)| h.len() <= 1) {
        plain.push_str(&format!("{path},{}\n", has.join("|")));
    }
    std::fs::write(root.join("plain.csv"), &plain).unwrap();
    let plain_csv = root.join("plain.csv");
    let (ok, out, err) = tlcap(&[
        "evaluate",
        run.to_str().unwrap(),
        "--test",
        plain_csv.to_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "{err}");
    let plain_scores: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(plain_scores["images"], plain.lines().count() - 1);
    // Restore the full test set's scores for `report`.
    let (ok, _, err) = tlcap(&[
        "evaluate",
        run.to_str().unwrap(),
        "--test",
        test_csv.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let (ok, report, err) = tlcap(&["report", run.to_str().unwrap()]);
    assert!(ok, "{err}");
    for needle in [
        "Labels, epoch",
        "mean auc",
        "Test set",
        "exact match",
        "| labels | predicted |",
    ] {
        assert!(report.contains(needle), "{needle}:\n{report}");
    }
    // A label table, no confusion matrix: the charts written say so.
    assert!(
        report.contains("(with accuracy.svg, loss.svg, lr.svg)"),
        "{report}"
    );
    assert!(!run.join("confusion.svg").exists());

    // The exported card says multi-label, with the thresholds.
    let weights = root.join("model.safetensors");
    let (ok, _, err) = tlcap(&[
        "export",
        run.to_str().unwrap(),
        "--format",
        "safetensors",
        "-o",
        weights.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let card = tlcap::export::ModelCard::read_for(&weights).unwrap();
    assert!(card.multilabel && card.threshold.is_none());
    assert_eq!(card.thresholds, ml.thresholds());
    assert!(card.output.contains("each label's own"), "{}", card.output);
    // predict on the exported model answers as the run does.
    let (ok, again, err) = tlcap(&[
        "predict",
        weights.to_str().unwrap(),
        val[0].path.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert_eq!(again, text);
}

/// A live edit that does not fit the running data (a threshold for a label it lacks)
/// is refused whole with a note naming it when it comes, as the start refuses it: it
/// is never queued, the rest of it (a new rate) does not apply, and a good edit
/// waiting before it still applies.
#[test]
fn a_live_edit_naming_a_label_the_data_lacks_is_refused_whole() {
    use tlcap::train::{self, Event, Options};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let rows = make_findings(root, 60, 7);
    std::fs::write(root.join("findings.csv"), joined_csv(&rows)).unwrap();
    let exp = exp(
        root,
        "labels: findings.csv, columns: { label: labels }, batch_size: 16",
        "frozen: { epochs: 3, lr: 1.0e-3 }\nfinetune: { epochs: 0 }\ndevice: cpu\n",
    );
    let handle = train::spawn(
        exp.clone(),
        Options {
            runs_root: root.join("runs"),
            ..Default::default()
        },
    );
    handle.commands.send(train::Command::Start).unwrap();
    let (mut rows, mut notes, mut run) = (Vec::new(), Vec::new(), None);
    let (mut queued, mut applied) = (0, 0);
    for e in handle.events.iter() {
        match e {
            Event::EpochEnd(m) => {
                if m.epoch == 1 {
                    // A good edit, then one naming a label the data lacks: the second
                    // is refused when it comes (never queued) and the first applies.
                    let mut good = exp.clone();
                    good.frozen.lr = 5e-4;
                    let mut bad = exp.clone();
                    bad.frozen.lr = 2e-4;
                    bad.multilabel.thresholds.insert("nope".into(), 0.3);
                    let c = &handle.commands;
                    c.send(train::Command::Apply(Box::new(good))).unwrap();
                    c.send(train::Command::Apply(Box::new(bad))).unwrap();
                }
                rows.push(m);
            }
            Event::Note(n) => notes.push(n),
            Event::EditQueued { .. } => queued += 1,
            Event::ConfigApplied { .. } => applied += 1,
            Event::RunDir(d) => run = Some(d),
            Event::Error(e) => panic!("{e}"),
            _ => {}
        }
    }
    assert_eq!(rows.len(), 3);
    let refused = notes
        .iter()
        .find(|n| n.starts_with("edit not applied"))
        .unwrap_or_else(|| panic!("no refusal among {notes:?}"));
    assert!(refused.contains("`nope`"), "{refused}");
    assert_eq!(
        (queued, applied),
        (1, 1),
        "only the good edit was queued and applied"
    );
    let rates: Vec<f64> = rows.iter().map(|m| m.lr).collect();
    assert_eq!(
        rates,
        [1e-3, 5e-4, 5e-4],
        "the good edit's rate, not the bad one's"
    );
    let saved = tlcap::train::run_dir::read_config(&run.unwrap()).unwrap();
    assert!(saved.multilabel.thresholds.is_empty());
    assert_eq!(saved.frozen.lr, 5e-4);
}
