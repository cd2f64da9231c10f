//! Backbones against reference outputs (`tests/fixtures/backbones/*.json`, computed with
//! torchvision), real ImageNet weights on real photos, and the freeze / unfreeze semantics.
//! Everything read here is in the repository or in the cache `make setup` fills.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};
use tlcap::config::{Backbone as Kind_, Interpolation};
use tlcap::data::{decode_center_crop, Normalisation};
use tlcap::model::{self, Backbone, LayerKind};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn fixture(name: &str) -> Value {
    let path = fixtures().join("backbones").join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The value of one formula rule for tensor `j` of shape `shape`, element by element:
/// computed in float64 and cast to float32, as the fixture's `rules` state.
fn formula_tensor(rule: &str, j: usize, shape: &[i64]) -> Tensor {
    let numel: i64 = shape.iter().product();
    let s = (Tensor::arange(numel, (Kind::Double, Device::Cpu)) * 0.61803 + j as f64).sin();
    let values = match rule {
        "conv_or_linear_weight" => {
            let fan_in = (numel / shape[0]) as f64;
            s * (3.0 / fan_in).sqrt()
        }
        "bn_weight" => s * 0.2 + 1.0,
        "residual_bn_weight" => s * 0.1 + 0.2,
        "bn_running_var" => s * 0.5 + 1.0,
        "bias_or_bn_shift" => s * 0.1,
        other => panic!("unknown formula rule {other:?}"),
    };
    values.to_kind(Kind::Float).view(shape)
}

/// Rebuilds a `*_formula.json` fixture's weights and writes them as a safetensors file,
/// so the test loads them through the same loader a user's file goes through.
fn formula_weights(json: &Value, dir: &Path) -> PathBuf {
    let rules = json["rules"].as_object().expect("rules");
    let tensors: Vec<(String, Tensor)> = json["tensors"]
        .as_array()
        .expect("tensors")
        .iter()
        .enumerate()
        .map(|(j, entry)| {
            let name = entry[0].as_str().unwrap().to_string();
            let shape: Vec<i64> = serde_json::from_value(entry[1].clone()).unwrap();
            let rule = entry[2].as_str().unwrap();
            assert!(
                rules.contains_key(rule),
                "{name}: rule {rule} not described"
            );
            (name, formula_tensor(rule, j, &shape))
        })
        .collect();
    let path = dir.join("formula.safetensors");
    tlcap::weights::write_safetensors(&path, &tensors, None).unwrap();
    path
}

/// `x.flat[i] = sin(0.001 * i)` in float64, cast to float32, shape [2, 3, 224, 224].
fn formula_input() -> Tensor {
    let n = 2 * 3 * 224 * 224;
    let v: Vec<f32> = (0..n).map(|i| (0.001 * i as f64).sin() as f32).collect();
    Tensor::from_slice(&v).view([2, 3, 224, 224])
}

fn reference(v: &Value) -> Tensor {
    let rows: Vec<Vec<f32>> = serde_json::from_value(v["values"].clone()).unwrap();
    let cols = rows[0].len() as i64;
    let flat: Vec<f32> = rows.concat();
    Tensor::from_slice(&flat).view([-1, cols])
}

/// max |ours - ref| <= 1e-3 * max(1, max |ref|), as each fixture states.
fn assert_close(what: &str, ours: &Tensor, reference: &Tensor) {
    assert_eq!(ours.size(), reference.size(), "{what}: shape");
    let err = (ours - reference).abs().max().double_value(&[]);
    let scale = reference.abs().max().double_value(&[]).max(1.0);
    eprintln!(
        "{what}: max abs error {err:.2e} (allowed {:.2e})",
        1e-3 * scale
    );
    assert!(
        err <= 1e-3 * scale,
        "{what}: max abs error {err} exceeds {}",
        1e-3 * scale
    );
}

fn build(kind: Kind_, weights: &Path) -> (nn::VarStore, Backbone) {
    let vs = nn::VarStore::new(Device::Cpu);
    let net = Backbone::new(&vs.root(), kind, true);
    let report = model::load_weights_file(&vs, kind, weights).unwrap();
    assert!(report.loaded > 0);
    (vs, net)
}

/// The backbone against the fixture as loaded, then again frozen with every BatchNorm
/// folded into its convolution (how the frozen part runs in training and prediction).
fn check_fixture(name: &str, kind: Kind_, weights: &Path) {
    let json = fixture(name);
    assert!(json["tolerance"].as_str().unwrap().contains("1e-3"));
    let (_vs, mut net) = build(kind, weights);
    for folded in [false, true] {
        if folded {
            net.table_mut().freeze_all();
            let count = net.table_mut().fold_batchnorm(Kind::Float);
            let batchnorms = net
                .table()
                .layers()
                .filter(|l| l.kind == LayerKind::BatchNorm)
                .count();
            assert_eq!(count, batchnorms, "{name}: every BatchNorm folds");
        }
        let (features, logits) = tch::no_grad(|| {
            let f = net.features(&formula_input(), false);
            let l = net.imagenet_logits(&f).unwrap();
            (f, l)
        });
        let what = if folded { " (BatchNorm folded)" } else { "" };
        assert_close(
            &format!("{name} features{what}"),
            &features,
            &reference(&json["features"]),
        );
        assert_close(
            &format!("{name} logits{what}"),
            &logits,
            &reference(&json["logits"]),
        );
    }
}

#[test]
fn mobilenet_v2_matches_torchvision_with_real_imagenet_weights() {
    let weights = model::imagenet_weights(Kind_::MobilenetV2).expect("run `make setup` first");
    check_fixture("mobilenet_v2", Kind_::MobilenetV2, &weights);
}

#[test]
fn efficientnet_lite0_matches_the_reference_with_real_imagenet_weights() {
    let weights =
        model::imagenet_weights(Kind_::EfficientnetLite0).expect("run `make setup` first");
    check_fixture("efficientnet_lite0", Kind_::EfficientnetLite0, &weights);
}

fn check_formula_fixture(name: &str, kind: Kind_) {
    let dir = tempfile::tempdir().unwrap();
    let weights = formula_weights(&fixture(name), dir.path());
    check_fixture(name, kind, &weights);
}

#[test]
fn resnet18_matches_torchvision_with_formula_weights() {
    check_formula_fixture("resnet18_formula", Kind_::Resnet18);
}

#[test]
fn resnet50_matches_torchvision_with_formula_weights() {
    check_formula_fixture("resnet50_formula", Kind_::Resnet50);
}

/// The formula rebuild itself: a wrong rule or a shifted index would make the ResNet
/// comparisons fail for the wrong reason, so pin a few values computed by hand.
#[test]
fn formula_rules_give_the_documented_values() {
    let w = formula_tensor("conv_or_linear_weight", 2, &[4, 3]);
    let a = (3.0f64 / 3.0).sqrt();
    for i in 0..12 {
        let expected = a * (0.61803 * i as f64 + 2.0).sin();
        let got = w.view([-1]).double_value(&[i]);
        assert!(
            (got - expected).abs() < 1e-6,
            "element {i}: {got} vs {expected}"
        );
    }
    let v = formula_tensor("bn_running_var", 7, &[5]);
    let expected = 1.0 + 0.5 * (0.61803f64 * 4.0 + 7.0).sin();
    assert!((v.double_value(&[4]) - expected).abs() < 1e-6);
    assert_eq!(w.kind(), Kind::Float);
}

/// Top-1 on the CC0 photos with our own decoding and preprocessing.
fn check_photos(name: &str, kind: Kind_) {
    let json = fixture(name);
    let (_vs, net) = build(kind, &model::imagenet_weights(kind).unwrap());
    let norm = Normalisation::for_model(kind, None);
    let constants = norm.constants(tch::Device::Cpu);
    for photo in ["chelsea.png", "coffee.png"] {
        let pixels =
            decode_center_crop(&fixtures().join(photo), 256, 224, Interpolation::Bilinear).unwrap();
        let x = Tensor::from_slice(&pixels)
            .view([1, 3, 224, 224])
            .to_kind(Kind::Float);
        let probs = tch::no_grad(|| {
            let f = net.features(&norm.apply(&x, constants.as_ref()), false);
            net.imagenet_logits(&f).unwrap().softmax(-1, Kind::Float)
        });
        let top1 = probs.argmax(-1, false).int64_value(&[0]);
        let expected = json["photos"][photo][0][0].as_i64().unwrap();
        let p = probs.double_value(&[0, top1]);
        eprintln!("{name} {photo}: top-1 {top1} p={p:.4}");
        assert_eq!(top1, expected, "{name} on {photo}: top-1 {top1} ({p:.3})");
        // Our resize is not PIL's, so probabilities differ a little, not much.
        let p_ref = json["photos"][photo][0][1].as_f64().unwrap();
        assert!(
            (p - p_ref).abs() < 0.05,
            "{name} on {photo}: p {p:.4} vs {p_ref}"
        );
    }
}

#[test]
fn mobilenet_v2_recognises_the_photos() {
    check_photos("mobilenet_v2", Kind_::MobilenetV2);
}

#[test]
fn efficientnet_lite0_recognises_the_photos() {
    check_photos("efficientnet_lite0", Kind_::EfficientnetLite0);
}

#[test]
fn every_backbone_builds_and_pools() {
    for kind in [
        Kind_::Resnet34,
        Kind_::Resnet101,
        Kind_::EfficientnetLite2,
        Kind_::EfficientnetLite4,
        Kind_::SmallCnn,
    ] {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = Backbone::new(&vs.root(), kind, false);
        let x = Tensor::zeros([1, 3, 64, 64], (Kind::Float, Device::Cpu));
        let f = tch::no_grad(|| net.features(&x, false));
        assert_eq!(f.size(), vec![1, net.feature_dim()], "{kind:?}");
        // Every variable belongs to exactly one listed layer (plus running statistics).
        let listed: usize = net.table().layers().map(|l| l.params).sum();
        let trainable: usize = vs.trainable_variables().iter().map(Tensor::numel).sum();
        assert_eq!(listed, trainable, "{kind:?}");
    }
}

#[test]
fn layer_list_uses_reference_names_in_forward_order() {
    let vs = nn::VarStore::new(Device::Cpu);
    let net = Backbone::new(&vs.root(), Kind_::MobilenetV2, false);
    let names: Vec<&str> = net.table().layers().map(|l| l.name.as_str()).collect();
    assert_eq!(
        names[..4],
        [
            "features.0.0",
            "features.0.1",
            "features.1.conv.0.0",
            "features.1.conv.0.1"
        ]
    );
    assert_eq!(names[names.len() - 2..], ["features.18.0", "features.18.1"]);
    // 52 convolutions, each followed by its BatchNorm.
    assert_eq!(names.len(), 104);
    let kinds: Vec<LayerKind> = net.table().layers().map(|l| l.kind).collect();
    assert_eq!(kinds[2], LayerKind::DepthwiseConv);
    assert_eq!(kinds[3], LayerKind::BatchNorm);
}

#[test]
fn unfreezing_the_last_n_layers_changes_exactly_their_requires_grad() {
    let vs = nn::VarStore::new(Device::Cpu);
    let mut net = Backbone::new(&vs.root(), Kind_::MobilenetV2, false);
    net.table_mut().freeze_all();
    assert_eq!(net.table().trainable_params(), 0);
    assert!(vs.variables().values().all(|t| !t.requires_grad()));
    let range = net.table_mut().unfreeze_last(5);
    assert_eq!(range, 99..104);
    let vars = vs.variables();
    for (i, layer) in net.table().layers().enumerate() {
        assert_eq!(layer.trainable, i >= 99, "{}", layer.name);
        for suffix in ["weight", "bias"] {
            if let Some(t) = vars.get(&format!("{}.{suffix}", layer.name)) {
                assert_eq!(t.requires_grad(), i >= 99, "{}.{suffix}", layer.name);
            }
        }
        for stat in ["running_mean", "running_var"] {
            if let Some(t) = vars.get(&format!("{}.{stat}", layer.name)) {
                assert!(!t.requires_grad(), "{}.{stat}", layer.name);
            }
        }
    }
    // More than there are: everything.
    net.table_mut().unfreeze_last(10_000);
    assert!(net.table().layers().all(|l| l.trainable));
}

/// A fine-tune step on the small CNN: with `train_bn: false` the running statistics of
/// every BatchNorm stay put and frozen weights are bit-identical; with `train_bn: true`
/// the unfrozen BatchNorms update theirs.
#[test]
fn batchnorm_statistics_do_not_move_unless_train_bn() {
    for train_bn in [false, true] {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let mut net = Backbone::new(&vs.root(), Kind_::SmallCnn, false);
        let head = nn::linear(
            vs.root().sub("head").sub("fc"),
            net.feature_dim(),
            1,
            Default::default(),
        );
        net.table_mut().unfreeze_last(2); // conv4, bn4
        net.table_mut().set_train_bn(train_bn);
        let before: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .map(|(n, t)| (n, t.detach().copy()))
            .collect();
        let mut opt = nn::Adam::default().build(&vs, 1e-2).unwrap();
        let x = Tensor::rand([8, 3, 32, 32], (Kind::Float, Device::Cpu)) * 255.0;
        let y = Tensor::from_slice(&[0f32, 1., 0., 1., 0., 1., 0., 1.]).view([8, 1]);
        let logits = nn::Module::forward(&head, &net.features(&x, true));
        let loss =
            logits.binary_cross_entropy_with_logits::<Tensor>(&y, None, None, tch::Reduction::Mean);
        opt.backward_step(&loss);
        let after = vs.variables();
        for (name, old) in before {
            let same = after[&name].equal(&old);
            let trainable_layer = name.starts_with("conv4.") || name.starts_with("bn4.");
            let expected_same = if name.starts_with("head.") {
                false
            } else if name.contains("running_") {
                !(train_bn && name.starts_with("bn4."))
            } else {
                !trainable_layer
            };
            assert_eq!(same, expected_same, "{name} (train_bn: {train_bn})");
        }
    }
}

/// Segments cover the layer table in order, running them in two parts gives the
/// whole forward pass, and the convolution FLOPs match the published figures
/// (ResNet-18 1.82 GMAC, ResNet-50 4.1 GMAC, MobileNetV2 0.30 GMAC at 224).
#[test]
fn segments_split_the_forward_pass_and_count_its_flops() {
    for (kind, gflops) in [
        (Kind_::Resnet18, 3.64),
        (Kind_::Resnet50, 8.18),
        (Kind_::MobilenetV2, 0.60),
        (Kind_::EfficientnetLite0, 0.78),
        (Kind_::SmallCnn, 0.0),
    ] {
        let vs = nn::VarStore::new(Device::Cpu);
        let mut net = Backbone::new(&vs.root(), kind, false);
        let n = net.segments();
        let mut covered = Vec::new();
        for i in 0..n {
            covered.extend(net.segment_layers(i));
        }
        assert_eq!(
            covered,
            (0..net.table().len()).collect::<Vec<_>>(),
            "{kind:?}"
        );

        let x = Tensor::randn([2, 3, 64, 64], (Kind::Float, Device::Cpu));
        let whole = tch::no_grad(|| net.features(&x, false));
        let k = n / 2;
        let parts = tch::no_grad(|| {
            let prefix = net.forward_segments(&x, 0..k, false, None);
            model::pool(&net.forward_segments(&prefix, k..n, false, None))
        });
        assert!(whole.allclose(&parts, 1e-5, 1e-5, false), "{kind:?}");

        let flops = net.layer_flops(224, 224);
        let total = flops.iter().sum::<u64>() as f64 / 1e9;
        if gflops > 0.0 {
            assert!(
                (total - gflops).abs() < 0.03 * gflops,
                "{kind:?}: {total} GFLOP"
            );
        }
        // Frozen: forward only. Last layers trainable and the rest cached: only those
        // layers, each forward plus a weight gradient, plus input gradients after the first.
        net.table_mut().freeze_all();
        assert_eq!(net.training_flops(&flops, 0), flops.iter().sum::<u64>());
        net.table_mut().unfreeze_last(2);
        let k = net.frozen_segments();
        assert!(k < n);
        let cached = net.training_flops(&flops, k);
        let uncached = net.training_flops(&flops, 0);
        assert!(cached < uncached, "{kind:?}");
    }
}
