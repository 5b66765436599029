//! The synthetic data set: linearly separable binary classification, deterministic per seed.
//!
//! A true weight vector and bias are drawn at random; each sample's features are standard
//! normal, its label is 1 when `w·x + b > 0` and 0 otherwise. Samples closer to the true
//! separating hyperplane than [`DataSpec::margin`] (in feature units) are redrawn, so the
//! classes are cleanly separable. The last [`DataSpec::test_fraction`] of the samples is held
//! out as the test split.

/// splitmix64: a tiny, fast, well-mixed 64-bit generator; the whole demo is deterministic from
/// its seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`, with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..n` (`n > 0`; 0 when `n == 0`), by Lemire's multiply-shift (its bias is
    /// below 2^-40 for the sizes used here).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Standard normal, by the Box-Muller transform.
    pub fn normal(&mut self) -> f64 {
        // 1 - u is in (0, 1], so the logarithm is finite.
        let u1 = 1.0 - self.next_f64();
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Shuffles `items` in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DataSpec {
    /// Samples generated, train and test together.
    pub samples: usize,
    /// Features per sample.
    pub features: usize,
    /// Least distance of a sample from the true separating hyperplane, in feature units.
    pub margin: f64,
    /// Share of the samples held out for testing.
    pub test_fraction: f64,
    /// Seed of the generator.
    pub seed: u64,
}

impl Default for DataSpec {
    fn default() -> Self {
        DataSpec {
            samples: 4096,
            features: 16,
            margin: 0.1,
            test_fraction: 0.2,
            seed: 42,
        }
    }
}

/// Labelled samples, features stored row by row.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    features: usize,
    x: Vec<f32>,
    y: Vec<f32>,
}

impl Dataset {
    /// An empty data set of `features` features.
    pub fn new(features: usize) -> Self {
        Dataset {
            features,
            x: Vec::new(),
            y: Vec::new(),
        }
    }

    /// Appends a sample (`x` must have [`Dataset::features`] elements) with label 0 or 1.
    fn push(&mut self, x: &[f32], y: f32) {
        self.x.extend_from_slice(x);
        self.y.push(y);
    }

    /// Number of features per sample.
    pub fn features(&self) -> usize {
        self.features
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.y.len()
    }

    /// Whether there is no sample.
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    /// The features of sample `i`; empty when out of range.
    pub fn x(&self, i: usize) -> &[f32] {
        self.x
            .get(i * self.features..(i + 1) * self.features)
            .unwrap_or(&[])
    }

    /// The label of sample `i`, 0 or 1 (0 when out of range).
    pub fn y(&self, i: usize) -> f32 {
        self.y.get(i).copied().unwrap_or(0.0)
    }

    /// Share of samples with label 1.
    pub fn positive_share(&self) -> f64 {
        if self.is_empty() {
            return 0.0;
        }
        self.y.iter().map(|&y| f64::from(y)).sum::<f64>() / self.len() as f64
    }
}

/// The generated data set with the hyperplane that labels it.
#[derive(Debug, Clone, PartialEq)]
pub struct Synthetic {
    /// Training split.
    pub train: Dataset,
    /// Held-out test split.
    pub test: Dataset,
    /// The true weight vector.
    pub true_weight: Vec<f32>,
    /// The true bias.
    pub true_bias: f32,
}

/// Generates the data set `spec` describes; the same spec always gives the same data.
pub fn generate(spec: &DataSpec) -> Synthetic {
    let mut rng = SplitMix64::new(spec.seed);
    let d = spec.features;
    let w: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
    let norm = w.iter().map(|v| v * v).sum::<f64>().sqrt();
    // Offset the hyperplane from the origin by a fraction of a standard deviation, so the
    // bias matters but the classes stay roughly balanced.
    let b = (rng.next_f64() - 0.5) * norm;
    let test = ((spec.samples as f64 * spec.test_fraction).round() as usize).min(spec.samples);
    let train_len = spec.samples - test;
    let mut train = Dataset::new(d);
    let mut held_out = Dataset::new(d);
    let mut x = vec![0.0f32; d];
    for i in 0..spec.samples {
        let score = loop {
            for v in x.iter_mut() {
                *v = rng.normal() as f32;
            }
            let score = x
                .iter()
                .zip(&w)
                .map(|(&a, b)| f64::from(a) * b)
                .sum::<f64>()
                + b;
            // With norm == 0 (no features) every sample has score b; never redraw forever.
            if norm == 0.0 || score.abs() >= spec.margin * norm {
                break score;
            }
        };
        let label = if score > 0.0 { 1.0 } else { 0.0 };
        if i < train_len {
            train.push(&x, label);
        } else {
            held_out.push(&x, label);
        }
    }
    Synthetic {
        train,
        test: held_out,
        true_weight: w.iter().map(|&v| v as f32).collect(),
        true_bias: b as f32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_reference_sequence() {
        // First outputs of the reference splitmix64 for seed 1234567.
        let mut rng = SplitMix64::new(1_234_567);
        let got: Vec<u64> = (0..3).map(|_| rng.next_u64()).collect();
        assert_eq!(
            got,
            vec![
                6_457_827_717_110_365_317,
                3_203_168_211_198_807_973,
                9_817_491_932_198_370_423
            ]
        );
    }

    #[test]
    fn below_stays_in_range_and_shuffle_is_a_permutation() {
        let mut rng = SplitMix64::new(3);
        assert!((0..1000).all(|_| rng.below(7) < 7));
        let mut items: Vec<usize> = (0..100).collect();
        rng.shuffle(&mut items);
        let mut sorted = items.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_ne!(items, sorted);
    }

    #[test]
    fn labels_follow_the_true_hyperplane_with_a_margin() {
        let spec = DataSpec::default();
        let data = generate(&spec);
        let norm = data
            .true_weight
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            .sqrt();
        for set in [&data.train, &data.test] {
            for i in 0..set.len() {
                let score: f64 = set
                    .x(i)
                    .iter()
                    .zip(&data.true_weight)
                    .map(|(&a, &w)| f64::from(a) * f64::from(w))
                    .sum::<f64>()
                    + f64::from(data.true_bias);
                assert_eq!(set.y(i), if score > 0.0 { 1.0 } else { 0.0 });
                // f32 rounding of the stored weights moves the score a little.
                assert!(
                    score.abs() >= spec.margin * norm * 0.99,
                    "sample {i}: {score}"
                );
            }
        }
    }

    #[test]
    fn split_sizes_and_balance() {
        let data = generate(&DataSpec::default());
        assert_eq!(data.train.len() + data.test.len(), 4096);
        assert_eq!(data.test.len(), 819);
        assert_eq!(data.train.features(), 16);
        let share = data.train.positive_share();
        assert!((0.2..0.8).contains(&share), "{share}");
    }
}
