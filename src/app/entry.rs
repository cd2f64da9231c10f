//! One experiment file in the list: its settings (or errors and the last good
//! settings), its run, and what waits for a restart.

use std::path::PathBuf;

use super::{AppEvent, RunStatus, RunView};
use crate::config::Experiment;

/// The configuration state of one experiment file.
#[derive(Debug, Clone, PartialEq)]
pub enum FileState {
    /// Parsed and valid.
    Valid(Box<Experiment>),
    /// Invalid: the errors (file:line:column: message), and the last good settings if
    /// the file was ever valid.
    Invalid {
        /// Error lines with positions.
        errors: Vec<String>,
        /// The settings still in force.
        last_good: Option<Box<Experiment>>,
    },
}

impl From<crate::config::Loaded> for FileState {
    fn from(loaded: crate::config::Loaded) -> FileState {
        match loaded {
            Ok(exp) => FileState::Valid(exp),
            Err(errors) => FileState::Invalid {
                errors,
                last_good: None,
            },
        }
    }
}

impl From<crate::watch::FileEvent> for AppEvent {
    fn from(event: crate::watch::FileEvent) -> AppEvent {
        use crate::watch::FileEvent;
        match event {
            FileEvent::Changed(path, loaded) => AppEvent::FileLoaded(path, loaded.into()),
            FileEvent::Removed(path) => AppEvent::FileRemoved(path),
            FileEvent::Problem(text) => AppEvent::Info(text),
        }
    }
}

/// One experiment file in the list.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Stable identity (list positions change as files come and go).
    pub id: u64,
    /// The file.
    pub path: PathBuf,
    /// Its settings or errors.
    pub file: FileState,
    /// Its run, once started.
    pub run: Option<RunView>,
    /// Restart-only edits waiting for the next start, in words.
    pub pending_restart: Vec<String>,
    /// The file was deleted while its run went on.
    pub deleted: bool,
    /// Marked for the shootout.
    pub marked: bool,
    /// The name shown instead of the experiment's (attached run folders:
    /// `experiment/timestamp`).
    pub title: Option<String>,
    /// Before a run: the layers its settings would build (the model pane, `m`), with
    /// the ones fine-tuning trains marked; or why they could not be built.
    pub model_preview: Option<Result<Vec<crate::model::LayerInfo>, String>>,
    /// Before a run: the validation folder (`val`) when `data.dir` holds `train/` and
    /// one, so the folders fix the split (not `validation_split`).
    pub fixed_validation: Option<String>,
}

impl Entry {
    /// A list entry for a file and its load result.
    pub fn new(id: u64, path: PathBuf, file: FileState) -> Entry {
        Entry {
            id,
            path,
            file,
            run: None,
            pending_restart: Vec::new(),
            deleted: false,
            marked: false,
            model_preview: None,
            fixed_validation: None,
            title: None,
        }
    }

    /// The settings in force: the valid ones, else the last good ones.
    pub fn settings(&self) -> Option<&Experiment> {
        match &self.file {
            FileState::Valid(e) => Some(e),
            FileState::Invalid { last_good, .. } => last_good.as_deref(),
        }
    }

    /// The name shown: the experiment's, else the file stem.
    pub fn name(&self) -> String {
        if let Some(t) = &self.title {
            return t.clone();
        }
        match self.settings() {
            Some(e) => e.name.clone(),
            None => self
                .path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
        }
    }

    /// The one-word state for the list.
    pub fn state_label(&self) -> &'static str {
        match (&self.file, &self.run) {
            (_, Some(run)) if run.stall.is_some() && run.is_active() => "stalled",
            (_, Some(run)) => match run.status {
                RunStatus::Idle => "idle",
                RunStatus::Loading { .. } => "loading",
                RunStatus::Running => "running",
                RunStatus::Paused => "paused",
                // The header's word: a stopped run is not done.
                RunStatus::Done(crate::train::EndReason::Completed) => "done",
                RunStatus::Done(_) => "stopped",
                RunStatus::Failed(_) => "failed",
                RunStatus::Lost { .. } => "lost",
            },
            (FileState::Invalid { .. }, None) => "invalid",
            (FileState::Valid(_), None) => "idle",
        }
    }
}
