//! Reading experiment files: size limits, YAML errors with positions, suggestions for
//! misspelt keys, defaults that depend on the file, and path resolution.

use std::fmt;
use std::path::{Path, PathBuf};

use super::validate::{validate, value_positions, KEY_SUFFIX};
use super::{Experiment, Weights};

/// Experiment files larger than this are refused before they are read.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// A problem with an experiment file, with its position when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line and column of the offending value, when known.
    pub position: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, col)) => {
                write!(f, "{}:{line}:{col}: {}", self.file.display(), self.message)
            }
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in one experiment file (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    fn one(file: &Path, position: Option<(usize, usize)>, message: String) -> Self {
        ConfigErrors(vec![ConfigError {
            file: file.to_path_buf(),
            position,
            message,
        }])
    }

    /// The first problem (the one a one-line display shows).
    pub fn first(&self) -> &ConfigError {
        &self.0[0]
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Whether a path names an experiment file (`*.yaml`, `*.yml`).
pub fn is_experiment_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

/// The experiment files (`*.yaml`, `*.yml`) directly inside `dir`, sorted by name.
pub fn experiment_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_experiment_file(p))
        .collect();
    files.sort();
    Ok(files)
}

/// Reads and validates one experiment file.
pub fn load_file(path: &Path) -> Result<Experiment, ConfigErrors> {
    let error = |message: String| ConfigErrors::one(path, None, message);
    let meta = std::fs::metadata(path).map_err(|e| error(format!("cannot read: {e}")))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(error(format!(
            "file is {} bytes; experiment files are limited to {MAX_FILE_BYTES} bytes",
            meta.len()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| error(format!("cannot read: {e}")))?;
    parse_str(&text, path)
}

/// One experiment file as read: its settings, or every error as
/// `file:line:column: message`.
pub type Loaded = Result<Box<Experiment>, Vec<String>>;

/// Reads one experiment file into a [`Loaded`].
pub fn load(path: &Path) -> Loaded {
    load_file(path)
        .map(Box::new)
        .map_err(|errors| errors.0.iter().map(ToString::to_string).collect())
}

/// The experiment files under `target` (a folder, or one file), each read. Paths are
/// absolute, as the watcher reports them.
pub fn load_all(target: &Path) -> anyhow::Result<Vec<(PathBuf, Loaded)>> {
    use anyhow::Context;
    let target = &target
        .canonicalize()
        .with_context(|| format!("cannot open {}", target.display()))?;
    let files = if target.is_dir() {
        experiment_files(target).with_context(|| format!("cannot read {}", target.display()))?
    } else if target.is_file() {
        vec![target.to_path_buf()]
    } else {
        anyhow::bail!(
            "{} is neither an experiment file nor a folder",
            target.display()
        );
    };
    Ok(files
        .into_iter()
        .map(|p| {
            let loaded = load(&p);
            (p, loaded)
        })
        .collect())
}

/// Parses the text of an experiment file that lives at `path` (used for error messages,
/// the default name, and resolving relative paths).
pub fn parse_str(text: &str, path: &Path) -> Result<Experiment, ConfigErrors> {
    if text.len() as u64 > MAX_FILE_BYTES {
        let msg = format!(
            "text is {} bytes; the limit is {MAX_FILE_BYTES}",
            text.len()
        );
        return Err(ConfigErrors::one(path, None, msg));
    }
    // Syntax errors end the reading; every other problem is collected in one pass.
    let mut value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| {
        let position = e.location().map(|l| (l.line(), l.column()));
        ConfigErrors::one(
            path,
            position,
            with_suggestion(&strip_position(&e.to_string())),
        )
    })?;
    let positions = value_positions(text);
    let error = |key: &str, message: String| ConfigError {
        file: path.to_path_buf(),
        position: positions.get(key).copied(),
        message,
    };
    let mut errors: Vec<ConfigError> = Vec::new();
    // Settings taken out (or replaced by their closest name) to read the rest.
    let mut repaired: Vec<String> = Vec::new();
    let parsed = loop {
        if errors.len() >= 50 {
            break None;
        }
        // Read from text, not from the tree: serde_yaml words type errors better from
        // text ("expected `auto` or `off`"); positions come from the original file.
        let round = if repaired.is_empty() {
            text.to_string()
        } else {
            serde_yaml::to_string(&value).unwrap_or_default()
        };
        let de = serde_yaml::Deserializer::from_str(&round);
        let err = match serde_path_to_error::deserialize::<_, Experiment>(de) {
            Ok(exp) => break Some(exp),
            Err(err) => err,
        };
        let key = err.path().to_string();
        let message = plain_types(&with_suggestion(&strip_position(&err.inner().to_string())));
        if let Some(field) = quoted_after(&message, "missing field `") {
            let full = if key == "." {
                field
            } else {
                format!("{key}.{field}")
            };
            // Missing because it was taken out above: already reported.
            if !repaired.contains(&full) {
                errors.push(error(&key, message));
            }
            break None;
        }
        // An unknown key: its path names the key itself (a text reader stops at its
        // mapping), so that it can be taken out.
        let unknown = quoted_after(&message, "unknown field `");
        let unknown_key = unknown.is_some();
        let key = match unknown {
            Some(name) if !key.ends_with(&format!(".{name}")) && key != name => {
                if key == "." {
                    name
                } else {
                    format!("{key}.{name}")
                }
            }
            _ => key,
        };
        errors.push(ConfigError {
            position: positions
                .get(&format!("{key}{KEY_SUFFIX}"))
                .filter(|_| unknown_key)
                .or_else(|| positions.get(&key))
                .copied(),
            ..error(&key, message.clone())
        });
        let closest = quoted_after(&message, "did you mean `").filter(|_| !unknown_key);
        let fixed = match closest {
            Some(name) => replace_at(&mut value, &key, serde_yaml::Value::String(name)),
            None => remove_at(&mut value, &key),
        };
        if !fixed {
            break None;
        }
        repaired.push(key);
    };
    if let Some(mut exp) = parsed {
        // The default `weights: imagenet` means "none" for a backbone that has no
        // ImageNet file.
        if !exp.model.backbone.has_own_normalisation() && !positions.contains_key("model.weights") {
            exp.model.weights = Weights::None;
        }
        // Range problems of settings not already reported above.
        for (key, message) in validate(&exp) {
            if !repaired.iter().any(|r| r == key) {
                errors.push(error(key, message));
            }
        }
        if errors.is_empty() {
            return Ok(finish(exp, path));
        }
    }
    errors.sort_by_key(|e| e.position.unwrap_or((usize::MAX, 0)));
    Err(ConfigErrors(errors))
}

/// serde names Rust types (`expected f64`); a file's author reads numbers.
fn plain_types(message: &str) -> String {
    const WORDS: &[(&str, &str)] = &[
        ("expected f64", "expected a number"),
        ("expected f32", "expected a number"),
        ("expected u64", "expected a whole number, 0 or more"),
        ("expected u32", "expected a whole number, 0 or more"),
        ("expected usize", "expected a whole number, 0 or more"),
        ("expected i64", "expected a whole number"),
        ("expected a boolean", "expected true or false"),
    ];
    WORDS
        .iter()
        .fold(message.to_string(), |m, (from, to)| m.replace(from, to))
}

/// The name between `prefix` and the next backquote in `message`.
fn quoted_after(message: &str, prefix: &str) -> Option<String> {
    let rest = &message[message.find(prefix)? + prefix.len()..];
    Some(rest[..rest.find('`')?].to_string())
}

/// The mapping entry at a dotted `key` (`data.augment.rotation`), with its parent.
fn entry_at<'a>(
    value: &'a mut serde_yaml::Value,
    key: &str,
) -> Option<(&'a mut serde_yaml::Mapping, String)> {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop()?.to_string();
    let mut here = value;
    for part in parts {
        here = here.as_mapping_mut()?.get_mut(part)?;
    }
    Some((here.as_mapping_mut()?, last))
}

/// Takes the setting at `key` out of the file's tree (its default then applies).
fn remove_at(value: &mut serde_yaml::Value, key: &str) -> bool {
    entry_at(value, key).is_some_and(|(map, last)| map.remove(last.as_str()).is_some())
}

/// Puts `new` in place of the setting at `key`.
fn replace_at(value: &mut serde_yaml::Value, key: &str, new: serde_yaml::Value) -> bool {
    match entry_at(value, key).and_then(|(map, last)| map.get_mut(last.as_str())) {
        Some(slot) => {
            *slot = new;
            true
        }
        None => false,
    }
}

/// A valid file's settings with its name and relative paths filled in.
fn finish(mut exp: Experiment, path: &Path) -> Experiment {
    let base = path.parent().unwrap_or(Path::new("."));
    if exp.name.trim().is_empty() {
        exp.name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "experiment".into());
    }
    if exp.data.dir.is_relative() {
        exp.data.dir = base.join(&exp.data.dir);
    }
    if let Some(labels) = exp.data.labels.as_mut().filter(|l| l.is_relative()) {
        *labels = base.join(&*labels);
    }
    if let Weights::File(p) = &exp.model.weights {
        if p.is_relative() {
            exp.model.weights = Weights::File(base.join(p));
        }
    }
    exp
}

/// serde_yaml appends " at line L column C"; the position is reported separately.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// Adds "did you mean `x`?" to serde's "unknown field `y`, expected one of ..." messages.
fn with_suggestion(msg: &str) -> String {
    let Some(rest) = ["unknown field `", "unknown variant `"]
        .iter()
        .find_map(|p| msg.find(p).map(|i| &msg[i + p.len()..]))
    else {
        return msg.to_string();
    };
    let Some((unknown, expected)) = rest.split_once('`') else {
        return msg.to_string();
    };
    let best = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|cand| (strsim::damerau_levenshtein(unknown, cand), cand))
        .min();
    match best {
        Some((dist, cand)) if dist <= unknown.len().max(3) / 2 + 1 => {
            format!("{msg}; did you mean `{cand}`?")
        }
        _ => msg.to_string(),
    }
}

/// The 1-based (line, column) of every value in an experiment file, by dotted key
/// (empty when the file cannot be read).
pub fn positions_of(file: &Path) -> std::collections::HashMap<String, (usize, usize)> {
    std::fs::read_to_string(file)
        .map(|text| value_positions(&text))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "data: { dir: images }\nmodel: { backbone: small_cnn }\n";

    fn parse(text: &str) -> Result<Experiment, ConfigError> {
        parse_str(text, Path::new("/exp/cats.yaml")).map_err(|e| e.first().clone())
    }

    #[test]
    fn minimal_file_gets_keras_defaults_and_resolved_paths() {
        let exp = parse(MINIMAL).unwrap();
        assert_eq!(exp.name, "cats");
        assert_eq!(exp.data.dir, PathBuf::from("/exp/images"));
        assert_eq!(
            (exp.data.image_size.height, exp.data.image_size.width),
            (256, 256)
        );
        assert_eq!(exp.data.batch_size, 32);
        assert_eq!(exp.frozen.lr, 1e-3);
        assert_eq!(exp.finetune.lr, 1e-5);
        assert!(!exp.finetune.train_bn);
        assert_eq!(exp.data.augment.rescale, None);
        assert_eq!(exp.device, "auto");
        assert_eq!(
            exp.model.weights,
            Weights::None,
            "small_cnn defaults to no weights"
        );
        let text = "data: { dir: x }\nmodel: { backbone: mobilenet_v2, weights: w/m.pth }\n";
        let exp = parse(text).unwrap();
        assert_eq!(exp.model.weights, Weights::File("/exp/w/m.pth".into()));
        let exp = parse("data: { dir: /abs }\nmodel: { backbone: resnet18 }\n").unwrap();
        assert_eq!(
            (exp.model.weights, exp.data.dir),
            (Weights::Imagenet, "/abs".into())
        );
    }

    #[test]
    fn unknown_key_is_rejected_with_the_closest_name() {
        let err = parse(
            "data: { dir: x }\nmodel: { backbone: small_cnn }\nfrozen:\n  epochs: 2\n  lrr: 0.1\n",
        )
        .unwrap_err();
        assert_eq!(err.position, Some((5, 3)), "{err}");
        assert!(err.message.contains("unknown field `lrr`"), "{err}");
        assert!(err.message.ends_with("did you mean `lr`?"), "{err}");
    }

    #[test]
    fn out_of_range_values_are_rejected_at_their_position() {
        let cases = [
            (
                "data: { dir: x, validation_split: 1.5 }\nmodel: { backbone: small_cnn }\n",
                (1, 35),
                "between 0 and 1",
            ),
            (
                "data: { dir: x, batch_size: 0 }\nmodel: { backbone: small_cnn }\n",
                (1, 29),
                "at least 1",
            ),
            (
                "data: { dir: x, image_size: 16 }\nmodel: { backbone: small_cnn }\n",
                (1, 29),
                "between 32 and 4096",
            ),
            (
                "data: { dir: x }\nmodel: { backbone: small_cnn }\nfinetune:\n  lr: -0.1\n",
                (4, 7),
                "must be > 0",
            ),
            (
                "data: { dir: x }\nmodel: { backbone: small_cnn }\ndevice: gpu\n",
                (3, 9),
                "cuda:N",
            ),
            (
                "data: { dir: x }\nmodel: { backbone: resnet5 }\n",
                (2, 20),
                "did you mean `resnet50`?",
            ),
            (
                "data: { dir: x }\nmodel: { backbone: small_cnn }\nfrozen: { epochs: many }\n",
                (3, 19),
                "invalid type",
            ),
        ];
        for (text, pos, needle) in cases {
            let err = parse(text).unwrap_err();
            assert_eq!(err.position, Some(pos), "{err}");
            assert!(err.message.contains(needle), "{err}");
            assert!(
                err.to_string()
                    .starts_with(&format!("/exp/cats.yaml:{}:{}: ", pos.0, pos.1)),
                "{err}"
            );
        }
    }

    #[test]
    fn every_range_problem_is_reported() {
        let text = "data: { dir: x, batch_size: 0, validation_split: 0 }\nmodel: { backbone: small_cnn, dropout: 1.0 }\n";
        let errs = parse_str(text, Path::new("e.yaml")).unwrap_err();
        let got: Vec<_> = errs.0.iter().map(|e| e.position.unwrap()).collect();
        assert_eq!(got, vec![(1, 29), (1, 50), (2, 40)], "{errs}");
        let text = "data: { dir: x }\nmodel: { backbone: small_cnn, weights: imagenet }\n";
        let err = parse(text).unwrap_err();
        assert_eq!(err.position, Some((2, 40)), "{err}");
        assert!(
            err.message.contains("small_cnn has no ImageNet weights"),
            "{err}"
        );
    }

    /// A typo, a wrong type, an unknown key and range errors: all reported at once, in
    /// file order; the typo's closest name is used to check the rest.
    #[test]
    fn every_problem_of_a_file_is_reported_in_one_pass() {
        let text = "data: { dir: x, batch_size: 0, validation_split: 2 }\n\
                    model: { backbone: resnet5, dropout: 1.5 }\n\
                    frozen: { epochs: many, lrr: 0.1 }\n\
                    finetune: { lr: -1 }\n";
        let errs = parse_str(text, Path::new("e.yaml")).unwrap_err();
        let got: Vec<(usize, usize)> = errs.0.iter().map(|e| e.position.unwrap()).collect();
        assert_eq!(
            got,
            vec![
                (1, 29),
                (1, 50),
                (2, 20),
                (2, 38),
                (3, 19),
                (3, 25),
                (4, 17)
            ],
            "{errs}"
        );
        let text = errs.to_string();
        for needle in [
            "did you mean `resnet50`?",
            "expected a whole number, 0 or more",
            "unknown field `lrr`",
            "learning rate must be > 0",
        ] {
            assert!(text.contains(needle), "{needle}: {text}");
        }
        // Type errors read as serde_yaml words them from text, with the choices.
        let errs = parse_str(
            "data: { dir: x }\nmodel: { backbone: small_cnn }\nfrozen: { feature_cache: false, lrr: 1 }\n",
            Path::new("e.yaml"),
        )
        .unwrap_err();
        assert_eq!(errs.0.len(), 2, "{errs}");
        assert!(
            errs.to_string().contains("expected `auto` or `off`"),
            "{errs}"
        );
        // A required setting that is wrong is reported once, not again as missing.
        let errs = parse_str(
            "data: { dir: 3 }\nmodel: { backbone: [] }\n",
            Path::new("e.yaml"),
        )
        .unwrap_err();
        assert_eq!(errs.0.len(), 1, "{errs}");
    }

    #[test]
    fn yaml_syntax_error_has_a_position() {
        let err = parse("data: { dir: x\nmodel: [\n").unwrap_err();
        assert!(err.position.is_some(), "{err}");
    }

    #[test]
    fn alias_bomb_is_refused_quickly() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let p = i - 1;
            text += &format!("a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n");
        }
        text += "data: { dir: *a11 }\nmodel: { backbone: small_cnn }\n";
        let start = std::time::Instant::now();
        let err = parse(&text).unwrap_err();
        assert!(start.elapsed().as_secs() < 5, "took {:?}", start.elapsed());
        assert!(!err.message.is_empty());
    }

    #[test]
    fn huge_file_is_refused_before_reading() {
        let dir = std::env::temp_dir().join(format!("tlcap-huge-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("huge.yaml");
        let f = std::fs::File::create(&file).unwrap();
        f.set_len(100 << 20).unwrap(); // sparse: 100 MB without writing it
        let err = load_file(&file).unwrap_err().first().clone();
        assert!(err.message.contains("limited to"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn suggestion_only_for_close_names() {
        assert!(
            with_suggestion("unknown field `zzzzzzzz`, expected one of `lr`, `epochs`")
                .ends_with("`epochs`")
        );
        assert!(
            with_suggestion("unknown field `epoch`, expected one of `lr`, `epochs`")
                .ends_with("did you mean `epochs`?")
        );
    }
}
