//! ZCA whitening: x ↦ W·(x − μ) with W = U·diag(1/√(λ + ε))·Uᵀ, where C = U·diag(λ)·Uᵀ is the
//! covariance of the training images (pixels / 255) and ε the regulariser. Fitted in f64 (the
//! smallest eigenvalues of CIFAR-10's covariance are near ε, below f32's resolution of C), once
//! per data folder and regulariser, and cached there.

use crate::DataError;
use faer::{Mat, Side};
use std::path::{Path, PathBuf};

/// File header: magic, then dimension (u32 LE) and regulariser (f64 LE).
const MAGIC: &[u8; 4] = b"ZCA1";
const HEADER: usize = 4 + 4 + 8;
/// Images per block when accumulating the covariance and when whitening.
const BLOCK: usize = 2048;

/// A fitted whitening: mean μ and matrix W (row-major, `dim` × `dim`).
#[derive(Debug, Clone, PartialEq)]
pub struct Zca {
    pub dim: usize,
    pub mean: Vec<f32>,
    pub matrix: Vec<f32>,
}

impl Zca {
    /// Fit on `pixels` (images of `dim` bytes each, scaled by 1/255).
    pub fn fit(pixels: &[u8], dim: usize, regulariser: f64) -> Self {
        let count = pixels.len() / dim;
        let mut mean = vec![0f64; dim];
        for image in pixels.chunks_exact(dim) {
            for (m, &p) in mean.iter_mut().zip(image) {
                *m += p as f64 / 255.0;
            }
        }
        mean.iter_mut().for_each(|m| *m /= count as f64);
        let mut covariance = Mat::<f64>::zeros(dim, dim);
        for block in pixels.chunks(BLOCK * dim) {
            let rows = block.len() / dim;
            let centred = Mat::<f64>::from_fn(rows, dim, |i, j| {
                block[i * dim + j] as f64 / 255.0 - mean[j]
            });
            covariance += centred.transpose() * &centred;
        }
        covariance *= faer::Scale(1.0 / count as f64);
        let eigen = covariance
            .self_adjoint_eigen(Side::Lower)
            .expect("a covariance matrix is symmetric and finite");
        let (u, s) = (eigen.U(), eigen.S().column_vector());
        let scaled = Mat::<f64>::from_fn(dim, dim, |i, k| u[(i, k)] / (s[k] + regulariser).sqrt());
        let w = &scaled * u.transpose();
        Self {
            dim,
            mean: mean.iter().map(|&m| m as f32).collect(),
            matrix: (0..dim * dim)
                .map(|k| w[(k / dim, k % dim)] as f32)
                .collect(),
        }
    }

    /// The whitening cached in `dir` for `regulariser`, or a new fit on `pixels`, then cached.
    pub fn cached(
        dir: &Path,
        pixels: &[u8],
        dim: usize,
        regulariser: f64,
    ) -> Result<Self, DataError> {
        let path = cache_path(dir, regulariser);
        if let Ok(bytes) = std::fs::read(&path) {
            match Self::from_bytes(&bytes, dim, regulariser) {
                Some(zca) => return Ok(zca),
                None => eprintln!("{}: unreadable, fitting ZCA again", path.display()),
            }
        }
        eprintln!(
            "fitting ZCA whitening on {} training images (once; cached in {})",
            pixels.len() / dim,
            path.display()
        );
        let zca = Self::fit(pixels, dim, regulariser);
        let tmp = path.with_extension(format!("partial-{}", std::process::id()));
        let io = |source| DataError::Io {
            path: path.clone(),
            source,
        };
        std::fs::write(&tmp, zca.to_bytes(regulariser)).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        Ok(zca)
    }

    /// Whitened images (pixels / 255, then W·(x − μ)), as f32 rows.
    pub fn apply(&self, pixels: &[u8]) -> Vec<f32> {
        let d = self.dim;
        let w = Mat::<f32>::from_fn(d, d, |i, j| self.matrix[i * d + j]);
        let mut out = Vec::with_capacity(pixels.len());
        for block in pixels.chunks(BLOCK * d) {
            let rows = block.len() / d;
            let centred = Mat::<f32>::from_fn(rows, d, |i, j| {
                block[i * d + j] as f32 / 255.0 - self.mean[j]
            });
            // Rows are images: (W·xᵀ)ᵀ = x·Wᵀ.
            let white = &centred * w.transpose();
            for i in 0..rows {
                out.extend((0..d).map(|j| white[(i, j)]));
            }
        }
        out
    }

    fn to_bytes(&self, regulariser: f64) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(HEADER + 4 * (self.dim + self.matrix.len()));
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&(self.dim as u32).to_le_bytes());
        bytes.extend_from_slice(&regulariser.to_le_bytes());
        for v in self.mean.iter().chain(&self.matrix) {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        bytes
    }

    /// `None` unless `bytes` is a whole cache file for this dimension and regulariser.
    fn from_bytes(bytes: &[u8], dim: usize, regulariser: f64) -> Option<Self> {
        let header_ok = bytes.len() == HEADER + 4 * (dim + dim * dim)
            && &bytes[..4] == MAGIC
            && bytes[4..8] == (dim as u32).to_le_bytes()
            && bytes[8..16] == regulariser.to_le_bytes();
        if !header_ok {
            return None;
        }
        let mut floats = bytes[HEADER..]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        let mean: Vec<f32> = floats.by_ref().take(dim).collect();
        let matrix: Vec<f32> = floats.collect();
        Some(Self { dim, mean, matrix })
    }
}

fn cache_path(dir: &Path, regulariser: f64) -> PathBuf {
    dir.join(format!("zca-{regulariser:e}.bin"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Correlated 3-pixel "images": pixel 1 follows pixel 0, pixel 2 is independent.
    fn correlated_pixels(count: usize) -> Vec<u8> {
        let mut state = 12345u64;
        let mut next = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u32
        };
        (0..count)
            .flat_map(|_| {
                let a = (next() % 200) as u8;
                let noise = (next() % 40) as u8;
                [a, a / 2 + noise, (next() % 256) as u8]
            })
            .collect()
    }

    #[test]
    fn whitened_training_data_has_identity_covariance() {
        let pixels = correlated_pixels(20_000);
        let zca = Zca::fit(&pixels, 3, 1e-5);
        let white = zca.apply(&pixels);
        let n = (white.len() / 3) as f64;
        for a in 0..3 {
            for b in 0..3 {
                let cov: f64 = white
                    .chunks_exact(3)
                    .map(|x| x[a] as f64 * x[b] as f64)
                    .sum::<f64>()
                    / n;
                let want = if a == b { 1.0 } else { 0.0 };
                assert!((cov - want).abs() < 1e-2, "cov[{a}][{b}] = {cov}");
            }
        }
        // ZCA (unlike PCA whitening) is symmetric: W = Wᵀ.
        for a in 0..3 {
            for b in 0..3 {
                let (x, y) = (zca.matrix[a * 3 + b], zca.matrix[b * 3 + a]);
                assert!((x - y).abs() <= 1e-4 * x.abs().max(1.0));
            }
        }
    }

    #[test]
    fn cache_round_trips_and_rejects_other_settings() {
        let pixels = correlated_pixels(500);
        let zca = Zca::fit(&pixels, 3, 1e-5);
        let bytes = zca.to_bytes(1e-5);
        assert_eq!(Zca::from_bytes(&bytes, 3, 1e-5), Some(zca));
        assert_eq!(Zca::from_bytes(&bytes, 3, 1e-3), None);
        assert_eq!(Zca::from_bytes(&bytes[..bytes.len() - 1], 3, 1e-5), None);
        assert_eq!(Zca::from_bytes(&bytes, 4, 1e-5), None);
    }
}
