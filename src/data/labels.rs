//! `data.labels`: a CSV of images and their classes (Keras `flow_from_dataframe`,
//! fastai `from_df`), read with the `csv` crate. A header row names the columns
//! (`data.columns`); each row gives an image's path relative to `data.dir`, its class,
//! and optionally its split (`train`, `val`/`validation`, `test`) and group.
//!
//! Multi-label (`task: multilabel`, or inferred): either one 0/1 column per label
//! (`data.columns.labels`), or the label column joining an image's labels with
//! `data.label_delimiter` (`Effusion|Infiltration`); an empty cell is an image without
//! any of the labels.
//!
//! Every problem is found in one pass and named with its CSV line: a row that does not
//! parse, an empty path or label, a path given twice, a file that does not exist, an
//! unknown split, a label column that is not 0 or 1. The run refuses to start on any of
//! them; `check` lists them all.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::scan::{Scan, IMAGE_EXTENSIONS};
use super::{DataError, Skipped};
use crate::config::{Experiment, Task};

/// The most problems kept (a file of junk is summed up, not listed line by line).
pub const MAX_PROBLEMS: usize = 100;

/// Which rows of a label file are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    /// Training and validation rows (`test` rows are counted, not read).
    Training,
    /// Only the `test` rows (every row when there is no split column): `evaluate`.
    Test,
}

/// A row's labels as the file gives them.
enum Given {
    /// From the label column: its class, or (multi-label) its labels, sorted.
    Names(Vec<String>),
    /// One 0/1 value per `data.columns.labels` column.
    Flags(Vec<bool>),
}

/// A 0/1 cell of a label column: `1`, `true`, `yes`, `y` or `0`, `false`, `no`, `n`,
/// empty (case ignored).
fn flag(cell: &str) -> Option<bool> {
    match cell.to_ascii_lowercase().as_str() {
        "1" | "1.0" | "true" | "yes" | "y" => Some(true),
        "0" | "0.0" | "false" | "no" | "n" | "" => Some(false),
        _ => None,
    }
}

/// Reads `csv` (paths relative to `exp.data.dir`) into the files, classes (or labels),
/// and the split and groups it fixes. Classes are the distinct labels, sorted; the
/// labels of a file of 0/1 columns are the columns, in the order named.
pub fn read(csv: &Path, exp: &Experiment, rows_wanted: Rows) -> Result<Scan, DataError> {
    let (dir, columns) = (exp.data.dir.as_path(), &exp.data.columns);
    let delimiter = exp.data.label_delimiter.as_str();
    let fail = |problems: Vec<String>| DataError::Labels(csv.to_path_buf(), problems);
    let mut reader = csv::ReaderBuilder::new()
        .flexible(false)
        .trim(csv::Trim::All)
        .from_path(csv)
        .map_err(|e| fail(vec![format!("cannot read it: {e}")]))?;
    let headers = reader
        .headers()
        .map_err(|e| fail(vec![format!("no header row: {e}")]))?
        .clone();
    let column = |name: &str| headers.iter().position(|h| h == name);
    let flag_cols: Vec<Option<usize>> = columns.labels.iter().map(|c| column(c)).collect();
    let label_col = if columns.labels.is_empty() {
        column(&columns.label)
    } else {
        None
    };
    let (Some(path_col), true) = (
        column(&columns.path),
        label_col.is_some() || (!flag_cols.is_empty() && flag_cols.iter().all(Option::is_some)),
    ) else {
        let wanted = if columns.labels.is_empty() {
            vec![columns.path.clone(), columns.label.clone()]
        } else {
            std::iter::once(columns.path.clone())
                .chain(columns.labels.iter().cloned())
                .collect()
        };
        let mut named: Vec<String> = wanted.iter().map(|c| format!("`{c}`")).collect();
        let last = named.pop().unwrap_or_default();
        return Err(fail(vec![format!(
            "line 1: needs the columns {} and {last} (data.columns names others); it has {:?}",
            named.join(", "),
            headers.iter().collect::<Vec<_>>()
        )]));
    };
    let flag_cols: Vec<usize> = flag_cols.into_iter().flatten().collect();
    let split_col = column(&columns.split);
    let group_col = column(&columns.group);

    let mut problems = Vec::new();
    let mut more = 0usize;
    let mut problem = |text: String| {
        if problems.len() < MAX_PROBLEMS {
            problems.push(text);
        } else {
            more += 1;
        }
    };
    let mut rows: Vec<(PathBuf, Given, Option<bool>, Option<String>)> = Vec::new();
    let mut seen: HashMap<PathBuf, u64> = HashMap::new();
    let mut held_out = 0usize;
    let mut skipped = Vec::new();
    let mut outside = Vec::new();
    let root = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    // Whether the task is multi-label decides how every row's label reads: `auto`
    // looks for a label holding the delimiter in a first pass over the file (streamed:
    // memory stays small whatever its size).
    let multilabel = match (label_col, exp.task) {
        (None, _) | (_, Task::Multilabel) => true,
        (Some(_), Task::SingleLabel) => false,
        (Some(c), Task::Auto) => csv::ReaderBuilder::new()
            .flexible(true)
            .trim(csv::Trim::All)
            .from_path(csv)
            .is_ok_and(|mut r| {
                r.records()
                    .flatten()
                    .any(|rec| rec.get(c).is_some_and(|t| t.contains(delimiter)))
            }),
    };
    for record in reader.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                problem(format!("line {line}: {}", short(&e)));
                continue;
            }
        };
        let line = record.position().map_or(0, |p| p.line());
        let field = |i: usize| record.get(i).unwrap_or("");
        let path = field(path_col);
        if path.is_empty() {
            problem(format!("line {line}: empty path"));
            continue;
        }
        let given = match label_col {
            Some(c) if !multilabel => {
                let text = field(c);
                if text.is_empty() {
                    problem(format!("line {line}: empty label"));
                    continue;
                }
                Given::Names(vec![text.to_string()])
            }
            // Multi-label: an empty cell is an image without any label.
            Some(c) if field(c).is_empty() => Given::Names(Vec::new()),
            Some(c) => {
                let text = field(c);
                let mut parts: Vec<String> = text
                    .split(delimiter)
                    .map(|p| p.trim().to_string())
                    .collect();
                if parts.iter().any(String::is_empty) {
                    problem(format!(
                        "line {line}: an empty label in `{text}` (labels are joined by \
                         `{delimiter}`, data.label_delimiter)"
                    ));
                    continue;
                }
                parts.sort();
                parts.dedup();
                Given::Names(parts)
            }
            None => {
                let mut flags = Vec::with_capacity(flag_cols.len());
                let mut bad = None;
                for (&c, name) in flag_cols.iter().zip(&columns.labels) {
                    match flag(field(c)) {
                        Some(f) => flags.push(f),
                        None => {
                            bad = Some(format!(
                                "line {line}: `{name}` is `{}` (0 or 1, true or false, yes or \
                                 no; empty is 0)",
                                field(c)
                            ));
                            break;
                        }
                    }
                }
                if let Some(bad) = bad {
                    problem(bad);
                    continue;
                }
                Given::Flags(flags)
            }
        };
        // A path twice is a problem whichever splits its rows name (an image in both
        // train and test would be scored on what it trained on).
        let file = dir.join(path);
        if let Some(first) = seen.insert(file.clone(), line) {
            problem(format!("line {line}: {path} is also on line {first}"));
            continue;
        }
        let validates = match split_col.map(field) {
            None => None,
            Some("train" | "val" | "validation" | "valid") if rows_wanted == Rows::Test => {
                continue;
            }
            Some("train") => Some(false),
            Some("val" | "validation" | "valid") => Some(true),
            Some("test") if rows_wanted == Rows::Test => None,
            Some("test") => {
                held_out += 1;
                continue;
            }
            Some(other) => {
                problem(format!(
                    "line {line}: split `{other}` (train, val, validation or test)"
                ));
                continue;
            }
        };
        if !file.is_file() {
            problem(format!("line {line}: {} not found", file.display()));
            continue;
        }
        let image = file
            .extension()
            .map(|e| e.to_string_lossy().to_lowercase())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str()));
        if !image {
            skipped.push(Skipped {
                path: file,
                reason: "unsupported format (not an image extension)".into(),
            });
            continue;
        }
        // Allowed (a shared image store), but said: a `..`, an absolute path or a
        // link may not be what the user meant.
        if !file
            .canonicalize()
            .is_ok_and(|real| real.starts_with(&root))
        {
            outside.push(file.clone());
        }
        let group = group_col.map(|i| field(i).to_string());
        rows.push((file, given, validates, group));
    }
    if more > 0 {
        problems.push(format!("and {more} more problems"));
    }
    if !problems.is_empty() {
        return Err(fail(problems));
    }
    let classes: Vec<String> = if label_col.is_none() {
        columns.labels.clone()
    } else {
        let mut c: Vec<String> = rows
            .iter()
            .flat_map(|r| match &r.1 {
                Given::Names(n) => n.clone(),
                Given::Flags(_) => Vec::new(),
            })
            .collect();
        c.sort();
        c.dedup();
        c
    };
    let label_column = if label_col.is_some() {
        format!("`{}` column", columns.label)
    } else {
        "label columns".to_string()
    };
    if classes.len() < 2 && rows_wanted == Rows::Training && !multilabel {
        return Err(fail(vec![format!(
            "needs at least two classes in its {label_column}, found {classes:?}"
        )]));
    }
    if classes.is_empty() && rows_wanted == Rows::Training {
        return Err(fail(vec![format!(
            "a multi-label file needs at least one label in its {label_column}; every row \
             has none"
        )]));
    }
    // Names come from the label column only, and then `classes` are sorted.
    let index_of = |name: &str| {
        classes
            .binary_search_by(|c| c.as_str().cmp(name))
            .unwrap_or(0)
    };
    let multi_hot: Option<Vec<Vec<bool>>> = multilabel.then(|| {
        rows.iter()
            .map(|r| match &r.1 {
                Given::Flags(f) => f.clone(),
                Given::Names(n) => {
                    let mut hot = vec![false; classes.len()];
                    for name in n {
                        hot[index_of(name)] = true;
                    }
                    hot
                }
            })
            .collect()
    });
    if let (Some(hot), Rows::Training) = (&multi_hot, rows_wanted) {
        let empty: Vec<&String> = classes
            .iter()
            .enumerate()
            .filter(|(l, _)| !hot.iter().any(|h| h[*l]))
            .map(|(_, c)| c)
            .collect();
        if !empty.is_empty() {
            return Err(fail(vec![format!(
                "no image has the label(s) {empty:?}: a label needs positive images to learn \
                 (drop the column)"
            )]));
        }
    }
    // Each image's class; multi-label: its rarest label (the split's stratum), or
    // one past the last label for an image without any.
    let files = match &multi_hot {
        None => rows
            .iter()
            .map(|r| match &r.1 {
                Given::Names(n) => (r.0.clone(), index_of(&n[0])),
                Given::Flags(_) => unreachable!("0/1 label columns are always multi-label"),
            })
            .collect(),
        Some(hot) => {
            let count: Vec<usize> = (0..classes.len())
                .map(|l| hot.iter().filter(|h| h[l]).count())
                .collect();
            rows.iter()
                .zip(hot)
                .map(|(r, h)| {
                    let rarest = (0..classes.len())
                        .filter(|&l| h[l])
                        .min_by_key(|&l| (count[l], l))
                        .unwrap_or(classes.len());
                    (r.0.clone(), rarest)
                })
                .collect()
        }
    };
    let fixed_val = split_col
        .filter(|_| rows_wanted == Rows::Training)
        .map(|_| rows.iter().map(|r| r.2 == Some(true)).collect());
    let groups = group_col.map(|_| {
        rows.iter()
            .map(|r| r.3.clone().unwrap_or_default())
            .collect()
    });
    Ok(Scan {
        classes,
        files,
        skipped,
        fixed_val,
        val_dir: None,
        test_dir: None,
        groups,
        held_out,
        has_split_column: split_col.is_some(),
        outside,
        multi_hot,
    })
}

/// A CSV error in words, without the position (the line is said before it).
fn short(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("{len} fields where the header has {expected_len}"),
        csv::ErrorKind::Utf8 { .. } => "not UTF-8 text".into(),
        _ => e.to_string(),
    }
}
