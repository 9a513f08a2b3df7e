//! One split (train or test) of an image classification data set, in memory.

/// Images as consecutive rows of preprocessed floats, each image channel-major (C×H×W), and
/// one label per image.
#[derive(Debug, Clone)]
pub struct Split {
    pub images: Vec<f32>,
    pub labels: Vec<u8>,
    /// [channels, height, width] of every image.
    pub image_shape: [usize; 3],
}

impl Split {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Floats per image.
    pub fn image_len(&self) -> usize {
        self.image_shape.iter().product()
    }

    /// The first `n` examples (all of them if `n` is larger).
    pub fn truncated(mut self, n: usize) -> Self {
        let n = n.min(self.len());
        self.labels.truncate(n);
        self.images.truncate(n * self.image_len());
        self
    }
}
