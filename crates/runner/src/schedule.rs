//! Per-epoch learning rate and KL weight β.

use crate::spec::{KlWarmup, LrSchedule};

/// Learning rate for `epoch` (0-based) of `epochs`.
pub fn learning_rate(schedule: &LrSchedule, base: f64, epoch: usize, epochs: usize) -> f64 {
    match *schedule {
        LrSchedule::ConstantThenLinear { decay_start_epoch } => {
            if epoch < decay_start_epoch {
                base
            } else {
                let span = (epochs - decay_start_epoch) as f64;
                base * (1.0 - (epoch - decay_start_epoch) as f64 / span)
            }
        }
    }
}

/// KL weight β for `epoch` (0-based): 0 for `zero_epochs`, then (epoch − zero) / ramp, then 1.
pub fn kl_weight(warmup: &KlWarmup, epoch: usize) -> f64 {
    if epoch < warmup.zero_epochs {
        0.0
    } else if warmup.ramp_epochs == 0 {
        1.0
    } else {
        ((epoch - warmup.zero_epochs) as f64 / warmup.ramp_epochs as f64).min(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_kl_warmup() {
        let w = KlWarmup {
            zero_epochs: 5,
            ramp_epochs: 15,
        };
        assert_eq!(kl_weight(&w, 0), 0.0);
        assert_eq!(kl_weight(&w, 4), 0.0);
        assert_eq!(kl_weight(&w, 5), 0.0);
        assert!((kl_weight(&w, 6) - 1.0 / 15.0).abs() < 1e-12);
        assert!((kl_weight(&w, 19) - 14.0 / 15.0).abs() < 1e-12);
        assert_eq!(kl_weight(&w, 20), 1.0);
        assert_eq!(kl_weight(&w, 199), 1.0);
    }

    #[test]
    fn lenet300_schedule_is_constant_then_linear_to_zero() {
        let s = LrSchedule::ConstantThenLinear {
            decay_start_epoch: 100,
        };
        assert_eq!(learning_rate(&s, 1e-3, 0, 200), 1e-3);
        assert_eq!(learning_rate(&s, 1e-3, 99, 200), 1e-3);
        assert_eq!(learning_rate(&s, 1e-3, 100, 200), 1e-3);
        assert!((learning_rate(&s, 1e-3, 150, 200) - 5e-4).abs() < 1e-15);
        assert!((learning_rate(&s, 1e-3, 199, 200) - 1e-5).abs() < 1e-15);
    }

    #[test]
    fn lenet5_schedule_is_linear_from_the_start() {
        let s = LrSchedule::ConstantThenLinear {
            decay_start_epoch: 0,
        };
        assert_eq!(learning_rate(&s, 1e-3, 0, 200), 1e-3);
        assert!((learning_rate(&s, 1e-3, 100, 200) - 5e-4).abs() < 1e-15);
    }
}
