//! Finding the classes and image files of a `flow_from_directory` folder.

use std::path::{Path, PathBuf};

use super::{DataError, Skipped};

/// Extensions recognised as images (case-insensitive).
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "bmp", "gif", "webp", "tif", "tiff"];

/// What a scan of the data folder found.
#[derive(Debug, Clone)]
pub struct Scan {
    /// Sorted sub-folder names.
    pub classes: Vec<String>,
    /// Image files with their class index, sorted by class then path.
    pub files: Vec<(PathBuf, usize)>,
    /// Files inside class folders that are not images by extension.
    pub skipped: Vec<Skipped>,
}

/// Lists classes (sorted sub-folders, hidden ones ignored) and their image files,
/// found recursively. Fewer than two classes, or a class without images, is an error.
pub fn scan(dir: &Path) -> Result<Scan, DataError> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| DataError::Folder(dir.to_path_buf(), e.to_string()))?;
    let mut classes: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    classes.sort();
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
    })
}
