//! Logistic regression: `p(y = 1 | x) = sigmoid(w·x + b)`, trained on the summed log loss.
//!
//! All arithmetic is `f32`, the dtype the store holds and compresses.

use crate::data::Dataset;

/// The model's parameters as one device holds them.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// The weight vector, key `"weight"`, shape `[features]`.
    pub weight: Vec<f32>,
    /// The bias, key `"bias"`, shape `[1]`.
    pub bias: f32,
}

impl Params {
    /// All-zero parameters.
    pub fn zeros(features: usize) -> Self {
        Params {
            weight: vec![0.0; features],
            bias: 0.0,
        }
    }

    /// The logit `w·x + b`.
    pub fn logit(&self, x: &[f32]) -> f32 {
        self.weight.iter().zip(x).map(|(w, x)| w * x).sum::<f32>() + self.bias
    }

    /// The predicted label, 0 or 1.
    pub fn predict(&self, x: &[f32]) -> f32 {
        if self.logit(x) > 0.0 {
            1.0
        } else {
            0.0
        }
    }
}

/// `1 / (1 + e^-z)`, without overflow for large `|z|`.
pub fn sigmoid(z: f32) -> f32 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// The log loss of logit `z` for label `y` (0 or 1): `softplus(z) - y·z`, computed stably.
pub fn log_loss(z: f32, y: f32) -> f32 {
    z.max(0.0) + (-z.abs()).exp().ln_1p() - y * z
}

/// One device's contribution to a step: the gradients of the log loss summed over its shard,
/// with the loss and the number of correct predictions seen on the way.
#[derive(Debug, Clone, PartialEq)]
pub struct Gradient {
    /// d(summed loss)/d(weight).
    pub weight: Vec<f32>,
    /// d(summed loss)/d(bias).
    pub bias: f32,
    /// The summed loss over the shard (before the step).
    pub loss: f32,
    /// Samples of the shard the parameters classified correctly (before the step).
    pub correct: usize,
    /// Samples in the shard.
    pub samples: usize,
}

/// The gradient of the log loss summed over the samples `shard` of `data`.
pub fn shard_gradient(params: &Params, data: &Dataset, shard: &[usize]) -> Gradient {
    let mut grad = Gradient {
        weight: vec![0.0; params.weight.len()],
        bias: 0.0,
        loss: 0.0,
        correct: 0,
        samples: shard.len(),
    };
    for &i in shard {
        let (x, y) = (data.x(i), data.y(i));
        let z = params.logit(x);
        let residual = sigmoid(z) - y;
        for (g, &xj) in grad.weight.iter_mut().zip(x) {
            *g += residual * xj;
        }
        grad.bias += residual;
        grad.loss += log_loss(z, y);
        grad.correct += usize::from((z > 0.0) == (y > 0.5));
    }
    grad
}

/// Mean log loss and accuracy of `params` over all of `data` (0, 0 for no data).
pub fn evaluate(params: &Params, data: &Dataset) -> (f64, f64) {
    if data.is_empty() {
        return (0.0, 0.0);
    }
    let (mut loss, mut correct) = (0.0f64, 0usize);
    for i in 0..data.len() {
        let (x, y) = (data.x(i), data.y(i));
        loss += f64::from(log_loss(params.logit(x), y));
        correct += usize::from(params.predict(x) == y);
    }
    let n = data.len() as f64;
    (loss / n, correct as f64 / n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigmoid_and_loss_are_stable() {
        assert_eq!(sigmoid(0.0), 0.5);
        assert!(sigmoid(100.0) <= 1.0 && sigmoid(100.0) > 0.999);
        assert!(sigmoid(-100.0) >= 0.0 && sigmoid(-100.0) < 1e-6);
        assert!((log_loss(0.0, 1.0) - std::f32::consts::LN_2).abs() < 1e-6);
        assert!(log_loss(100.0, 1.0).abs() < 1e-6);
        assert!((log_loss(-100.0, 1.0) - 100.0).abs() < 1e-3);
        assert!(log_loss(1000.0, 0.0).is_finite());
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let data = crate::data::generate(&crate::data::DataSpec {
            samples: 40,
            features: 3,
            ..crate::data::DataSpec::default()
        });
        let params = Params {
            weight: vec![0.3, -0.2, 0.1],
            bias: 0.05,
        };
        let shard: Vec<usize> = (0..10).collect();
        let grad = shard_gradient(&params, &data.train, &shard);
        let loss = |p: &Params| -> f64 {
            shard
                .iter()
                .map(|&i| f64::from(log_loss(p.logit(data.train.x(i)), data.train.y(i))))
                .sum()
        };
        let h = 1e-2f32;
        for j in 0..3 {
            let (mut up, mut down) = (params.clone(), params.clone());
            up.weight[j] += h;
            down.weight[j] -= h;
            let numeric = (loss(&up) - loss(&down)) / (2.0 * f64::from(h));
            assert!((numeric - f64::from(grad.weight[j])).abs() < 1e-2, "{j}");
        }
        let (mut up, mut down) = (params.clone(), params.clone());
        up.bias += h;
        down.bias -= h;
        let numeric = (loss(&up) - loss(&down)) / (2.0 * f64::from(h));
        assert!((numeric - f64::from(grad.bias)).abs() < 1e-2);
        assert_eq!(grad.samples, 10);
    }
}
