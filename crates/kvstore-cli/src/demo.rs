//! `kvstore demo`: data-parallel training of a logistic regression through a store.
//!
//! Every step, the global mini-batch is split into one shard per simulated device; each device
//! computes the gradient of the log loss summed over its shard from its own copy of the
//! parameters; the gradients of all devices are pushed to the store as one multi-device push;
//! the store sums them (compressing each first when `--compression` is set, with error
//! feedback), runs SGD with `rescale_grad = 1 / batch_size`, and every device pulls the new
//! parameters back. The remainder of the shuffled training set that does not fill a whole
//! batch is left out of that epoch, so every step's gradient is a mean over exactly
//! `batch_size` samples.

use crate::cluster::Cluster;
use crate::data::{self, DataSpec, SplitMix64, Synthetic};
use crate::model::{self, Gradient};
use indicatif::{ProgressBar, ProgressStyle};
use kvstore::{AdaGrad, Adam, Compression, CompressionType, Ftrl, Nag, Optimizer, RmsProp, Sgd};
use std::io::Write;
use std::time::{Duration, Instant};

/// The test accuracy the demo is expected to reach.
pub const TARGET_ACCURACY: f64 = 0.95;

/// Most simulated devices a demo may ask for.
pub const MAX_DEVICES: usize = 1024;

/// Gradient compression of the pushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CompressionChoice {
    /// Full-precision float32 gradients.
    #[value(name = "none")]
    None,
    /// 2-bit quantisation with error feedback: each element is sent as +t, -t or 0.
    #[value(name = "2bit")]
    TwoBit,
    /// 1-bit quantisation with error feedback: each element is sent as +1 or -1.
    #[value(name = "1bit")]
    OneBit,
}

impl CompressionChoice {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            CompressionChoice::None => "none",
            CompressionChoice::TwoBit => "2bit",
            CompressionChoice::OneBit => "1bit",
        }
    }

    /// The codec, `None` for no compression.
    pub fn codec(self) -> Option<CompressionType> {
        match self {
            CompressionChoice::None => None,
            CompressionChoice::TwoBit => Some(CompressionType::TwoBit),
            CompressionChoice::OneBit => Some(CompressionType::OneBit),
        }
    }
}

/// The optimizer the store runs (R70).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OptimizerChoice {
    /// SGD with momentum.
    #[value(name = "sgd")]
    Sgd,
    /// Nesterov accelerated gradient.
    #[value(name = "nag")]
    Nag,
    /// Adam.
    #[value(name = "adam")]
    Adam,
    /// AdaGrad.
    #[value(name = "adagrad")]
    AdaGrad,
    /// RMSProp (not centered).
    #[value(name = "rmsprop")]
    RmsProp,
    /// FTRL-proximal.
    #[value(name = "ftrl")]
    Ftrl,
}

impl OptimizerChoice {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            OptimizerChoice::Sgd => "sgd",
            OptimizerChoice::Nag => "nag",
            OptimizerChoice::Adam => "adam",
            OptimizerChoice::AdaGrad => "adagrad",
            OptimizerChoice::RmsProp => "rmsprop",
            OptimizerChoice::Ftrl => "ftrl",
        }
    }

    /// The learning rate the demo uses when none is given: one that trains the demo's model
    /// to full test accuracy in the default ten epochs.
    pub fn default_learning_rate(self) -> f64 {
        match self {
            OptimizerChoice::Sgd | OptimizerChoice::Nag => 0.5,
            OptimizerChoice::Adam => 0.05,
            OptimizerChoice::AdaGrad => 0.5,
            OptimizerChoice::RmsProp => 0.02,
            OptimizerChoice::Ftrl => 0.5,
        }
    }
}

impl std::fmt::Display for OptimizerChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything the demo can be asked to do.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoConfig {
    /// Passes over the training set.
    pub epochs: usize,
    /// Samples per step over all devices.
    pub batch_size: usize,
    /// The optimizer.
    pub optimizer: OptimizerChoice,
    /// Learning rate; `None` for the optimizer's demo default.
    pub learning_rate: Option<f64>,
    /// Momentum of SGD and NAG.
    pub momentum: f64,
    /// Number of simulated devices.
    pub devices: usize,
    /// Seed of the data set and of the shuffling.
    pub seed: u64,
    /// Store kind for `kvstore::create`.
    pub kind: String,
    /// Gradient compression.
    pub compression: CompressionChoice,
    /// Compression threshold.
    pub threshold: f32,
    /// Samples generated, train and test together.
    pub samples: usize,
    /// Features per sample.
    pub features: usize,
    /// Show a progress bar over each epoch's steps.
    pub progress: bool,
}

impl Default for DemoConfig {
    fn default() -> Self {
        let data = DataSpec::default();
        DemoConfig {
            epochs: 10,
            batch_size: 128,
            optimizer: OptimizerChoice::Sgd,
            learning_rate: None,
            momentum: 0.9,
            devices: 4,
            seed: data.seed,
            kind: "device".into(),
            compression: CompressionChoice::None,
            // Tuned: with the other defaults, 2bit and 1bit reached 100% test accuracy on
            // every seed in 0..=40 at 1.0; at 0.5 (MXNet's default) 2bit went as low as 96.8%.
            threshold: 1.0,
            samples: data.samples,
            features: data.features,
            progress: false,
        }
    }
}

impl DemoConfig {
    /// The data set this configuration trains on.
    pub fn data_spec(&self) -> DataSpec {
        DataSpec {
            samples: self.samples,
            features: self.features,
            seed: self.seed,
            ..DataSpec::default()
        }
    }

    /// The learning rate the optimizer runs with.
    pub fn learning_rate(&self) -> f64 {
        self.learning_rate
            .unwrap_or_else(|| self.optimizer.default_learning_rate())
    }

    /// The optimizer the store runs, on the mean gradient of the global batch.
    pub fn optimizer(&self) -> Optimizer {
        let learning_rate = self.learning_rate();
        let rescale_grad = 1.0 / self.batch_size as f64;
        match self.optimizer {
            OptimizerChoice::Sgd => Optimizer::Sgd(Sgd {
                learning_rate,
                momentum: self.momentum,
                rescale_grad,
                ..Sgd::default()
            }),
            OptimizerChoice::Nag => Optimizer::Nag(Nag {
                learning_rate,
                momentum: self.momentum,
                rescale_grad,
                ..Nag::default()
            }),
            OptimizerChoice::Adam => Optimizer::Adam(Adam {
                learning_rate,
                rescale_grad,
                ..Adam::default()
            }),
            OptimizerChoice::AdaGrad => Optimizer::AdaGrad(AdaGrad {
                learning_rate,
                rescale_grad,
                ..AdaGrad::default()
            }),
            OptimizerChoice::RmsProp => Optimizer::RmsProp(RmsProp {
                learning_rate,
                rescale_grad,
                ..RmsProp::default()
            }),
            OptimizerChoice::Ftrl => Optimizer::Ftrl(Ftrl {
                learning_rate,
                rescale_grad,
                ..Ftrl::default()
            }),
        }
    }

    /// How the report names the optimizer: its name and the parameters the flags set.
    fn optimizer_label(&self) -> String {
        let lr = self.learning_rate();
        match self.optimizer {
            OptimizerChoice::Sgd | OptimizerChoice::Nag => format!(
                "{} lr {lr} momentum {}",
                self.optimizer.name(),
                self.momentum
            ),
            other => format!("{} lr {lr}", other.name()),
        }
    }

    /// Checks what the store does not check itself (it validates the optimizer and the
    /// compression parameters).
    fn validate(&self, data: &Synthetic) -> Result<(), DemoError> {
        let invalid = |reason: String| Err(DemoError::InvalidConfig(reason));
        if self.epochs == 0 {
            return invalid("--epochs must be at least 1".into());
        }
        if self.features == 0 {
            return invalid("--features must be at least 1".into());
        }
        if self.devices == 0 || self.devices > MAX_DEVICES {
            return invalid(format!(
                "--devices must be between 1 and {MAX_DEVICES}, got {}",
                self.devices
            ));
        }
        if data.train.is_empty() || data.test.is_empty() {
            return invalid(format!(
                "--samples {} leaves an empty train or test split",
                self.samples
            ));
        }
        if self.batch_size < self.devices || self.batch_size > data.train.len() {
            return invalid(format!(
                "--batch-size must be between --devices ({}) and the training set size ({}), got {}",
                self.devices,
                data.train.len(),
                self.batch_size
            ));
        }
        Ok(())
    }
}

/// Metrics of one epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochMetrics {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean log loss over the samples of the epoch's steps, each measured before its step.
    pub train_loss: f64,
    /// Accuracy over the whole training set after the epoch.
    pub train_accuracy: f64,
    /// Accuracy over the test set after the epoch.
    pub test_accuracy: f64,
}

/// What a demo run did.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoReport {
    /// One entry per epoch.
    pub epochs: Vec<EpochMetrics>,
    /// Test accuracy after the last epoch.
    pub final_test_accuracy: f64,
    /// Whether `final_test_accuracy >= TARGET_ACCURACY`.
    pub target_reached: bool,
    /// Training steps run.
    pub steps: u64,
    /// Push calls (each carries every device's gradients for both keys).
    pub pushes: u64,
    /// Pull calls (each fills every device's copy of both keys), the initial one included.
    pub pulls: u64,
    /// Whether every device ended with bit-identical parameters.
    pub devices_agree: bool,
    /// The trained parameters (device 0's copy).
    pub params: model::Params,
    /// Wall-clock time of the whole run.
    pub elapsed: Duration,
}

/// Why a demo failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum DemoError {
    /// The store refused an operation.
    Store(kvstore::Error),
    /// Writing the report failed.
    Io(std::io::Error),
    /// The configuration cannot be run.
    InvalidConfig(String),
}

impl std::fmt::Display for DemoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DemoError::Store(e) => write!(f, "kvstore: {e}"),
            DemoError::Io(e) => write!(f, "cannot write the output: {e}"),
            DemoError::InvalidConfig(reason) => write!(f, "invalid demo configuration: {reason}"),
        }
    }
}

impl std::error::Error for DemoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DemoError::Store(e) => Some(e),
            DemoError::Io(e) => Some(e),
            DemoError::InvalidConfig(_) => None,
        }
    }
}

impl From<kvstore::Error> for DemoError {
    fn from(e: kvstore::Error) -> Self {
        DemoError::Store(e)
    }
}

impl From<std::io::Error> for DemoError {
    fn from(e: std::io::Error) -> Self {
        DemoError::Io(e)
    }
}

/// Seed of the shuffling stream, distinct from the data set's stream of the same seed.
const SHUFFLE_STREAM: u64 = 0x5348_5546_464c_4521;

/// Runs the demo, writing one line per epoch and a summary to `out`.
pub fn run_demo(config: &DemoConfig, out: &mut dyn Write) -> Result<DemoReport, DemoError> {
    let started = Instant::now();
    let data = data::generate(&config.data_spec());
    config.validate(&data)?;
    let kv = kvstore::create(&config.kind)?;
    let compression = config
        .compression
        .codec()
        .map(|kind| Compression::new(kind, config.threshold))
        .transpose()?;
    if let Some(c) = compression {
        kv.set_gradient_compression(c)?;
    }
    kv.set_optimizer(config.optimizer())?;
    // `validate` bounds the device count by MAX_DEVICES, so it fits a u32.
    let devices = u32::try_from(config.devices).unwrap_or(u32::MAX);
    let mut cluster = Cluster::new(kv, devices, config.features)?;

    let steps_per_epoch = data.train.len() / config.batch_size;
    writeln!(
        out,
        "kvstore demo: logistic regression, {} features, {} train / {} test samples (seed {})",
        config.features,
        data.train.len(),
        data.test.len(),
        config.seed
    )?;
    writeln!(
        out,
        "  {} devices cpu(0)..cpu({}) on a '{}' store, compression {}, batch {} ({} steps/epoch), \
         {}",
        config.devices,
        config.devices - 1,
        cluster.store().kind(),
        compression_label(config),
        config.batch_size,
        steps_per_epoch,
        config.optimizer_label()
    )?;

    let mut rng = SplitMix64::new(config.seed ^ SHUFFLE_STREAM);
    let mut order: Vec<usize> = (0..data.train.len()).collect();
    let mut epochs = Vec::with_capacity(config.epochs);
    let mut steps = 0u64;
    for epoch in 1..=config.epochs {
        rng.shuffle(&mut order);
        let bar = progress_bar(config, epoch, steps_per_epoch);
        let (mut loss, mut seen) = (0.0f64, 0usize);
        for batch in order.chunks_exact(config.batch_size) {
            let grads = cluster.step(|device, params| {
                let shard = shard_of(batch, device, config.devices);
                model::shard_gradient(params, &data.train, shard)
            })?;
            loss += grads
                .iter()
                .map(|g: &Gradient| f64::from(g.loss))
                .sum::<f64>();
            seen += grads.iter().map(|g| g.samples).sum::<usize>();
            steps += 1;
            bar.inc(1);
        }
        bar.finish_and_clear();
        let params = trained(&cluster, config.features);
        let (_, train_accuracy) = model::evaluate(&params, &data.train);
        let (_, test_accuracy) = model::evaluate(&params, &data.test);
        let metrics = EpochMetrics {
            epoch,
            train_loss: if seen == 0 { 0.0 } else { loss / seen as f64 },
            train_accuracy,
            test_accuracy,
        };
        writeln!(
            out,
            "epoch {:>3}/{}  loss {:.4}  train acc {:6.2}%  test acc {:6.2}%",
            epoch,
            config.epochs,
            metrics.train_loss,
            100.0 * metrics.train_accuracy,
            100.0 * metrics.test_accuracy
        )?;
        epochs.push(metrics);
    }

    let final_test_accuracy = epochs.last().map_or(0.0, |m| m.test_accuracy);
    let report = DemoReport {
        final_test_accuracy,
        target_reached: final_test_accuracy >= TARGET_ACCURACY,
        steps,
        pushes: cluster.pushes(),
        pulls: cluster.pulls(),
        devices_agree: cluster.devices_agree(),
        params: trained(&cluster, config.features),
        elapsed: started.elapsed(),
        epochs,
    };
    writeln!(
        out,
        "summary: model logistic-regression, devices {}, compression {}, final test accuracy {:.2}% \
         (target >= {:.0}%: {}), devices agree: {}, {:.2}s, {} pushes, {} pulls",
        config.devices,
        compression_label(config),
        100.0 * report.final_test_accuracy,
        100.0 * TARGET_ACCURACY,
        if report.target_reached { "reached" } else { "NOT reached" },
        if report.devices_agree { "yes" } else { "NO" },
        report.elapsed.as_secs_f64(),
        report.pushes,
        report.pulls
    )?;
    Ok(report)
}

/// `none`, or the codec with its threshold.
fn compression_label(config: &DemoConfig) -> String {
    match config.compression {
        CompressionChoice::None => "none".into(),
        c => format!("{} (threshold {})", c.name(), config.threshold),
    }
}

/// Device `device`'s share of `batch`: contiguous, sizes differing by at most one.
pub fn shard_of(batch: &[usize], device: usize, devices: usize) -> &[usize] {
    let n = batch.len();
    let devices = devices.max(1);
    let (start, end) = (device * n / devices, (device + 1) * n / devices);
    batch.get(start..end).unwrap_or(&[])
}

/// Device 0's parameters (all devices hold the same after a pull).
fn trained(cluster: &Cluster, features: usize) -> model::Params {
    cluster
        .params(0)
        .unwrap_or_else(|| model::Params::zeros(features))
}

/// A bar over one epoch's steps, drawn (on stderr) only when the config asks for it.
fn progress_bar(config: &DemoConfig, epoch: usize, steps: usize) -> ProgressBar {
    if !config.progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(steps as u64);
    let style = ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} steps ({eta})")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(format!("epoch {epoch}/{}", config.epochs));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_batch_once() {
        let batch: Vec<usize> = (100..110).collect();
        let shards: Vec<&[usize]> = (0..4).map(|d| shard_of(&batch, d, 4)).collect();
        assert_eq!(shards.concat(), batch);
        assert!(shards.iter().all(|s| (2..=3).contains(&s.len())));
        assert!(shard_of(&batch, 4, 4).is_empty());
    }

    #[test]
    fn invalid_configs_are_errors() {
        for config in [
            DemoConfig {
                epochs: 0,
                ..DemoConfig::default()
            },
            DemoConfig {
                devices: 0,
                ..DemoConfig::default()
            },
            DemoConfig {
                batch_size: 2,
                ..DemoConfig::default()
            },
            DemoConfig {
                batch_size: 1_000_000,
                ..DemoConfig::default()
            },
            DemoConfig {
                samples: 1,
                ..DemoConfig::default()
            },
        ] {
            let result = run_demo(&config, &mut Vec::new());
            assert!(
                matches!(result, Err(DemoError::InvalidConfig(_))),
                "{config:?}"
            );
        }
    }
}
