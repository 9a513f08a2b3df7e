//! Progress display for long runs: a bar per epoch on a terminal, one line per epoch always
//! (so that a log file of a background run shows progress too).

use crate::train::EpochRecord;
use indicatif::{ProgressBar, ProgressStyle};
use std::cell::Cell;

pub struct EpochBar {
    bar: ProgressBar,
    epochs: usize,
    /// The last mean loss read.
    loss: Cell<f64>,
}

impl EpochBar {
    pub fn new(epochs: usize, steps_per_epoch: usize) -> Self {
        let bar = ProgressBar::new(steps_per_epoch as u64).with_style(
            ProgressStyle::with_template(
                "{prefix} {bar:30} {pos}/{len} steps {msg} [{elapsed}<{eta}]",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Self {
            bar,
            epochs,
            loss: Cell::new(f64::NAN),
        }
    }

    pub fn start_epoch(&self, epoch: usize) {
        self.bar.reset();
        self.bar
            .set_prefix(format!("epoch {}/{}", epoch + 1, self.epochs));
    }

    /// One step done; `mean_loss` is the epoch's mean loss so far when it was read at this step.
    pub fn step(&self, mean_loss: Option<f64>) {
        if let Some(loss) = mean_loss {
            self.loss.set(loss);
        }
        self.bar.inc(1);
        if self.bar.position().is_multiple_of(20) {
            self.bar.set_message(format!(
                "loss {:.4}  {:.1} steps/s",
                self.loss.get(),
                self.bar.per_sec()
            ));
        }
    }

    pub fn finish_epoch(&self, r: &EpochRecord) {
        let layers: Vec<String> = r
            .removed_pct_per_layer
            .iter()
            .map(|p| format!("{p:.1}"))
            .collect();
        // A net without variational layers (plain, binary dropout) has no KL term to weigh.
        let kl = if r.kl == 0.0 {
            String::new()
        } else {
            format!("  β {:.3}  KL {:.1}", r.beta, r.kl)
        };
        let line = format!(
            "epoch {:>3}/{}  lr {:.2e}{kl}  loss {:.4}  CE {:.4}  test error {:.2}%  compression {:.1}×  removed % [{}]  {:.1}s  {}",
            r.epoch,
            self.epochs,
            r.lr,
            r.train_loss,
            r.data_term,
            r.test_error_pct,
            r.compression,
            layers.join(", "),
            r.seconds,
            r.steps_per_second
                .map_or(String::new(), |s| format!("{s:.1} steps/s")),
        );
        // A hidden bar (output is not a terminal, e.g. a log file) drops println: print directly.
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
