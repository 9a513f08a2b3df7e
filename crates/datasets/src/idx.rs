//! The IDX file format of MNIST: a big-endian header (magic, dimension sizes) followed by
//! unsigned bytes. Parsing never panics: every malformed input is an [`IdxError`].

/// What is wrong with an IDX file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdxError {
    #[error("file is {len} bytes, too short for an IDX header of {needed} bytes")]
    TruncatedHeader { len: usize, needed: usize },
    #[error(
        "magic number {found:#010x}, expected {expected:#010x} (unsigned-byte IDX of rank {rank})"
    )]
    BadMagic { found: u32, expected: u32, rank: u8 },
    #[error("header announces {expected} data bytes but the file holds {found}")]
    WrongLength { expected: usize, found: usize },
}

/// A parsed IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// Size of each dimension, outermost first.
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// The unsigned-byte IDX file of an array of `dims` holding `data` (the inverse of
/// [`parse_idx`]).
pub fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        bytes.extend(d.to_be_bytes());
    }
    bytes.extend(data);
    bytes
}

/// Parse an unsigned-byte IDX file of the given rank (1 for labels, 3 for images).
pub fn parse_idx(bytes: &[u8], rank: u8) -> Result<IdxArray, IdxError> {
    let header_len = 4 + 4 * rank as usize;
    if bytes.len() < header_len {
        return Err(IdxError::TruncatedHeader {
            len: bytes.len(),
            needed: header_len,
        });
    }
    let word = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    // 0x08 = unsigned byte element type; the last byte is the rank.
    let expected = 0x0000_0800 | rank as u32;
    let found = word(0);
    if found != expected {
        return Err(IdxError::BadMagic {
            found,
            expected,
            rank,
        });
    }
    let dims: Vec<usize> = (0..rank as usize)
        .map(|d| word(4 + 4 * d) as usize)
        .collect();
    let payload = &bytes[header_len..];
    let expected_len = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .unwrap_or(usize::MAX);
    if payload.len() != expected_len {
        return Err(IdxError::WrongLength {
            expected: expected_len,
            found: payload.len(),
        });
    }
    Ok(IdxArray {
        dims,
        data: payload.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels_file(labels: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0, 0, 8, 1];
        bytes.extend_from_slice(&(labels.len() as u32).to_be_bytes());
        bytes.extend_from_slice(labels);
        bytes
    }

    #[test]
    fn parses_a_good_label_file() {
        let parsed = parse_idx(&labels_file(&[3, 1, 4]), 1).unwrap();
        assert_eq!(parsed.dims, vec![3]);
        assert_eq!(parsed.data, vec![3, 1, 4]);
    }

    #[test]
    fn parses_a_good_image_file() {
        let mut bytes = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3];
        bytes.extend(0..12u8);
        let parsed = parse_idx(&bytes, 3).unwrap();
        assert_eq!(parsed.dims, vec![2, 2, 3]);
        assert_eq!(parsed.data.len(), 12);
    }

    #[test]
    fn rejects_truncated_header() {
        assert_eq!(
            parse_idx(&[0, 0, 8], 1),
            Err(IdxError::TruncatedHeader { len: 3, needed: 8 })
        );
    }

    #[test]
    fn rejects_wrong_magic() {
        let mut bytes = labels_file(&[1]);
        bytes[3] = 3;
        assert!(matches!(
            parse_idx(&bytes, 1),
            Err(IdxError::BadMagic { .. })
        ));
    }

    #[test]
    fn rejects_truncated_payload_and_trailing_bytes() {
        let mut bytes = labels_file(&[1, 2, 3]);
        bytes.pop();
        assert_eq!(
            parse_idx(&bytes, 1),
            Err(IdxError::WrongLength {
                expected: 3,
                found: 2
            })
        );
        let mut bytes = labels_file(&[1, 2, 3]);
        bytes.push(9);
        assert!(matches!(
            parse_idx(&bytes, 1),
            Err(IdxError::WrongLength { .. })
        ));
    }

    /// Parsing never panics, and whatever it accepts is self-consistent (see `crate::fuzz`).
    #[test]
    fn fuzzed_inputs_never_panic_and_accepted_ones_are_consistent() {
        let mut image = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 3];
        image.extend(0..18u8);
        let seeds = [labels_file(&[1, 2, 3, 4, 5]), image];
        let seen = crate::fuzz::campaign("idx", &seeds, 200_000, |bytes| {
            // Labels files are rank 1, image files rank 3; try both on every input.
            let mut kinds = Vec::new();
            for rank in [1, 3] {
                let result = parse_idx(bytes, rank);
                if let Ok(parsed) = &result {
                    assert_eq!(parsed.dims.len(), rank as usize);
                    assert_eq!(parsed.dims.iter().product::<usize>(), parsed.data.len());
                }
                kinds.push(crate::fuzz::outcome(&result));
            }
            kinds.join("+")
        });
        let accepted: usize = seen
            .iter()
            .filter(|(k, _)| k.contains("ok"))
            .map(|(_, n)| n)
            .sum();
        assert!(
            accepted > 1000,
            "mutations should keep some inputs valid: {seen:?}"
        );
    }

    #[test]
    fn rejects_overflowing_dimensions() {
        let bytes = vec![
            0, 0, 8, 3, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
        ];
        assert!(matches!(
            parse_idx(&bytes, 3),
            Err(IdxError::WrongLength { .. })
        ));
    }
}
