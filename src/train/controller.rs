//! The trainer: runs on its own OS thread, owns the phases and drives the epochs. It
//! takes every [`Command`] through one inbox ([`super::inbox`]) and handles each in
//! one place ([`Trainer::handle`]), emits [`Event`]s, and never touches the terminal.
//! The jobs it delegates each have their own file: the run's state ([`super::state`]),
//! opening or resuming the run folder ([`super::resume`]), live edits
//! ([`super::live_edit`]), one epoch ([`super::epoch`]), validation
//! ([`super::validate`]), cache planning ([`super::plan`]) and the stall helpers
//! ([`super::stall`]).

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::epoch::{Control, Progress};
use super::events::{Command, EndReason, Event, Phase, Phases, StallAction, Suggestion};
use super::inbox::{merge, Inbox, Next, Request, Source};
use super::predictions::ValPredictions;
use super::resume::Opened;
use super::run_dir::Summary;
use super::stall::{monitored, BestRule};
use super::state::{panic_message, Options, State};
use super::status::{Heartbeat, RunState, Status, HEARTBEAT};
use crate::config::{Experiment, OnStall, Weights};
use crate::data::Dataset;
use crate::model::classifier::Classifier;
use crate::runtime::{
    device_name, intra_op_threads, prepare_device, resolve_precision, select_device,
};

/// Trainer threads are named with this prefix and the experiment name.
pub const THREAD_PREFIX: &str = "trainer ";

/// The steering end of a trainer thread.
pub struct TrainerHandle {
    /// Send commands here.
    pub commands: flume::Sender<Command>,
    /// Events arrive here; the last one is `Finished` or `Error`.
    pub events: flume::Receiver<Event>,
    thread: JoinHandle<()>,
}

impl TrainerHandle {
    /// Whether the thread has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the thread to end.
    pub fn join(self) {
        let _ = self.thread.join();
    }
}

/// Starts a trainer for `exp` on its own thread.
pub fn spawn(exp: Experiment, options: Options) -> TrainerHandle {
    let threads = intra_op_threads();
    let (commands, command_rx) = flume::unbounded();
    let (event_tx, events) = flume::unbounded();
    let thread = std::thread::Builder::new()
        .name(format!("{THREAD_PREFIX}{}", exp.name))
        .spawn(move || {
            // The first call fixes this thread's count from the process-wide value
            // (which an input thread may have lowered); then set ours.
            let _ = tch::get_num_threads();
            tch::set_num_threads(threads);
            let events = event_tx.clone();
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                Trainer::new(exp, options, Inbox::new(command_rx), event_tx).run()
            }));
            let error = match result {
                Ok(Ok(())) => return,
                Ok(Err(e)) => format!("{e:#}"),
                Err(panic) => panic_message(panic.as_ref()),
            };
            let _ = events.send(Event::Error(error));
        })
        .expect("cannot start the trainer thread");
    TrainerHandle {
        commands,
        events,
        thread,
    }
}

/// Where the run is with respect to its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// Spawned without autostart: waiting for Start.
    Waiting,
    /// Training.
    Running,
    /// Held at a batch boundary until Resume.
    Paused,
    /// Told to stop (or nobody is left to train for).
    Stopping,
}

/// The trainer thread's own state: the settings in force, the inbox, and what the
/// requests asked for.
struct Trainer {
    exp: Experiment,
    /// An edit waiting for the next epoch boundary.
    pending: Option<Experiment>,
    /// The loaded data's classes (or labels) and whether it is multi-label, once
    /// loaded: what an edit is checked against when it comes.
    task: Option<(Vec<String>, bool)>,
    options: Options,
    inbox: Inbox,
    /// Events before the run state exists (loading, the model); the state has its own.
    events: flume::Sender<Event>,
    flow: Flow,
    /// Set when the user asked to unfreeze (or a stall did) during the frozen phase.
    unfreeze_requested: bool,
    /// Set when the user (or a stall) asked for the next block group while
    /// fine-tuning: who asked. Taken at the next epoch boundary.
    deepen_requested: Option<String>,
    /// Why the run was stopped, when a stop said so.
    stopped_by: Option<String>,
    /// Where the epoch in progress stands.
    progress: Progress,
    /// Time spent paused since the run began, and when the pause in force began.
    paused: Duration,
    paused_at: Option<Instant>,
    /// The summary is written: the heartbeat says finished.
    finished: bool,
    /// An epoch's batches are under way (an edit taken now waits for the next one).
    in_epoch: bool,
    /// The run folder's heartbeat, and the last status it was given.
    heartbeat: Option<Heartbeat>,
    last_status: Option<Status>,
}

impl Trainer {
    fn new(
        exp: Experiment,
        options: Options,
        inbox: Inbox,
        events: flume::Sender<Event>,
    ) -> Trainer {
        let flow = if options.autostart {
            Flow::Running
        } else {
            Flow::Waiting
        };
        Trainer {
            exp,
            pending: None,
            task: None,
            options,
            inbox,
            events,
            flow,
            unfreeze_requested: false,
            deepen_requested: None,
            stopped_by: None,
            progress: Progress {
                batches: (0, 0),
                images_per_sec: 0.0,
            },
            paused: Duration::ZERO,
            paused_at: None,
            finished: false,
            in_epoch: false,
            heartbeat: None,
            last_status: None,
        }
    }

    fn run(mut self) -> anyhow::Result<()> {
        let result = self.run_inner();
        if result.is_err() {
            self.beat_failed();
        }
        result
    }

    fn run_inner(&mut self) -> anyhow::Result<()> {
        // Spawned without autostart, wait for Start; with it, requests queued meanwhile
        // are taken at the first batch boundary.
        if !self.options.autostart && self.serve(None)? == Flow::Stopping {
            let _ = self.events.send(Event::Finished {
                reason: EndReason::Stopped,
                best: None,
                stopped_by: self.stopped_by.clone(),
            });
            return Ok(());
        }
        let events = self.events.clone();
        let last_sent = std::sync::atomic::AtomicUsize::new(0);
        let progress = move |done: usize, total: usize| {
            // At most ~100 events for the whole load.
            let step = (total / 100).max(1);
            if done == total || done >= last_sent.load(std::sync::atomic::Ordering::Relaxed) + step
            {
                last_sent.store(done, std::sync::atomic::Ordering::Relaxed);
                let _ = events.send(Event::Loading { done, total });
            }
        };
        let data = Dataset::load(&self.exp, &progress)?;
        let _ = self.events.send(Event::DataReady {
            classes: data.classes.clone(),
            train: data.train.len(),
            val: data.val.len(),
            skipped: data.skipped.len(),
        });
        if let Some(problems) = unfit(&self.exp, &data.classes, data.is_multilabel()) {
            anyhow::bail!("{problems}");
        }
        self.task = Some((data.classes.clone(), data.is_multilabel()));
        let device = select_device(&self.exp.device)?;
        prepare_device(device);
        let mut net =
            Classifier::build(&self.exp, data.classes.len(), data.is_multilabel(), device)?;
        net.set_precision(Some(resolve_precision(self.exp.precision, device)));
        let mut multilabel_note = None;
        if data.is_multilabel() {
            // Unknown label names were refused above (`task_problems`).
            let weights = self
                .exp
                .multilabel
                .pos_weight
                .resolve(&data.classes, &data.train_label_counts())
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            net.set_pos_weight(Some(&weights));
            let watch = if self.exp.stall.monitor == crate::config::Monitor::ValAccuracy {
                "; stall.monitor val_accuracy watches the share of right (image, label) \
                 decisions (val_mean_auc is the usual choice)"
            } else {
                ""
            };
            multilabel_note = Some(format!(
                "multi-label: {} labels, one sigmoid each; positive weights in the loss: {}{watch}",
                data.classes.len(),
                named_weights(&data.classes, &weights)
            ));
        }
        if let Some(rule) = &self.exp.data.class_weight {
            let train: Vec<usize> = data.split_counts().iter().map(|c| c.0).collect();
            let weights = rule
                .resolve(&data.classes, &train)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            net.set_class_weights(Some(&weights));
            let _ = self.events.send(Event::Note(format!(
                "class weights in the training loss: {}",
                named_weights(&data.classes, &weights)
            )));
        }
        let weights = match &self.exp.model.weights {
            Weights::None => "none (trained from scratch)".to_string(),
            Weights::Imagenet => format!("ImageNet ({})", self.exp.model.backbone.name()),
            Weights::File(p) => p.display().to_string(),
        };
        let _ = self.events.send(Event::ModelReady {
            device: device_name(device),
            weights,
            layers: net.table().layers().cloned().collect(),
            precision: crate::runtime::precision_of(net.precision()),
        });
        let Opened {
            mut state,
            unfreeze_requested,
            deepen_requested,
        } = super::resume::open(
            &self.exp,
            &mut self.options,
            net,
            &data,
            self.events.clone(),
        )?;
        // Said once the run has its folder (JSON readers get `started` first).
        if let Some(words) = multilabel_note {
            let _ = self.events.send(Event::Note(words));
        }
        if let Some(words) = data.outside_words() {
            let _ = self.events.send(Event::Note(words));
        }
        if let Some(words) = data.cache_words() {
            let _ = self
                .events
                .send(Event::Note(format!("image cache: {words}")));
        }
        self.unfreeze_requested = unfreeze_requested;
        self.deepen_requested = deepen_requested.then(|| "on_stall: unfreeze_more".to_string());
        self.inbox.listen_to_control_file(&state.run.path)?;
        self.heartbeat = Some(Heartbeat::new(&state.run.path));
        self.phase_event(&mut state);
        let reason = self.train(&mut state, &data)?;
        self.finish(&mut state, reason)
    }

    /// Takes what the inbox holds, handling each request. While the run waits for
    /// Start or is paused, blocks for more (keeping the heartbeat going); otherwise
    /// returns once the inbox is empty. Returns the flow it leaves: Running or
    /// Stopping.
    fn serve(&mut self, mut s: Option<&mut State>) -> anyhow::Result<Flow> {
        loop {
            let holding = matches!(self.flow, Flow::Waiting | Flow::Paused);
            let next = self.inbox.next(holding.then_some(HEARTBEAT));
            match next {
                Next::Request(request) => self.handle(s.as_deref_mut(), request)?,
                Next::Empty if holding => {
                    if let Some(s) = s.as_deref() {
                        self.beat(s, false);
                    }
                }
                Next::Empty => return Ok(self.flow),
                // The handle is gone: nobody to train for.
                Next::Gone => self.flow = Flow::Stopping,
            }
            if self.flow == Flow::Stopping {
                return Ok(Flow::Stopping);
            }
        }
    }

    /// Handles one request: the one place where every command, from any source, takes
    /// effect. `s` is None before the run state exists (waiting for Start).
    fn handle(&mut self, mut s: Option<&mut State>, request: Request) -> anyhow::Result<()> {
        let Request { command, source } = request;
        let command = match command {
            Ok(c) => c,
            Err(why) => {
                self.note(s, format!("{}: {why}; ignored", source.name()));
                return Ok(());
            }
        };
        // A `set` line's settings, merged into the ones in force, are an edit.
        let command = match command {
            Command::Set { settings } => match self.merged(&settings, s.as_deref()) {
                Ok(exp) => Command::Apply(exp),
                Err(why) => {
                    self.note(s, format!("{}: set: {why}; ignored", source.name()));
                    return Ok(());
                }
            },
            other => other,
        };
        if let Source::ControlFile(_) = source {
            let event = Event::Control {
                command: command.name().into(),
                source: source.name(),
            };
            match s.as_deref_mut() {
                Some(s) => s.emit(event),
                None => {
                    let _ = self.events.send(event);
                }
            }
        }
        match (command, self.flow) {
            (Command::Start, Flow::Waiting) => self.flow = Flow::Running,
            (Command::Start | Command::Resume, Flow::Paused) => {
                self.flow = Flow::Running;
                if let Some(at) = self.paused_at.take() {
                    self.paused += at.elapsed();
                }
                if let Some(s) = s {
                    s.emit(Event::Resumed);
                    self.beat(s, true);
                }
            }
            (Command::Pause, Flow::Running) => {
                if let Some(s) = s {
                    self.flow = Flow::Paused;
                    self.paused_at = Some(Instant::now());
                    s.emit(Event::Paused);
                    self.beat(s, true);
                }
            }
            (Command::Stop { by }, _) => {
                self.flow = Flow::Stopping;
                self.stopped_by = match source {
                    Source::ControlFile(_) => Some(super::control::FILE.into()),
                    Source::Handle => by,
                };
            }
            (Command::Unfreeze, _) => match s {
                Some(s) if s.phase == Phase::Frozen => {
                    self.enter_finetune(s, self.exp.finetune.unfreeze_last)?;
                }
                // While fine-tuning: the next block group, from the next epoch.
                Some(s) => match self.next_group(s) {
                    Some((group, layers)) => {
                        let by = match source {
                            Source::Handle => "u".to_string(),
                            Source::ControlFile(_) => super::control::FILE.to_string(),
                        };
                        self.deepen_requested = Some(by);
                        let epoch = s.epoch + if self.in_epoch { 2 } else { 1 };
                        s.emit(Event::Note(format!(
                            "unfreezing {group} from epoch {epoch}: the last {layers} layers \
                             will train"
                        )));
                    }
                    None => s.emit(Event::Note(self.nothing_to_unfreeze(s))),
                },
                None => {}
            },
            (Command::LowerLr, _) => {
                if let Some(s) = s {
                    let next_batch = self.progress.batches.0 + 1;
                    let by = match source {
                        Source::Handle => "r".to_string(),
                        Source::ControlFile(_) => super::control::FILE.to_string(),
                    };
                    self.lower_lr(s, Some(next_batch), &by)?;
                }
            }
            // Before the run begins, an edit simply replaces the settings.
            (Command::Apply(exp), Flow::Waiting) => self.exp = *exp,
            // An edit that does not fit the data (a threshold or weight for a label it
            // lacks, class weights on multi-label data) is refused whole when it comes,
            // as the start would refuse it; the settings in force (and an edit already
            // waiting) stay.
            (Command::Apply(exp), _) => match self.unfit_edit(&exp) {
                Some(problems) => self.note(
                    s,
                    format!("edit not applied, the settings in force stay: {problems}"),
                ),
                None => {
                    self.pending = Some(*exp);
                    if let Some(s) = s {
                        // Applied at the next epoch boundary (`apply_pending`).
                        let epoch = s.epoch + if self.in_epoch { 2 } else { 1 };
                        s.emit(Event::EditQueued { epoch });
                    }
                }
            },
            // Start while running, Resume while running, Pause while paused: nothing
            // to do. (`Set` became `Apply` above.)
            (Command::Start | Command::Resume | Command::Pause | Command::Set { .. }, _) => {}
        }
        Ok(())
    }

    /// A note to whoever watches: through the run's events once it has a state.
    fn note(&mut self, s: Option<&mut State>, text: String) {
        match s {
            Some(s) => s.emit(Event::Note(text)),
            None => {
                let _ = self.events.send(Event::Note(text));
            }
        }
    }

    /// What makes an edit unfit for the loaded data, or None (also None before the
    /// data is loaded: the start checks it then).
    fn unfit_edit(&self, edited: &Experiment) -> Option<String> {
        let (classes, multilabel) = self.task.as_ref()?;
        unfit(edited, classes, *multilabel)
    }

    /// The settings in force (or waiting) with `settings` merged in, validated as an
    /// experiment file is.
    fn merged(
        &self,
        settings: &serde_json::Value,
        s: Option<&State>,
    ) -> Result<Box<Experiment>, String> {
        let base = self.pending.as_ref().unwrap_or(&self.exp);
        let mut value = serde_json::to_value(base).map_err(|e| e.to_string())?;
        merge(&mut value, settings);
        let text = serde_yaml::to_string(&value).map_err(|e| e.to_string())?;
        let at = s
            .map(|s| s.run.path.join(super::control::FILE))
            .unwrap_or_default();
        crate::config::parse_str(&text, &at)
            .map(Box::new)
            .map_err(|e| e.to_string().replace('\n', "; "))
    }

    /// At a batch boundary: takes the requests waiting (holding there while paused)
    /// and keeps the heartbeat going.
    fn between_batches(&mut self, s: &mut State, progress: Progress) -> anyhow::Result<Control> {
        self.progress = progress;
        self.beat(s, false);
        let before = self.paused;
        let flow = self.serve(Some(s))?;
        Ok(match flow {
            Flow::Stopping => Control::Stop,
            _ => Control::Continue {
                paused: self.paused - before,
            },
        })
    }

    /// Starts the fine-tune phase with `n` layers unfrozen.
    fn enter_finetune(&mut self, s: &mut State, n: usize) -> anyhow::Result<()> {
        s.enter_finetune(&self.exp.finetune, n)?;
        self.unfreeze_requested = false;
        self.phase_event(s);
        Ok(())
    }

    /// The next block group progressive unfreezing would add while fine-tuning, and
    /// the layers trainable after it; None when the whole network trains already or
    /// `finetune.max_groups` is reached.
    fn next_group(&self, s: &State) -> Option<(String, usize)> {
        if s.phase != Phase::Finetune {
            return None;
        }
        let backbone = &s.net.backbone;
        let (group, layers) = backbone.next_group(s.unfrozen)?;
        let allowed = self
            .exp
            .finetune
            .max_groups
            .is_none_or(|max| backbone.groups_reached(layers) <= max);
        allowed.then(|| (group.name.clone(), layers))
    }

    /// Why there is no next block group to unfreeze.
    fn nothing_to_unfreeze(&self, s: &State) -> String {
        let backbone = &s.net.backbone;
        match self.exp.finetune.max_groups {
            Some(max) if backbone.next_group(s.unfrozen).is_some() => format!(
                "not unfreezing more: finetune.max_groups is {max} and {} groups train",
                backbone.groups_reached(s.unfrozen)
            ),
            _ => "nothing more to unfreeze: the whole network trains".to_string(),
        }
    }

    /// One step of progressive unfreezing: the next block group trains from the next
    /// epoch, recorded like an edit of `finetune.unfreeze_last` (so the run folder's
    /// settings and a resume keep the depth).
    fn deepen(&mut self, s: &mut State, by: String) -> anyhow::Result<()> {
        let Some((group, layers)) = self.next_group(s) else {
            let why = self.nothing_to_unfreeze(s);
            s.emit(Event::Note(why));
            return Ok(());
        };
        let mut next = self.exp.clone();
        next.finetune.unfreeze_last = layers;
        let changes = crate::config::diff(&self.exp, &next);
        self.exp = next;
        s.set_finetune_layers(&self.exp.finetune, layers)?;
        s.deepened += 1;
        s.run.record_config(s.epoch + 1, &self.exp, &changes)?;
        let backbone = &s.net.backbone;
        let deepened = super::events::Deepened {
            group,
            groups: backbone.groups_reached(s.unfrozen),
            of: backbone.groups().len(),
            by,
        };
        self.emit_phase(s, Some(deepened));
        Ok(())
    }

    /// Says the phase and trainable layers now in force.
    fn phase_event(&mut self, s: &mut State) {
        self.emit_phase(s, None);
    }

    /// [`Trainer::phase_event`], saying whether progressive unfreezing caused it.
    fn emit_phase(&mut self, s: &mut State, deepened: Option<super::events::Deepened>) {
        let event = Event::PhaseChanged {
            phase: s.phase,
            epoch: s.epoch + 1,
            trainable_layers: s.net.table().layers().filter(|l| l.trainable).count(),
            trainable_params: s.net.table().trainable_params(),
            layers: s.net.table().layers().cloned().collect(),
            epochs: self.planned_epochs(s),
            deepened,
        };
        s.emit(event);
        self.beat(s, true);
    }

    /// Epochs the run plans in all: the one place this is counted (the dashboard, the
    /// headless output and the heartbeat are told).
    fn planned_epochs(&self, s: &State) -> u32 {
        let total = match (self.options.phases, s.phase) {
            (Phases::Frozen, _) => self.exp.frozen.epochs,
            (_, Phase::Frozen) => self.exp.planned_epochs(None),
            (_, Phase::Finetune) => self
                .exp
                .planned_epochs(Some(s.epoch.saturating_sub(s.phase_epochs))),
        };
        self.options.max_epochs.map_or(total, |m| m.min(total))
    }

    /// Whether a run in `s` can still go from frozen to fine-tuning: the one rule for
    /// phase changes and for stall suggestions.
    fn can_unfreeze(&self, s: &State) -> bool {
        s.phase == Phase::Frozen
            && self.options.phases == Phases::Both
            && self.exp.finetune.epochs > 0
    }

    /// Takes an edit waiting since the last epoch: live settings apply now. (Edits
    /// that do not fit the data were refused when they came: `handle`.)
    fn apply_pending(&mut self, s: &mut State) -> anyhow::Result<()> {
        let Some(edited) = self.pending.take() else {
            return Ok(());
        };
        let applied = super::live_edit::apply(s, &self.exp, &edited)?;
        self.exp = applied.next;
        if applied.layers_changed {
            self.phase_event(s);
        }
        let epoch = s.epoch + 1;
        s.run.record_config(epoch, &self.exp, &applied.changes)?;
        let epochs = self.planned_epochs(s);
        s.emit(Event::ConfigApplied {
            changes: applied.changes,
            epoch,
            epochs,
        });
        Ok(())
    }

    fn train(&mut self, s: &mut State, data: &Dataset) -> anyhow::Result<EndReason> {
        loop {
            // Requests that came during validation are taken now, so an edit among
            // them applies from the next epoch (as `EditQueued` said); a pause holds
            // here, a stop ends the next epoch at its first batch.
            self.serve(Some(s))?;
            self.apply_pending(s)?;
            if self.options.max_epochs.is_some_and(|m| s.epoch >= m) {
                return Ok(EndReason::Completed);
            }
            if self.unfreeze_requested && s.phase == Phase::Frozen {
                self.enter_finetune(s, self.exp.finetune.unfreeze_last)?;
            }
            if let Some(by) = self.deepen_requested.take() {
                self.deepen(s, by)?;
            }
            let phase_len = match s.phase {
                Phase::Frozen => self.exp.frozen.epochs,
                Phase::Finetune => self.exp.finetune.epochs,
            };
            if s.phase_epochs >= phase_len {
                if !self.can_unfreeze(s) {
                    return Ok(EndReason::Completed);
                }
                self.enter_finetune(s, self.exp.finetune.unfreeze_last)?;
                continue;
            }
            let exp = self.exp.clone();
            self.in_epoch = true;
            let epoch = super::epoch::run(s, data, &exp, &mut |s, progress| {
                self.between_batches(s, progress)
            })?;
            self.in_epoch = false;
            let Some(mut m) = epoch else {
                return Ok(EndReason::Stopped);
            };
            s.epoch += 1;
            s.phase_epochs += 1;
            self.progress = Progress {
                batches: (0, 0),
                images_per_sec: 0.0,
            };
            let value = monitored(self.exp.stall.monitor, &m);
            let (mut stop, mut reduce) = (false, false);
            if s.stall.observe(m.epoch.saturating_sub(1), value) {
                m.stalled = true;
                let (suggestion, action) = self.on_stall(s, value);
                m.suggestion = Some(suggestion);
                match action {
                    OnStall::Stop => stop = true,
                    OnStall::Unfreeze => self.unfreeze_requested = true,
                    OnStall::UnfreezeMore => {
                        self.deepen_requested = Some("on_stall: unfreeze_more".to_string())
                    }
                    OnStall::ReduceLr => reduce = true,
                    OnStall::Suggest => {}
                }
            }
            // On disk before the next epoch: the metrics line, then the checkpoints.
            let improved = s
                .best
                .as_ref()
                .is_none_or(|b| BestRule::of(&self.exp).is_better(&m, b));
            let thresholds = m.multilabel.as_ref().map(|ml| ml.thresholds());
            let info = s.checkpoint_info(&data.classes, thresholds.clone());
            let tensors = s.net.checkpoint_tensors();
            s.run.append_metrics(&m)?;
            if improved {
                s.run.write_checkpoint("best", &tensors, &info)?;
                let predictions = match thresholds {
                    None => ValPredictions::new(
                        (m.epoch, m.phase),
                        &data.classes,
                        data.val
                            .iter()
                            .map(|&i| (data.files[i].clone(), data.labels[i]))
                            .collect(),
                        &s.val_probabilities,
                    ),
                    Some(at) => ValPredictions::new_multilabel(
                        (m.epoch, m.phase),
                        &data.classes,
                        data.val
                            .iter()
                            .map(|&i| (data.files[i].clone(), data.label_indices(i)))
                            .collect(),
                        &s.val_probabilities,
                        at,
                    ),
                };
                predictions.write(&s.run.path)?;
                s.best = Some(m.clone());
            }
            let last = s.run.write_checkpoint("last", &tensors, &info)?;
            s.emit(Event::EpochEnd(m.clone()));
            if let Some(suggestion) = m.suggestion.clone().filter(|_| m.stalled) {
                s.emit(Event::Stalled {
                    epoch: m.epoch,
                    suggestion,
                });
            }
            s.emit(Event::Checkpoint(last));
            if reduce {
                self.lower_lr(s, None, "on_stall: reduce_lr")?;
            }
            self.beat(s, true);
            if stop {
                return Ok(EndReason::Stalled);
            }
        }
    }

    /// The suggestion for a stall, and what `on_stall` makes of it.
    fn on_stall(&self, s: &State, value: f64) -> (Suggestion, OnStall) {
        let st = &self.exp.stall;
        let ft = &self.exp.finetune;
        let lower = st.lowered(s.lr);
        let deeper = self.next_group(s);
        let (action, on_stall) = match (st.on_stall, self.can_unfreeze(s), lower, deeper) {
            (OnStall::Stop, ..) => (StallAction::Stopping, OnStall::Stop),
            (OnStall::ReduceLr, _, Some(to), _) => {
                (StallAction::LowerLr { from: s.lr, to }, OnStall::ReduceLr)
            }
            (action, true, ..) => {
                let automatic = matches!(action, OnStall::Unfreeze | OnStall::UnfreezeMore);
                (
                    StallAction::Unfreeze {
                        layers: ft.unfreeze_last,
                        lr: ft.lr,
                        automatic,
                    },
                    if automatic {
                        OnStall::Unfreeze
                    } else {
                        OnStall::Suggest
                    },
                )
            }
            (action, false, _, Some((group, layers))) => {
                let automatic = action == OnStall::UnfreezeMore;
                (
                    StallAction::UnfreezeMore {
                        group,
                        layers,
                        automatic,
                    },
                    if automatic {
                        OnStall::UnfreezeMore
                    } else {
                        OnStall::Suggest
                    },
                )
            }
            (_, false, lower, None) => (
                StallAction::StopOrLowerLr {
                    to: lower.unwrap_or(s.lr),
                },
                OnStall::Suggest,
            ),
        };
        let suggestion = Suggestion {
            monitor: st.monitor,
            value,
            min_delta: st.min_delta,
            patience: st.patience,
            action,
        };
        (suggestion, on_stall)
    }

    /// Lowers the current phase's learning rate by the stall rule from now on, and
    /// records it in the run folder like an edit of that phase's `lr`. `batch`: the
    /// first batch of the epoch in progress at the new rate (None between epochs).
    fn lower_lr(&mut self, s: &mut State, batch: Option<usize>, by: &str) -> anyhow::Result<()> {
        let Some(to) = self.exp.stall.lowered(s.lr) else {
            s.emit(Event::Note(format!(
                "the learning rate {:e} is at stall.min_lr already: not lowered",
                s.lr
            )));
            return Ok(());
        };
        let mut next = self.exp.clone();
        match s.phase {
            Phase::Frozen => next.frozen.lr = to,
            Phase::Finetune => next.finetune.lr = to,
        }
        let changes = crate::config::diff(&self.exp, &next);
        self.exp = next;
        let from = s.lr;
        s.lr = to;
        s.opt.set_lr(to);
        let epoch = s.epoch + 1;
        s.run.record_config(epoch, &self.exp, &changes)?;
        s.emit(Event::LrLowered {
            from,
            to,
            epoch,
            batch: batch.filter(|b| *b > 1),
            by: by.to_string(),
        });
        Ok(())
    }

    fn finish(&mut self, s: &mut State, reason: EndReason) -> anyhow::Result<()> {
        let summary = Summary {
            experiment: self.exp.name.clone(),
            backbone: self.exp.model.backbone.name().to_string(),
            reason,
            epochs: s.epoch,
            phase: s.phase,
            best: s.best.clone(),
            parameters: s.net.table().layers().map(|l| l.params).sum::<usize>()
                + s.net.head_params(),
            trainable_parameters: s.net.table().trainable_params() + s.net.head_params(),
            device: device_name(s.net.device()),
            stopped_by: self.stopped_by.clone(),
        };
        s.run.write_summary(&summary)?;
        if self.options.export_model {
            let path = s.run.path.join("model.safetensors");
            crate::weights::write_safetensors(&path, &s.net.all_variables(), None)?;
        }
        self.finished = true;
        self.beat(s, true);
        s.emit(Event::Finished {
            reason,
            best: s.best.clone(),
            stopped_by: self.stopped_by.clone(),
        });
        Ok(())
    }

    /// Writes the heartbeat if due (or `force`), with what the run is doing now.
    fn beat(&mut self, s: &State, force: bool) {
        let due = self.heartbeat.as_ref().is_some_and(|h| h.due());
        if !(force || due) {
            return;
        }
        let state = match self.flow {
            _ if self.finished => RunState::Finished,
            Flow::Paused => RunState::Paused,
            _ => RunState::Running,
        };
        let (batch, images_per_sec) = match state {
            RunState::Finished => ((0, 0), 0.0),
            _ => (self.progress.batches, self.progress.images_per_sec),
        };
        let epoch = match state {
            RunState::Finished | RunState::Failed => s.epoch,
            _ => s.epoch + 1,
        };
        let status = Status {
            experiment: self.exp.name.clone(),
            pid: std::process::id(),
            host: super::status::host_name(),
            state,
            phase: s.phase,
            epoch,
            epochs: self.planned_epochs(s),
            batch,
            images_per_sec,
            updated_at: String::new(),
        };
        self.last_status = Some(status.clone());
        if let Some(h) = self.heartbeat.as_mut() {
            h.write(status);
        }
    }

    /// The heartbeat of a run that failed: its last status, marked failed.
    fn beat_failed(&mut self) {
        if let (Some(mut last), Some(h)) = (self.last_status.take(), self.heartbeat.as_mut()) {
            last.state = RunState::Failed;
            h.write(last);
        }
        self.inbox.close_control_file();
    }
}

/// What makes `exp` unfit for data with these classes (or labels)
/// ([`crate::data::task_problems`]) in one line, or None: the start refuses the run
/// with it, a live edit is refused with it.
fn unfit(exp: &Experiment, classes: &[String], multilabel: bool) -> Option<String> {
    let problems = crate::data::task_problems(exp, classes, multilabel);
    let words: Vec<String> = problems.into_iter().map(|(_, e)| e).collect();
    (!words.is_empty()).then(|| words.join("; "))
}

/// `defective 2.209, functional 0.728`: each class's (or label's) weight.
fn named_weights(classes: &[String], weights: &[f64]) -> String {
    let shown: Vec<String> = classes
        .iter()
        .zip(weights)
        .map(|(c, w)| format!("{c} {w:.3}"))
        .collect();
    shown.join(", ")
}
