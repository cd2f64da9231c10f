//! `tlcap-tui evaluate RUN_DIR [--test DIR|CSV] [--checkpoint best|last]`: a run's model
//! scored once on held-out test images, which training never read (not for a step, a
//! stall or the best epoch): accuracy, cross-entropy, the confusion matrix with
//! per-class scores, and for two classes precision, recall, F1 and ROC AUC. Written to
//! the run folder as `test.json` (atomically) and shown by `report`.
//!
//! The test images: `--test` (a folder of class folders, or a CSV of labels whose paths
//! are relative to the run's `data.dir`: its `test` rows, or every row without a split
//! column), else what the run's settings name: the label file's `test` rows, or the
//! `test/` folder beside `train/` and `val/`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::data::labels::Rows;
use crate::data::Skipped;
use crate::model_card::{run_checkpoint, Checkpoint, Predictor};
use crate::train::metrics::{
    binary_scores, multilabel_scores, ClassScores, Confusion, MultiLabelScores,
};
use crate::train::Phase;

/// The file `evaluate` writes in the run folder.
pub const FILE: &str = "test.json";

/// A run's scores on its test images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestScores {
    /// Where the test images came from.
    pub source: PathBuf,
    /// The checkpoint scored, and its epoch and phase.
    pub checkpoint: PathBuf,
    pub epoch: u32,
    pub phase: Phase,
    /// The model's classes, in order.
    pub classes: Vec<String>,
    /// Images scored.
    pub images: usize,
    /// Images that could not be read, with why.
    pub skipped: Vec<(PathBuf, String)>,
    /// Share predicted right.
    pub accuracy: f64,
    /// Mean cross-entropy of the true class.
    pub loss: f64,
    /// Rows: true class; columns: predicted.
    pub confusion: Confusion,
    /// Per class: precision, recall, F1, support.
    pub per_class: Vec<ClassScores>,
    /// Two classes: of the second class (positive).
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub f1: Option<f64>,
    pub auc: Option<f64>,
    /// Multi-label: every label's scores at the run's thresholds and their summaries
    /// (then `accuracy` is the share of right (image, label) decisions, `loss` the
    /// mean binary cross-entropy, and the confusion matrix is empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multilabel: Option<MultiLabelScores>,
}

/// Reads a run's `test.json`, if `evaluate` wrote one.
pub fn read(run: &Path) -> Option<TestScores> {
    serde_json::from_slice(&std::fs::read(run.join(FILE)).ok()?).ok()
}

/// Test images found: where from, each image with its class name (multi-label: its
/// label names), and the files left out.
struct TestSet {
    source: PathBuf,
    files: Vec<(PathBuf, Vec<String>)>,
    skipped: Vec<Skipped>,
}

/// The test images and their class names, from `--test` or the run's settings.
fn test_images(exp: &crate::config::Experiment, test: Option<&Path>) -> anyhow::Result<TestSet> {
    let scan = match test {
        Some(p) if p.is_dir() => (p.to_path_buf(), crate::data::scan_classes(p)?),
        Some(p) => (
            p.to_path_buf(),
            crate::data::labels::read(p, exp, Rows::Test)?,
        ),
        None => match &exp.data.labels {
            // The run's own label file: only rows it marks `test`, never the rows the
            // run trained and validated on.
            Some(csv) => {
                let found = crate::data::labels::read(csv, exp, Rows::Test)?;
                if !found.has_split_column {
                    bail!(
                        "no test set: the run's label file {} has no `{}` column marking test \
                         rows (its rows trained and validated the model); give one with \
                         --test DIR or --test FILE.csv",
                        csv.display(),
                        exp.data.columns.split
                    );
                }
                (csv.clone(), found)
            }
            None if exp.data.dir.join("test").is_dir() => {
                let dir = exp.data.dir.join("test");
                (dir.clone(), crate::data::scan_classes(&dir)?)
            }
            None => bail!(
                "no test set: the run's data ({}) has no test/ folder and no label file; \
                 give one with --test DIR (class folders) or --test FILE.csv",
                exp.data.dir.display()
            ),
        },
    };
    let (source, found) = scan;
    let files = match &found.multi_hot {
        None => found
            .files
            .into_iter()
            .map(|(path, label)| (path, vec![found.classes[label].clone()]))
            .collect::<Vec<_>>(),
        Some(hot) => found
            .files
            .into_iter()
            .zip(hot)
            .map(|((path, _), h)| {
                let names = (0..found.classes.len())
                    .filter(|&l| h[l])
                    .map(|l| found.classes[l].clone())
                    .collect();
                (path, names)
            })
            .collect(),
    };
    if files.is_empty() {
        bail!("{}: no test images", source.display());
    }
    Ok(TestSet {
        source,
        files,
        skipped: found.skipped,
    })
}

/// Scores `run`'s checkpoint (`which`, default best) on its test images.
pub fn evaluate(
    run: &Path,
    test: Option<&Path>,
    which: Option<Checkpoint>,
) -> anyhow::Result<TestScores> {
    let exp = crate::train::run_dir::read_config(run)?;
    let checkpoint = run_checkpoint(run, which)?;
    let predictor = Predictor::load(&checkpoint)?;
    let classes = predictor.classes.clone();
    let TestSet {
        source,
        files,
        mut skipped,
    } = {
        // The test file reads as the model's task, whatever its rows alone would say
        // (a multi-label test file may join no two labels on any row).
        let mut as_trained = exp.clone();
        as_trained.task = if predictor.thresholds.is_some() {
            crate::config::Task::Multilabel
        } else {
            crate::config::Task::SingleLabel
        };
        test_images(&as_trained, test)?
    };
    if let Some(thresholds) = predictor.thresholds.clone() {
        return evaluate_multilabel(&predictor, thresholds, (checkpoint, source, files), skipped);
    }
    let mut truth = Vec::with_capacity(files.len());
    for (path, names) in &files {
        let class = names.first().map_or("", String::as_str);
        let Some(i) = classes.iter().position(|c| c == class) else {
            bail!(
                "{}: class `{class}` is not one the model knows ({classes:?})",
                path.display()
            );
        };
        truth.push(i);
    }
    let paths: Vec<PathBuf> = files.iter().map(|(p, _)| p.clone()).collect();
    let (mut kept_truth, mut probs, mut predicted) = (Vec::new(), Vec::new(), Vec::new());
    for ((path, t), answer) in paths.iter().zip(&truth).zip(predictor.predict(&paths)) {
        match answer {
            Ok(p) => {
                kept_truth.push(*t);
                predicted.push(p.class);
                probs.push(p.probabilities);
            }
            Err(e) => skipped.push(Skipped {
                path: path.clone(),
                reason: e.to_string(),
            }),
        }
    }
    if kept_truth.is_empty() {
        bail!("{}: no test image could be read", source.display());
    }
    let n = kept_truth.len();
    let confusion = Confusion::new(classes.len(), &kept_truth, &predicted);
    let loss = kept_truth
        .iter()
        .zip(&probs)
        .map(|(&t, p)| -p[t].max(1e-12).ln())
        .sum::<f64>()
        / n as f64;
    let binary = (classes.len() == 2).then(|| {
        let positive: Vec<f64> = probs.iter().map(|p| p[1]).collect();
        binary_scores(&kept_truth, &positive)
    });
    Ok(TestScores {
        source,
        checkpoint,
        epoch: predictor.epoch,
        phase: predictor.phase.0,
        classes,
        images: n,
        skipped: skipped.into_iter().map(|s| (s.path, s.reason)).collect(),
        accuracy: confusion.accuracy(),
        loss,
        per_class: confusion.class_scores(),
        confusion,
        precision: binary.as_ref().map(|b| b.precision),
        recall: binary.as_ref().map(|b| b.recall),
        f1: binary.as_ref().map(|b| b.f1),
        auc: binary.and_then(|b| b.auc),
        multilabel: None,
    })
}

/// [`evaluate`] for a multi-label model: every label scored at the run's thresholds.
/// A label the model does not know is an error; a label the test set never names is
/// absent from every image.
fn evaluate_multilabel(
    predictor: &Predictor,
    thresholds: Vec<f64>,
    (checkpoint, source, files): (PathBuf, PathBuf, Vec<(PathBuf, Vec<String>)>),
    mut skipped: Vec<Skipped>,
) -> anyhow::Result<TestScores> {
    let labels = &predictor.classes;
    let n = labels.len();
    let mut truth: Vec<Vec<u8>> = Vec::with_capacity(files.len());
    for (path, names) in &files {
        let mut hot = vec![0u8; n];
        for name in names {
            let Some(l) = labels.iter().position(|c| c == name) else {
                bail!(
                    "{}: label `{name}` is not one the model knows ({labels:?})",
                    path.display()
                );
            };
            hot[l] = 1;
        }
        truth.push(hot);
    }
    let paths: Vec<PathBuf> = files.iter().map(|(p, _)| p.clone()).collect();
    let (mut hot, mut probs) = (Vec::new(), Vec::new());
    for ((path, t), answer) in paths.iter().zip(&truth).zip(predictor.predict(&paths)) {
        match answer {
            Ok(p) => {
                hot.extend_from_slice(t);
                probs.extend(p.probabilities.iter().map(|&v| v as f32));
            }
            Err(e) => skipped.push(Skipped {
                path: path.clone(),
                reason: e.to_string(),
            }),
        }
    }
    if hot.is_empty() {
        bail!("{}: no test image could be read", source.display());
    }
    let images = hot.len() / n;
    let loss = hot
        .iter()
        .zip(&probs)
        .map(|(&y, &p)| {
            let p = f64::from(p).clamp(1e-7, 1.0 - 1e-7);
            if y == 1 {
                -p.ln()
            } else {
                -(1.0 - p).ln()
            }
        })
        .sum::<f64>()
        / hot.len() as f64;
    let scores = multilabel_scores(&hot, &probs, &thresholds);
    Ok(TestScores {
        source,
        checkpoint,
        epoch: predictor.epoch,
        phase: predictor.phase.0,
        classes: labels.clone(),
        images,
        skipped: skipped.into_iter().map(|s| (s.path, s.reason)).collect(),
        accuracy: scores.label_accuracy,
        loss,
        confusion: Confusion::new(0, &[], &[]),
        per_class: Vec::new(),
        precision: None,
        recall: None,
        f1: Some(scores.macro_f1),
        auc: scores.mean_auc,
        multilabel: Some(scores),
    })
}

/// A multi-label task's table in text: one row per label, then the summaries.
pub fn label_table(labels: &[String], s: &MultiLabelScores) -> String {
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |a| format!("{a:.4}"));
    let mut out = format!(
        "  {:<16}{:>8}{:>8}{:>8}{:>8}{:>8}{:>8}{:>8}",
        "label", "support", "auc", "ap", "thresh", "prec", "recall", "f1"
    );
    for (name, l) in labels.iter().zip(&s.labels) {
        out += &format!(
            "\n  {name:<16}{:>8}{:>8}{:>8}{:>8.3}{:>8.4}{:>8.4}{:>8.4}",
            l.support,
            opt(l.auc),
            opt(l.average_precision),
            l.threshold,
            l.precision,
            l.recall,
            l.f1
        );
    }
    out += &format!(
        "\n  mean auc {}  mAP {}  macro f1 {:.4}  label accuracy {:.4}  exact match {:.4}",
        opt(s.mean_auc),
        opt(s.map),
        s.macro_f1,
        s.label_accuracy,
        s.exact_match
    );
    out
}

/// The scores in a few lines of text.
pub fn words(s: &TestScores) -> String {
    let mut out = format!(
        "test set {} ({} images{}), {} epoch {} ({}):\n  {} {:.4}  loss {:.4}",
        s.source.display(),
        s.images,
        match s.skipped.len() {
            0 => String::new(),
            k => format!(", {k} skipped"),
        },
        s.checkpoint
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
        s.epoch,
        s.phase.name(),
        if s.multilabel.is_some() {
            "label accuracy"
        } else {
            "accuracy"
        },
        s.accuracy,
        s.loss
    );
    if let Some(ml) = &s.multilabel {
        out += "\n";
        out += &label_table(&s.classes, ml);
        for (path, why) in s.skipped.iter().take(10) {
            out += &format!("\n  skipped {}: {why}", path.display());
        }
        return out;
    }
    if let (Some(p), Some(r), Some(f)) = (s.precision, s.recall, s.f1) {
        out += &format!(
            "  precision {p:.4}  recall {r:.4}  f1 {f:.4}  auc {}",
            s.auc.map_or("-".into(), |a| format!("{a:.4}"))
        );
    }
    out += "\n  confusion (rows: true class):";
    for (t, name) in s.classes.iter().enumerate() {
        let row: Vec<String> = (0..s.classes.len())
            .map(|p| format!("{:>6}", s.confusion.get(t, p)))
            .collect();
        out += &format!("\n  {name:<16}{}", row.join(""));
    }
    for (path, why) in s.skipped.iter().take(10) {
        out += &format!("\n  skipped {}: {why}", path.display());
    }
    out
}

/// `tlcap-tui evaluate`: scores, writes `test.json`, prints the scores (or the JSON).
pub fn run(
    run: &Path,
    test: Option<&Path>,
    which: Option<Checkpoint>,
    json: bool,
) -> anyhow::Result<()> {
    let scores = evaluate(run, test, which)?;
    let text = serde_json::to_string_pretty(&scores)?;
    crate::fsutil::write_atomic(&run.join(FILE), text.as_bytes())
        .with_context(|| format!("cannot write {}", run.join(FILE).display()))?;
    if json {
        crate::stdout::line(serde_json::to_string(&scores)?)
    } else {
        crate::stdout::line(words(&scores))?;
        crate::stdout::line(format!("written: {}", run.join(FILE).display()))
    }
}
