//! Learning-rate schedules over the update count (R71), in `f64` as MXNet's Python computes
//! them. MXNet's schedulers are stateful objects; since the update count never decreases they
//! are functions of it, and kvstore computes them as such.

use super::number;
use serde::{Deserialize, Serialize};

/// How the rate rises during warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WarmupMode {
    /// From `warmup_begin_lr` to the base rate in equal steps.
    #[default]
    Linear,
    /// `warmup_begin_lr` throughout.
    Constant,
}

/// A schedule; the optimizer's `learning_rate` is its base rate (R71).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum LrScheduler {
    /// The rate times `factor` after every `step` updates, never below `stop_factor_lr`.
    Factor {
        /// Updates per decay (at least 1).
        step: u64,
        /// Decay factor, at most 1 (default 1).
        #[serde(default = "one", with = "number")]
        factor: f64,
        /// Floor of the decayed rate (default 1e-8).
        #[serde(default = "stop", with = "number")]
        stop_factor_lr: f64,
        /// Updates of warm-up before the schedule (default 0).
        #[serde(default)]
        warmup_steps: u64,
        /// Rate at the start of warm-up (default 0).
        #[serde(default, with = "number")]
        warmup_begin_lr: f64,
        /// Shape of the warm-up.
        #[serde(default)]
        warmup_mode: WarmupMode,
    },
    /// The rate times `factor` once the update count passes each of `steps`.
    MultiFactor {
        /// Increasing update counts, each at least 1.
        steps: Vec<u64>,
        /// Decay factor, at most 1 (default 1).
        #[serde(default = "one", with = "number")]
        factor: f64,
        /// Updates of warm-up before the schedule (default 0).
        #[serde(default)]
        warmup_steps: u64,
        /// Rate at the start of warm-up (default 0).
        #[serde(default, with = "number")]
        warmup_begin_lr: f64,
        /// Shape of the warm-up.
        #[serde(default)]
        warmup_mode: WarmupMode,
    },
}

fn one() -> f64 {
    1.0
}

fn stop() -> f64 {
    1e-8
}

impl LrScheduler {
    /// Why the schedule is refused (`InvalidOptimizer`), if it is: MXNet's checks, plus finite
    /// numbers.
    pub fn problem(&self, base_lr: f64) -> Option<String> {
        let (factor, warmup_begin_lr, numbers) = match self {
            LrScheduler::Factor {
                step,
                factor,
                stop_factor_lr,
                warmup_begin_lr,
                ..
            } => {
                if *step < 1 {
                    return Some("a factor schedule's step must be at least 1".into());
                }
                (*factor, *warmup_begin_lr, vec![*factor, *stop_factor_lr])
            }
            LrScheduler::MultiFactor {
                steps,
                factor,
                warmup_begin_lr,
                ..
            } => {
                if steps.is_empty() || steps[0] < 1 || steps.windows(2).any(|w| w[1] <= w[0]) {
                    return Some(format!(
                        "a multi-factor schedule's steps must be increasing and at least 1, got {steps:?}"
                    ));
                }
                (*factor, *warmup_begin_lr, vec![*factor])
            }
        };
        if let Some(x) = numbers
            .iter()
            .chain([&warmup_begin_lr])
            .find(|x| !x.is_finite())
        {
            return Some(format!("schedule parameters must be finite, got {x}"));
        }
        if factor > 1.0 {
            return Some(format!(
                "a schedule's factor must be at most 1, got {factor}"
            ));
        }
        if warmup_begin_lr > base_lr {
            return Some(format!(
                "warmup_begin_lr {warmup_begin_lr} is above the base learning rate {base_lr}"
            ));
        }
        None
    }

    /// The rate at update `num_update` (the first update is 1) for base rate `base_lr`.
    pub fn rate(&self, base_lr: f64, num_update: u64) -> f64 {
        let (warmup_steps, warmup_begin_lr, warmup_mode) = match self {
            LrScheduler::Factor {
                warmup_steps,
                warmup_begin_lr,
                warmup_mode,
                ..
            }
            | LrScheduler::MultiFactor {
                warmup_steps,
                warmup_begin_lr,
                warmup_mode,
                ..
            } => (*warmup_steps, *warmup_begin_lr, *warmup_mode),
        };
        if num_update < warmup_steps {
            return match warmup_mode {
                WarmupMode::Linear => {
                    let increase =
                        (base_lr - warmup_begin_lr) * num_update as f64 / warmup_steps as f64;
                    warmup_begin_lr + increase
                }
                WarmupMode::Constant => warmup_begin_lr,
            };
        }
        match self {
            LrScheduler::Factor {
                step,
                factor,
                stop_factor_lr,
                ..
            } => {
                // MXNet decays once for every whole `step` that `num_update` exceeds.
                let decays = num_update.saturating_sub(1) / step;
                let mut lr = base_lr;
                for _ in 0..decays {
                    let next = (lr * factor).max_with_floor(*stop_factor_lr);
                    // A rate that no longer changes stays (the floor, 0, or factor 1): stop
                    // early rather than loop over billions of updates.
                    if next.to_bits() == lr.to_bits() {
                        break;
                    }
                    lr = next;
                }
                lr
            }
            LrScheduler::MultiFactor { steps, factor, .. } => steps
                .iter()
                .take_while(|&&s| num_update > s)
                .fold(base_lr, |lr, _| lr * factor),
        }
    }
}

/// MXNet's floor: `if lr < floor { lr = floor }` (a NaN rate is kept).
trait Floor {
    fn max_with_floor(self, floor: f64) -> f64;
}

impl Floor for f64 {
    fn max_with_floor(self, floor: f64) -> f64 {
        if self < floor {
            floor
        } else {
            self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MXNet's FactorScheduler loop, statefully, to check the closed form against.
    fn mxnet_factor(base: f64, step: u64, factor: f64, stop: f64, updates: &[u64]) -> Vec<f64> {
        let (mut count, mut lr) = (0u64, base);
        updates
            .iter()
            .map(|&n| {
                while n > count + step {
                    count += step;
                    lr *= factor;
                    if lr < stop {
                        lr = stop;
                    }
                }
                lr
            })
            .collect()
    }

    #[test]
    fn r71_factor_schedule_equals_mxnets_stateful_loop() {
        let updates: Vec<u64> = (0..200).collect();
        for (step, factor, stop) in [
            (1, 0.5, 1e-8),
            (3, 0.9, 0.0),
            (7, 1.0, 1e-8),
            (2, 0.1, 1e-3),
        ] {
            let s = LrScheduler::Factor {
                step,
                factor,
                stop_factor_lr: stop,
                warmup_steps: 0,
                warmup_begin_lr: 0.0,
                warmup_mode: WarmupMode::Linear,
            };
            let ours: Vec<f64> = updates.iter().map(|&n| s.rate(0.1, n)).collect();
            assert_eq!(ours, mxnet_factor(0.1, step, factor, stop, &updates));
        }
    }

    #[test]
    fn r71_multi_factor_and_warmup() {
        let s = LrScheduler::MultiFactor {
            steps: vec![2, 5],
            factor: 0.5,
            warmup_steps: 2,
            warmup_begin_lr: 0.0,
            warmup_mode: WarmupMode::Linear,
        };
        let rates: Vec<f64> = (0..8).map(|n| s.rate(1.0, n)).collect();
        assert_eq!(rates, [0.0, 0.5, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25]);
        assert!(s.problem(1.0).is_none());
        assert!(s.problem(-1.0).is_some(), "warm-up above the base rate");
    }
}
