//! The error-analysis view: confusion matrix with row percentages and per-class
//! scores for an epoch, the validation images from the most badly predicted, and a
//! picture of the selected one (kitty, sixel or iTerm2 graphics where the terminal
//! has them, half blocks elsewhere).

use std::path::{Path, PathBuf};

use ratatui::layout::{Constraint, Layout, Rect, Size};
use ratatui::style::{Color, Style, Stylize};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Table, Wrap};
use ratatui::Frame;
use ratatui_image::picker::Picker;
use ratatui_image::protocol::Protocol;
use ratatui_image::{Image, Resize};

use crate::app::{ErrorsView, RunView};
use crate::train::metrics::Confusion;

/// Pictures for the preview: how this terminal shows them, and the last one made
/// (a picture is encoded once per image and size, not once per frame).
pub struct Previews {
    picker: Picker,
    shown: Option<(PathBuf, Rect, Protocol)>,
}

impl Previews {
    /// Half blocks: works in every terminal (and in tests).
    pub fn halfblocks() -> Previews {
        Previews {
            picker: Picker::halfblocks(),
            shown: None,
        }
    }

    /// Asks the terminal what graphics it has (kitty, sixel, iTerm2) and its cell size
    /// when it looks like one that has some (or `TLCAP_GRAPHICS=query`); half blocks
    /// otherwise, or with `TLCAP_GRAPHICS=halfblocks`. Call after entering the
    /// alternate screen, before reading key events. (A terminal that never answers the
    /// query would leave a reader on stdin taking keys: hence not every terminal is
    /// asked.)
    pub fn from_terminal() -> Previews {
        let var = |name: &str| std::env::var(name).unwrap_or_default().to_lowercase();
        let ask = match var("TLCAP_GRAPHICS").as_str() {
            "query" => true,
            "halfblocks" => false,
            _ => {
                let term = format!("{} {}", var("TERM"), var("TERM_PROGRAM"));
                !var("KITTY_WINDOW_ID").is_empty()
                    || !var("WEZTERM_EXECUTABLE").is_empty()
                    || [
                        "kitty", "ghostty", "wezterm", "iterm", "foot", "mlterm", "contour",
                        "konsole",
                    ]
                    .iter()
                    .any(|t| term.contains(t))
            }
        };
        let picker = if ask {
            Picker::from_query_stdio().unwrap_or_else(|_| Picker::halfblocks())
        } else {
            Picker::halfblocks()
        };
        Previews {
            picker,
            shown: None,
        }
    }

    /// The graphics protocol in use, in words.
    pub fn protocol_name(&self) -> String {
        format!("{:?}", self.picker.protocol_type()).to_lowercase()
    }

    fn draw(&mut self, frame: &mut Frame, path: &Path, image: &image::DynamicImage, area: Rect) {
        let stale = self
            .shown
            .as_ref()
            .is_none_or(|(p, a, _)| p != path || *a != area);
        if stale {
            let size = Size::new(area.width, area.height);
            let made = self.picker.new_protocol(
                image.clone(),
                size,
                Resize::Scale(Some(image::imageops::FilterType::Triangle)),
            );
            self.shown = made.ok().map(|p| (path.to_path_buf(), area, p));
        }
        if let Some((_, _, protocol)) = &self.shown {
            frame.render_widget(Image::new(protocol), area);
        }
    }
}

/// The view in `area` for `run`.
pub(super) fn draw_errors(
    frame: &mut Frame,
    run: &RunView,
    view: &ErrorsView,
    previews: &mut Previews,
    area: Rect,
) {
    let best = run.best().map(|i| &run.epochs[i]);
    let chosen = match view.epoch {
        Some(e) => run.epochs.iter().find(|m| m.epoch == e),
        None => best,
    };
    let Some(m) = chosen else {
        frame.render_widget(
            Paragraph::new("No finished epoch yet: the analysis appears after the first one.")
                .block(Block::bordered().title(" error analysis (v: back) ")),
            area,
        );
        return;
    };
    let classes: Vec<String> = match (&view.predictions, &m.multilabel) {
        (Some(Ok(p)), _) => p.classes.clone(),
        (_, Some(ml)) => (0..ml.labels.len()).map(|l| format!("label {l}")).collect(),
        _ => (0..m.confusion.n).map(|c| format!("class {c}")).collect(),
    };
    if let Some(ml) = &m.multilabel {
        let height = (ml.labels.len() as u16 + 3).min(area.height / 2);
        let [table_area, images_area] =
            Layout::vertical([Constraint::Length(height), Constraint::Min(3)]).areas(area);
        let which = if Some(m.epoch) == best.map(|b| b.epoch) {
            "best"
        } else {
            "←/→"
        };
        let title = format!(
            " epoch {} ({which}) · mean AUC {} · mAP {} · f: by label ",
            m.epoch,
            ml.mean_auc.map_or("-".into(), |a| format!("{a:.3}")),
            ml.map.map_or("-".into(), |a| format!("{a:.3}")),
        );
        draw_label_table(frame, ml, &classes, view.label, &title, table_area);
        draw_images(frame, view, &classes, previews, images_area);
        return;
    }
    let matrix_height = (m.confusion.n as u16 + 3).min(area.height / 2);
    let [matrix_area, images_area] =
        Layout::vertical([Constraint::Length(matrix_height), Constraint::Min(3)]).areas(area);
    let which = if Some(m.epoch) == best.map(|b| b.epoch) {
        "best"
    } else {
        "←/→"
    };
    let auc = m
        .val_auc
        .map(|a| format!(" · AUC {a:.3}"))
        .unwrap_or_default();
    let threshold = match &view.predictions {
        Some(Ok(p)) => p.threshold.map(|t| format!(" · threshold {t}")),
        _ => None,
    }
    .unwrap_or_default();
    let mut title = format!(
        " epoch {} ({which}) · val_acc {:.3}{auc}{threshold} ",
        m.epoch, m.val_accuracy
    );
    if title.chars().count() + 2 > matrix_area.width as usize {
        title = title
            .replace("val_acc", "acc")
            .replace("threshold", "thr")
            .replace(" · ", " ");
    }
    draw_matrix(frame, &m.confusion, &classes, &title, matrix_area);
    draw_images(frame, view, &classes, previews, images_area);
}

/// Rows: true class; columns: predicted class (count and row %), then P, R, F1.
fn draw_matrix(frame: &mut Frame, c: &Confusion, classes: &[String], title: &str, area: Rect) {
    let scores = c.class_scores();
    let short = |name: &str| name.chars().take(10).collect::<String>();
    let mut header = vec!["true \\ pred".to_string()];
    header.extend(classes.iter().map(|n| short(n)));
    header.extend(["P".into(), "R".into(), "F1".into()]);
    let rows: Vec<Row> = (0..c.n)
        .map(|t| {
            let mut cells = vec![short(classes.get(t).map_or("?", String::as_str))];
            for p in 0..c.n {
                let (count, pct) = (c.get(t, p), 100.0 * c.row_share(t, p));
                cells.push(format!("{count} {pct:.0}%"));
            }
            let s = scores[t];
            cells.extend([
                format!("{:.2}", s.precision),
                format!("{:.2}", s.recall),
                format!("{:.2}", s.f1),
            ]);
            Row::new(cells)
        })
        .collect();
    let mut widths = vec![Constraint::Length(11)];
    widths.extend((0..c.n).map(|_| Constraint::Length(10)));
    widths.extend([Constraint::Length(4); 3]);
    frame.render_widget(
        Table::new(rows, widths)
            .header(Row::new(header).style(Style::new().bold()))
            .column_spacing(1)
            .block(Block::bordered().title(title.to_string())),
        area,
    );
}

/// Multi-label: one row per label (support, AUC, AP, threshold, P, R, F1, missed,
/// false); the label the images are ordered by is marked.
fn draw_label_table(
    frame: &mut Frame,
    ml: &crate::train::metrics::MultiLabelScores,
    labels: &[String],
    focus: Option<usize>,
    title: &str,
    area: Rect,
) {
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |a| format!("{a:.2}"));
    let header = [
        "label", "n", "AUC", "AP", "thr", "P", "R", "F1", "miss", "false",
    ];
    // Narrow (an 80-column terminal): AP and the threshold go, the names stay whole.
    let keep: Vec<usize> = if area.width < 66 {
        vec![0, 1, 2, 5, 6, 7, 8, 9]
    } else {
        (0..header.len()).collect()
    };
    let rows: Vec<Row> = ml
        .labels
        .iter()
        .enumerate()
        .map(|(l, s)| {
            let name: String = labels
                .get(l)
                .map_or("?", String::as_str)
                .chars()
                .take(12)
                .collect();
            let cells = [
                format!("{}{name}", if focus == Some(l) { "›" } else { " " }),
                s.support.to_string(),
                opt(s.auc),
                opt(s.average_precision),
                format!("{:.2}", s.threshold),
                format!("{:.2}", s.precision),
                format!("{:.2}", s.recall),
                format!("{:.2}", s.f1),
                s.counts[2].to_string(),
                s.counts[1].to_string(),
            ];
            let row = Row::new(keep.iter().map(|&i| cells[i].clone()));
            if focus == Some(l) {
                row.style(Style::new().bold())
            } else {
                row
            }
        })
        .collect();
    let mut all_widths = vec![Constraint::Length(13), Constraint::Length(5)];
    all_widths.extend([Constraint::Length(4); 6]);
    all_widths.extend([Constraint::Length(5); 2]);
    let widths: Vec<Constraint> = keep.iter().map(|&i| all_widths[i]).collect();
    let mut title = title.to_string();
    if title.chars().count() + 2 > area.width as usize {
        title = title.replace(" · ", " ").replace("mean AUC", "AUC");
    }
    frame.render_widget(
        Table::new(rows, widths)
            .header(Row::new(keep.iter().map(|&i| header[i])).style(Style::new().bold()))
            .column_spacing(1)
            .block(Block::bordered().title(title)),
        area,
    );
}

/// A multi-label image's line in the list: the label that orders it (right, missed
/// or a false positive) with its probability, then the image's labels and what was
/// said.
fn label_line(
    p: &crate::train::predictions::ValPrediction,
    labels: &[String],
    focus: Option<usize>,
) -> String {
    let names = |ls: Option<&Vec<usize>>| match ls.map(Vec::as_slice) {
        None | Some([]) => "-".to_string(),
        Some(ls) => ls
            .iter()
            .map(|&l| labels.get(l).map_or("?", String::as_str))
            .collect::<Vec<_>>()
            .join("+"),
    };
    // The label it is ordered by: the focus, else its worst.
    let worst = focus.or_else(|| p.worst_label()).unwrap_or(0);
    let how = match (p.has(worst), p.said(worst)) {
        (true, false) => "missed",
        (false, true) => "false",
        _ => "right",
    };
    format!(
        "{how} {} {:.2} · {} → {}",
        labels.get(worst).map_or("?", String::as_str),
        p.probabilities.get(worst).copied().unwrap_or(0.0),
        names(p.labels.as_ref()),
        names(p.predicted_labels.as_ref()),
    )
}

/// The images from the most badly predicted, and the selected one's picture.
fn draw_images(
    frame: &mut Frame,
    view: &ErrorsView,
    classes: &[String],
    previews: &mut Previews,
    area: Rect,
) {
    let name = |c: usize| classes.get(c).map_or("?".to_string(), Clone::clone);
    let predictions = match &view.predictions {
        None => {
            frame.render_widget(
                Paragraph::new("reading the best epoch's predictions…").block(Block::bordered()),
                area,
            );
            return;
        }
        Some(Err(e)) => {
            frame.render_widget(
                Paragraph::new(format!(
                    "no per-image predictions: {e} (runs before this version did not keep them)"
                ))
                .wrap(Wrap { trim: true })
                .block(Block::bordered()),
                area,
            );
            return;
        }
        Some(Ok(p)) => p,
    };
    let worst = predictions.worst_first_for(view.label);
    let multilabel = predictions.is_multilabel();
    // The picture takes a square-ish part on the right (cells are about twice as tall
    // as wide).
    let picture_width = (area.height.saturating_mul(2))
        .min(area.width.saturating_sub(46))
        .max(12);
    let [list_area, picture_area] =
        Layout::horizontal([Constraint::Min(20), Constraint::Length(picture_width)]).areas(area);
    let visible = list_area.height.saturating_sub(2) as usize;
    let start = view.selected.saturating_sub(visible.saturating_sub(1));
    let lines: Vec<Line> = worst
        .iter()
        .enumerate()
        .skip(start)
        .take(visible)
        .map(|(i, p)| {
            let pointer = if i == view.selected { "›" } else { " " };
            // Multi-label with a label in focus: wrong on that label.
            let wrong = match (multilabel, view.label) {
                (true, Some(l)) => p.has(l) != p.said(l),
                _ => !p.correct(),
            };
            let mark = if wrong { "✗" } else { " " };
            let file = p
                .path
                .file_name()
                .map_or(String::new(), |f| f.to_string_lossy().into_owned());
            let text = if multilabel {
                // The file first: the label line is long.
                format!(
                    "{pointer}{mark} {file} {}",
                    label_line(p, classes, view.label)
                )
            } else {
                format!(
                    "{pointer}{mark} {} → {} {:.2} {file}",
                    name(p.truth),
                    name(p.predicted),
                    p.probabilities.get(p.predicted).copied().unwrap_or(0.0)
                )
            };
            let line = Line::raw(text);
            if i == view.selected {
                line.reversed()
            } else if wrong {
                line.fg(Color::Red)
            } else {
                line
            }
        })
        .collect();
    // The counts survive a narrow list; the key hint and `best` go first.
    let (epoch, wrong, all) = (
        predictions.epoch,
        predictions.wrong(),
        predictions.images.len(),
    );
    let room = list_area.width.saturating_sub(2) as usize;
    let (wrong, what) = match (multilabel, view.label) {
        (true, Some(l)) => {
            let (missed, false_) = predictions.label_wrong(l);
            (missed + false_, format!("wrong on {}", name(l)))
        }
        (true, None) => (wrong, "with a wrong label".to_string()),
        _ => (wrong, "wrong".to_string()),
    };
    let title = [
        format!(" best epoch {epoch}: {wrong} of {all} {what}, worst first (↑/↓) "),
        format!(" best epoch {epoch}: {wrong} of {all} {what}, worst first "),
        format!(" epoch {epoch}: {wrong} of {all} {what}, worst first "),
        format!(" epoch {epoch}: {wrong}/{all} {what} "),
    ]
    .into_iter()
    .find(|t| t.chars().count() <= room)
    .unwrap_or_else(|| format!(" {wrong}/{all} wrong "));
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(title)),
        list_area,
    );
    let selected = worst.get(view.selected);
    let block = Block::bordered().title(
        selected
            // The list's figure: the probability of the predicted class.
            .map(|p| {
                if multilabel {
                    format!(" {} ", label_line(p, classes, view.label))
                } else {
                    format!(
                        " true {} · predicted {} {:.2} ",
                        name(p.truth),
                        name(p.predicted),
                        p.probabilities.get(p.predicted).copied().unwrap_or(0.0)
                    )
                }
            })
            .unwrap_or_default(),
    );
    let inner = block.inner(picture_area);
    frame.render_widget(block, picture_area);
    match (&view.preview, selected) {
        (Some((path, Ok(image))), Some(p)) if *path == p.path => {
            previews.draw(frame, path, image, inner)
        }
        (Some((path, Err(e))), Some(p)) if *path == p.path => frame.render_widget(
            Paragraph::new(format!("cannot show it: {e}")).wrap(Wrap { trim: true }),
            inner,
        ),
        (_, Some(_)) => frame.render_widget(Paragraph::new("decoding…"), inner),
        _ => {}
    }
}
