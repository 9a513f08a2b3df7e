//! The weights of one layer — θ, the learned noise parameter of its posterior, bias — and the
//! variational forward pass that dense and convolutional layers share; they differ only in the
//! linear map applied.

use crate::kl::{LOG_ALPHA_CLIP, additive_rules, kl_kingma, log_alpha};
use crate::mode::{ForwardMode, WeightLayerView};
use crate::ops::{log_alpha_terms, read_back, sparse_vd_terms, standard_normal};
use crate::posterior::{Posterior, VD_LOG_ALPHA_MAX};
use burn::module::{Module, Param};
use burn::tensor::{Tensor, TensorData};
pub use cpu_kernels::MeanGradient;
// ε under the square root of the LRT variance, √(δ + ε), so that its gradient stays finite.
use cpu_kernels::VARIANCE_EPS;

/// θ (any shape with one output-unit axis), the noise parameter of the [`Posterior`] (log σ²
/// of θ's shape for Sparse VD; log α of θ's shape, per unit or per layer for the log α
/// posteriors; none for a point layer), and one bias per output unit.
///
/// With a variational posterior, q(w_ij) = N(θ_ij, σ²_ij), and for a linear map `A` (matmul or
/// convolution):
/// - training (local reparameterization): γ = A(x, θ) + b, δ = A(x ⊙ x, σ²),
///   output γ + √(δ + 1e-8) ⊙ ζ, ζ ~ N(0, 1) per output element (drawn from the mode's noise
///   seed); the bias never enters δ. Sparse VD takes the variance in the form of its
///   [`crate::LrtVariance`] (σ² = exp(log σ²), or exp(clip(log α))·W² as the authors' code,
///   with its rules per [`MapKind`]); the log α posteriors take α·θ²;
/// - evaluation: A(x, θ ⊙ \[log α < threshold\]) + b, deterministic.
#[derive(Module, Debug)]
pub struct VariationalWeights<const D: usize> {
    pub theta: Param<Tensor<D>>,
    pub log_sigma2: Option<Param<Tensor<D>>>,
    pub log_alpha: Option<Param<Tensor<D>>>,
    pub bias: Param<Tensor<1>>,
    #[module(skip)]
    pub posterior: Posterior,
    #[module(skip)]
    pub kind: MapKind,
}

/// The linear map of a layer. The authors' code differs between the two in where ε enters
/// log α and whether the LRT variance sees the train clip ([`crate::kl::AdditiveRules`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    /// x·θ, θ `[inputs, units]`.
    Dense,
    /// conv(x, θ), θ `[units, channels in, k, k]`.
    Convolution,
}

impl MapKind {
    /// The axis of θ that indexes output units.
    pub fn unit_axis(self) -> usize {
        match self {
            MapKind::Dense => 1,
            MapKind::Convolution => 0,
        }
    }
}

/// The linear map A of a layer (matmul or convolution); b is the bias, one per output unit
/// (output axis 1).
pub trait LinearMap<const E: usize, const D: usize> {
    /// A(x, w).
    fn apply(&self, x: Tensor<E>, w: Tensor<D>) -> Tensor<E>;

    /// A(x, w) + b.
    fn apply_with_bias(&self, x: Tensor<E>, w: Tensor<D>, bias: Tensor<1>) -> Tensor<E> {
        self.apply(x, w) + along_units(bias)
    }

    /// The local reparameterization sample A(x, mean) + √(A(x ⊙ x, variance) + 1e-8) ⊙ ζ + b,
    /// with ζ ~ N(0, 1) of the output's shape drawn from `noise_seed`. The last argument says
    /// where the caller uses the mean's gradient: a map may leave it 0 elsewhere (this default
    /// computes it everywhere).
    fn lrt_sample(
        &self,
        x: Tensor<E>,
        mean: Tensor<D>,
        variance: Tensor<D>,
        bias: Tensor<1>,
        noise_seed: u64,
        _mean_gradient: MeanGradient,
    ) -> Tensor<E> {
        composed_lrt_sample(self, x, mean, variance, bias, noise_seed)
    }
}

/// [`LinearMap::lrt_sample`] from two applications of the map and burn's elementwise operations.
pub fn composed_lrt_sample<const E: usize, const D: usize>(
    map: &(impl LinearMap<E, D> + ?Sized),
    x: Tensor<E>,
    mean: Tensor<D>,
    variance: Tensor<D>,
    bias: Tensor<1>,
    noise_seed: u64,
) -> Tensor<E> {
    let gamma = map.apply(x.clone(), mean);
    let delta = map.apply(x.square(), variance);
    let zeta = standard_normal(gamma.dims(), noise_seed, &gamma.device());
    gamma + lrt_std(delta) * zeta + along_units(bias)
}

/// b `[units]` shaped to broadcast along axis 1 of a rank-E output.
fn along_units<const E: usize>(bias: Tensor<1>) -> Tensor<E> {
    let mut shape = [1; E];
    shape[1] = bias.dims()[0];
    bias.reshape(shape)
}

/// What a training pass needs from the posterior: the mean (θ after the train clip) and where its
/// gradient is used, σ² and Σ KL.
pub(crate) struct TrainTerms<const D: usize> {
    pub mean: Tensor<D>,
    pub mean_gradient: MeanGradient,
    pub variance: Tensor<D>,
    pub kl: Tensor<1>,
}

impl<const D: usize> VariationalWeights<D> {
    /// Weights of a `kind` layer with initial θ, zero bias, and the noise parameter of
    /// `posterior` at its initial value everywhere.
    pub fn new(theta: Tensor<D>, kind: MapKind, posterior: Posterior) -> Self {
        let unit_axis = kind.unit_axis();
        let device = theta.device();
        let shape = theta.dims();
        let full = |s: [usize; D], v: f64| Some(Param::from_tensor(Tensor::full(s, v, &device)));
        let (log_sigma2, log_alpha) = match posterior {
            Posterior::Point => (None, None),
            Posterior::SparseVd {
                log_sigma2_init, ..
            } => (full(shape, log_sigma2_init), None),
            Posterior::SparseVdLogAlpha { log_alpha_init } => {
                let values = log_alpha_init.values(&host_vec(theta.clone()));
                let log_alpha = Tensor::from_data(TensorData::new(values, shape), &device);
                (None, Some(Param::from_tensor(log_alpha)))
            }
            Posterior::VariationalDropout { log_alpha_init, .. } => {
                let learned = posterior
                    .log_alpha_shape(shape, unit_axis)
                    .expect("variational dropout learns log α");
                (None, full(learned, log_alpha_init))
            }
        };
        Self {
            log_sigma2,
            log_alpha,
            bias: Param::from_tensor(Tensor::zeros([shape[unit_axis]], &device)),
            theta: Param::from_tensor(theta),
            posterior,
            kind,
        }
    }

    /// Apply the layer whose linear map is `map`; returns the output and this layer's Σ KL
    /// (`None` for a point layer and in evaluation). Output axis 1 is the unit axis.
    pub fn forward<const E: usize>(
        &self,
        x: Tensor<E>,
        mode: ForwardMode,
        map: &impl LinearMap<E, D>,
    ) -> (Tensor<E>, Option<Tensor<1>>) {
        let (theta, bias) = (self.theta.val(), self.bias.val());
        if self.posterior == Posterior::Point {
            return (map.apply_with_bias(x, theta, bias), None);
        }
        match mode {
            ForwardMode::Eval { threshold } => {
                let removed = self
                    .clipped_log_alpha()
                    .expect("a variational posterior has log α")
                    .greater_equal_elem(threshold);
                (
                    map.apply_with_bias(x, theta.mask_fill(removed, 0.0), bias),
                    None,
                )
            }
            ForwardMode::Train {
                mask_threshold,
                noise_seed,
            } => {
                let terms = self.train_terms(mask_threshold);
                let sample = map.lrt_sample(
                    x,
                    terms.mean,
                    terms.variance,
                    bias,
                    noise_seed,
                    terms.mean_gradient,
                );
                (sample, Some(terms.kl))
            }
        }
    }

    /// The mean, σ² and Σ KL of a variational posterior; the mean is θ with the weights whose
    /// log α ≥ `mask_threshold` set to 0 (the train clip), θ itself without a threshold.
    fn train_terms(&self, mask_threshold: Option<f64>) -> TrainTerms<D> {
        let theta = self.theta.val();
        let shape = theta.dims();
        let noise = |p: &Option<Param<Tensor<D>>>| p.as_ref().map(Param::val).expect("built so");
        match self.posterior {
            Posterior::SparseVd { variance, .. } => sparse_vd_terms(
                theta,
                noise(&self.log_sigma2),
                additive_rules(variance, self.kind),
                mask_threshold,
            ),
            Posterior::SparseVdLogAlpha { .. } => log_alpha_terms(
                theta,
                noise(&self.log_alpha),
                self.learned_log_alpha(),
                mask_threshold,
            ),
            Posterior::VariationalDropout { .. } => {
                let log_alpha = self.learned_log_alpha();
                let sharing =
                    (theta.shape().num_elements() / log_alpha.shape().num_elements()) as f64;
                // α ≤ 1: a threshold above the clip removes nothing, so no mask is built.
                let removed = mask_threshold
                    .filter(|&t| t <= VD_LOG_ALPHA_MAX)
                    .map(|t| log_alpha.clone().expand(shape).greater_equal_elem(t));
                TrainTerms {
                    mean: match removed {
                        Some(removed) => theta.clone().mask_fill(removed, 0.0),
                        None => theta.clone(),
                    },
                    mean_gradient: MeanGradient::Everywhere,
                    variance: log_alpha.clone().exp() * theta.square(),
                    kl: kl_kingma(log_alpha).sum() * sharing,
                }
            }
            Posterior::Point => unreachable!("a point layer has no noise"),
        }
    }

    /// The learned log α in its own shape, clipped to its posterior's range: [−8, 8] for
    /// Sparse VD (θ, log α), [−8, 0] for variational dropout.
    fn learned_log_alpha(&self) -> Tensor<D> {
        let upper = match self.posterior {
            Posterior::VariationalDropout { .. } => VD_LOG_ALPHA_MAX,
            _ => LOG_ALPHA_CLIP,
        };
        let learned = self.log_alpha.as_ref().map(Param::val);
        learned
            .expect("built so: this posterior learns log α")
            .clamp(-LOG_ALPHA_CLIP, upper)
    }

    /// log α of every weight as the forward pass clips it; `None` for a point layer.
    fn clipped_log_alpha(&self) -> Option<Tensor<D>> {
        let theta = self.theta.val();
        match self.posterior {
            Posterior::Point => None,
            Posterior::SparseVd { variance, .. } => Some(log_alpha(
                theta,
                self.log_sigma2.as_ref().map(Param::val).expect("built so"),
                additive_rules(variance, self.kind).forward_eps,
            )),
            Posterior::SparseVdLogAlpha { .. } | Posterior::VariationalDropout { .. } => {
                Some(self.learned_log_alpha().expand(theta.dims()))
            }
        }
    }

    /// Σ θ² (for an L2 penalty).
    pub fn theta_squared(&self) -> Tensor<1> {
        self.theta.val().square().sum()
    }

    /// These weights with θ, the noise parameter and bias replaced by `view`'s (a saved model),
    /// keeping the structure; an error says what does not match. A per-unit or per-layer log α
    /// is read back from the per-weight one that the view carries.
    pub fn with_values(self, view: &WeightLayerView) -> Result<Self, String> {
        let device = self.theta.val().device();
        let shape = self.theta.dims();
        if view.shape != shape {
            return Err(format!(
                "{}: shape {:?}, expected {:?}",
                view.name, view.shape, shape
            ));
        }
        let stored = match (&view.log_sigma2, &view.log_alpha) {
            (Some(_), _) => "log_sigma2",
            (None, Some(_)) => "log_alpha",
            (None, None) => "neither log_sigma2 nor log_alpha",
        };
        let expected = match self.posterior {
            Posterior::Point => "neither log_sigma2 nor log_alpha",
            Posterior::SparseVd { .. } => "log_sigma2",
            _ => "log_alpha",
        };
        if stored != expected {
            return Err(format!(
                "{}: the file has {stored}, this network's layer expects {expected}",
                view.name
            ));
        }
        if view.bias.len() != self.bias.dims()[0] {
            return Err(format!(
                "{}: {} biases, expected {}",
                view.name,
                view.bias.len(),
                self.bias.dims()[0]
            ));
        }
        let tensor = |values: &[f32]| {
            Tensor::<D>::from_data(TensorData::new(values.to_vec(), shape), &device)
        };
        let log_alpha = self.log_alpha.as_ref().map(|learned| {
            let mut per_weight = tensor(view.log_alpha.as_deref().expect("checked above"));
            for (axis, &size) in learned.dims().iter().enumerate() {
                if size == 1 && shape[axis] > 1 {
                    per_weight = per_weight.mean_dim(axis);
                }
            }
            Param::from_tensor(per_weight)
        });
        Ok(Self {
            theta: Param::from_tensor(tensor(&view.theta)),
            log_sigma2: view
                .log_sigma2
                .as_deref()
                .map(|v| Param::from_tensor(tensor(v))),
            log_alpha,
            bias: Param::from_tensor(Tensor::from_data(
                TensorData::new(view.bias.clone(), [view.bias.len()]),
                &device,
            )),
            posterior: self.posterior,
            kind: self.kind,
        })
    }

    /// Copy to the host for counting, saving and plotting.
    pub fn view(&self, name: &str) -> WeightLayerView {
        let theta = self.theta.val();
        WeightLayerView {
            name: name.to_string(),
            shape: theta.dims().to_vec(),
            log_alpha: self.clipped_log_alpha().map(host_vec),
            log_sigma2: self.log_sigma2.as_ref().map(|s| host_vec(s.val())),
            theta: host_vec(theta),
            bias: host_vec(self.bias.val()),
        }
    }
}

/// √(δ + 1e-8), differentiated as 1 / (2·√(δ + 1e-8)) from the forward value:
/// √δ̄ + (δ − δ̄) / (2√δ̄) with δ̄ a detached copy (the second term is exactly 0). burn's own
/// `sqrt` backward recomputes the slope with `powf`, 5 % of a LeNet-5 step.
fn lrt_std<const E: usize>(delta: Tensor<E>) -> Tensor<E> {
    let fixed = delta.clone().detach();
    let std = (fixed.clone() + VARIANCE_EPS).sqrt();
    let slope = std.clone().recip() * 0.5;
    std + (delta - fixed) * slope
}

/// The values of `tensor` as host f32, whatever the backend's float type (read through
/// [`read_back`]).
pub(crate) fn host_vec<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    read_back(tensor)
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("converted to f32 just above")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dense::Matmul;
    use crate::kl::kl_approx_value;
    use crate::posterior::{AlphaSharing, LogAlphaInit};
    use burn::tensor::Device;

    const THETA: [f32; 6] = [0.5, -1.0, 0.25, 2.0, -0.75, 0.1];
    const X: [f32; 3] = [1.0, -2.0, 0.5];

    /// A 3 → 2 layer with θ = `THETA`, bias (0.3, −0.2) and learned log α `log_alpha` of shape
    /// `shape`.
    fn log_alpha_layer(
        posterior: Posterior,
        log_alpha: &[f32],
        shape: [usize; 2],
        device: &Device,
    ) -> VariationalWeights<2> {
        let tensor = |v: &[f32], s: [usize; 2]| {
            Param::from_tensor(Tensor::from_data(TensorData::new(v.to_vec(), s), device))
        };
        VariationalWeights {
            theta: tensor(&THETA, [3, 2]),
            log_sigma2: None,
            log_alpha: Some(tensor(log_alpha, shape)),
            bias: Param::from_tensor(Tensor::from_data(TensorData::from([0.3f32, -0.2]), device)),
            posterior,
            kind: MapKind::Dense,
        }
    }

    fn per_unit_vd() -> Posterior {
        Posterior::VariationalDropout {
            log_alpha_init: -4.0,
            sharing: AlphaSharing::PerUnit,
        }
    }

    /// `FromLogSigma2` starts the (θ, log α) posterior at the additive one's α, clip included.
    #[test]
    fn log_alpha_from_log_sigma2_starts_where_the_additive_posterior_starts() {
        let device = Device::flex();
        let theta = || Tensor::<2>::from_data(TensorData::new(THETA.to_vec(), [3, 2]), &device);
        let additive = VariationalWeights::new(theta(), MapKind::Dense, Posterior::sparse_vd(-1.0));
        let original = VariationalWeights::new(
            theta(),
            MapKind::Dense,
            Posterior::SparseVdLogAlpha {
                log_alpha_init: LogAlphaInit::FromLogSigma2 { log_sigma2: -1.0 },
            },
        );
        let clipped =
            |w: &VariationalWeights<2>| host_vec(w.clipped_log_alpha().expect("variational"));
        let (a, b) = (clipped(&additive), clipped(&original));
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
        }
        // θ = 0.1: log α = −1 − log 0.01 = 3.6; θ = 2: −1 − log 4 = −2.39.
        assert!(
            (b[5] - 3.605).abs() < 1e-3 && (b[3] + 2.386).abs() < 1e-3,
            "{b:?}"
        );
    }

    /// Mean γ and variance δ = Σ x² α θ² of the LRT output for both log α posteriors; the
    /// per-unit α of unit 1 is learned as e^0.5 but clipped to 1.
    #[test]
    fn log_alpha_posteriors_sample_with_variance_alpha_theta_squared() {
        let device = Device::flex();
        let per_weight = [-1.0f32, -2.0, -3.0, -0.5, -1.5, -4.0];
        let cases = [
            (
                log_alpha_layer(
                    Posterior::SparseVdLogAlpha {
                        log_alpha_init: LogAlphaInit::Constant { log_alpha: -4.0 },
                    },
                    &per_weight,
                    [3, 2],
                    &device,
                ),
                per_weight,
            ),
            (
                log_alpha_layer(per_unit_vd(), &[-1.0, 0.5], [1, 2], &device),
                [-1.0, 0.0, -1.0, 0.0, -1.0, 0.0],
            ),
        ];
        let samples = 40_000;
        let batch: Vec<f32> = X.iter().copied().cycle().take(3 * samples).collect();
        for (layer, log_alpha) in cases {
            let input =
                Tensor::<2>::from_data(TensorData::new(batch.clone(), [samples, 3]), &device);
            let (out, kl) = layer.forward(
                input,
                ForwardMode::Train {
                    mask_threshold: None,
                    noise_seed: 3,
                },
                &Matmul,
            );
            assert!(kl.is_some());
            let out = host_vec(out);
            for j in 0..2 {
                let at = |i: usize| 2 * i + j;
                let gamma: f64 =
                    (0..3).map(|i| (X[i] * THETA[at(i)]) as f64).sum::<f64>() + [0.3, -0.2][j];
                let delta: f64 = (0..3)
                    .map(|i| {
                        (X[i] as f64).powi(2)
                            * (log_alpha[at(i)] as f64).exp()
                            * (THETA[at(i)] as f64).powi(2)
                    })
                    .sum();
                let column: Vec<f64> = out.iter().skip(j).step_by(2).map(|&v| v as f64).collect();
                let mean = column.iter().sum::<f64>() / samples as f64;
                let var =
                    column.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (samples - 1) as f64;
                // Standard errors √(δ/n) of the mean and δ·√(2/n) of the variance; allow 4.
                let n = samples as f64;
                assert!(
                    (mean - gamma).abs() < 4.0 * (delta / n).sqrt(),
                    "unit {j}: {mean} vs {gamma}"
                );
                assert!(
                    (var - delta).abs() < 4.0 * delta * (2.0 / n).sqrt(),
                    "{:?} unit {j}: variance {var} vs δ {delta}",
                    layer.posterior
                );
            }
        }
    }

    /// Kingma's VD: Σ KL = (weights per α) · cubic KL at the clipped log α, and a log α above
    /// the clip (α > 1) gets no gradient. Sparse VD (θ, log α): the sigmoid KL of each weight.
    #[test]
    fn kl_of_the_log_alpha_posteriors() {
        let device = Device::flex().autodiff();
        let train = ForwardMode::Train {
            mask_threshold: None,
            noise_seed: 1,
        };
        let input = || Tensor::<2>::from_data(TensorData::new(X.to_vec(), [1, 3]), &device);
        let vd = log_alpha_layer(per_unit_vd(), &[-1.0, 0.5], [1, 2], &device);
        let kl = vd.forward(input(), train, &Matmul).1.expect("variational");
        let value: f32 = kl.clone().into_scalar();
        let cubic = |la: f64| -crate::kl::neg_kl_kingma(la);
        assert!(
            (value as f64 - 3.0 * (cubic(-1.0) + cubic(0.0))).abs() < 1e-4,
            "{value}"
        );
        let grads = kl.backward();
        let learned = vd.log_alpha.as_ref().expect("built so").val();
        let d = host_vec(learned.grad(&grads).expect("tracked"));
        assert!(d[0] < 0.0, "KL falls as α grows below 1: {d:?}");
        assert_eq!(d[1], 0.0, "clipped at α = 1: {d:?}");

        let per_weight = [-9.0f32, -2.0, 0.0, 2.5, 4.0, 9.0];
        let svd = log_alpha_layer(
            Posterior::SparseVdLogAlpha {
                log_alpha_init: LogAlphaInit::Constant { log_alpha: -4.0 },
            },
            &per_weight,
            [3, 2],
            &device,
        );
        let kl: f32 = svd
            .forward(input(), train, &Matmul)
            .1
            .expect("variational")
            .into_scalar();
        let want: f64 = per_weight
            .iter()
            .map(|&la| kl_approx_value((la as f64).clamp(-8.0, 8.0)))
            .sum();
        assert!((kl as f64 - want).abs() < 1e-4, "{kl} vs {want}");
    }

    /// Evaluation removes the weights whose own log α reaches the threshold; a per-unit log α
    /// written out per weight reads back into the per-unit parameter.
    #[test]
    fn log_alpha_layers_mask_and_round_trip_through_a_view() {
        let device = Device::flex();
        let svd = log_alpha_layer(
            Posterior::SparseVdLogAlpha {
                log_alpha_init: LogAlphaInit::Constant { log_alpha: -4.0 },
            },
            &[-1.0, 3.5, -3.0, -0.5, -1.5, 9.0],
            [3, 2],
            &device,
        );
        let view = svd.view("d");
        assert_eq!(view.kept(3.0), vec![true, false, true, true, true, false]);
        assert_eq!(view.log_alpha.as_ref().expect("variational")[5], 8.0);

        let vd = log_alpha_layer(per_unit_vd(), &[-1.0, -2.5], [1, 2], &device);
        let view = vd.view("d");
        assert_eq!(
            view.log_alpha.as_deref(),
            Some(&[-1.0f32, -2.5, -1.0, -2.5, -1.0, -2.5][..])
        );
        let fresh = VariationalWeights::new(
            Tensor::<2>::zeros([3, 2], &device),
            MapKind::Dense,
            per_unit_vd(),
        );
        let restored = fresh.with_values(&view).expect("same structure");
        let learned = restored.log_alpha.expect("built so").val();
        assert_eq!(learned.dims(), [1, 2]);
        assert_eq!(host_vec(learned), vec![-1.0, -2.5]);
        let point = VariationalWeights::new(
            Tensor::<2>::zeros([3, 2], &device),
            MapKind::Dense,
            Posterior::Point,
        );
        let err = point
            .with_values(&view)
            .expect_err("point layer, log α in the file");
        assert!(err.contains("log_alpha"), "{err}");
    }

    #[test]
    fn lrt_std_has_the_value_and_slope_of_the_square_root() {
        let device = Device::flex().autodiff();
        let values = [0.0f32, 1e-6, 0.25, 4.0];
        let delta = Tensor::<1>::from_data(TensorData::from(values), &device).require_grad();
        let std = lrt_std(delta.clone());
        let grads = (std.clone() * 3.0).sum().backward();
        let std = host_vec(std);
        let slope = host_vec(delta.grad(&grads).expect("tracked"));
        for (i, &d) in values.iter().enumerate() {
            let root = (d as f64 + VARIANCE_EPS).sqrt();
            assert!(
                (std[i] as f64 - root).abs() <= 1e-6 * root,
                "√ at {d}: {}",
                std[i]
            );
            let want = 3.0 * 0.5 / root;
            assert!(
                (slope[i] as f64 - want).abs() <= 1e-5 * want,
                "slope at {d}: {}",
                slope[i]
            );
        }
    }
}
