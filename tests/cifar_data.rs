//! Real CIFAR-10, fetched into the data cache (README, "Data") and verified by md5: the counts,
//! labels and per-channel statistics of the genuine set.

use datasets::cifar::{CLASSES, IMAGE_BYTES, channel_moments};
use datasets::{Cifar10, Preprocessing};

#[test]
fn cifar10_is_the_genuine_data_set() {
    let dir = datasets::data_dir(None);
    let (train, test) = Cifar10::load_raw(&dir).expect("CIFAR-10 (see README, Data)");
    assert_eq!(train.labels.len(), 50_000);
    assert_eq!(test.labels.len(), 10_000);
    assert_eq!(train.pixels.len(), 50_000 * IMAGE_BYTES);
    assert_eq!(train.labels[..10], [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]);
    for class in 0..CLASSES as u8 {
        assert_eq!(train.labels.iter().filter(|&&l| l == class).count(), 5_000);
        assert_eq!(test.labels.iter().filter(|&&l| l == class).count(), 1_000);
    }
    let (mean, std) = channel_moments(&train.pixels);
    for (got, want) in mean.iter().zip([0.4914, 0.4822, 0.4465]) {
        assert!((got - want).abs() < 1e-4, "channel mean {got} vs {want}");
    }
    for (got, want) in std.iter().zip([0.2470, 0.2435, 0.2616]) {
        assert!((got - want).abs() < 1e-4, "channel std {got} vs {want}");
    }

    let data = Cifar10::load(&dir, Preprocessing::PerChannel).expect("preprocessed");
    assert_eq!(data.train.image_shape, [3, 32, 32]);
    assert_eq!(data.test.images.len(), 10_000 * IMAGE_BYTES);
}
