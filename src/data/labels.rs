//! `data.labels`: a CSV of images and their classes (Keras `flow_from_dataframe`,
//! fastai `from_df`), read with the `csv` crate. A header row names the columns
//! (`data.columns`); each row gives an image's path relative to `data.dir`, its class,
//! and optionally its split (`train`, `val`/`validation`, `test`) and group.
//!
//! Every problem is found in one pass and named with its CSV line: a row that does not
//! parse, an empty path or label, a path given twice, a file that does not exist, an
//! unknown split. The run refuses to start on any of them; `check` lists them all.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::scan::{Scan, IMAGE_EXTENSIONS};
use super::{DataError, Skipped};
use crate::config::Columns;

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

/// Reads `csv` (paths relative to `dir`) into the files, classes, and the split and
/// groups it fixes. Classes are the distinct labels, sorted.
pub fn read(
    csv: &Path,
    dir: &Path,
    columns: &Columns,
    rows_wanted: Rows,
) -> Result<Scan, DataError> {
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
    let (Some(path_col), Some(label_col)) = (column(&columns.path), column(&columns.label)) else {
        return Err(fail(vec![format!(
            "line 1: needs the columns `{}` and `{}` (data.columns names others); it has {:?}",
            columns.path,
            columns.label,
            headers.iter().collect::<Vec<_>>()
        )]));
    };
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
    let mut rows: Vec<(PathBuf, String, Option<bool>, Option<String>)> = Vec::new();
    let mut seen: HashMap<PathBuf, u64> = HashMap::new();
    let mut held_out = 0usize;
    let mut skipped = Vec::new();
    let mut outside = Vec::new();
    let root = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
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
        let (path, label) = (field(path_col), field(label_col));
        if path.is_empty() || label.is_empty() {
            problem(format!(
                "line {line}: empty {}",
                if path.is_empty() { "path" } else { "label" }
            ));
            continue;
        }
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
        rows.push((file, label.to_string(), validates, group));
    }
    if more > 0 {
        problems.push(format!("and {more} more problems"));
    }
    if !problems.is_empty() {
        return Err(fail(problems));
    }
    let mut classes: Vec<String> = rows.iter().map(|r| r.1.clone()).collect();
    classes.sort();
    classes.dedup();
    if classes.len() < 2 && rows_wanted == Rows::Training {
        return Err(fail(vec![format!(
            "needs at least two classes in its `{}` column, found {classes:?}",
            columns.label
        )]));
    }
    let label_of = |name: &str| {
        classes
            .binary_search_by(|c| c.as_str().cmp(name))
            .unwrap_or(0)
    };
    let files = rows.iter().map(|r| (r.0.clone(), label_of(&r.1))).collect();
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
