//! The selected experiment: its settings while idle, or its run: header with
//! progress, stall banner, table and charts.

use ratatui::layout::{Constraint, Direction, Layout, Rect};
use ratatui::style::{Color, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Gauge, Paragraph, Wrap};
use ratatui::Frame;

use super::charts::draw_chart;
use super::popups::draw_model;
use super::table::draw_table;
use crate::app::{App, Entry, FileState, RunStatus, RunView};
use crate::text::{epochs, short_float, word};
use crate::train::events::StallAction;
use crate::train::{EndReason, EpochMetrics, Phase};

pub(super) fn draw_entry(
    frame: &mut Frame,
    app: &App,
    entry: &Entry,
    area: Rect,
    previews: &mut super::Previews,
) {
    let errors = match &entry.file {
        FileState::Invalid { errors, .. } => errors.clone(),
        FileState::Valid(_) => Vec::new(),
    };
    let Some(run) = &entry.run else {
        match &entry.model_preview {
            Some(Ok(layers)) if app.show_model => {
                draw_model(frame, layers, app.model_scroll, true, area)
            }
            Some(Err(why)) if app.show_model => {
                draw_idle(frame, entry, std::slice::from_ref(why), area)
            }
            _ => draw_idle(frame, entry, &errors, area),
        }
        return;
    };
    // Two lines of text: a suggestion names the metric, the gain, the layers and the rate.
    let banner_height =
        if run.stall.is_some() || !errors.is_empty() || !run.file_problems.is_empty() {
            4
        } else {
            0
        };
    let [header, banner, body] = Layout::vertical([
        Constraint::Length(4),
        Constraint::Length(banner_height),
        Constraint::Min(4),
    ])
    .areas(area);
    draw_header(frame, entry, run, header);
    if let Some(s) = &run.stall {
        let key = if run.stall_outlived {
            "the frozen phase then ended as planned (Esc dismisses)"
        } else if matches!(s.action, StallAction::StopOrLowerLr { .. }) {
            "press r to lower the rate, or x to stop"
        } else if matches!(s.action, StallAction::LowerLr { .. }) {
            "lowered by on_stall: reduce_lr (Esc dismisses)"
        } else if matches!(
            s.action,
            StallAction::UnfreezeMore {
                automatic: true,
                ..
            }
        ) {
            "on_stall: unfreeze_more"
        } else if run.phase == Phase::Frozen || matches!(s.action, StallAction::UnfreezeMore { .. })
        {
            "press u"
        } else {
            "press x to stop"
        };
        // The key and the action first, what was seen last: on a small terminal the
        // banner's second line may be cut, and it is the least needed part.
        let (seen, action) = crate::text::suggestion_parts(s);
        let text = Line::from(vec![
            Span::styled("stalled — ", Style::new().bold()),
            Span::styled(key, Style::new().bold()),
            Span::raw(format!(": {action} ({seen})")),
        ]);
        frame.render_widget(
            Paragraph::new(text)
                .wrap(Wrap { trim: true })
                .block(Block::bordered().border_style(Style::new().fg(Color::Magenta))),
            banner,
        );
    } else if let Some(e) = errors.first() {
        frame.render_widget(
            Paragraph::new(format!("{e} — the last good settings stay in force"))
                .wrap(Wrap { trim: true })
                .block(Block::bordered().border_style(Style::new().fg(Color::Red))),
            banner,
        );
    } else if let Some(p) = run.file_problems.first() {
        let more = match run.file_problems.len() - 1 {
            0 => String::new(),
            n => format!(" (+{n} more)"),
        };
        frame.render_widget(
            Paragraph::new(format!("{p}{more} — the rest of the folder is shown"))
                .wrap(Wrap { trim: true })
                .block(
                    Block::bordered()
                        .title(" run folder ")
                        .border_style(Style::new().fg(Color::Yellow)),
                ),
            banner,
        );
    }
    if let Some(view) = app
        .errors
        .as_ref()
        .filter(|v| run.run_dir.as_ref() == Some(&v.run_dir))
    {
        super::errors::draw_errors(frame, run, view, previews, body);
        return;
    }
    // A short terminal: the epoch table alone (its last rows), no charts.
    if body.height < 12 {
        if app.show_model {
            draw_model(frame, &run.layers, app.model_scroll, false, body);
        } else {
            draw_table(frame, app, run, body);
        }
        return;
    }
    let wide = body.width >= 110;
    let (table_area, charts_area) = if wide {
        let [t, c] = Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)])
            .areas(body);
        (t, c)
    } else {
        let [t, c] =
            Layout::vertical([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(body);
        (t, c)
    };
    if app.show_model {
        draw_model(frame, &run.layers, app.model_scroll, false, table_area);
    } else {
        draw_table(frame, app, run, table_area);
    }
    let direction = if wide {
        Direction::Vertical
    } else {
        Direction::Horizontal
    };
    let [acc, loss] = Layout::default()
        .direction(direction)
        .constraints([Constraint::Percentage(50), Constraint::Percentage(50)])
        .areas(charts_area);
    let pick_acc = |m: &EpochMetrics| (m.accuracy, m.val_accuracy);
    let pick_loss = |m: &EpochMetrics| (m.loss, m.val_loss);
    draw_chart(frame, app, run, "accuracy", pick_acc, None, acc);
    let batches = run.batch_losses.iter().copied().collect();
    draw_chart(frame, app, run, "loss", pick_loss, Some(batches), loss);
}

pub(super) fn draw_idle(frame: &mut Frame, entry: &Entry, errors: &[String], area: Rect) {
    let mut lines: Vec<Line> = Vec::new();
    if errors.is_empty() && entry.settings().is_some() {
        // First, so a small terminal still shows it.
        lines.push(Line::styled(
            "idle: s starts it, m shows its model, e edits it.",
            Style::new().bold(),
        ));
    }
    if !errors.is_empty() {
        lines.push(Line::styled(
            "invalid experiment file:",
            Style::new().fg(Color::Red).bold(),
        ));
        for e in errors {
            lines.push(Line::raw(e.clone()));
        }
        lines.push(Line::raw(""));
        lines.push(Line::raw(
            "Fix it and save: the list updates by itself (e edits it).",
        ));
    }
    if let Some(exp) = entry.settings() {
        if !errors.is_empty() {
            lines.push(Line::raw("Last good settings:"));
        }
        if let Some(csv) = &exp.data.labels {
            // The split may be the label file's (its split column) rather than drawn.
            lines.push(Line::raw(format!(
                "labels    {} (its split column, if any, decides)",
                csv.display()
            )));
        }
        let validation = match &entry.fixed_validation {
            Some(folder) => format!("validation: its {folder}/ folder"),
            None => format!("validation {:.0}%", exp.data.validation_split * 100.0),
        };
        lines.extend([
            Line::raw(format!("data      {}", exp.data.dir.display())),
            Line::raw(format!(
                "images    {}x{}, batch {}, {validation}{}",
                exp.data.image_size.height,
                exp.data.image_size.width,
                exp.data.batch_size,
                class_weight_words(exp.data.class_weight.as_ref())
                    + &multilabel_words(exp)
                    + &tta_words(exp.tta)
            )),
            Line::raw(format!(
                "backbone  {}, weights: {}, dropout {}{}",
                exp.model.backbone.name(),
                word(&exp.model.weights),
                exp.model.dropout,
                if exp.model.label_smoothing > 0.0 {
                    format!(", label_smoothing {}", exp.model.label_smoothing)
                } else {
                    String::new()
                }
            )),
            Line::raw(format!(
                "frozen    {}, {}, lr {}{}",
                epochs(exp.frozen.epochs),
                word(&exp.frozen.optimizer),
                short_float(exp.frozen.lr),
                schedule_words((&exp.frozen).into())
            )),
            Line::raw(format!(
                "finetune  {}, {}, lr {}{}, last {} layers{}, train_bn {}",
                epochs(exp.finetune.epochs),
                word(&exp.finetune.optimizer),
                short_float(exp.finetune.lr),
                schedule_words((&exp.finetune).into()),
                exp.finetune.unfreeze_last,
                decay_words(exp.finetune.layer_decay, exp.finetune.max_groups),
                exp.finetune.train_bn
            )),
            Line::raw(format!(
                "stall     monitor: {}, patience {}, min_delta {}, on_stall: {}",
                word(&exp.stall.monitor),
                exp.stall.patience,
                exp.stall.min_delta,
                word(&exp.stall.on_stall)
            )),
        ]);
    }
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(format!(" {} ", entry.name()))),
        area,
    );
}

/// The header line after the state, fitted to `width` columns: the device goes first,
/// then images/s, then the word `phase`.
fn header_parts(
    width: usize,
    status: &str,
    phase: &str,
    epoch: &str,
    rate: Option<&str>,
    eta: Option<&str>,
    device: &str,
) -> String {
    let line = |phase_word: bool, rate: Option<&str>, device: Option<&str>| {
        let mut parts = vec![if phase_word {
            format!("phase {phase}")
        } else {
            phase.to_string()
        }];
        parts.push(epoch.to_string());
        parts.extend(rate.map(str::to_string));
        parts.extend(eta.map(str::to_string));
        parts.extend(device.filter(|d| !d.is_empty()).map(str::to_string));
        format!("  {}", parts.join("  "))
    };
    let fits = |text: &String| status.chars().count() + text.chars().count() <= width;
    [
        line(true, rate, Some(device)),
        line(true, rate, None),
        line(true, None, None),
        line(false, None, None),
    ]
    .into_iter()
    .find(fits)
    .unwrap_or_else(|| line(false, None, None))
}

/// `1:05` or `12:03:09`.
pub(super) fn clock(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

pub(super) fn draw_header(frame: &mut Frame, entry: &Entry, run: &RunView, area: Rect) {
    let name = format!(" {} ", entry.name());
    let mut block = Block::bordered().title(name.clone());
    if let Some(c) = &run.compute {
        // Right of the name, never over it: cut to the room the border leaves.
        let room = (area.width as usize).saturating_sub(name.chars().count() + 6);
        let text = crate::text::compute(c);
        let text = if text.chars().count() <= room {
            text
        } else {
            let cut: String = text.chars().take(room.saturating_sub(1)).collect();
            format!("{cut}…")
        };
        if room >= 8 {
            block = block.title_top(Line::from(format!(" {text} ")).right_aligned());
        }
    }
    if !entry.pending_restart.is_empty() {
        let all = format!(" on next start: {} ", entry.pending_restart.join(", "));
        // Each change in full, or how many (the message log has them) where they do
        // not fit.
        let pending = if all.chars().count() + 4 <= area.width as usize {
            all
        } else {
            let n = entry.pending_restart.len();
            format!(
                " on next start: {n} change{} (l lists them) ",
                if n == 1 { "" } else { "s" }
            )
        };
        block = block.title_bottom(Line::from(pending).fg(Color::Yellow));
    }
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let [top, gauge] =
        Layout::vertical([Constraint::Length(1), Constraint::Length(1)]).areas(inner);
    let status = match &run.status {
        // Asked and not confirmed yet: said until the trainer answers.
        RunStatus::Running | RunStatus::Paused | RunStatus::Loading { .. }
            if run.pending.is_some() =>
        {
            run.pending.unwrap_or_default().to_string()
        }
        RunStatus::Idle => "idle".to_string(),
        RunStatus::Loading { done, total } => format!("loading {done}/{total} images"),
        RunStatus::Running => "running".into(),
        RunStatus::Paused => "paused".into(),
        RunStatus::Done(EndReason::Completed) => "done".into(),
        RunStatus::Done(EndReason::Stopped) => "stopped".into(),
        RunStatus::Done(EndReason::Stalled) => "stopped on stall".into(),
        RunStatus::Failed(_) => "failed".into(),
        RunStatus::Lost { seconds } => format!("lost: last seen {}", ago(*seconds)),
    };
    let eta = run
        .eta_seconds()
        .filter(|_| run.is_active())
        .map(|s| format!("ETA {}", clock(s)));
    let rate = (run.images_per_sec > 0.0).then(|| format!("{:.0} img/s", run.images_per_sec));
    // Unknown until the trainer says its plan.
    let total = if run.total_epochs > 0 {
        format!("/{}", run.total_epochs)
    } else {
        String::new()
    };
    // What to drop first where the line is short: the device, then images/s, then the
    // word `phase`; the state, the epoch and the ETA stay.
    // After progressive unfreezing, how deep: `finetune to layer3`.
    let phase = match &run.deepest_group {
        Some(group) => format!("{} to {group}", run.phase.name()),
        None => run.phase.name().to_string(),
    };
    let parts = header_parts(
        top.width as usize,
        &status,
        &phase,
        &format!("epoch {}{total}", run.epoch),
        rate.as_deref(),
        eta.as_deref(),
        &run.device,
    );
    let line = Line::from(vec![
        Span::styled(status, Style::new().bold()),
        Span::raw(parts),
    ]);
    frame.render_widget(Paragraph::new(line), top);
    if let RunStatus::Failed(e) = &run.status {
        frame.render_widget(Paragraph::new(e.clone()).fg(Color::Red), gauge);
        return;
    }
    let (done, of) = run.batch;
    let (ratio, label) = match (&run.status, run.validating) {
        (RunStatus::Loading { done, total }, _) if *total > 0 => (
            *done as f64 / *total as f64,
            format!("decoding {done}/{total}"),
        ),
        (_, Some((done, total))) if total > 0 && run.is_active() => (
            done as f64 / total as f64,
            format!("validating {done}/{total}"),
        ),
        // Ended: what it came to.
        (RunStatus::Done(reason), _) => (
            1.0,
            match run.best().map(|i| &run.epochs[i]) {
                Some(b) => {
                    let (why, value) = (
                        crate::text::end_reason(*reason),
                        crate::train::stall::monitored(run.best_rule.monitor, b),
                    );
                    let full = format!(
                        "{why}: best epoch {} ({}) {} {value:.4}",
                        b.epoch,
                        b.phase.name(),
                        crate::text::word(&run.best_rule.monitor),
                    );
                    // The figure survives a narrow gauge; the words go.
                    if full.chars().count() <= gauge.width as usize {
                        full
                    } else {
                        format!("{why}: best {} {value:.4}", b.epoch)
                    }
                }
                None => crate::text::end_reason(*reason).to_string(),
            },
        ),
        _ if done > 0 && of > 0 => (
            done as f64 / of as f64,
            if run.batch_loss.is_finite() {
                format!("batch {done}/{of}  loss {:.4}", run.batch_loss)
            } else {
                format!("batch {done}/{of}")
            },
        ),
        _ => (0.0, String::new()),
    };
    frame.render_widget(
        Gauge::default()
            .ratio(ratio.clamp(0.0, 1.0))
            .label(label)
            .gauge_style(Style::new().fg(Color::Blue)),
        gauge,
    );
}

/// `42 s ago`, `3 min ago`, `2 h ago`.
fn ago(seconds: u64) -> String {
    match seconds {
        0 => "never (no heartbeat)".into(),
        s if s < 120 => format!("{s} s ago"),
        s if s < 7200 => format!("{} min ago", s / 60),
        s => format!("{} h ago", s / 3600),
    }
}

/// `, class_weight balanced` or `, class_weight defective 2, functional 1` for the
/// settings pane; nothing when every image weighs alike.
/// ` cosine, warm-up 1 epoch` after a phase's rate; nothing for a constant rate.
fn schedule_words(s: crate::train::schedule::ScheduleSettings) -> String {
    let warmup = match (s.warmup_epochs, s.warmup_steps) {
        (Some(e), _) if e > 0.0 => {
            format!(", warm-up {e} epoch{}", if e == 1.0 { "" } else { "s" })
        }
        (_, Some(n)) if n > 0 => format!(", warm-up {n} steps"),
        _ => String::new(),
    };
    match s.kind {
        crate::config::Schedule::Constant if warmup.is_empty() => String::new(),
        kind => format!(" {}{warmup}", word(&kind)),
    }
}

/// `, layer_decay 0.7, up to 4 groups` where either is set.
fn decay_words(decay: f64, max_groups: Option<usize>) -> String {
    let mut out = String::new();
    if decay != 1.0 {
        out += &format!(", layer_decay {decay}");
    }
    if let Some(max) = max_groups {
        out += &format!(", up to {max} groups");
    }
    out
}

/// `, tta 4` for test-time augmentation; nothing for one view.
/// `, multi-label` (with `, thresholds tuned`) when the file says the task is
/// multi-label (a label file's joined labels say it only once it is read).
fn multilabel_words(exp: &crate::config::Experiment) -> String {
    let said = exp.task == crate::config::Task::Multilabel || !exp.data.columns.labels.is_empty();
    match (said, exp.multilabel.tune_thresholds) {
        (false, _) => String::new(),
        (true, false) => ", multi-label".into(),
        (true, true) => ", multi-label, thresholds tuned".into(),
    }
}

fn tta_words(tta: u32) -> String {
    if tta > 1 {
        format!(", tta {tta}")
    } else {
        String::new()
    }
}

fn class_weight_words(weight: Option<&crate::config::ClassWeight>) -> String {
    use crate::config::{ClassWeight, ClassWeightRule};
    match weight {
        None => String::new(),
        Some(ClassWeight::Rule(ClassWeightRule::Balanced)) => ", class_weight balanced".into(),
        Some(ClassWeight::Weights(map)) => {
            let shown: Vec<String> = map.iter().map(|(c, w)| format!("{c} {w}")).collect();
            format!(", class_weight {}", shown.join(", "))
        }
    }
}

#[cfg(test)]
mod class_weight_words_tests {
    use super::*;

    #[test]
    fn schedule_decay_and_tta_words() {
        let exp: crate::config::Experiment = crate::config::parse_str(
            "data: { dir: x }\nmodel: { backbone: resnet18 }\n\
             finetune: { schedule: one_cycle, warmup_epochs: 1, layer_decay: 0.7, max_groups: 3 }",
            std::path::Path::new("/tmp/e.yaml"),
        )
        .unwrap();
        assert_eq!(
            schedule_words((&exp.finetune).into()),
            " one_cycle, warm-up 1 epoch"
        );
        assert_eq!(schedule_words((&exp.frozen).into()), "");
        assert_eq!(
            decay_words(exp.finetune.layer_decay, exp.finetune.max_groups),
            ", layer_decay 0.7, up to 3 groups"
        );
        assert_eq!(tta_words(1), "");
        assert_eq!(tta_words(4), ", tta 4");
    }

    #[test]
    fn the_settings_pane_says_multi_label() {
        let exp = |extra: &str| {
            crate::config::parse_str(
                &format!(
                    "data: {{ dir: d, labels: l.csv }}\nmodel: {{ backbone: small_cnn }}\n{extra}"
                ),
                std::path::Path::new("e.yaml"),
            )
            .unwrap()
        };
        assert_eq!(multilabel_words(&exp("")), "");
        assert_eq!(multilabel_words(&exp("task: multilabel")), ", multi-label");
        assert_eq!(
            multilabel_words(&exp(
                "task: multilabel\nmultilabel: { tune_thresholds: true }"
            )),
            ", multi-label, thresholds tuned"
        );
    }

    #[test]
    fn the_settings_pane_names_the_class_weights() {
        assert_eq!(class_weight_words(None), "");
        let balanced: crate::config::ClassWeight = serde_yaml::from_str("balanced").unwrap();
        assert_eq!(
            class_weight_words(Some(&balanced)),
            ", class_weight balanced"
        );
        let map: crate::config::ClassWeight =
            serde_yaml::from_str("{ defective: 2.5, functional: 1 }").unwrap();
        assert_eq!(
            class_weight_words(Some(&map)),
            ", class_weight defective 2.5, functional 1"
        );
    }
}
