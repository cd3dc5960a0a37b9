//! Test inputs drawn from a fixed seed, so a test that compares two computations on "random"
//! values compares them on the same values in every run, on every machine: an error bound near
//! the typical rounding then either holds or fails, never by chance (burn's `Tensor::random`
//! draws from a fresh seed each run).

use burn::prelude::{Device, Tensor};
use burn::tensor::TensorData;

use crate::train::Random;

/// A sequence of tensors of uniform values, the same sequence for the same seed.
pub struct Values(Random);

impl Values {
    pub fn new(seed: u64) -> Self {
        Self(Random::new(seed))
    }

    /// `shape` of values uniform in `[lo, hi)`, in f32, on `device`.
    pub fn uniform<const D: usize>(&mut self, shape: [usize; D], lo: f64, hi: f64, device: &Device) -> Tensor<D> {
        let count = shape.iter().product();
        let values: Vec<f32> = (0..count).map(|_| self.0.range(lo, hi) as f32).collect();
        Tensor::from_data(TensorData::new(values, shape), device)
    }

    /// `shape` of values uniform in `[-1, 1)`.
    pub fn signed<const D: usize>(&mut self, shape: [usize; D], device: &Device) -> Tensor<D> {
        self.uniform(shape, -1.0, 1.0, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_draws_the_same_values_and_another_seed_others() {
        let device = Device::flex();
        let draw = |seed| -> Vec<f32> {
            let mut values = Values::new(seed);
            let first = values.signed([2, 3, 4], &device);
            let second = values.uniform([5], 2.0, 3.0, &device);
            [first.into_data(), second.into_data()]
                .iter()
                .flat_map(|d| d.try_to_vec::<f32>().unwrap_or_default())
                .collect()
        };
        let (a, b, c) = (draw(7), draw(7), draw(8));
        assert_eq!(a.len(), 29);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a[..24].iter().all(|v| (-1.0..1.0).contains(v)) && a[24..].iter().all(|v| (2.0..3.0).contains(v)));
        assert!(a[..24].iter().any(|&v| v < -0.5) && a[..24].iter().any(|&v| v > 0.5), "spread over the range");
    }
}
