//! Drawing the dashboard: a pure function of [`App`]. Nothing here changes state.

use std::path::PathBuf;

use ratatui::layout::{Alignment, Constraint, Direction, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::symbols;
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Axis, Block, Borders, Cell, Chart, Clear, Dataset, Gauge, GraphType, List, ListItem, ListState,
    Paragraph, Row, Table, Wrap,
};
use ratatui::Frame;

use crate::app::{App, Entry, FileState, Overlay, RunStatus, RunView, KEYS};
use crate::train::{EndReason, EpochMetrics, Phase};

/// Smallest terminal the dashboard draws into.
pub const MIN_SIZE: (u16, u16) = (60, 16);

/// Draws the whole dashboard for `app` into `frame`.
pub fn draw(frame: &mut Frame, app: &App) {
    let area = frame.area();
    if area.width < MIN_SIZE.0 || area.height < MIN_SIZE.1 {
        let text = format!(
            "terminal too small: {}x{} (need {}x{})",
            area.width, area.height, MIN_SIZE.0, MIN_SIZE.1
        );
        frame.render_widget(Paragraph::new(text).wrap(Wrap { trim: true }), area);
        return;
    }
    let messages_height = if area.height >= 30 { 6 } else { 4 };
    let [main, messages, footer] = Layout::vertical([
        Constraint::Min(8),
        Constraint::Length(messages_height),
        Constraint::Length(1),
    ])
    .areas(area);
    let list_width = (area.width / 4).clamp(20, 34);
    let [list, right] =
        Layout::horizontal([Constraint::Length(list_width), Constraint::Min(30)]).areas(main);
    draw_list(frame, app, list);
    match app.current() {
        _ if app.show_compare => draw_compare(frame, app, right),
        Some(entry) => draw_entry(frame, app, entry, right),
        None => frame.render_widget(
            Paragraph::new("No experiment files. Add a .yaml file to the folder.")
                .block(Block::bordered().title(" run ")),
            right,
        ),
    }
    draw_messages(frame, app, messages);
    draw_footer(frame, footer);
    match app.overlay {
        Overlay::Help => draw_help(frame, area),
        Overlay::ConfirmQuit => draw_confirm(frame, area),
        Overlay::None => {}
    }
}

fn state_style(label: &str) -> Style {
    match label {
        "running" | "loading" => Style::new().fg(Color::Green),
        "paused" => Style::new().fg(Color::Yellow),
        "stalled" => Style::new().fg(Color::Magenta),
        "done" => Style::new().fg(Color::Cyan),
        "failed" | "invalid" => Style::new().fg(Color::Red),
        _ => Style::new().fg(Color::Gray),
    }
}

fn draw_list(frame: &mut Frame, app: &App, area: Rect) {
    let width = area.width.saturating_sub(4) as usize;
    let items: Vec<ListItem> = app
        .entries
        .iter()
        .map(|e| {
            let label = e.state_label();
            let label = if app.queue.contains(&e.id) {
                "queued"
            } else {
                label
            };
            let mut name = if e.marked {
                format!("+{}", e.name())
            } else {
                e.name()
            };
            if e.deleted {
                name.push_str(" (deleted)");
            }
            let room = width.saturating_sub(label.len() + 1);
            let name: String = name.chars().take(room).collect();
            ListItem::new(Line::from(vec![
                Span::raw(format!("{name:<room$} ")),
                Span::styled(label, state_style(label)),
            ]))
        })
        .collect();
    let mut state = ListState::default().with_selected(Some(app.selected));
    let list = List::new(items)
        .block(Block::bordered().title(" experiments "))
        .highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol("›");
    frame.render_stateful_widget(list, area, &mut state);
}

fn draw_entry(frame: &mut Frame, app: &App, entry: &Entry, area: Rect) {
    let errors = match &entry.file {
        FileState::Invalid { errors, .. } => errors.clone(),
        FileState::Valid(_) => Vec::new(),
    };
    let Some(run) = &entry.run else {
        draw_idle(frame, entry, &errors, area);
        return;
    };
    // Two lines of text: a suggestion names the metric, the gain, the layers and the rate.
    let banner_height = if run.stall.is_some() || !errors.is_empty() {
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
        let key = if run.phase == Phase::Frozen {
            "press u to unfreeze"
        } else {
            "press x to stop"
        };
        let text = Line::from(vec![
            Span::styled("stalled: ", Style::new().bold()),
            Span::raw(format!("{} — ", crate::text::suggestion(s))),
            Span::styled(key, Style::new().bold()),
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
        draw_model(frame, run, table_area);
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
    draw_chart(frame, app, run, "accuracy", pick_acc, acc);
    draw_chart(frame, app, run, "loss", pick_loss, loss);
}

fn draw_idle(frame: &mut Frame, entry: &Entry, errors: &[String], area: Rect) {
    let mut lines: Vec<Line> = Vec::new();
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
        lines.extend([
            Line::raw(format!("data      {}", exp.data.dir.display())),
            Line::raw(format!(
                "images    {}x{}, batch {}, validation {:.0}%",
                exp.data.image_size.height,
                exp.data.image_size.width,
                exp.data.batch_size,
                exp.data.validation_split * 100.0
            )),
            Line::raw(format!(
                "backbone  {} ({:?} weights), dropout {}",
                exp.model.backbone.name(),
                exp.model.weights,
                exp.model.dropout
            )),
            Line::raw(format!(
                "frozen    {} epochs, {:?} lr {:e}",
                exp.frozen.epochs, exp.frozen.optimizer, exp.frozen.lr
            )),
            Line::raw(format!(
                "finetune  {} epochs, {:?} lr {:e}, last {} layers, train_bn {}",
                exp.finetune.epochs,
                exp.finetune.optimizer,
                exp.finetune.lr,
                exp.finetune.unfreeze_last,
                exp.finetune.train_bn
            )),
            Line::raw(format!(
                "stall     {:?}, patience {}, min_delta {}, on_stall {:?}",
                exp.stall.monitor, exp.stall.patience, exp.stall.min_delta, exp.stall.on_stall
            )),
            Line::raw(""),
            Line::raw("s starts it."),
        ]);
    }
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(format!(" {} ", entry.name()))),
        area,
    );
}

/// `1:05` or `12:03:09`.
fn clock(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

fn draw_header(frame: &mut Frame, entry: &Entry, run: &RunView, area: Rect) {
    let mut block = Block::bordered().title(format!(" {} ", entry.name()));
    if let Some(c) = &run.compute {
        let text = crate::text::compute(c);
        block = block.title_top(Line::from(format!(" {text} ")).right_aligned());
    }
    if !entry.pending_restart.is_empty() {
        let pending = format!(" on next start: {} ", entry.pending_restart.join(", "));
        block = block.title_bottom(Line::from(pending).fg(Color::Yellow));
    }
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let [top, gauge] =
        Layout::vertical([Constraint::Length(1), Constraint::Length(1)]).areas(inner);
    let status = match &run.status {
        RunStatus::Idle => "idle".to_string(),
        RunStatus::Loading { done, total } => format!("loading {done}/{total} images"),
        RunStatus::Running => "running".into(),
        RunStatus::Paused => "paused".into(),
        RunStatus::Done(EndReason::Completed) => "done".into(),
        RunStatus::Done(EndReason::Stopped) => "stopped".into(),
        RunStatus::Done(EndReason::Stalled) => "stopped on stall".into(),
        RunStatus::Failed(_) => "failed".into(),
    };
    let eta = run
        .eta_seconds()
        .filter(|_| run.is_active())
        .map(|s| format!("  ETA {}", clock(s)))
        .unwrap_or_default();
    let line = Line::from(vec![
        Span::styled(status, Style::new().bold()),
        Span::raw(format!(
            "  phase {}  epoch {}/{}  {:.0} img/s{eta}  {}",
            run.phase.name(),
            run.epoch,
            run.total_epochs,
            run.images_per_sec,
            run.device
        )),
    ]);
    frame.render_widget(Paragraph::new(line), top);
    if let RunStatus::Failed(e) = &run.status {
        frame.render_widget(Paragraph::new(e.clone()).fg(Color::Red), gauge);
        return;
    }
    let (done, of) = run.batch;
    let (ratio, label) = match run.status {
        RunStatus::Loading { done, total } if total > 0 => (
            done as f64 / total as f64,
            format!("decoding {done}/{total}"),
        ),
        _ if of > 0 => (
            done as f64 / of as f64,
            format!("batch {done}/{of}  loss {:.4}", run.batch_loss),
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

fn draw_table(frame: &mut Frame, app: &App, run: &RunView, area: Rect) {
    let best = run.best();
    let visible = area.height.saturating_sub(3) as usize;
    let end = run
        .epochs
        .len()
        .saturating_sub(app.table_scroll.min(run.epochs.len()));
    let start = end.saturating_sub(visible);
    let rows: Vec<Row> = run.epochs[start..end]
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mark = if Some(start + i) == best { "*" } else { " " };
            let row = Row::new(vec![
                Cell::from(format!("{}{}", m.epoch, mark)),
                Cell::from(if m.phase == Phase::Frozen {
                    "frozen"
                } else {
                    "tune"
                }),
                Cell::from(format!("{:.4}", m.loss)),
                Cell::from(format!("{:.3}", m.accuracy)),
                Cell::from(format!("{:.4}", m.val_loss)),
                Cell::from(format!("{:.3}", m.val_accuracy)),
                Cell::from(format!("{:.0e}", m.lr)),
                Cell::from(format!("{:.0}", m.seconds)),
            ]);
            if Some(start + i) == best {
                row.style(Style::new().fg(Color::Green))
            } else if m.stalled {
                row.style(Style::new().fg(Color::Magenta))
            } else {
                row
            }
        })
        .collect();
    let header = Row::new(["ep", "phase", "loss", "acc", "v_loss", "v_acc", "lr", "s"])
        .style(Style::new().bold());
    let table = Table::new(
        rows,
        [
            Constraint::Length(4),
            Constraint::Length(6),
            Constraint::Length(6),
            Constraint::Length(5),
            Constraint::Length(6),
            Constraint::Length(5),
            Constraint::Length(5),
            Constraint::Length(4),
        ],
    )
    .header(header)
    .column_spacing(1)
    .block(Block::bordered().title(" epochs (* best val_acc) "));
    frame.render_widget(table, area);
}

fn draw_model(frame: &mut Frame, run: &RunView, area: Rect) {
    let trainable: usize = run
        .layers
        .iter()
        .filter(|l| l.trainable)
        .map(|l| l.params)
        .sum();
    let count = run.layers.iter().filter(|l| l.trainable).count();
    let visible = area.height.saturating_sub(3) as usize;
    // Show the end of the list, where the unfrozen layers are.
    let start = run.layers.len().saturating_sub(visible);
    let rows: Vec<Row> = run.layers[start..]
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let row = Row::new(vec![
                format!("{}", start + i),
                l.name.clone(),
                l.kind.name().to_string(),
                l.params.to_string(),
                if l.trainable {
                    "yes".into()
                } else {
                    "-".into()
                },
            ]);
            if l.trainable {
                row.style(Style::new().fg(Color::Green))
            } else {
                row
            }
        })
        .collect();
    let table = Table::new(
        rows,
        [
            Constraint::Length(4),
            Constraint::Min(12),
            Constraint::Length(9),
            Constraint::Length(8),
            Constraint::Length(5),
        ],
    )
    .header(Row::new(["#", "layer", "kind", "params", "train"]).style(Style::new().bold()))
    .block(Block::bordered().title(format!(
        " model: {} layers, {count} trainable ({trainable} params) ",
        run.layers.len()
    )));
    frame.render_widget(table, area);
}

/// Debiased exponential moving average (TensorBoard's smoothing), weight 0.6.
pub fn smooth(values: &[f64]) -> Vec<f64> {
    const W: f64 = 0.6;
    let mut last = 0.0;
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            last = last * W + (1.0 - W) * v;
            last / (1.0 - W.powi(i as i32 + 1))
        })
        .collect()
}

fn draw_chart(
    frame: &mut Frame,
    app: &App,
    run: &RunView,
    title: &str,
    pick: impl Fn(&EpochMetrics) -> (f64, f64),
    area: Rect,
) {
    let xs: Vec<f64> = run.epochs.iter().map(|m| m.epoch as f64).collect();
    let (mut train, mut val): (Vec<f64>, Vec<f64>) = run.epochs.iter().map(pick).unzip();
    if app.smoothing {
        train = smooth(&train);
        val = smooth(&val);
    }
    let finite = train.iter().chain(&val).copied().filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    let (lo, hi) = if lo > hi {
        (0.0, 1.0)
    } else {
        let pad = ((hi - lo) * 0.1).max(1e-3);
        (lo - pad, hi + pad)
    };
    let x_max = (run.total_epochs.max(run.epochs.len() as u32)).max(2) as f64;
    let train_pts: Vec<(f64, f64)> = xs.iter().copied().zip(train).collect();
    let val_pts: Vec<(f64, f64)> = xs.iter().copied().zip(val).collect();
    let marks: Vec<Vec<(f64, f64)>> = run
        .phase_marks
        .iter()
        .map(|(e, _)| {
            let x = *e as f64 - 0.5;
            vec![(x, lo), (x, hi)]
        })
        .collect();
    let mut datasets = vec![
        Dataset::default()
            .name("train")
            .marker(symbols::Marker::Braille)
            .graph_type(GraphType::Line)
            .style(Style::new().fg(Color::Cyan))
            .data(&train_pts),
        Dataset::default()
            .name("val")
            .marker(symbols::Marker::Braille)
            .graph_type(GraphType::Line)
            .style(Style::new().fg(Color::Yellow))
            .data(&val_pts),
    ];
    for m in &marks {
        datasets.push(
            Dataset::default()
                .marker(symbols::Marker::Braille)
                .graph_type(GraphType::Line)
                .style(Style::new().fg(Color::Magenta))
                .data(m),
        );
    }
    let smoothed = if app.smoothing { ", smoothed" } else { "" };
    let marker = if run.phase_marks.is_empty() {
        ""
    } else {
        ", | phase change"
    };
    let chart = Chart::new(datasets)
        .block(Block::bordered().title(format!(" {title}{smoothed}{marker} ")))
        .x_axis(
            Axis::default()
                .bounds([1.0, x_max])
                .labels(["1".to_string(), format!("{x_max:.0}")]),
        )
        .y_axis(
            Axis::default()
                .bounds([lo, hi])
                .labels([format!("{lo:.2}"), format!("{hi:.2}")]),
        );
    frame.render_widget(chart, area);
}

const SERIES: [Color; 6] = [
    Color::Cyan,
    Color::Yellow,
    Color::Green,
    Color::Magenta,
    Color::LightRed,
    Color::LightBlue,
];

/// The shootout comparison: one table, one chart of val_accuracy per experiment.
fn draw_compare(frame: &mut Frame, app: &App, area: Rect) {
    let runs: Vec<(String, &RunView)> = app
        .entries
        .iter()
        .filter_map(|e| Some((e.name(), e.run.as_ref()?)))
        .filter(|(_, r)| !r.epochs.is_empty())
        .collect();
    let [table_area, chart_area] = Layout::vertical([
        Constraint::Length(runs.len() as u16 + 3),
        Constraint::Min(6),
    ])
    .areas(area);
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
    let rows: Vec<Row> = runs
        .iter()
        .enumerate()
        .map(|(i, (name, r))| {
            let total: usize = r.layers.iter().map(|l| l.params).sum();
            let trainable: usize = r
                .layers
                .iter()
                .filter(|l| l.trainable)
                .map(|l| l.params)
                .sum();
            // The same figures `tlcap-tui shootout` exports.
            let cells = match crate::results::row(
                name,
                "",
                &r.epochs,
                (trainable, total),
                PathBuf::new(),
            ) {
                Some(c) => vec![
                    name.clone(),
                    format!("{:.3} @{}", c.best_val_accuracy, c.best_epoch),
                    fmt(c.frozen_best),
                    fmt(c.finetune_best),
                    format!("{:.1}", c.seconds_per_epoch),
                    format!("{:.2}M/{:.2}M", trainable as f64 / 1e6, total as f64 / 1e6),
                ],
                None => vec![name.clone(), "-".into()],
            };
            Row::new(cells).style(Style::new().fg(SERIES[i % SERIES.len()]))
        })
        .collect();
    let table = Table::new(
        rows,
        [
            Constraint::Min(12),
            Constraint::Length(10),
            Constraint::Length(7),
            Constraint::Length(7),
            Constraint::Length(6),
            Constraint::Length(12),
        ],
    )
    .header(
        Row::new(["experiment", "best", "frozen", "tuned", "s/ep", "backbone"])
            .style(Style::new().bold()),
    )
    .block(
        Block::bordered()
            .title(" compare (c: back) — best val_acc @epoch, params trainable/total "),
    );
    frame.render_widget(table, table_area);
    let series: Vec<Vec<(f64, f64)>> = runs
        .iter()
        .map(|(_, r)| {
            r.epochs
                .iter()
                .map(|m| (m.epoch as f64, m.val_accuracy))
                .collect()
        })
        .collect();
    let values = series
        .iter()
        .flatten()
        .map(|p| p.1)
        .filter(|v| v.is_finite());
    let (lo, hi) = values.fold((1.0f64, 0.0f64), |(a, b), v| (a.min(v), b.max(v)));
    let (lo, hi) = if lo > hi {
        (0.0, 1.0)
    } else {
        ((lo - 0.02).max(0.0), (hi + 0.02).min(1.0))
    };
    let x_max = series.iter().map(Vec::len).max().unwrap_or(1).max(2) as f64;
    let datasets: Vec<Dataset> = series
        .iter()
        .zip(&runs)
        .enumerate()
        .map(|(i, (points, (name, _)))| {
            Dataset::default()
                .name(name.clone())
                .marker(symbols::Marker::Braille)
                .graph_type(GraphType::Line)
                .style(Style::new().fg(SERIES[i % SERIES.len()]))
                .data(points)
        })
        .collect();
    let chart = Chart::new(datasets)
        .block(Block::bordered().title(" val_accuracy per epoch "))
        .x_axis(
            Axis::default()
                .bounds([1.0, x_max])
                .labels(["1".to_string(), format!("{x_max:.0}")]),
        )
        .y_axis(
            Axis::default()
                .bounds([lo, hi])
                .labels([format!("{lo:.2}"), format!("{hi:.2}")]),
        );
    frame.render_widget(chart, chart_area);
}

fn draw_messages(frame: &mut Frame, app: &App, area: Rect) {
    let visible = area.height.saturating_sub(2) as usize;
    let start = app.messages.len().saturating_sub(visible);
    let lines: Vec<Line> = app.messages[start..]
        .iter()
        .map(|m| {
            if m.warning {
                Line::styled(m.text.clone(), Style::new().fg(Color::Yellow))
            } else {
                Line::raw(m.text.clone())
            }
        })
        .collect();
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" messages ")),
        area,
    );
}

fn draw_footer(frame: &mut Frame, area: Rect) {
    let keys = crate::app::footer_text();
    frame.render_widget(
        Paragraph::new(keys).style(Style::new().fg(Color::DarkGray)),
        area,
    );
}

fn popup(area: Rect, width: u16, height: u16) -> Rect {
    let w = width.min(area.width);
    let h = height.min(area.height);
    Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    )
}

fn draw_help(frame: &mut Frame, area: Rect) {
    let rect = popup(area, 58, KEYS.len() as u16 + 4);
    let lines: Vec<Line> = KEYS
        .iter()
        .map(|k| {
            Line::from(vec![
                Span::styled(format!("{:>10}  ", k.keys), Style::new().bold()),
                Span::raw(k.what),
            ])
        })
        .collect();
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(lines).block(
            Block::bordered()
                .title(" keys (any key closes) ")
                .borders(Borders::ALL),
        ),
        rect,
    );
}

fn draw_confirm(frame: &mut Frame, area: Rect) {
    let rect = popup(area, 46, 5);
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(vec![
            Line::raw("A run is going. Quit and stop it?"),
            Line::raw("(a checkpoint is saved)   y: quit   n: stay"),
        ])
        .alignment(Alignment::Center)
        .block(Block::bordered().title(" quit? ")),
        rect,
    );
}
