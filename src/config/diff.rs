//! Comparing two versions of an experiment: which changes apply live, which need a restart.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

use super::Experiment;

/// When a change can take effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Applied at the next epoch boundary of a running experiment.
    Live,
    /// Needs the run to be restarted (the data, the model or the randomness changes).
    Restart,
}

/// One changed setting, by its dotted path in the file (e.g. `finetune.lr`).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub path: String,
    pub old: String,
    pub new: String,
    pub kind: ChangeKind,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} -> {}", self.path, self.old, self.new)
    }
}

/// Keeps one restart-only setting of a running experiment in an edited one.
type Keep = fn(&mut Experiment, &Experiment);

/// Settings that define the data, the model or the randomness: changing them mid-run
/// would make the epochs before and after incomparable, so they need a restart. The
/// one list of them: [`diff`] names them, [`LiveEdit`] keeps their running values.
const RESTART: &[(&str, Keep)] = &[
    ("data.dir", |to, from| to.data.dir = from.data.dir.clone()),
    ("data.labels", |to, from| {
        to.data.labels = from.data.labels.clone()
    }),
    ("data.columns", |to, from| {
        to.data.columns = from.data.columns.clone()
    }),
    ("data.image_size", |to, from| {
        to.data.image_size = from.data.image_size
    }),
    ("data.validation_split", |to, from| {
        to.data.validation_split = from.data.validation_split
    }),
    ("data.batch_size", |to, from| {
        to.data.batch_size = from.data.batch_size
    }),
    ("data.interpolation", |to, from| {
        to.data.interpolation = from.data.interpolation
    }),
    ("data.intensity", |to, from| {
        to.data.intensity = from.data.intensity
    }),
    ("data.image_cache", |to, from| {
        to.data.image_cache = from.data.image_cache
    }),
    ("data.class_weight", |to, from| {
        to.data.class_weight = from.data.class_weight.clone()
    }),
    ("data.label_delimiter", |to, from| {
        to.data.label_delimiter = from.data.label_delimiter.clone()
    }),
    ("task", |to, from| to.task = from.task),
    ("multilabel.pos_weight", |to, from| {
        to.multilabel.pos_weight = from.multilabel.pos_weight.clone()
    }),
    ("model.backbone", |to, from| {
        to.model.backbone = from.model.backbone
    }),
    ("model.weights", |to, from| {
        to.model.weights = from.model.weights.clone()
    }),
    ("device", |to, from| to.device = from.device.clone()),
    ("seed", |to, from| to.seed = from.seed),
];

/// What a saved experiment file means for a run in progress: every change, and the
/// settings to go on with (the edited live settings; the running values of every
/// restart-only setting, which wait for the next start). The dashboard and the
/// trainer both use it, so they agree on what applies now.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveEdit {
    /// Every difference, live and restart-only, sorted by path.
    pub changes: Vec<Change>,
    /// The settings in force once the edit is applied.
    pub next: Experiment,
}

impl LiveEdit {
    /// Compares the running settings with an edited file.
    pub fn new(running: &Experiment, edited: &Experiment) -> LiveEdit {
        let mut next = edited.clone();
        for (_, keep) in RESTART {
            keep(&mut next, running);
        }
        LiveEdit {
            changes: diff(running, edited),
            next,
        }
    }

    /// The changes that apply at the next epoch boundary.
    pub fn live(&self) -> impl Iterator<Item = &Change> {
        self.changes.iter().filter(|c| c.kind == ChangeKind::Live)
    }

    /// The changes that wait for the next start.
    pub fn restart_only(&self) -> impl Iterator<Item = &Change> {
        self.changes
            .iter()
            .filter(|c| c.kind == ChangeKind::Restart)
    }
}

/// Every difference between `old` and `new`, sorted by path.
pub fn diff(old: &Experiment, new: &Experiment) -> Vec<Change> {
    let (a, b) = (leaves(old), leaves(new));
    let mut paths: Vec<&String> = a.keys().chain(b.keys()).collect();
    paths.sort();
    paths.dedup();
    paths
        .into_iter()
        .filter(|p| a.get(*p) != b.get(*p))
        .map(|p| Change {
            path: p.clone(),
            old: a.get(p).map(show).unwrap_or_else(|| "-".into()),
            new: b.get(p).map(show).unwrap_or_else(|| "-".into()),
            kind: if RESTART
                .iter()
                .any(|(r, _)| p == r || p.starts_with(&format!("{r}.")))
            {
                ChangeKind::Restart
            } else {
                ChangeKind::Live
            },
        })
        .collect()
}

fn leaves(exp: &Experiment) -> BTreeMap<String, Value> {
    fn walk(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    // image_size is one setting, not two; the label file's columns too.
                    if p == "data.image_size" || p == "data.columns" {
                        out.insert(p, v.clone());
                    } else {
                        walk(&p, v, out);
                    }
                }
            }
            _ => {
                out.insert(prefix.to_string(), v.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", &to_value(exp), &mut out);
    out
}

/// The experiment as JSON. A path that is not UTF-8 cannot be serialised; such paths
/// are compared by their lossy text instead of failing.
fn to_value(exp: &Experiment) -> Value {
    serde_json::to_value(exp).unwrap_or_else(|_| {
        let lossy =
            |p: &std::path::Path| std::path::PathBuf::from(p.to_string_lossy().into_owned());
        let mut e = exp.clone();
        e.data.dir = lossy(&e.data.dir);
        e.data.labels = e.data.labels.as_deref().map(lossy);
        if let super::Weights::File(p) = &e.model.weights {
            e.model.weights = super::Weights::File(lossy(p));
        }
        serde_json::to_value(&e).unwrap_or(Value::Null)
    })
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f != 0.0 && (f.abs() <= 1e-3 || f.abs() >= 1e6) => {
                format!("{f:e}")
            }
            _ => n.to_string(),
        },
        Value::Object(m) if m.contains_key("height") => format!("{}x{}", m["height"], m["width"]),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_str;
    use std::path::Path;

    fn exp(extra: &str) -> Experiment {
        let text = format!("data: {{ dir: d }}\nmodel: {{ backbone: mobilenet_v2 }}\n{extra}");
        parse_str(&text, Path::new("e.yaml")).unwrap()
    }

    /// Every restart-only setting changed at once, with one live one: the merge keeps
    /// the running value of each (so no list entry lacks its keeper) and takes the
    /// live one.
    #[test]
    fn a_live_edit_keeps_every_restart_only_setting() {
        let running = exp("frozen: { lr: 1.0e-3 }\n");
        let edited = parse_str(
            "data: { dir: elsewhere, image_size: 96, validation_split: 0.3, batch_size: 8, \
             interpolation: bicubic, intensity: stretch, labels: l.csv, \
             columns: { path: file }, class_weight: balanced, image_cache: disk, \
             label_delimiter: ';' }\nmodel: { backbone: resnet18, weights: none }\n\
             device: cpu\nseed: 9\nfrozen: { lr: 5.0e-4 }\ntask: single_label\n\
             multilabel: { pos_weight: none }\n",
            Path::new("e.yaml"),
        )
        .unwrap();
        let edit = LiveEdit::new(&running, &edited);
        let restart: Vec<&str> = edit.restart_only().map(|c| c.path.as_str()).collect();
        let mut expected: Vec<&str> = RESTART.iter().map(|(p, _)| *p).collect();
        expected.sort();
        assert_eq!(restart, expected);
        let live: Vec<&str> = edit.live().map(|c| c.path.as_str()).collect();
        assert_eq!(live, ["frozen.lr"]);
        let left = diff(&running, &edit.next);
        assert_eq!(left.len(), 1, "{left:?}");
        assert_eq!(left[0].path, "frozen.lr");
    }

    #[test]
    fn sorts_changes_into_live_and_restart() {
        let old = exp("finetune: { lr: 1.0e-5, epochs: 4 }\nstall: { patience: 3 }\n");
        let new = exp("finetune: { lr: 3.0e-5, epochs: 6 }\nstall: { patience: 5 }\nseed: 7\n");
        let changes = diff(&old, &new);
        let got: Vec<(String, ChangeKind)> =
            changes.iter().map(|c| (c.path.clone(), c.kind)).collect();
        assert_eq!(
            got,
            vec![
                ("finetune.epochs".into(), ChangeKind::Live),
                ("finetune.lr".into(), ChangeKind::Live),
                ("seed".into(), ChangeKind::Restart),
                ("stall.patience".into(), ChangeKind::Live),
            ]
        );
        assert_eq!(changes[1].to_string(), "finetune.lr 1e-5 -> 3e-5");
    }

    #[test]
    fn every_restart_setting_is_classified_as_restart() {
        let base = exp("");
        let edits = [
            "data: { dir: other }\nmodel: { backbone: mobilenet_v2 }\n",
            "data: { dir: d, image_size: 160 }\nmodel: { backbone: mobilenet_v2 }\n",
            "data: { dir: d, validation_split: 0.3 }\nmodel: { backbone: mobilenet_v2 }\n",
            "data: { dir: d, batch_size: 8 }\nmodel: { backbone: mobilenet_v2 }\n",
            "data: { dir: d }\nmodel: { backbone: resnet50 }\n",
            "data: { dir: d }\nmodel: { backbone: mobilenet_v2, weights: none }\n",
            "data: { dir: d }\nmodel: { backbone: mobilenet_v2 }\ndevice: cpu\n",
        ];
        for text in edits {
            let new = parse_str(text, Path::new("e.yaml")).unwrap();
            let changes = diff(&base, &new);
            assert_eq!(changes.len(), 1, "{text}: {changes:?}");
            assert_eq!(changes[0].kind, ChangeKind::Restart, "{text}");
        }
    }

    #[test]
    fn augmentation_and_stall_settings_are_live() {
        let old = exp("");
        let new = exp(
            "stall: { on_stall: unfreeze, min_delta: 0.01 }\nfinetune: { unfreeze_last: 30 }\n",
        );
        let mut new2 = new.clone();
        new2.data.augment.rotation_range = 20.0;
        new2.data.augment.horizontal_flip = true;
        let changes = diff(&old, &new2);
        assert_eq!(changes.len(), 5, "{changes:?}");
        assert!(changes.iter().all(|c| c.kind == ChangeKind::Live));
        assert!(diff(&old, &old).is_empty());
    }

    #[test]
    fn a_path_that_is_not_utf8_is_compared_not_a_panic() {
        use std::os::unix::ffi::OsStrExt;
        let a = exp("");
        let mut b = a.clone();
        b.data.dir = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(b"/data/\xff"));
        let changes = diff(&a, &b);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].path, "data.dir");
        assert_eq!(changes[0].kind, ChangeKind::Restart);
        assert!(diff(&b, &b).is_empty());
    }
}
