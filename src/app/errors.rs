//! The error-analysis view (`v`): the selected run's confusion matrix and per-class
//! scores for an epoch (the best by default), its validation images from the most
//! badly predicted, and a picture of the selected one. The predictions and the
//! picture are read from disk by the loop (actions), never here.

use std::path::PathBuf;

use crossterm::event::KeyCode;

use super::{Action, App};
use crate::train::predictions::ValPredictions;

/// What the view shows and where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorsView {
    /// The run folder the view is about.
    pub run_dir: PathBuf,
    /// The epoch of the matrix and scores; None: the best.
    pub epoch: Option<u32>,
    /// Index into the images, worst first.
    pub selected: usize,
    /// Multi-label: the label the images are ordered by (`f` steps through them);
    /// None: each image by its worst label.
    pub label: Option<usize>,
    /// The best epoch's predictions, once read (or why they could not be).
    pub predictions: Option<Result<Box<ValPredictions>, String>>,
    /// The selected image, once decoded (or why it could not be).
    pub preview: Option<(PathBuf, Result<Box<image::DynamicImage>, String>)>,
}

impl ErrorsView {
    /// The images, worst first, when read.
    pub fn worst_first(&self) -> Vec<&crate::train::predictions::ValPrediction> {
        match &self.predictions {
            Some(Ok(p)) => p.worst_first_for(self.label),
            _ => Vec::new(),
        }
    }

    /// The selected image's file.
    pub fn selected_path(&self) -> Option<PathBuf> {
        self.worst_first()
            .get(self.selected)
            .map(|p| p.path.clone())
    }
}

/// `v`: opens the view on the selected run (reading its predictions), or closes it.
pub(super) fn toggle(app: &mut App) -> Vec<Action> {
    if app.errors.take().is_some() {
        return Vec::new();
    }
    let Some(run) = app.current().and_then(|e| e.run.as_ref()) else {
        app.say(
            false,
            "no run yet: the error analysis needs a finished epoch",
        );
        return Vec::new();
    };
    let Some(dir) = run.run_dir.clone() else {
        app.say(
            false,
            "no run folder yet: the error analysis needs a finished epoch",
        );
        return Vec::new();
    };
    app.errors = Some(ErrorsView {
        run_dir: dir.clone(),
        epoch: None,
        selected: 0,
        label: None,
        predictions: None,
        preview: None,
    });
    vec![Action::LoadPredictions(dir)]
}

/// Keys while the view is open; None when the key is not the view's.
pub(super) fn on_key(app: &mut App, code: KeyCode) -> Option<Vec<Action>> {
    let epochs: Vec<u32> = app
        .current()
        .and_then(|e| e.run.as_ref())
        .map(|r| r.epochs.iter().map(|m| m.epoch).collect())
        .unwrap_or_default();
    let view = app.errors.as_mut()?;
    let count = view.worst_first().len();
    let step: isize = match code {
        KeyCode::Down | KeyCode::Char('j') => 1,
        KeyCode::Up | KeyCode::Char('k') => -1,
        KeyCode::PageDown => 10,
        KeyCode::PageUp => -10,
        KeyCode::Home => -(count as isize),
        KeyCode::End => count as isize,
        // Multi-label: the images by one label after another, then by their worst.
        KeyCode::Char('f') => {
            let labels = match &view.predictions {
                Some(Ok(p)) if p.is_multilabel() => p.classes.len(),
                _ => return None,
            };
            view.label = match view.label {
                None if labels > 0 => Some(0),
                Some(l) if l + 1 < labels => Some(l + 1),
                _ => None,
            };
            view.selected = 0;
            return Some(preview_action(view));
        }
        // ←/→: the matrix of an earlier or later epoch; past the last, the best again.
        KeyCode::Left | KeyCode::Right => {
            let at = view.epoch.and_then(|e| epochs.iter().position(|x| *x == e));
            view.epoch = match (code, at) {
                (KeyCode::Left, None) => epochs.last().copied(),
                (KeyCode::Left, Some(0)) => None,
                (KeyCode::Left, Some(i)) => Some(epochs[i - 1]),
                (_, None) => epochs.first().copied(),
                (_, Some(i)) => epochs.get(i + 1).copied(),
            };
            return Some(Vec::new());
        }
        _ => return None,
    };
    view.selected = view
        .selected
        .saturating_add_signed(step)
        .min(count.saturating_sub(1));
    Some(preview_action(view))
}

/// Asks for the selected image unless it is the one shown.
fn preview_action(view: &ErrorsView) -> Vec<Action> {
    match view.selected_path() {
        Some(path) if view.preview.as_ref().map(|p| &p.0) != Some(&path) => {
            vec![Action::LoadPreview(path)]
        }
        _ => Vec::new(),
    }
}

/// The predictions of `run_dir` were read.
pub(super) fn on_predictions(
    app: &mut App,
    run_dir: PathBuf,
    predictions: Result<Box<ValPredictions>, String>,
) -> Vec<Action> {
    let Some(view) = app.errors.as_mut().filter(|v| v.run_dir == run_dir) else {
        return Vec::new();
    };
    view.predictions = Some(predictions);
    view.selected = view
        .selected
        .min(view.worst_first().len().saturating_sub(1));
    preview_action(view)
}

/// An image was decoded for the preview.
pub(super) fn on_preview(
    app: &mut App,
    path: PathBuf,
    image: Result<Box<image::DynamicImage>, String>,
) {
    if let Some(view) = app.errors.as_mut() {
        if view.selected_path().as_ref() == Some(&path) {
            view.preview = Some((path, image));
        }
    }
}

/// After a trainer event of entry `id`: a new best epoch of the run in view means new
/// predictions to read.
pub(super) fn after_epoch(app: &App, id: u64, best_before: Option<usize>) -> Vec<Action> {
    let Some(view) = &app.errors else {
        return Vec::new();
    };
    let Some(run) = app
        .entries
        .iter()
        .find(|e| e.id == id)
        .and_then(|e| e.run.as_ref())
    else {
        return Vec::new();
    };
    if run.run_dir.as_ref() == Some(&view.run_dir) && run.best() != best_before {
        vec![Action::LoadPredictions(view.run_dir.clone())]
    } else {
        Vec::new()
    }
}
