//! The network factory: the experiment's net, initialised for a variant (its layers' posterior,
//! dropout and width), handed to work that is generic over the net, and the rayon worker every
//! training and evaluation runs on.

use crate::spec::{self, LayerKind, Net, Variant};
use crate::{rng, train};
use burn::tensor::Device;
use sparsevd::{
    Dropout, LENET300_WIDTHS, LeNet5Config, MlpConfig, Network, Posterior, VggLikeConfig,
};

/// Work to do with a freshly initialised network, whichever net the experiment names.
pub trait WithNetwork {
    type Output;
    fn run<N: Network>(self, model: N) -> Self::Output;
}

/// Initialise the experiment's net (seeded, with the variant's layers and width) and hand it
/// to `job`.
pub fn with_network<J: WithNetwork>(
    net: &Net,
    variant: &Variant,
    protocol: &spec::Protocol,
    device: &Device,
    job: J,
) -> J::Output {
    device.seed(rng::derive_seed(protocol.seed, train::STREAM_INIT, 0));
    let posterior = posterior(variant, protocol);
    match net {
        Net::Lenet300 => job.run(
            MlpConfig::lenet300(posterior)
                .with_init_std(protocol.init.theta_std)
                .with_dropout(input_dropout(variant, LENET300_WIDTHS.len() - 1))
                .init(device),
        ),
        Net::Mlp(widths) => job.run(
            MlpConfig::new(widths.clone())
                .with_posterior(posterior)
                .with_init_std(protocol.init.theta_std)
                .with_dropout(input_dropout(variant, widths.len() - 1))
                .init(device),
        ),
        Net::Lenet5 => job.run(
            LeNet5Config::new()
                .with_dense_init_std(protocol.init.theta_std)
                .with_posterior(posterior)
                .init(device),
        ),
        Net::Vgglike => job.run(
            VggLikeConfig::new(
                variant
                    .width
                    .expect("validated: VGG-like variants have a width"),
            )
            .with_posterior(posterior)
            .with_dropout(variant.layer == LayerKind::BinaryDropout)
            .init(device),
        ),
    }
}

/// The posterior of the weights of `variant`'s layers under `protocol`.
pub(crate) fn posterior(variant: &Variant, protocol: &spec::Protocol) -> Posterior {
    let init = &protocol.init;
    const VALIDATED: &str = "validated: layers that learn log α have a valid init.log_alpha";
    match variant.layer {
        LayerKind::Plain | LayerKind::BinaryDropout | LayerKind::GaussianDropout => {
            Posterior::Point
        }
        LayerKind::VariationalDropout => Posterior::VariationalDropout {
            log_alpha_init: match init.log_alpha {
                Some(spec::InitialLogAlpha::Value(log_alpha)) => log_alpha,
                _ => unreachable!("{VALIDATED}"),
            },
            sharing: variant
                .alpha
                .expect("validated: variational_dropout layers have alpha"),
        },
        LayerKind::SparseVdLogAlpha => Posterior::SparseVdLogAlpha {
            log_alpha_init: init.log_alpha_init().expect(VALIDATED),
        },
        LayerKind::SparseVd => Posterior::SparseVd {
            log_sigma2_init: init.log_sigma2,
            variance: protocol.lrt_variance,
        },
    }
}

/// The dropout on each input of the `layers` dense layers of an MLP variant (empty for none).
fn input_dropout(variant: &Variant, layers: usize) -> Vec<Dropout> {
    let Some(keep) = &variant.keep else {
        return Vec::new();
    };
    let dropout: fn(f64) -> Dropout = match variant.layer {
        LayerKind::BinaryDropout => |keep| Dropout::Binary { keep },
        LayerKind::GaussianDropout => |keep| Dropout::Gaussian { keep },
        _ => return Vec::new(),
    };
    keep.per_layer(layers).into_iter().map(dropout).collect()
}

/// Run `work` on a worker of rayon's pool, which then takes part in every parallel operation it
/// starts. From the main thread, each operation woke the pool's threads and put the main thread
/// to sleep until they finished: three threads on two cores, and two thread switches per
/// operation. Same results (models byte-identical after training); measured per epoch
/// (2 threads, alternated runs): LeNet-300-100 Sparse VD 3.48 s against 4.52 s, LeNet-5
/// original 22.8 and 20.7 s against 24.5 and 22.0 s.
/// The calling thread's choice of composed operations ([`sparsevd::ops::compose_on_this_thread`])
/// goes along.
pub fn on_pool_worker<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    let composed = sparsevd::ops::composed_on_this_thread();
    rayon::scope(|_| {
        let _composed = composed.then(sparsevd::ops::compose_on_this_thread);
        work()
    })
}
