//! Error rates and compression: plain arithmetic over predictions and weight masks, with no
//! knowledge of models or tensors.

/// How many weights one layer has and how many of them survive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerCount {
    pub total: usize,
    pub kept: usize,
}

impl LayerCount {
    /// Count a mask (true = weight kept).
    pub fn from_mask(kept: &[bool]) -> Self {
        Self {
            total: kept.len(),
            kept: kept.iter().filter(|&&k| k).count(),
        }
    }

    /// Percentage of this layer's weights removed.
    pub fn removed_pct(&self) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        100.0 * (self.total - self.kept) as f64 / self.total as f64
    }
}

/// Compression = |W| / |W ≠ 0| over all weight layers (biases are not weights here).
/// Infinite when every weight is removed.
pub fn compression_ratio(layers: &[LayerCount]) -> f64 {
    let total: usize = layers.iter().map(|l| l.total).sum();
    let kept: usize = layers.iter().map(|l| l.kept).sum();
    if kept == 0 {
        return f64::INFINITY;
    }
    total as f64 / kept as f64
}

/// Percentage of all weights removed.
pub fn removed_pct(layers: &[LayerCount]) -> f64 {
    let total: usize = layers.iter().map(|l| l.total).sum();
    let kept: usize = layers.iter().map(|l| l.kept).sum();
    LayerCount { total, kept }.removed_pct()
}

/// Percentage of predictions that differ from the labels.
pub fn error_pct(predictions: &[u8], labels: &[u8]) -> f64 {
    assert_eq!(predictions.len(), labels.len(), "one prediction per label");
    if labels.is_empty() {
        return 0.0;
    }
    let wrong = predictions
        .iter()
        .zip(labels)
        .filter(|(p, l)| p != l)
        .count();
    100.0 * wrong as f64 / labels.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_a_hand_made_mask() {
        let mask = [true, false, false, true, false];
        let c = LayerCount::from_mask(&mask);
        assert_eq!(c, LayerCount { total: 5, kept: 2 });
        assert!((c.removed_pct() - 60.0).abs() < 1e-12);
    }

    #[test]
    fn compression_over_layers_of_different_sizes() {
        // 100 + 10 weights, 5 + 5 kept: 110 / 10 = 11×, while the per-layer ratios are 20× and 2×.
        let layers = [
            LayerCount {
                total: 100,
                kept: 5,
            },
            LayerCount { total: 10, kept: 5 },
        ];
        assert!((compression_ratio(&layers) - 11.0).abs() < 1e-12);
        assert!((removed_pct(&layers) - 100.0 * 100.0 / 110.0).abs() < 1e-12);
    }

    #[test]
    fn lenet300_counts_match_the_paper_architecture() {
        let widths = [784usize, 300, 100, 10];
        let total: usize = widths.windows(2).map(|w| w[0] * w[1]).sum();
        assert_eq!(total, 266_200);
        let dense = [LayerCount { total, kept: total }];
        assert_eq!(compression_ratio(&dense), 1.0);
    }

    #[test]
    fn everything_removed_is_infinite_compression() {
        assert!(compression_ratio(&[LayerCount { total: 3, kept: 0 }]).is_infinite());
    }

    #[test]
    fn error_rate() {
        assert!((error_pct(&[1, 2, 3, 4], &[1, 2, 0, 0]) - 50.0).abs() < 1e-12);
    }
}
