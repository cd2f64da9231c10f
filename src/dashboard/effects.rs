//! Carrying out what `app::update` asks for ([`Action`]s): starting trainers and
//! sending them commands, appending control lines for attached runs, and background
//! jobs. Everything the dashboard does to the world goes through here; the state is
//! changed only by `update`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_util::stream::{BoxStream, SelectAll};
use futures_util::StreamExt;

use super::editor::Editing;
use super::jobs::Jobs;
use crate::app::{Action, AppEvent};
use crate::train::{self, Command, Options, TrainerHandle};

/// The dashboard's side of the world: the trainers it started and its jobs.
pub struct Effects {
    /// Trainers alive, by entry id.
    trainers: HashMap<u64, TrainerHandle>,
    /// Every trainer's events, tagged with its entry id: the loop awaits this.
    pub trainer_events: SelectAll<BoxStream<'static, AppEvent>>,
    /// Background jobs.
    pub jobs: Jobs,
    /// Where results of jobs and notes go.
    events: flume::Sender<AppEvent>,
    runs_root: PathBuf,
    /// The folder the dashboard watches (the key of its kept selection).
    target: PathBuf,
}

impl Effects {
    /// Effects whose results and notes go to `events`, with run folders under
    /// `runs_root`.
    pub fn new(events: flume::Sender<AppEvent>, runs_root: PathBuf, target: PathBuf) -> Effects {
        Effects {
            trainers: HashMap::new(),
            trainer_events: SelectAll::new(),
            jobs: Jobs::new(events.clone()),
            events,
            runs_root,
            target,
        }
    }

    /// Carries out `actions`; returns the file to hand to the editor, if one asked.
    pub fn perform(&mut self, actions: Vec<Action>) -> Option<Editing> {
        let mut edit = None;
        for action in actions {
            match action {
                Action::Start(id, exp) => {
                    let handle = train::spawn(
                        *exp,
                        Options {
                            runs_root: self.runs_root.clone(),
                            autostart: true,
                            ..Default::default()
                        },
                    );
                    let events = handle.events.clone().into_stream();
                    self.trainer_events
                        .push(events.map(move |e| AppEvent::Trainer(id, e)).boxed());
                    // A run started again replaces the ended one's handle.
                    if let Some(old) = self.trainers.insert(id, handle) {
                        old.join();
                    }
                }
                Action::Send(id, command) => {
                    if let Some(t) = self.trainers.get(&id) {
                        let _ = t.commands.send(command);
                    }
                }
                Action::LoadPredictions(dir) => self.jobs.spawn("reading predictions", move || {
                    let read = crate::train::predictions::ValPredictions::read(&dir)
                        .map(Box::new)
                        .map_err(|e| format!("{e:#}"));
                    AppEvent::Predictions(dir, read)
                }),
                Action::LoadPreview(path) => self.jobs.spawn("decoding a preview", move || {
                    // Small: a preview is a few dozen cells, even as graphics.
                    let image = crate::data::open_image(&path)
                        .map(|i| Box::new(i.thumbnail(320, 320)))
                        .map_err(|e| e.to_string());
                    AppEvent::Preview(path, image)
                }),
                Action::DescribeModel(path, exp) => {
                    self.jobs.spawn("building the model's layers", move || {
                        let built = std::panic::catch_unwind(|| {
                            let vs = tch::nn::VarStore::new(tch::Device::Cpu);
                            let mut net =
                                crate::model::Backbone::new(&vs.root(), exp.model.backbone, false);
                            net.table_mut().unfreeze_last(exp.finetune.unfreeze_last);
                            net.table().layers().cloned().collect::<Vec<_>>()
                        })
                        .map_err(|_| "the layers could not be built".to_string());
                        AppEvent::ModelPreview(path, built)
                    })
                }
                Action::DescribeData(path, dir) => {
                    self.jobs.spawn("looking at a data folder", move || {
                        let folder = crate::data::fixed_validation_folder(&dir);
                        AppEvent::DataLayout(path, dir, folder)
                    })
                }
                Action::RememberSelection(path) => {
                    if let Err(e) = super::selection::write(&self.runs_root, &self.target, &path) {
                        let _ = self.events.send(AppEvent::Info(format!(
                            "cannot keep the selection in {}: {e:#}",
                            self.runs_root.display()
                        )));
                    }
                }
                Action::Edit(path) => edit = Some(Editing::File(path)),
                Action::EditRun(run) => edit = Some(Editing::Run(run)),
                Action::Control(run, command) => {
                    let event = match crate::train::control::append(&run, &command) {
                        Ok(()) => {
                            AppEvent::Info(format!("{}: {} sent", run.display(), command.name()))
                        }
                        Err(e) => AppEvent::ControlFailed(run, e.to_string()),
                    };
                    let _ = self.events.send(event);
                }
                Action::ExportShootout(dirs) => {
                    // Off the UI loop: reading every run folder and writing the results
                    // takes disk time the screen should not wait for.
                    let runs_root = self.runs_root.clone();
                    self.jobs.spawn("exporting the shootout", move || {
                        let rows: Vec<_> = dirs
                            .iter()
                            .filter_map(|d| crate::results::summarize(d).ok().flatten())
                            .collect();
                        AppEvent::Info(match crate::shootout::export(&runs_root, &rows) {
                            Ok(dir) => format!("shootout done: results in {}", dir.display()),
                            Err(e) => format!(
                                "shootout done, but the results could not be written: {e:#}"
                            ),
                        })
                    });
                }
            }
        }
        self.reap();
        edit
    }

    /// Joins the trainers and jobs that have ended.
    pub fn reap(&mut self) {
        let ended: Vec<u64> = self
            .trainers
            .iter()
            .filter(|(_, t)| t.is_finished())
            .map(|(id, _)| *id)
            .collect();
        for id in ended {
            if let Some(t) = self.trainers.remove(&id) {
                t.join();
            }
        }
        self.jobs.reap();
    }

    /// Where run folders go.
    pub fn runs_root(&self) -> &std::path::Path {
        &self.runs_root
    }

    /// Stops every trainer still alive (each saves a checkpoint).
    pub fn stop_trainers(&self) {
        for t in self.trainers.values() {
            let _ = t.commands.send(Command::STOP);
        }
    }

    /// Waits up to `deadline` for the trainers' threads and the jobs to end.
    pub fn wait(&mut self, deadline: Instant) {
        while !self.trainers.is_empty() && Instant::now() < deadline {
            self.reap();
            std::thread::sleep(Duration::from_millis(10));
        }
        self.jobs.wait(deadline);
    }
}
