//! Weight files: torch .pth (legacy and zip), tch .ot and .safetensors are read by
//! name with their dtypes; hostile files are refused without running anything.
//! Fixtures in tests/fixtures/weights/ come from scripts/make_weight_fixtures.py.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use tch::{Device, Kind, Tensor};
use tlcap::weights::{self, Format, WeightsError};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/weights")
        .join(name)
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

/// What scripts/make_weight_fixtures.py stored, in file order.
fn check_mixed(file: &weights::WeightFile) {
    let names: Vec<&str> = file.tensors.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "conv.weight",
            "conv.bias",
            "fc.weight_t",
            "half.weight",
            "bf16.bias",
            "bn.num_batches_tracked"
        ]
    );
    let t: HashMap<&str, &Tensor> = file.tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let w: Vec<f64> = (0..12).map(|i| i as f64 / 8.0).collect();
    assert_eq!(t["conv.weight"].size(), [2, 3, 1, 2]);
    assert_eq!(t["conv.weight"].kind(), Kind::Float);
    assert_eq!(values(t["conv.weight"]), w);
    assert_eq!(values(t["conv.bias"]), [w[10], w[11]], "view at an offset");
    // size [3, 2], stride [1, 3]: element (i, j) is w[i + 3 j].
    assert_eq!(
        values(t["fc.weight_t"]),
        [w[0], w[3], w[1], w[4], w[2], w[5]]
    );
    assert_eq!(t["half.weight"].kind(), Kind::Half);
    assert_eq!(values(t["half.weight"]), [0.5, -1.25, 3.0, 1024.0]);
    assert_eq!(t["bf16.bias"].kind(), Kind::BFloat16);
    assert_eq!(values(t["bf16.bias"]), [1.5, -2.0, 0.15625]);
    assert_eq!(t["bn.num_batches_tracked"].kind(), Kind::Int64);
    assert_eq!(t["bn.num_batches_tracked"].size(), Vec::<i64>::new());
}

#[test]
fn legacy_and_zip_pth_files_read_alike() {
    let legacy = weights::read_file(&fixture("legacy_mixed.pth")).unwrap();
    assert_eq!(legacy.format, Format::TorchLegacy);
    check_mixed(&legacy);
    let zip = weights::read_file(&fixture("zip_mixed.pth")).unwrap();
    assert_eq!(zip.format, Format::TorchZip);
    check_mixed(&zip);
}

#[test]
fn half_and_bfloat16_load_into_float32_variables_and_mismatches_are_named() {
    let file = weights::read_file(&fixture("zip_mixed.pth")).unwrap();
    let var = |shape: &[i64]| Tensor::zeros(shape, (Kind::Float, Device::Cpu));
    let mut vars: HashMap<String, Tensor> = HashMap::from([
        ("conv.weight".into(), var(&[2, 3, 1, 2])),
        ("conv.bias".into(), var(&[2])),
        ("fc.weight_t".into(), var(&[3, 2])),
        ("half.weight".into(), var(&[2, 2])),
        ("bf16.bias".into(), var(&[3])),
    ]);
    let report = weights::apply(&vars, &file, |_| false).unwrap();
    assert_eq!((report.loaded, report.ignored, report.converted), (5, 1, 2));
    assert_eq!(vars["half.weight"].kind(), Kind::Float);
    assert_eq!(values(&vars["half.weight"]), [0.5, -1.25, 3.0, 1024.0]);
    assert_eq!(values(&vars["bf16.bias"]), [1.5, -2.0, 0.15625]);

    // Missing, unexpected and wrong-shaped tensors are all reported by name, and
    // nothing is copied.
    vars.remove("conv.bias");
    vars.insert("fc.weight_t".into(), var(&[2, 3]));
    vars.insert("extra.weight".into(), var(&[1]));
    vars.insert("half.weight".into(), var(&[2, 2]));
    let err = weights::apply(&vars, &file, |_| false).unwrap_err();
    let WeightsError::Mismatch(m) = &err else {
        panic!("{err}")
    };
    assert_eq!(m.missing, ["extra.weight"]);
    assert_eq!(m.unexpected, ["conv.bias"]);
    assert_eq!(
        m.shape,
        [("fc.weight_t".to_string(), vec![2, 3], vec![3, 2])]
    );
    assert_eq!(values(&vars["half.weight"]), [0.0; 4], "nothing copied");
    let text = err.to_string();
    for name in ["extra.weight", "conv.bias", "fc.weight_t"] {
        assert!(text.contains(name), "{text}");
    }
}

#[test]
fn pickles_that_call_code_are_refused_and_nothing_runs() {
    for (name, global) in [
        ("os_system", "posix.system"),
        ("builtins_eval", "builtins.eval"),
        ("subprocess_popen", "subprocess.Popen"),
    ] {
        let marker = PathBuf::from(format!("/tmp/tlcap-pickle-marker-{name}"));
        let _ = std::fs::remove_file(&marker);
        for file in [format!("evil_{name}.pth"), format!("evil_{name}_zip.pth")] {
            let err = match weights::read_file(&fixture(&file)) {
                Ok(_) => panic!("{file} was accepted"),
                Err(e) => e.to_string(),
            };
            assert!(
                err.contains(&format!("refused global `{global}`")),
                "{file}: {err}"
            );
            assert!(!marker.exists(), "{file}: the payload ran");
        }
    }
    // The text form `GLOBAL os system` (protocol 0) is refused the same way.
    let mut legacy = std::fs::read(fixture("legacy_mixed.pth")).unwrap();
    let at = find(&legacy, b"ccollections\nOrderedDict\n").unwrap();
    legacy.splice(at..at + 25, b"cos\nsystem\n(S'x'\ntR".iter().copied());
    let err = weights::read_bytes(&legacy).err().unwrap().to_string();
    assert!(err.contains("refused global `os.system`"), "{err}");
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn files_whose_sizes_lie_fail_cleanly() {
    let err = weights::read_file(&fixture("legacy_lying_size.pth"))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("claims") && err.contains("bytes"), "{err}");
    // Every truncation of every format is an error, never a panic.
    for name in ["legacy_mixed.pth", "zip_mixed.pth"] {
        let data = std::fs::read(fixture(name)).unwrap();
        for len in 0..data.len() {
            assert!(
                weights::read_bytes(&data[..len]).is_err(),
                "{name}[..{len}]"
            );
        }
    }
    // A safetensors header that points past the end.
    let mut st = Vec::new();
    let header = br#"{"w":{"dtype":"F32","shape":[1000],"data_offsets":[0,4000]}}"#;
    st.extend((header.len() as u64).to_le_bytes());
    st.extend(header);
    st.extend([0u8; 16]);
    assert!(weights::read_bytes(&st).is_err());
    // A header length larger than the file.
    let mut huge = u64::MAX.to_le_bytes().to_vec();
    huge.push(b'{');
    assert!(weights::read_bytes(&huge).is_err());
}

#[test]
fn safetensors_and_ot_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let legacy = weights::read_file(&fixture("legacy_mixed.pth")).unwrap();
    let st = dir.path().join("mixed.safetensors");
    weights::write_safetensors(&st, &legacy.tensors, None).unwrap();
    let back = weights::read_file(&st).unwrap();
    assert_eq!(back.format, Format::Safetensors);
    for (name, t) in &legacy.tensors {
        let (_, u) = back.tensors.iter().find(|(n, _)| n == name).unwrap();
        assert_eq!(u.kind(), t.kind(), "{name}");
        assert!(u.equal(t), "{name}");
    }
    // tch's own format, written by libtorch.
    let ot = dir.path().join("mixed.ot");
    let named: Vec<(&str, &Tensor)> = legacy
        .tensors
        .iter()
        .map(|(n, t)| (n.as_str(), t))
        .collect();
    Tensor::save_multi(&named, &ot).unwrap();
    let from_ot = weights::read_file(&ot).unwrap();
    assert_eq!(from_ot.format, Format::TorchZip);
    assert_eq!(from_ot.tensors.len(), legacy.tensors.len());
    for (name, t) in &legacy.tensors {
        let (_, u) = from_ot.tensors.iter().find(|(n, _)| n == name).unwrap();
        assert!(u.equal(t), "{name}");
    }
}

fn tlcap(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tlcap-tui"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn cli_imports_the_real_imagenet_file_and_inspects_it() {
    let pth = tlcap::model::imagenet_weights(tlcap::config::Backbone::MobilenetV2)
        .expect("run `make setup` first");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mnv2.safetensors");
    let run = tlcap(&[
        "weights",
        "import",
        pth.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let said = String::from_utf8_lossy(&run.stdout);
    assert!(said.contains("wrote 314 tensors"), "{said}");
    let a = weights::read_file(&pth).unwrap();
    let b = weights::read_file(&out).unwrap();
    let b: HashMap<&str, &Tensor> = b.tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    for (name, t) in &a.tensors {
        assert!(b[name.as_str()].equal(t), "{name}");
    }
    let inspect = tlcap(&["weights", "inspect", out.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(text.contains("features.0.0.weight"), "{text}");
    assert!(text.contains("[32, 3, 3, 3]"), "{text}");
    assert!(text.contains("314 tensors"), "{text}");
    // A refused file: exit 1, the global named, no backtrace.
    let evil = tlcap(&[
        "weights",
        "inspect",
        fixture("evil_os_system.pth").to_str().unwrap(),
    ]);
    assert_eq!(evil.status.code(), Some(1));
    let err = String::from_utf8_lossy(&evil.stderr);
    assert!(
        err.contains("posix.system") && !err.contains("panicked"),
        "{err}"
    );
}

/// The fuzz corpus (and whatever crashes fuzzing once found, kept there) never panics.
#[test]
fn the_fuzz_corpus_never_panics() {
    use tlcap::weights::pickle::{read, Policy};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/pickle");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        let _ = read(&data, Policy::StateDict);
        let _ = read(&data, Policy::TorchScriptArchive);
        let _ = weights::read_bytes(&data);
        n += 1;
    }
    assert!(n >= 10, "corpus has only {n} files");
}
