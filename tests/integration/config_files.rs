//! Experiment files as users write them: the shipped ones, the schema, `check`, `schema`.

use std::path::Path;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn tlcap(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tlcap-tui"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn shipped() -> Vec<std::path::PathBuf> {
    let files = tlcap::config::experiment_files(&Path::new(ROOT).join("experiments")).unwrap();
    assert!(files.len() >= 4, "shipped experiments: {files:?}");
    files
}

#[test]
fn committed_schema_is_the_generated_one() {
    let committed =
        std::fs::read_to_string(Path::new(ROOT).join("schema/experiment.schema.json")).unwrap();
    let (code, printed, _) = tlcap(&["schema"]);
    assert_eq!(code, 0);
    assert_eq!(
        committed.trim(),
        printed.trim(),
        "regenerate with: target/release/tlcap-tui schema > schema/experiment.schema.json"
    );
}

#[test]
fn the_schema_validates_the_shipped_experiments_and_rejects_bad_ones() {
    let schema: serde_json::Value = serde_json::from_str(&tlcap::config::json_schema()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    for file in shipped() {
        let text = std::fs::read_to_string(&file).unwrap();
        let yaml: serde_json::Value = serde_yaml::from_str(&text).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&yaml)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{}: {errors:?}", file.display());
        assert!(
            text.starts_with("# yaml-language-server: $schema=../schema/experiment.schema.json")
        );
    }
    let bad: serde_json::Value = serde_yaml::from_str(
        "data: { dir: x, batch_size: 0 }\nmodel: { backbone: resnet5, dropot: 1 }\n",
    )
    .unwrap();
    assert!(validator.iter_errors(&bad).count() >= 3);
}

/// On range boundaries the schema (what an editor checks while typing) agrees with
/// `check`: open ends are exclusive in both.
#[test]
fn the_schema_and_check_agree_on_range_boundaries() {
    let schema: serde_json::Value = serde_json::from_str(&tlcap::config::json_schema()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let cases = [
        (
            "data: { dir: x, validation_split: 0 }\nmodel: { backbone: resnet18 }",
            false,
        ),
        (
            "data: { dir: x, validation_split: 1 }\nmodel: { backbone: resnet18 }",
            false,
        ),
        (
            "data: { dir: x, validation_split: 0.5 }\nmodel: { backbone: resnet18 }",
            true,
        ),
        (
            "data: { dir: x }\nmodel: { backbone: resnet18, dropout: 1 }",
            false,
        ),
        (
            "data: { dir: x }\nmodel: { backbone: resnet18, dropout: 0 }",
            true,
        ),
        (
            "data: { dir: x }\nmodel: { backbone: resnet18, label_smoothing: 1 }",
            false,
        ),
        (
            "data: { dir: x }\nmodel: { backbone: resnet18, label_smoothing: -0.1 }",
            false,
        ),
        (
            "data: { dir: x }\nmodel: { backbone: resnet18, label_smoothing: 0.1 }",
            true,
        ),
        (
            "data: { dir: x, augment: { width_shift_range: 1 } }\nmodel: { backbone: resnet18 }",
            false,
        ),
        (
            "data: { dir: x, augment: { zoom_range: 1 } }\nmodel: { backbone: resnet18 }",
            false,
        ),
        (
            "data: { dir: x, augment: { rescale: 0 } }\nmodel: { backbone: resnet18 }",
            false,
        ),
        (
            "data: { dir: x }\nmodel: { backbone: resnet18 }\nfrozen: { lr: 0 }",
            false,
        ),
        (
            "data: { dir: x }\nmodel: { backbone: resnet18 }\nfinetune: { momentum: 1 }",
            false,
        ),
        (
            "data: { dir: x }\nmodel: { backbone: resnet18 }\nfinetune: { momentum: 0 }",
            true,
        ),
        (
            "data: { dir: x, class_weight: { a: 0 } }\nmodel: { backbone: resnet18 }",
            false,
        ),
        (
            "data: { dir: x, class_weight: { a: -1 } }\nmodel: { backbone: resnet18 }",
            false,
        ),
        (
            "data: { dir: x, class_weight: { a: 2.5, b: 1.0e6 } }\nmodel: { backbone: resnet18 }",
            true,
        ),
        (
            "data: { dir: x, class_weight: balanced }\nmodel: { backbone: resnet18 }",
            true,
        ),
        (
            "data: { dir: x, class_weight: balance }\nmodel: { backbone: resnet18 }",
            false,
        ),
        (
            "data: { dir: x }\nmodel: { backbone: resnet18 }\nfinetune: { layer_decay: 1 }",
            true,
        ),
        (
            "data: { dir: x }\nmodel: { backbone: resnet18 }\nfinetune: { layer_decay: 0 }",
            false,
        ),
        (
            "data: { dir: x }\nmodel: { backbone: resnet18 }\nfinetune: { layer_decay: 1.5 }",
            false,
        ),
        (
            "data: { dir: x }\nmodel: { backbone: resnet18 }\nfinetune: { max_groups: 0 }",
            false,
        ),
        (
            "data: { dir: x }\nmodel: { backbone: resnet18 }\nfrozen: { schedule: one_cycle, warmup_epochs: 0.5 }",
            true,
        ),
        (
            "data: { dir: x }\nmodel: { backbone: resnet18 }\nfrozen: { warmup_epochs: -1 }",
            false,
        ),
        (
            "data: { dir: x }\nmodel: { backbone: resnet18 }\nfinetune: { schedule: linear }",
            false,
        ),
        ("data: { dir: x }\nmodel: { backbone: resnet18 }\ntta: 0", false),
        ("data: { dir: x }\nmodel: { backbone: resnet18 }\ntta: 8", true),
        ("data: { dir: x }\nmodel: { backbone: resnet18 }\ntta: 9", false),
    ];
    for (text, valid) in cases {
        let yaml: serde_json::Value = serde_yaml::from_str(text).unwrap();
        let by_schema = validator.is_valid(&yaml);
        let by_check =
            tlcap::config::parse_str(text, std::path::Path::new("/tmp/boundary.yaml")).is_ok();
        assert_eq!((by_schema, by_check), (valid, valid), "{text}");
    }
}

#[test]
fn check_accepts_the_shipped_experiments() {
    let (code, out, err) = tlcap(&["check", &format!("{ROOT}/experiments")]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("ok ")).count(),
        shipped().len(),
        "{out}"
    );
}

#[test]
fn check_prints_every_error_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.yaml");
    let b = dir.path().join("b.yaml");
    std::fs::write(
        &a,
        "data: { dir: x, batch_size: 0 }\nmodel: { backbone: small_cnn, dropout: 2 }\n",
    )
    .unwrap();
    std::fs::write(
        &b,
        "data: { dir: x }\nmodel:\n  backbone: resnet50\n  dropot: 0.3\n",
    )
    .unwrap();
    let (code, out, err) = tlcap(&["check", a.to_str().unwrap(), b.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains(&format!(
            "{}:1:29: batch_size must be at least 1",
            a.display()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("{}:2:40: dropout must be in [0, 1)", a.display())),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{}:4:3: model: unknown field `dropot`",
            b.display()
        )),
        "{out}"
    );
    assert!(out.contains("did you mean `dropout`?"), "{out}");
    assert!(
        err.contains("2 of 2 experiment file(s) or folder(s) invalid"),
        "{err}"
    );
    let empty = tempfile::tempdir().unwrap();
    let (code, out, _) = tlcap(&["check", empty.path().to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        out.contains("no *.yaml or *.yml files in this folder"),
        "{out}"
    );
}

/// `check` reports every problem of a file in one pass (a typo does not hide the
/// range errors after it), then what can be checked without training: the data
/// folder and its classes, the weights file, `unfreeze_last` against the layers.
#[test]
fn check_reports_every_problem_and_what_training_would_hit() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("only_one_class")).unwrap();
    let a = dir.path().join("a.yaml");
    std::fs::write(
        &a,
        "data: { dir: data, batch_size: 0, validation_split: 2 }\n\
         model: { backbone: resnet5, dropout: 1.5 }\n",
    )
    .unwrap();
    let b = dir.path().join("b.yaml");
    std::fs::write(dir.path().join("bad.pth"), "not a weight file").unwrap();
    std::fs::write(
        &b,
        "data: { dir: data }\n\
         model: { backbone: mobilenet_v2, weights: bad.pth }\n\
         finetune: { unfreeze_last: 500 }\n",
    )
    .unwrap();
    let (code, out, err) = tlcap(&["check", a.to_str().unwrap(), b.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    let a_lines: Vec<&str> = out.lines().filter(|l| l.contains("a.yaml:")).collect();
    assert_eq!(a_lines.len(), 4, "typo + three range errors:\n{out}");
    for (pos, needle) in [
        ("1:32", "batch_size"),
        ("1:53", "validation_split"),
        ("2:20", "did you mean `resnet50`?"),
        ("2:38", "dropout"),
    ] {
        assert!(
            out.lines()
                .any(|l| l.contains(&format!("a.yaml:{pos}:")) && l.contains(needle)),
            "{pos} {needle}:\n{out}"
        );
    }
    for (pos, needle) in [
        ("1:14", "needs at least two class sub-folders"),
        ("2:43", "bad.pth"),
        ("3:28", "unfreeze_last is 500, but mobilenet_v2 has"),
    ] {
        assert!(
            out.lines()
                .any(|l| l.contains(&format!("b.yaml:{pos}:")) && l.contains(needle)),
            "{pos} {needle}:\n{out}"
        );
    }
}

/// The schedule settings' bad values: `check` names each at its line:column with the
/// valid range or names, and a warm-up given both ways.
#[test]
fn check_names_bad_schedule_settings_with_their_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.yaml");
    std::fs::write(
        &a,
        "data: { dir: x }\nmodel: { backbone: resnet18 }\n\
         frozen: { warmup_epochs: 1, warmup_steps: 10 }\n\
         finetune: { layer_decay: 1.5, max_groups: 0 }\n\
         stall: { on_stall: unfreeze_mor }\n",
    )
    .unwrap();
    let (code, out, _) = tlcap(&["check", a.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    let at = |line_col: &str, text: &str| {
        assert!(
            out.contains(&format!("{}:{line_col}: {text}", a.display())),
            "{line_col} {text}\n{out}"
        );
    };
    at("3:43", "give the warm-up in epochs or in steps, not both");
    at("4:26", "layer_decay must be in (0, 1]");
    at("4:43", "max_groups must be at least 1");
    assert!(out.contains("unfreeze_more"), "{out}");
}
