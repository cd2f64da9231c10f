//! Range and consistency checks on a parsed experiment, and the YAML positions that let
//! each problem point at the offending value.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};

use super::{Backbone, Experiment, Weights};

/// A problem found after parsing: the dotted path of the setting and what is wrong.
pub type Problem = (&'static str, String);

/// Every range or consistency problem in `exp`, in file order.
pub fn validate(exp: &Experiment) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut check = |ok: bool, path: &'static str, msg: String| {
        if !ok {
            out.push((path, msg));
        }
    };
    let size = exp.data.image_size;
    check(
        [size.height, size.width]
            .iter()
            .all(|s| (32..=4096).contains(s)),
        "data.image_size",
        format!(
            "image_size sides must be between 32 and 4096 pixels, got {}x{} (height x width)",
            size.height, size.width
        ),
    );
    let split = exp.data.validation_split;
    check(
        split > 0.0 && split < 1.0,
        "data.validation_split",
        format!("validation_split must be between 0 and 1 (exclusive), got {split}"),
    );
    check(
        exp.data.batch_size >= 1,
        "data.batch_size",
        format!("batch_size must be at least 1, got {}", exp.data.batch_size),
    );
    if let Some(super::ClassWeight::Weights(weights)) = &exp.data.class_weight {
        check(
            !weights.is_empty(),
            "data.class_weight",
            "class_weight needs `balanced` or at least one `class: weight`".into(),
        );
        for (class, w) in weights {
            check(
                w.is_finite() && *w > 0.0 && *w <= 1e6,
                "data.class_weight",
                format!("class_weight of `{class}` must be > 0 and at most 1e6, got {w}"),
            );
        }
    }
    let ml = &exp.multilabel;
    let in_unit = |t: f64| t > 0.0 && t < 1.0;
    check(
        in_unit(ml.threshold),
        "multilabel.threshold",
        format!(
            "threshold must be between 0 and 1 (exclusive), got {}",
            ml.threshold
        ),
    );
    for (label, t) in &ml.thresholds {
        check(
            in_unit(*t),
            "multilabel.thresholds",
            format!("threshold of `{label}` must be between 0 and 1 (exclusive), got {t}"),
        );
    }
    if let super::PosWeight::Weights(weights) = &ml.pos_weight {
        check(
            !weights.is_empty(),
            "multilabel.pos_weight",
            "pos_weight needs `balanced`, `none` or at least one `label: weight`".into(),
        );
        for (label, w) in weights {
            check(
                w.is_finite() && *w > 0.0 && *w <= 1e6,
                "multilabel.pos_weight",
                format!("pos_weight of `{label}` must be > 0 and at most 1e6, got {w}"),
            );
        }
    }
    check(
        !exp.data.label_delimiter.is_empty(),
        "data.label_delimiter",
        "label_delimiter must not be empty".into(),
    );
    let multilabel = exp.task == super::Task::Multilabel || !exp.data.columns.labels.is_empty();
    if multilabel {
        check(
            exp.data.labels.is_some(),
            "task",
            "a multi-label task needs a label file (data.labels): class folders give one \
             class per image"
                .into(),
        );
        check(
            exp.task != super::Task::SingleLabel,
            "task",
            "data.columns.labels names one column per label: that is a multilabel task".into(),
        );
        check(
            exp.data.class_weight.is_none(),
            "data.class_weight",
            "class_weight weighs classes of a single-label task; a multi-label task weighs \
             each label's positives with multilabel.pos_weight"
                .into(),
        );
        check(
            exp.data.sampling == super::Sampling::Shuffle,
            "data.sampling",
            "balanced sampling draws classes of a single-label task; a multi-label task \
             weighs rare labels with multilabel.pos_weight"
                .into(),
        );
    }
    let aug = &exp.data.augment;
    if let Some(r) = aug.rescale {
        check(
            r > 0.0 && r.is_finite(),
            "data.augment.rescale",
            format!("rescale must be > 0, got {r}"),
        );
    }
    check(
        (0.0..=180.0).contains(&aug.rotation_range),
        "data.augment.rotation_range",
        format!(
            "rotation_range must be in 0..=180 degrees, got {}",
            aug.rotation_range
        ),
    );
    for (path, v) in [
        ("data.augment.width_shift_range", aug.width_shift_range),
        ("data.augment.height_shift_range", aug.height_shift_range),
        ("data.augment.zoom_range", aug.zoom_range),
    ] {
        check(
            (0.0..1.0).contains(&v),
            path,
            format!("{} must be a fraction in [0, 1), got {v}", leaf(path)),
        );
    }
    check(
        (0.0..=255.0).contains(&aug.cval),
        "data.augment.cval",
        format!("cval is a pixel value in 0..=255, got {}", aug.cval),
    );
    check(
        (0.0..1.0).contains(&exp.model.dropout),
        "model.dropout",
        format!("dropout must be in [0, 1), got {}", exp.model.dropout),
    );
    check(
        (0.0..1.0).contains(&exp.model.label_smoothing),
        "model.label_smoothing",
        format!(
            "label_smoothing must be in [0, 1), got {}",
            exp.model.label_smoothing
        ),
    );
    if exp.model.backbone == Backbone::SmallCnn {
        check(
            exp.model.weights != Weights::Imagenet,
            "model.weights",
            "small_cnn has no ImageNet weights: use `weights: none` or a file".into(),
        );
    }
    for (lr_path, lr, m_path, momentum) in [
        (
            "frozen.lr",
            exp.frozen.lr,
            "frozen.momentum",
            exp.frozen.momentum,
        ),
        (
            "finetune.lr",
            exp.finetune.lr,
            "finetune.momentum",
            exp.finetune.momentum,
        ),
    ] {
        check(
            lr > 0.0 && lr.is_finite(),
            lr_path,
            format!("learning rate must be > 0, got {lr}"),
        );
        check(
            (0.0..1.0).contains(&momentum),
            m_path,
            format!("momentum must be in [0, 1), got {momentum}"),
        );
    }
    for (epochs_path, epochs, steps_path, steps) in [
        (
            "frozen.warmup_epochs",
            exp.frozen.warmup_epochs,
            "frozen.warmup_steps",
            exp.frozen.warmup_steps,
        ),
        (
            "finetune.warmup_epochs",
            exp.finetune.warmup_epochs,
            "finetune.warmup_steps",
            exp.finetune.warmup_steps,
        ),
    ] {
        if let Some(w) = epochs {
            check(
                w >= 0.0 && w.is_finite(),
                epochs_path,
                format!("warmup_epochs must be >= 0 (fractions allowed), got {w}"),
            );
        }
        check(
            epochs.is_none() || steps.is_none(),
            steps_path,
            format!(
                "give the warm-up in epochs or in steps, not both ({} is set too)",
                leaf(epochs_path)
            ),
        );
    }
    let decay = exp.finetune.layer_decay;
    check(
        decay > 0.0 && decay <= 1.0,
        "finetune.layer_decay",
        format!("layer_decay must be in (0, 1] (1: one rate for every group), got {decay}"),
    );
    check(
        exp.finetune.max_groups != Some(0),
        "finetune.max_groups",
        "max_groups must be at least 1 (leave it out to allow the whole network)".into(),
    );
    check(
        exp.finetune.unfreeze_last >= 1,
        "finetune.unfreeze_last",
        "unfreeze_last must be at least 1".into(),
    );
    check(
        exp.frozen.augment_views <= 100,
        "frozen.augment_views",
        format!(
            "augment_views must be 0..=100, got {}",
            exp.frozen.augment_views
        ),
    );
    check(
        exp.stall.min_delta >= 0.0 && exp.stall.min_delta.is_finite(),
        "stall.min_delta",
        format!("min_delta must be >= 0, got {}", exp.stall.min_delta),
    );
    check(
        exp.stall.factor > 0.0 && exp.stall.factor < 1.0,
        "stall.factor",
        format!(
            "factor must be between 0 and 1 (exclusive), got {}",
            exp.stall.factor
        ),
    );
    check(
        exp.stall.min_lr >= 0.0 && exp.stall.min_lr.is_finite(),
        "stall.min_lr",
        format!("min_lr must be >= 0, got {}", exp.stall.min_lr),
    );
    check(
        (1..=super::MAX_TTA_VIEWS).contains(&exp.tta),
        "tta",
        format!(
            "tta is the number of views averaged, 1..={} (1: the image alone), got {}",
            super::MAX_TTA_VIEWS,
            exp.tta
        ),
    );
    let dev = exp.device.as_str();
    check(
        matches!(dev, "auto" | "cpu" | "cuda" | "mps")
            || dev
                .strip_prefix("cuda:")
                .is_some_and(|n| n.parse::<usize>().is_ok()),
        "device",
        format!("device must be auto, cpu, cuda, cuda:N or mps, got `{dev}`"),
    );
    out
}

fn leaf(path: &str) -> &str {
    path.rsplit('.').next().unwrap_or(path)
}

/// Appended to a dotted path in [`value_positions`] for the position of the key
/// itself rather than its value (`frozen.lrr@key`).
pub const KEY_SUFFIX: &str = "@key";

/// Maps the dotted path of every value in a YAML text (`frozen.lr`, `data.image_size.0`)
/// to its 1-based (line, column), and of every key (path + [`KEY_SUFFIX`]). Stops
/// quietly at a syntax error: positions found so far are kept. Aliases are not
/// expanded, so this is linear in the text.
pub fn value_positions(text: &str) -> HashMap<String, (usize, usize)> {
    enum Frame {
        Map { key: Option<String> },
        Seq { index: usize },
    }
    fn path(stack: &[Frame]) -> String {
        let parts: Vec<String> = stack
            .iter()
            .filter_map(|f| match f {
                Frame::Map { key } => key.clone(),
                Frame::Seq { index } => Some(index.to_string()),
            })
            .collect();
        parts.join(".")
    }
    let mut out = HashMap::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut parser = Parser::new_from_str(text);
    while let Ok((event, mark)) = parser.next_token() {
        match event {
            Event::Scalar(..)
            | Event::MappingStart(..)
            | Event::SequenceStart(..)
            | Event::Alias(_) => {}
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
                advance(&mut stack);
                continue;
            }
            Event::StreamEnd => break,
            _ => continue,
        }
        // A scalar where a mapping expects a key is the key itself.
        if let (Some(Frame::Map { key: key @ None }), Event::Scalar(s, ..)) =
            (stack.last_mut(), &event)
        {
            *key = Some(s.clone());
            out.entry(format!("{}{KEY_SUFFIX}", path(&stack)))
                .or_insert((mark.line(), mark.col() + 1));
            continue;
        }
        if !stack.is_empty() {
            out.entry(path(&stack))
                .or_insert((mark.line(), mark.col() + 1));
        }
        match event {
            Event::MappingStart(..) => stack.push(Frame::Map { key: None }),
            Event::SequenceStart(..) => stack.push(Frame::Seq { index: 0 }),
            _ => advance(&mut stack),
        }
    }

    /// After a value: a mapping expects its next key, a sequence its next index.
    fn advance(stack: &mut [Frame]) {
        match stack.last_mut() {
            Some(Frame::Map { key }) => *key = None,
            Some(Frame::Seq { index }) => *index += 1,
            None => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_cover_block_and_flow_styles() {
        let text =
            "name: x\ndata:\n  dir: d\n  image_size: [160, 200]\nfrozen: { epochs: 2, lr: 0.1 }\n";
        let pos = value_positions(text);
        assert_eq!(pos["name"], (1, 7));
        assert_eq!(pos["data.dir"], (3, 8));
        assert_eq!(pos["data.image_size"], (4, 15));
        assert_eq!(pos["data.image_size.1"], (4, 21));
        assert_eq!(pos["frozen.epochs"], (5, 19));
        assert_eq!(pos["frozen.lr"], (5, 26));
    }
}
