//! The "Done when" criteria of `kvstore demo`, and the store traffic it relies on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use clap::Parser;
use kvstore::{Compression, CompressionType, Optimizer, Sgd};
use kvstore_cli::cluster::Cluster;
use kvstore_cli::data::{generate, DataSpec};
use kvstore_cli::demo::{run_demo, shard_of, CompressionChoice, DemoConfig, DemoError, DemoReport};
use kvstore_cli::model::{shard_gradient, Gradient, Params};
use kvstore_cli::{Cli, CliError};

fn run(config: &DemoConfig) -> (DemoReport, String) {
    let mut out = Vec::new();
    let report = run_demo(config, &mut out).expect("the demo runs");
    (report, String::from_utf8(out).expect("utf-8 output"))
}

fn assert_reaches_target(compression: CompressionChoice) {
    let config = DemoConfig {
        compression,
        ..DemoConfig::default()
    };
    let (report, out) = run(&config);
    assert!(
        report.final_test_accuracy >= 0.95,
        "{compression:?}: {}\n{out}",
        report.final_test_accuracy
    );
    assert!(report.target_reached);
    assert!(report.devices_agree);
    assert_eq!(report.epochs.len(), config.epochs);
    let steps = (config.epochs * (3277 / config.batch_size)) as u64;
    assert_eq!(report.steps, steps);
    assert_eq!(report.pushes, steps);
    assert_eq!(
        report.pulls,
        steps + 1,
        "one initial pull, then one per step"
    );
    let epoch_lines = out.lines().filter(|l| l.starts_with("epoch ")).count();
    assert_eq!(epoch_lines, config.epochs, "{out}");
    let summary = out.lines().last().expect("a summary line");
    assert!(summary.starts_with("summary: "), "{summary}");
    assert!(summary.contains("target >= 95%: reached"), "{summary}");
    assert!(
        summary.contains(&format!("compression {}", compression.name())),
        "{summary}"
    );
}

#[test]
fn demo_reaches_95_percent_without_compression() {
    assert_reaches_target(CompressionChoice::None);
}

#[test]
fn demo_reaches_95_percent_with_2bit_compression() {
    assert_reaches_target(CompressionChoice::TwoBit);
}

#[test]
fn demo_reaches_95_percent_with_1bit_compression() {
    assert_reaches_target(CompressionChoice::OneBit);
}

#[test]
fn demo_trains_with_every_optimizer_picked_by_flag() {
    for name in ["sgd", "nag", "adam", "adagrad", "rmsprop", "ftrl"] {
        let cli = Cli::try_parse_from(["kvstore", "demo", "--optimizer", name, "--epochs", "10"])
            .expect("the flag parses");
        let kvstore_cli::Command::Demo(args) = cli.command else {
            panic!("not the demo command");
        };
        let config = args.into_config(false);
        assert_eq!(config.optimizer.name(), name);
        let (report, out) = run(&config);
        assert!(report.target_reached, "{name}: {out}");
        let header = out.lines().nth(1).expect("a header line");
        assert!(header.contains(&format!(", {name} lr ")), "{header}");
    }
    assert!(Cli::try_parse_from(["kvstore", "demo", "--optimizer", "lamb"]).is_err());
}

#[test]
fn demo_is_deterministic_per_seed() {
    let config = DemoConfig {
        epochs: 2,
        compression: CompressionChoice::TwoBit,
        ..DemoConfig::default()
    };
    let (a, _) = run(&config);
    let (b, _) = run(&config);
    assert_eq!(a.epochs, b.epochs);
    assert_eq!(a.params, b.params);
}

#[test]
fn data_set_is_deterministic_per_seed() {
    let spec = DataSpec::default();
    assert_eq!(generate(&spec), generate(&spec));
    let other = generate(&DataSpec {
        seed: spec.seed + 1,
        ..spec
    });
    assert_ne!(generate(&spec).train, other.train);
    assert_ne!(generate(&spec).true_weight, other.true_weight);
}

#[test]
fn local_store_with_compression_is_an_error_not_a_panic() {
    let config = DemoConfig {
        kind: "local".into(),
        compression: CompressionChoice::TwoBit,
        ..DemoConfig::default()
    };
    let mut out = Vec::new();
    let err = run_demo(&config, &mut out).expect_err("local refuses compression");
    assert!(
        matches!(
            err,
            DemoError::Store(kvstore::Error::CompressionNotSupported { .. })
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "kvstore: gradient compression is not supported by a 'local' store"
    );
    assert!(out.is_empty(), "nothing is trained");

    // The same through the command line parser and dispatch.
    let cli = Cli::try_parse_from([
        "kvstore",
        "demo",
        "--kind",
        "local",
        "--compression",
        "2bit",
    ])
    .expect("parses");
    let err = kvstore_cli::run(cli, &mut Vec::new()).expect_err("an error");
    assert!(
        matches!(err, CliError::Demo(DemoError::Store(_))),
        "{err:?}"
    );
}

#[test]
fn local_store_without_compression_trains() {
    let config = DemoConfig {
        kind: "local".into(),
        epochs: 3,
        ..DemoConfig::default()
    };
    let (report, _) = run(&config);
    assert!(report.target_reached, "{}", report.final_test_accuracy);
}

#[test]
fn binary_prints_the_error_and_exits_with_1() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_kvstore"))
        .args(["demo", "--kind", "local", "--compression", "2bit"])
        .output()
        .expect("runs the binary");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.trim_end(),
        "error: kvstore: gradient compression is not supported by a 'local' store"
    );
    assert!(!stderr.contains("panicked"));
    assert!(output.stdout.is_empty());
}

#[test]
fn binary_output_has_no_progress_bar_when_piped() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_kvstore"))
        .args(["demo", "--epochs", "2"])
        .output()
        .expect("runs the binary");
    assert_eq!(output.status.code(), Some(0));
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).expect("utf-8");
    assert!(!stdout.contains('\u{1b}'), "no terminal escapes: {stdout}");
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("epoch ")).count(),
        2
    );
}

const LR: f32 = 0.1;
const BATCH: usize = 8;

/// A device store with SGD (lr 0.1, rescale 1/8) and, optionally, compression.
fn cluster(compression: Option<Compression>, features: usize) -> Cluster {
    let kv = kvstore::create("device").expect("a device store");
    if let Some(c) = compression {
        kv.set_gradient_compression(c)
            .expect("device allows compression");
    }
    kv.set_optimizer(Optimizer::Sgd(Sgd {
        learning_rate: f64::from(LR),
        rescale_grad: 1.0 / BATCH as f64,
        ..Sgd::default()
    }))
    .expect("valid sgd");
    Cluster::new(kv, 4, features).expect("init and pull")
}

/// The SGD rule from zeros, in the store's f32 arithmetic: `w = 0 - lr * (rescale * sum)`,
/// the sum taken in device order.
fn sgd_from_zero(sum: f32) -> f32 {
    0.0 - LR * ((1.0 / BATCH as f32) * sum)
}

fn summed(grads: &[Gradient], element: impl Fn(&Gradient) -> f32) -> f32 {
    grads
        .iter()
        .map(element)
        .fold(None, |acc: Option<f32>, g| Some(acc.map_or(g, |a| a + g)))
        .unwrap_or(0.0)
}

#[test]
fn one_step_pulls_the_sgd_update_of_the_summed_device_gradients() {
    // Real shard gradients of one global batch of 8 samples, 2 per device.
    let data = generate(&DataSpec::default());
    let features = data.train.features();
    let mut cluster = cluster(None, features);
    let batch: Vec<usize> = (0..BATCH).collect();
    let grads = cluster
        .step(|device, params| {
            assert_eq!(
                params,
                &Params::zeros(features),
                "every device starts from zeros"
            );
            shard_gradient(params, &data.train, shard_of(&batch, device, 4))
        })
        .expect("push and pull");
    assert_eq!(grads.len(), 4);
    // The devices' gradients differ: the sum really combines four pushes.
    assert_ne!(grads[0].weight, grads[1].weight);

    let expected = Params {
        weight: (0..features)
            .map(|j| sgd_from_zero(summed(&grads, |g| g.weight[j])))
            .collect(),
        bias: sgd_from_zero(summed(&grads, |g| g.bias)),
    };
    for device in 0..4 {
        assert_eq!(
            cluster.params(device),
            Some(expected.clone()),
            "device {device}"
        );
    }
    // Not just one device's gradient: the update differs from what device 0 alone gives.
    assert_ne!(expected.weight[0], sgd_from_zero(grads[0].weight[0]));
    assert_eq!((cluster.pushes(), cluster.pulls()), (1, 2));
}

#[test]
fn one_step_with_2bit_compression_sums_the_quantised_gradients() {
    let threshold = 0.5;
    let compression = Compression::new(CompressionType::TwoBit, threshold).expect("valid");
    let mut cluster = cluster(Some(compression), 3);
    let device_grads = [
        [0.7, -0.2, 0.5],
        [0.1, -0.9, 0.49],
        [2.0, 0.3, -0.6],
        [-0.5, 0.0, 0.8],
    ];
    let grads = cluster
        .step(|device, _| Gradient {
            weight: device_grads[device].to_vec(),
            bias: device as f32,
            loss: 0.0,
            correct: 0,
            samples: 2,
        })
        .expect("push and pull");
    // A fresh residual sends +t, -t or 0 for each element (R38).
    let quantised = |g: f32| {
        if g >= threshold {
            threshold
        } else if g <= -threshold {
            -threshold
        } else {
            0.0
        }
    };
    let params = cluster.params(3).expect("device 3");
    for j in 0..3 {
        let sum = summed(&grads, |g| quantised(g.weight[j]));
        assert_eq!(params.weight[j], sgd_from_zero(sum), "element {j}");
    }
    assert_eq!(
        params.bias,
        sgd_from_zero(summed(&grads, |g| quantised(g.bias)))
    );
    assert!(cluster.devices_agree());
}
