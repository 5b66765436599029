//! Simulated devices in data-parallel training: each holds its own copy of the parameters
//! (pull outputs on `cpu(i)`), computes a gradient from it, and every step pushes all the
//! gradients to the store as one multi-device push and pulls the updated parameters back.

use crate::model::{Gradient, Params};
use kvstore::{DType, Device, KvStore, NdArray, Tensor};

/// The key of the weight vector, shape `[features]`.
pub const WEIGHT_KEY: &str = "weight";
/// The key of the bias, shape `[1]`.
pub const BIAS_KEY: &str = "bias";

/// The store and the simulated devices' parameter copies.
#[derive(Debug)]
pub struct Cluster {
    kv: KvStore,
    devices: Vec<Device>,
    features: usize,
    weights: Vec<NdArray>,
    biases: Vec<NdArray>,
    pushes: u64,
    pulls: u64,
}

impl Cluster {
    /// Initialises `"weight"` (shape `[features]`) and `"bias"` (shape `[1]`) to zeros in
    /// `kv`, and pulls them to devices `cpu(0)`, ..., `cpu(devices - 1)`.
    ///
    /// Set the optimizer and the compression on `kv` before the first [`Cluster::step`].
    pub fn new(kv: KvStore, devices: u32, features: usize) -> kvstore::Result<Self> {
        kv.init(
            vec![WEIGHT_KEY, BIAS_KEY],
            vec![
                Tensor::zeros([features], DType::F32)?,
                Tensor::zeros([1], DType::F32)?,
            ],
        )?;
        let devices: Vec<Device> = (0..devices).map(Device::Cpu).collect();
        let zeros = |shape: usize, device: Device| -> kvstore::Result<NdArray> {
            Ok(NdArray::new(Tensor::zeros([shape], DType::F32)?.on(device)))
        };
        let weights = devices
            .iter()
            .map(|&d| zeros(features, d))
            .collect::<kvstore::Result<Vec<_>>>()?;
        let biases = devices
            .iter()
            .map(|&d| zeros(1, d))
            .collect::<kvstore::Result<Vec<_>>>()?;
        let mut cluster = Cluster {
            kv,
            devices,
            features,
            weights,
            biases,
            pushes: 0,
            pulls: 0,
        };
        cluster.pull()?;
        Ok(cluster)
    }

    /// The store.
    pub fn store(&self) -> &KvStore {
        &self.kv
    }

    /// The simulated devices.
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// Number of features of the weight vector.
    pub fn features(&self) -> usize {
        self.features
    }

    /// Push calls made so far (each one carries every device's gradients for both keys).
    pub fn pushes(&self) -> u64 {
        self.pushes
    }

    /// Pull calls made so far (each one fills every device's copy of both keys).
    pub fn pulls(&self) -> u64 {
        self.pulls
    }

    /// The parameters device `index` holds now (`None` past the last device).
    pub fn params(&self, index: usize) -> Option<Params> {
        let weight = self.weights.get(index)?.to_f32();
        let bias = self.biases.get(index)?.to_f32().first().copied()?;
        Some(Params { weight, bias })
    }

    /// Whether every device holds bit-identical parameters.
    pub fn devices_agree(&self) -> bool {
        let first = self.params(0);
        (1..self.devices.len()).all(|i| {
            let (a, b) = (&first, self.params(i));
            match (a, b) {
                (Some(a), Some(b)) => {
                    a.bias.to_bits() == b.bias.to_bits()
                        && a.weight.len() == b.weight.len()
                        && a.weight
                            .iter()
                            .zip(&b.weight)
                            .all(|(x, y)| x.to_bits() == y.to_bits())
                }
                _ => false,
            }
        })
    }

    /// One data-parallel step: every device computes `gradient(device_index, its params)`,
    /// the gradients of all devices go to the store in one push (the store sums them per key,
    /// compresses them first when compression is set, and runs its optimizer), then every
    /// device pulls the new parameters. Returns the gradients, in device order.
    pub fn step(
        &mut self,
        mut gradient: impl FnMut(usize, &Params) -> Gradient,
    ) -> kvstore::Result<Vec<Gradient>> {
        let mut grads = Vec::with_capacity(self.devices.len());
        for (index, (w, b)) in self.weights.iter().zip(&self.biases).enumerate() {
            let params = Params {
                weight: w.to_f32(),
                bias: b.to_f32().first().copied().unwrap_or(0.0),
            };
            grads.push(gradient(index, &params));
        }
        self.push(&grads)?;
        self.pull()?;
        Ok(grads)
    }

    /// Pushes one gradient per device (in device order) for both keys, as one call.
    fn push(&mut self, grads: &[Gradient]) -> kvstore::Result<()> {
        let mut weight_grads = Vec::with_capacity(grads.len());
        let mut bias_grads = Vec::with_capacity(grads.len());
        for (g, &device) in grads.iter().zip(&self.devices) {
            weight_grads.push(Tensor::new([self.features], g.weight.clone())?.on(device));
            bias_grads.push(Tensor::new([1], vec![g.bias])?.on(device));
        }
        self.kv
            .push(vec![WEIGHT_KEY, BIAS_KEY], vec![weight_grads, bias_grads])?;
        self.pushes += 1;
        Ok(())
    }

    /// Pulls both keys into every device's copy, as one call.
    fn pull(&mut self) -> kvstore::Result<()> {
        self.kv.pull(
            vec![WEIGHT_KEY, BIAS_KEY],
            vec![self.weights.clone(), self.biases.clone()],
        )?;
        self.pulls += 1;
        Ok(())
    }
}
