//! Finding the classes and image files of a `flow_from_directory` folder.

use std::path::{Path, PathBuf};

use super::{DataError, Skipped};

/// Extensions recognised as images (case-insensitive).
pub const IMAGE_EXTENSIONS: &[&str] = &[
    "png", "jpg", "jpeg", "bmp", "gif", "webp", "tif", "tiff", "dcm", "dicom",
];

/// What a scan of the data folder found.
#[derive(Debug, Clone)]
pub struct Scan {
    /// Sorted sub-folder names.
    pub classes: Vec<String>,
    /// Image files with their class index: sorted by class then path (training files
    /// first, then validation files, when the folders fix the split).
    pub files: Vec<(PathBuf, usize)>,
    /// Files inside class folders that are not images by extension.
    pub skipped: Vec<Skipped>,
    /// With `train/` and `val/` folders: for each file, whether it validates. None
    /// when the split is drawn.
    pub fixed_val: Option<Vec<bool>>,
    /// The validation folder (`val/`, `validation/` or `valid/`) when the folders fix
    /// the split.
    pub val_dir: Option<PathBuf>,
    /// A `test/` folder beside `train/` and `val/`: never read for training, stalls or
    /// the best epoch.
    pub test_dir: Option<PathBuf>,
    /// From a label file's group column: each file's group, which a drawn split keeps
    /// on one side.
    pub groups: Option<Vec<String>>,
    /// Label-file rows of the `test` split: not read.
    pub held_out: usize,
    /// A label file with a split column.
    pub has_split_column: bool,
    /// Label-file rows whose file lies outside `data.dir` (a `..`, an absolute path,
    /// or a symbolic link out): read as given, and reported.
    pub outside: Vec<PathBuf>,
    /// Multi-label: each file's labels (true where it has one, in `classes` order);
    /// then each file's class index in `files` is its rarest label (one past the last
    /// label when it has none), what the split stratifies by. None for one class per
    /// image.
    pub multi_hot: Option<Vec<Vec<bool>>>,
}

/// Names of the folders that fix the split (any other sub-folder makes them classes).
const SPLIT_FOLDERS: [&str; 5] = ["train", "val", "validation", "valid", "test"];
/// The names a validation folder may have.
const VALIDATION_FOLDERS: [&str; 3] = ["val", "validation", "valid"];

/// The validation folder's name (`val`, `validation` or `valid`) when `dir` is a split
/// layout (`train/` and one validation folder, `test/` optional, nothing else), so
/// the folders fix the split; None otherwise (or when it cannot be read).
pub fn fixed_validation_folder(dir: &Path) -> Option<String> {
    let subs = sub_folders(dir).ok()?;
    let has = |n: &str| subs.iter().any(|s| s == n);
    if !(has("train") && subs.iter().all(|s| SPLIT_FOLDERS.contains(&s.as_str()))) {
        return None;
    }
    match VALIDATION_FOLDERS
        .into_iter()
        .filter(|v| has(v))
        .collect::<Vec<_>>()[..]
    {
        [one] => Some(one.to_string()),
        _ => None,
    }
}

/// The non-hidden sub-folders of `dir`, sorted.
fn sub_folders(dir: &Path) -> Result<Vec<String>, DataError> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| DataError::Folder(dir.to_path_buf(), e.to_string()))?;
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    Ok(names)
}

/// Lists classes and their image files. `dir` is either one folder of class folders
/// (the split is then drawn), or holds `train/` and `val/` (or `validation/`) folders
/// of class folders, and optionally `test/`, and nothing else: the split is then as
/// the folders say. Every validation class must be a training class.
pub fn scan(dir: &Path) -> Result<Scan, DataError> {
    let subs = sub_folders(dir)?;
    let has = |n: &str| subs.iter().any(|s| s == n);
    let only_split_names = subs.iter().all(|s| SPLIT_FOLDERS.contains(&s.as_str()));
    let vals: Vec<&str> = VALIDATION_FOLDERS.into_iter().filter(|v| has(v)).collect();
    if !(has("train") && only_split_names) {
        return scan_classes(dir);
    }
    // train/ beside split names only: a split layout, which needs its validation folder
    // (taking train/ and test/ as two classes would train a "which folder" model).
    let val_name = match vals.as_slice() {
        [one] => *one,
        [] => return Err(DataError::NoValidationFolder(dir.to_path_buf())),
        _ => return Err(DataError::TwoValidationFolders(dir.to_path_buf())),
    };
    let val_dir = dir.join(val_name);
    let train = scan_classes(&dir.join("train"))?;
    let val = scan_classes(&val_dir)?;
    let mut files = train.files;
    let mut fixed_val = vec![false; files.len()];
    for (path, label) in val.files {
        let class = &val.classes[label];
        let Some(label) = train.classes.iter().position(|c| c == class) else {
            return Err(DataError::UnknownValidationClass(
                val_dir.join(class),
                train.classes.clone(),
            ));
        };
        files.push((path, label));
        fixed_val.push(true);
    }
    let mut skipped = train.skipped;
    skipped.extend(val.skipped);
    Ok(Scan {
        classes: train.classes,
        files,
        skipped,
        fixed_val: Some(fixed_val),
        val_dir: Some(val_dir),
        test_dir: has("test").then(|| dir.join("test")),
        groups: None,
        held_out: 0,
        has_split_column: false,
        outside: Vec::new(),
        multi_hot: None,
    })
}

/// Lists classes (sorted sub-folders, hidden ones ignored) and their image files,
/// found recursively. Fewer than two classes, or a class without images, is an error.
pub fn scan_classes(dir: &Path) -> Result<Scan, DataError> {
    let classes = sub_folders(dir)?;
    if classes.len() < 2 {
        return Err(DataError::TooFewClasses(dir.to_path_buf(), classes));
    }
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let mut found: Vec<PathBuf> = Vec::new();
        let walk = walkdir::WalkDir::new(dir.join(class))
            .follow_links(true)
            .into_iter();
        // Hidden files and folders (.ipynb_checkpoints, .thumbnails) are not data.
        for entry in walk
            .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.'))
        {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    let path = e
                        .path()
                        .map(Path::to_path_buf)
                        .unwrap_or_else(|| dir.join(class));
                    skipped.push(Skipped {
                        path,
                        reason: format!("unreadable: {e}"),
                    });
                    continue;
                }
            };
            if entry.file_type().is_dir() {
                continue;
            }
            let ext = entry
                .path()
                .extension()
                .map(|e| e.to_string_lossy().to_lowercase());
            if ext
                .as_deref()
                .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e))
            {
                found.push(entry.into_path());
            } else {
                skipped.push(Skipped {
                    path: entry.into_path(),
                    reason: "unsupported format (not an image extension)".into(),
                });
            }
        }
        if found.is_empty() {
            return Err(DataError::EmptyClass(dir.join(class)));
        }
        found.sort();
        files.extend(found.into_iter().map(|p| (p, label)));
    }
    Ok(Scan {
        classes,
        files,
        skipped,
        fixed_val: None,
        val_dir: None,
        test_dir: None,
        groups: None,
        held_out: 0,
        has_split_column: false,
        outside: Vec::new(),
        multi_hot: None,
    })
}
