//! The experiment selected last in each folder, kept across launches in the runs
//! folder (`.dashboard.json`): a relaunched dashboard selects it again instead of the
//! first (often heaviest) experiment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The file's name in the runs folder.
pub const FILE: &str = ".dashboard.json";

fn read_all(runs_root: &Path) -> BTreeMap<String, PathBuf> {
    std::fs::read_to_string(runs_root.join(FILE))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// The key of a watched folder: its canonical path.
fn key(target: &Path) -> String {
    std::fs::canonicalize(target)
        .unwrap_or_else(|_| target.to_path_buf())
        .display()
        .to_string()
}

/// The file selected last in the dashboard on `target`, if any.
pub fn read(runs_root: &Path, target: &Path) -> Option<PathBuf> {
    read_all(runs_root).remove(&key(target))
}

/// Keeps `selected` as the selection of the dashboard on `target` (atomically; the
/// other folders' selections stay).
pub fn write(runs_root: &Path, target: &Path, selected: &Path) -> anyhow::Result<()> {
    let mut all = read_all(runs_root);
    all.insert(key(target), selected.to_path_buf());
    std::fs::create_dir_all(runs_root)?;
    crate::fsutil::write_atomic(
        &runs_root.join(FILE),
        serde_json::to_string_pretty(&all)?.as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    /// Each folder keeps its own selection; an unreadable file is no selection.
    #[test]
    fn each_folder_keeps_its_selection() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let runs = dir.path().join("runs");
        assert_eq!(super::read(&runs, &a), None);
        super::write(&runs, &a, &a.join("x.yaml")).unwrap();
        super::write(&runs, &b, &b.join("y.yaml")).unwrap();
        super::write(&runs, &a, &a.join("z.yaml")).unwrap();
        assert_eq!(super::read(&runs, &a), Some(a.join("z.yaml")));
        assert_eq!(super::read(&runs, &b), Some(b.join("y.yaml")));
        std::fs::write(runs.join(super::FILE), "not json").unwrap();
        assert_eq!(super::read(&runs, &a), None);
    }
}
