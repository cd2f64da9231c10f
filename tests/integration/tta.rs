//! Test-time augmentation (`tta: N`): identical views change nothing, distinct views
//! average, and a run validates, predicts and exports with its views consistently.

use crate::train::{predict_agrees_with_the_best_epoch, run_all, small};
use crate::util::{make_images, stdout_of_success};
use tch::Tensor;
use tlcap::config::FillMode;
use tlcap::data::augment::{tta_views, Transform};
use tlcap::train::Options;

#[test]
fn identical_views_equal_no_tta_and_distinct_views_average() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_images(&data, &["left", "right"], 2, 32);
    let exp = small(&data, "");
    let net = tlcap::model::classifier::Classifier::new(&exp, 2, tch::Device::Cpu).unwrap();
    tch::manual_seed(5);
    // Dim pixels: logits of a few units, probabilities far from the 1e-7 floor.
    let x = Tensor::rand([5, 3, 32, 32], (tch::Kind::Float, tch::Device::Cpu)) * 2.0;
    let fill = (FillMode::Nearest, 0.0);
    tch::no_grad(|| {
        let plain = net.probabilities(&net.forward(&x));
        let twice = net.probabilities_over_views(&x, &[Transform::IDENTITY; 2], fill, None);
        assert_eq!(
            Vec::<f32>::try_from(plain.flatten(0, -1)).unwrap(),
            Vec::<f32>::try_from(twice.flatten(0, -1)).unwrap()
        );
        let mirror = Transform {
            flip: true,
            ..Transform::IDENTITY
        };
        let mirrored = net.probabilities(&net.forward(&x.flip([3])));
        let both = net.probabilities_over_views(&x, &[Transform::IDENTITY, mirror], fill, None);
        let by_hand = (&plain + &mirrored) / 2.0;
        let diff = (both - by_hand).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "{diff}");
        // The loss of one view's probabilities is the usual loss.
        let y = Tensor::from_slice(&[0i64, 1, 1, 0, 1]);
        let a = net.loss_of_probabilities(&plain, &y).double_value(&[]);
        let b = net.loss(&net.forward(&x), &y).double_value(&[]);
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    });
}

/// With `tta: 3` (the image, its mirror, a shift), the best epoch's validation figures,
/// `best-predictions.json` and `predict` agree image by image; the exported TorchScript
/// model's card says the graph is one view.
#[test]
fn a_run_with_tta_validates_predicts_and_exports_with_its_views() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_images(&data, &["left", "right"], 24, 32);
    let mut exp = small(&data, "tta: 3\n");
    exp.frozen.epochs = 3;
    exp.data.augment.horizontal_flip = true;
    assert_eq!(
        tta_views(&exp.data.augment, exp.tta, 32, 32).len(),
        3,
        "the image, its mirror, a shift"
    );
    let (rows, _, run) = run_all(
        exp,
        Options {
            runs_root: dir.path().join("runs"),
            ..Default::default()
        },
    );
    predict_agrees_with_the_best_epoch(&run, &rows);
    let model = dir.path().join("m.pt");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tlcap-tui"))
        .arg("export")
        .arg(&run)
        .arg("-o")
        .arg(&model)
        .output()
        .unwrap();
    stdout_of_success(&out);
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.with_extension("json")).unwrap())
            .unwrap();
    let said = card["tta"].as_str().unwrap();
    assert!(
        said.starts_with("not included: the run averaged 3 views"),
        "{said}"
    );
}
