//! Handing the terminal to `$EDITOR` and taking it back; editing an attached run's
//! settings in a copy that goes to the run as a `set` line of its control file.

use std::path::{Path, PathBuf};

use anyhow::Context;
use ratatui::backend::Backend;
use ratatui::Terminal;

use crate::config;

/// What the editor is asked to open.
pub enum Editing {
    /// An experiment file of the list.
    File(PathBuf),
    /// A copy of an attached run's settings.
    Run(PathBuf),
}

/// Runs `$VISUAL`, `$EDITOR` (or `vi`) on `path` with the terminal handed over to it,
/// and takes the terminal back. Returns what to tell the user, if anything: the
/// editor's problem, or a step of taking the terminal back that failed. Nothing here
/// ends the dashboard or a run: taking the terminal back needs no answer from the
/// terminal (no cursor-position query, which tmux may leave unanswered after an
/// editor), each step is tried even if one before failed, and the next frame is drawn
/// in full on a fresh backend.
pub fn edit_file<B: CloneBackend>(terminal: &mut Terminal<B>, path: &Path) -> Vec<String> {
    ratatui::restore();
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".into());
    // Through the shell, so `code --wait` or `emacsclient -t` work.
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(path)
        .status();
    let mut said = Vec::new();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => said.push(format!("the editor `{editor}` exited with {s}")),
        Err(e) => said.push(format!("cannot run the editor `{editor}`: {e}")),
    }
    let steps: [(&str, std::io::Result<()>); 2] = [
        ("raw mode", crossterm::terminal::enable_raw_mode()),
        (
            "the alternate screen",
            crossterm::execute!(
                std::io::stdout(),
                crossterm::terminal::EnterAlternateScreen,
                crossterm::terminal::Clear(crossterm::terminal::ClearType::All)
            ),
        ),
    ];
    for (what, result) in steps {
        if let Err(e) = result {
            said.push(format!(
                "after the editor, {what} could not be set again ({e}); the runs go on"
            ));
        }
    }
    // A fresh terminal has an empty previous frame: the next draw repaints every cell.
    match Terminal::new(terminal.backend_mut().clone_backend()) {
        Ok(fresh) => *terminal = fresh,
        Err(e) => said.push(format!(
            "after the editor, the screen could not be reset ({e})"
        )),
    }
    said
}

/// Backends the loop can suspend for an editor.
pub trait CloneBackend: Backend<Error: Send + Sync + 'static> + Sized {
    /// A fresh backend on the same output.
    fn clone_backend(&mut self) -> Self;
}

impl CloneBackend for ratatui::backend::CrosstermBackend<std::io::Stdout> {
    fn clone_backend(&mut self) -> Self {
        ratatui::backend::CrosstermBackend::new(std::io::stdout())
    }
}

impl CloneBackend for ratatui::backend::TestBackend {
    fn clone_backend(&mut self) -> Self {
        let area = self.size().unwrap_or_default();
        ratatui::backend::TestBackend::new(area.width, area.height)
    }
}

/// A copy of an attached run's `config.yaml` to edit, outside the run folder.
pub fn settings_copy(run: &Path) -> anyhow::Result<PathBuf> {
    let exp = crate::train::run_dir::read_config(run)?;
    let copy = std::env::temp_dir().join(format!(
        "tlcap-edit-{}-{}.yaml",
        crate::train::run_dir::folder_name(&exp.name),
        std::process::id()
    ));
    std::fs::copy(run.join("config.yaml"), &copy)
        .with_context(|| format!("cannot copy {}", run.join("config.yaml").display()))?;
    Ok(copy)
}

/// Reads the edited copy: valid settings go to the run as a `set` line of its control
/// file; a broken edit sends nothing. Returns what to tell the user.
pub fn send_edited_settings(run: &Path, copy: &Path) -> Vec<String> {
    use crate::train::control::append;
    use crate::train::Command;
    let out = match config::load_file(copy) {
        Err(errors) => {
            let mut lines: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
            lines.push("nothing sent: the run keeps its settings".into());
            lines
        }
        Ok(exp) => match serde_json::to_value(&exp)
            .map_err(anyhow::Error::from)
            .and_then(|settings| Ok(append(run, &Command::Set { settings })?))
        {
            Ok(()) => vec![format!(
                "{}: settings sent; live ones apply from its next epoch",
                run.display()
            )],
            Err(e) => vec![format!(
                "{}: cannot send the settings: {e:#}",
                run.display()
            )],
        },
    };
    let _ = std::fs::remove_file(copy);
    out
}
