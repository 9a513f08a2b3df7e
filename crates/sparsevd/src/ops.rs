//! The seam between the method and the devices: one function per operation of a training step,
//! each running either its composed form or the CPU backend's kernel, decided here and nowhere
//! else.
//!
//! Every operation has a composed form: burn's tensor operations, written from the formulas of
//! `docs/method.md`, differentiated by burn's autodiff, and run on any backend without leaving
//! the device; it is the readable reference and the oracle of the kernels' tests. On the CPU
//! backend (Flex) each also has a host kernel in the `cpu_kernels` crate: one pass over host
//! memory that fuses what the composed form does in many. [`execution`] says which of the two
//! runs; nothing else asks which backend a tensor lives on.
//!
//! [`compose_on_this_thread`] makes the composed forms run on the CPU too, so that the generic
//! path (the GPU's) is tested and timed on a machine without a GPU. Reading a tensor back to
//! the host goes through [`read_back`], which counts, so that a test can state that a
//! composed training step reads nothing back (`clippy.toml` keeps burn's own read methods out
//! of the library code).

use crate::conv::Convolution;
use crate::dense::Matmul;
use crate::kl::{
    AdditiveRules, KlTerms, composed_additive_terms, composed_log_alpha_kl, composed_train_clip,
};
use crate::weights::{MeanGradient, TrainTerms, composed_lrt_sample, host_vec};
use burn::module::RunningState;
use burn::nn::BatchNorm;
use burn::optim::{Adam, AdamState, LearningRate, Optimizer};
use burn::tensor::activation::relu;
use burn::tensor::kind::Basic;
use burn::tensor::module::max_pool2d;
use burn::tensor::ops::MaxPoolOptions;
use burn::tensor::{Device, Distribution, Tensor, TensorData, s};
pub use cpu_kernels::adam::AdamConstants;
/// The seeds of the host noise: one stream per (seed, index), and the hash behind it.
pub use cpu_kernels::noise::{mix, splitmix};
use cpu_kernels::tensor::is_cpu;
use cpu_kernels::{batch_norm, lrt_conv, lrt_dense, max_pool, noise};
use std::cell::Cell;

/// Which form of the operations runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Execution {
    /// The CPU backend's host kernels.
    HostKernels,
    /// burn's tensor operations: every backend, and the CPU under [`compose_on_this_thread`].
    Composed,
}

thread_local! {
    static COMPOSED_FORCED: Cell<bool> = const { Cell::new(false) };
    static READ_BACKS: Cell<u64> = const { Cell::new(0) };
}

/// The form that runs for tensors on `device`.
pub fn execution(device: &Device) -> Execution {
    if is_cpu(device) && !composed_on_this_thread() {
        Execution::HostKernels
    } else {
        Execution::Composed
    }
}

/// Whether the host kernels run for tensors on `device`.
pub fn host_kernels(device: &Device) -> bool {
    execution(device) == Execution::HostKernels
}

/// While the returned guard lives, operations called from this thread run composed on every
/// backend, the CPU's included.
#[must_use = "the composed forms run only while the guard lives"]
pub fn compose_on_this_thread() -> ComposedScope {
    ComposedScope {
        before: COMPOSED_FORCED.with(|f| f.replace(true)),
    }
}

/// Whether this thread is under [`compose_on_this_thread`] (to carry the choice to a thread
/// that works for it).
pub fn composed_on_this_thread() -> bool {
    COMPOSED_FORCED.with(Cell::get)
}

/// See [`compose_on_this_thread`].
pub struct ComposedScope {
    before: bool,
}

impl Drop for ComposedScope {
    fn drop(&mut self) {
        COMPOSED_FORCED.with(|f| f.set(self.before));
    }
}

/// The values of `tensor` on the host. On a GPU this waits for the device: the one door from
/// device to host in the library code, counted per thread (see [`read_backs`]).
#[allow(clippy::disallowed_methods)] // this is the door
pub fn read_back<const D: usize, K: Basic>(tensor: Tensor<D, K>) -> TensorData {
    READ_BACKS.with(|n| n.set(n.get() + 1));
    tensor.into_data()
}

/// How many tensors this thread has read back through [`read_back`].
pub fn read_backs() -> u64 {
    READ_BACKS.with(Cell::get)
}

/// ζ ~ N(0, 1) of `shape`: from `seed` on the host (a pure function of it), from the device's
/// own generator when composed (seeded per epoch by the training loop; `seed` unused).
pub fn standard_normal<const D: usize>(shape: [usize; D], seed: u64, device: &Device) -> Tensor<D> {
    match execution(device) {
        Execution::HostKernels => noise::standard_normal(shape, seed, device),
        Execution::Composed => Tensor::random(shape, Distribution::Normal(0.0, 1.0), device),
    }
}

/// Binary (inverted) dropout: x ⊙ m / p with m ~ Bernoulli(p) per element, p = `keep`, the
/// mask drawn as [`standard_normal`] draws. E\[output\] = x, so evaluation uses x unchanged.
pub fn binary_dropout<const D: usize>(x: Tensor<D>, keep: f64, seed: u64) -> Tensor<D> {
    match execution(&x.device()) {
        Execution::HostKernels => noise::binary_dropout(x, keep, seed),
        Execution::Composed => {
            let mask = Tensor::random(x.dims(), Distribution::Bernoulli(keep), &x.device());
            x * mask * (1.0 / keep) as f32
        }
    }
}

/// Gaussian dropout: x ⊙ r with r ~ N(1, α) per element, α = (1 − p)/p for p = `keep` (the
/// mean and variance of binary dropout's r). E\[output\] = x.
pub fn gaussian_dropout<const D: usize>(x: Tensor<D>, keep: f64, seed: u64) -> Tensor<D> {
    match execution(&x.device()) {
        Execution::HostKernels => noise::gaussian_dropout(x, keep, seed),
        Execution::Composed => {
            let std = ((1.0 - keep) / keep).sqrt() as f32;
            let noise =
                Tensor::random(x.dims(), Distribution::Normal(1.0, std as f64), &x.device());
            x * noise
        }
    }
}

/// The dense LRT sample x·μ + √((x ⊙ x)·v + 1e-8) ⊙ ζ + b, ζ drawn from `noise_seed`.
pub fn lrt_dense(
    x: Tensor<2>,
    mean: Tensor<2>,
    variance: Tensor<2>,
    bias: Tensor<1>,
    noise_seed: u64,
) -> Tensor<2> {
    let device = x.device();
    match execution(&device) {
        Execution::HostKernels => {
            let zeta = noise::standard_normal([x.dims()[0], mean.dims()[1]], noise_seed, &device);
            lrt_dense::lrt_dense(x, mean, variance, zeta, bias)
        }
        Execution::Composed => composed_lrt_sample(&Matmul, x, mean, variance, bias, noise_seed),
    }
}

/// conv(x, w) + b, stride 1, `padding` zeros on every side.
pub fn conv2d(x: Tensor<4>, w: Tensor<4>, bias: Tensor<1>, padding: usize) -> Tensor<4> {
    match execution(&x.device()) {
        Execution::HostKernels => lrt_conv::conv2d(x, w, bias, padding),
        Execution::Composed => {
            burn::tensor::module::conv2d(x, w, Some(bias), Convolution { padding }.options())
        }
    }
}

/// The convolutional LRT sample conv(x, μ) + √(conv(x ⊙ x, v) + 1e-8) ⊙ ζ + b, ζ drawn from
/// `noise_seed`; the mean's gradient may be left 0 where `mean_gradient` says it is unused.
pub fn lrt_conv2d(
    x: Tensor<4>,
    mean: Tensor<4>,
    variance: Tensor<4>,
    bias: Tensor<1>,
    padding: usize,
    noise_seed: u64,
    mean_gradient: MeanGradient,
) -> Tensor<4> {
    let device = x.device();
    match execution(&device) {
        Execution::HostKernels => {
            let dims = lrt_conv::output_dims(x.dims(), mean.dims(), padding);
            let zeta = noise::standard_normal(dims, noise_seed, &device);
            lrt_conv::lrt_conv2d(x, mean, variance, zeta, bias, padding, mean_gradient)
        }
        Execution::Composed => composed_lrt_sample(
            &Convolution { padding },
            x,
            mean,
            variance,
            bias,
            noise_seed,
        ),
    }
}

/// 2×2 max pooling with stride 2 of x `[B, C, H, W]` (H and W even) to `[B, C, H/2, W/2]`; the
/// gradient goes to each window's first maximum.
pub fn max_pool_2x2(x: Tensor<4>) -> Tensor<4> {
    match execution(&x.device()) {
        Execution::HostKernels => max_pool::max_pool_2x2(x),
        Execution::Composed => max_pool2d(x, MaxPoolOptions::new([2, 2])),
    }
}

/// ReLU after batch norm: max(0, BN(x)) for x `[B, C, …]`. In training (an autodiff device and
/// the layer's training flag on) BN uses the batch's statistics and updates the layer's running
/// ones, as burn's `BatchNorm::forward` does; otherwise it uses the running statistics.
pub fn batch_norm_relu<const D: usize>(norm: &BatchNorm, x: Tensor<D>) -> Tensor<D> {
    let training = x.device().is_autodiff() && norm.training.is_enabled();
    match execution(&x.device()) {
        Execution::HostKernels if training => {
            let statistics = batch_norm::batch_statistics(x.clone());
            let channels = norm.gamma.dims()[0];
            let row = |r: usize| statistics.clone().slice(s![r, ..]).reshape([channels]);
            let blend = |running: &RunningState<Tensor<1>>, batch: Tensor<1>| {
                let updated = running.value_sync().mul_scalar(1.0 - norm.momentum)
                    + batch.mul_scalar(norm.momentum);
                running.update(updated.detach());
            };
            blend(&norm.running_mean, row(0));
            blend(&norm.running_var, row(1));
            batch_norm::batch_norm_relu(
                x,
                norm.gamma.val(),
                norm.beta.val(),
                statistics,
                norm.epsilon,
            )
        }
        _ => relu(norm.forward(x)),
    }
}

/// The training terms of a Sparse VD layer in the additive parameterization (θ, log σ²) under
/// `rules`: the mean (θ after the train clip at `mask_threshold`, if on), the LRT variance and
/// Σ KL, each differentiable with respect to θ and log σ² (see [`crate::kl`]).
pub(crate) fn sparse_vd_terms<const D: usize>(
    theta: Tensor<D>,
    log_sigma2: Tensor<D>,
    rules: AdditiveRules,
    mask_threshold: Option<f64>,
) -> TrainTerms<D> {
    if execution(&theta.device()) == Execution::Composed {
        let terms = composed_additive_terms(theta.clone(), log_sigma2, rules, mask_threshold);
        return TrainTerms {
            mean: composed_train_clip(theta, terms.log_alpha, mask_threshold),
            mean_gradient: MeanGradient::Everywhere,
            variance: terms.variance,
            kl: terms.kl,
        };
    }
    let theta_values = host_vec(theta.clone());
    let mut terms = KlTerms::additive(
        &theta_values,
        &host_vec(log_sigma2.clone()),
        rules,
        mask_threshold,
    );
    let (mean, mean_gradient) =
        host_train_clip(&terms, theta.clone(), &theta_values, mask_threshold);
    TrainTerms {
        mean,
        mean_gradient,
        variance: terms.variance_tensor(theta.clone(), log_sigma2.clone()),
        kl: terms.into_tensor(theta, log_sigma2),
    }
}

/// The training terms of a Sparse VD layer in the original parameterization (θ, log α): the
/// mean (θ after the train clip, if on), the variance α·θ² and Σ KL, from the learned log α
/// (unclipped) and its clipped value `clipped_log_alpha`.
pub(crate) fn log_alpha_terms<const D: usize>(
    theta: Tensor<D>,
    learned_log_alpha: Tensor<D>,
    clipped_log_alpha: Tensor<D>,
    mask_threshold: Option<f64>,
) -> TrainTerms<D> {
    let variance = clipped_log_alpha.clone().exp() * theta.clone().square();
    if execution(&theta.device()) == Execution::Composed {
        return TrainTerms {
            mean: composed_train_clip(theta, clipped_log_alpha, mask_threshold),
            mean_gradient: MeanGradient::Everywhere,
            variance,
            kl: composed_log_alpha_kl(learned_log_alpha),
        };
    }
    let terms = KlTerms::of_log_alpha(&host_vec(learned_log_alpha.clone()));
    let theta_values = match mask_threshold {
        Some(_) => host_vec(theta.clone()),
        None => Vec::new(),
    };
    let (mean, mean_gradient) =
        host_train_clip(&terms, theta.clone(), &theta_values, mask_threshold);
    TrainTerms {
        mean,
        mean_gradient,
        variance,
        kl: terms.into_tensor(theta, learned_log_alpha),
    }
}

/// θ after the train clip by the host KL pass's log α, and where its gradient is used.
fn host_train_clip<const D: usize>(
    terms: &KlTerms,
    theta: Tensor<D>,
    theta_values: &[f32],
    mask_threshold: Option<f64>,
) -> (Tensor<D>, MeanGradient) {
    match mask_threshold {
        Some(t) => (
            terms.train_clipped(theta, theta_values, t),
            MeanGradient::WhereNonzero,
        ),
        None => (theta, MeanGradient::Everywhere),
    }
}

/// One Adam step with β₁, β₂, ε = `constants`: burn's `Adam` (`composed`, built with the same
/// constants) or the one-pass update.
pub fn adam_step<const D: usize>(
    composed: &Adam,
    constants: AdamConstants,
    lr: LearningRate,
    tensor: Tensor<D>,
    grad: Tensor<D>,
    state: Option<AdamState<D>>,
) -> (Tensor<D>, Option<AdamState<D>>) {
    match execution(&tensor.device()) {
        Execution::HostKernels => {
            let (tensor, state) = cpu_kernels::adam::step(constants, lr, tensor, grad, state);
            (tensor, Some(state))
        }
        Execution::Composed => composed.step(lr, tensor, grad, state),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_runs_host_kernels_unless_composition_is_asked_for() {
        let device = Device::flex();
        assert_eq!(execution(&device), Execution::HostKernels);
        assert_eq!(
            execution(&device.clone().autodiff()),
            Execution::HostKernels
        );
        {
            let _outer = compose_on_this_thread();
            {
                let _inner = compose_on_this_thread();
                assert_eq!(execution(&device), Execution::Composed);
            }
            assert_eq!(
                execution(&device),
                Execution::Composed,
                "the outer guard holds"
            );
        }
        assert_eq!(execution(&device), Execution::HostKernels);
    }

    #[test]
    fn read_back_counts() {
        let device = Device::flex();
        let before = read_backs();
        let data = read_back(Tensor::<1>::ones([3], &device));
        assert_eq!(data.try_to_vec::<f32>().ok(), Some(vec![1.0; 3]));
        assert_eq!(read_backs(), before + 1);
    }

    /// `run` gives the same values (named by `names`, none all zero) with the kernels and under
    /// [`compose_on_this_thread`], up to float rounding.
    fn assert_forms_agree<const N: usize>(
        context: &str,
        names: [&str; N],
        run: impl Fn() -> [Vec<f32>; N],
    ) {
        let kernels = run();
        let composed = {
            let _composed = compose_on_this_thread();
            run()
        };
        for ((name, a), b) in names.iter().zip(&kernels).zip(&composed) {
            assert_eq!(a.len(), b.len(), "{context} {name}");
            assert!(a.iter().any(|&v| v != 0.0), "{context} {name}: all zero");
            for (i, (a, b)) in a.iter().zip(b).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                    "{context} {name}[{i}]: kernels {a}, composed {b}"
                );
            }
        }
    }

    /// Batch norm with ReLU gives the same output, gradients (x, γ, β) and running statistics
    /// in both forms, after a convolution (`[B, C, H, W]`) and after a dense layer (`[B, C]`),
    /// with γ and β away from 1 and 0 and inputs away from zero mean, and evaluation after it.
    #[test]
    fn batch_norm_relu_forms_agree() {
        use burn::nn::BatchNormConfig;
        let device = Device::flex().autodiff();
        fn check<const D: usize>(shape: [usize; D], device: &Device) {
            let channels = shape[1];
            let x = Tensor::<D>::random(shape, Distribution::Normal(0.7, 2.0), device);
            let weights = Tensor::<D>::random(shape, Distribution::Normal(0.0, 1.0), device);
            let parameter =
                |mean| Tensor::<1>::random([channels], Distribution::Normal(mean, 0.5), device);
            let (gamma, beta) = (parameter(1.0), parameter(0.2));
            let run = || {
                let mut norm = BatchNormConfig::new(channels)
                    .with_epsilon(1e-3)
                    .init(device);
                norm.gamma = burn::module::Param::from_tensor(gamma.clone());
                norm.beta = burn::module::Param::from_tensor(beta.clone());
                let x = x.clone().require_grad();
                let z = batch_norm_relu(&norm, x.clone());
                let grads = (z.clone() * weights.clone()).sum().backward();
                let evaluated = batch_norm_relu(&norm, x.clone().inner());
                [
                    host_vec(z),
                    host_vec(x.grad(&grads).expect("tracked")),
                    host_vec(norm.gamma.grad(&grads).expect("tracked")),
                    host_vec(norm.beta.grad(&grads).expect("tracked")),
                    host_vec(norm.running_mean.value_sync()),
                    host_vec(norm.running_var.value_sync()),
                    host_vec(evaluated),
                ]
            };
            let names = [
                "z",
                "∂x",
                "∂γ",
                "∂β",
                "running μ",
                "running σ²",
                "evaluation",
            ];
            assert_forms_agree(&format!("{shape:?}"), names, run);
        }
        check([6, 3, 5, 4], &device);
        check([12, 5], &device);
    }

    /// Each deterministic operation gives the same values and gradients in both forms: the
    /// composed form is the kernels' oracle through the seam too, not only in their own tests.
    #[test]
    fn both_forms_agree() {
        use crate::kl::additive_rules;
        use crate::posterior::LrtVariance;
        use crate::weights::MapKind;
        let device = Device::flex().autodiff();
        let random = |shape: [usize; 4], std: f64| {
            Tensor::<4>::random(shape, Distribution::Normal(0.0, std), &device)
        };
        let (x, w) = (random([2, 3, 8, 8], 1.0), random([4, 3, 3, 3], 0.3));
        let bias = Tensor::<1>::random([4], Distribution::Normal(0.0, 1.0), &device);
        // log σ² spread over both clip regions and the interior.
        let log_sigma2 = random([4, 3, 3, 3], 6.0) - 6.0;
        let rules = additive_rules(LrtVariance::ClippedAlpha, MapKind::Convolution);
        let run = || {
            let (x, w, s) = (
                x.clone().require_grad(),
                w.clone().require_grad(),
                log_sigma2.clone().require_grad(),
            );
            let pooled = max_pool_2x2(conv2d(x.clone(), w.clone(), bias.clone(), 1));
            let terms = sparse_vd_terms(w.clone(), s.clone(), rules, Some(3.0));
            let loss = (pooled.clone() * pooled.clone()).sum()
                + (terms.mean.clone() * terms.variance.clone()).sum()
                + terms.kl.clone();
            let grads = loss.backward();
            let grad = |t: &Tensor<4>| host_vec(t.grad(&grads).expect("tracked"));
            [
                host_vec(pooled),
                host_vec(terms.mean),
                host_vec(terms.variance),
                host_vec(terms.kl),
                grad(&x),
                grad(&w),
                grad(&s),
            ]
        };
        let names = [
            "pool(conv)",
            "mean",
            "variance",
            "Σ KL",
            "∂x",
            "∂θ",
            "∂log σ²",
        ];
        assert_forms_agree("", names, run);
    }

    /// One Adam step in both forms: the kernel is burn's Adam to the bit.
    #[test]
    fn adam_forms_agree() {
        let device = Device::flex();
        let constants = AdamConstants {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-8,
        };
        let composed = burn::optim::AdamConfig::new().with_epsilon(1e-8).build();
        let param = Tensor::<2>::random([30, 7], Distribution::Normal(0.0, 1.0), &device);
        let grad = Tensor::<2>::random([30, 7], Distribution::Normal(0.0, 0.1), &device);
        let step = || {
            adam_step(
                &composed,
                constants,
                1e-3,
                param.clone(),
                grad.clone(),
                None,
            )
            .0
        };
        let kernel = host_vec(step());
        let _composed = compose_on_this_thread();
        assert_eq!(kernel, host_vec(step()));
    }
}
