//! Pruning of dead units: Sparse VD removes whole units when it removes all their outgoing
//! weights, and a sparse net need not compute what no logit reads.

use crate::net::{SparseNet, SparseOp};

impl SparseNet {
    /// The net without the units whose values reach no logit: convolution channels and dense
    /// units that no kept weight of a later layer reads (Sparse VD removes whole units when it
    /// removes all their outgoing weights). A unit with no kept incoming weights but read later
    /// stays: it passes on its bias. What remains computes exactly what it computed before.
    pub(crate) fn without_dead_units(mut self) -> Self {
        let shapes = self.shapes().expect("checked before");
        // The channels of each op's output that later ops read, found from the logits back.
        let inputs: Vec<[usize; 3]> = std::iter::once(self.input).chain(shapes.clone()).collect();
        let mut needed = vec![Vec::new(); self.ops.len()];
        let mut read = vec![true; shapes.last().map_or(0, |s| s[0])];
        for (i, op) in self.ops.iter().enumerate().rev() {
            let [_, h, w] = inputs[i];
            needed[i] = read;
            read = match op {
                SparseOp::Conv(conv) => conv.inputs_read(&needed[i]),
                SparseOp::Dense(dense) => dense.inputs_read(&needed[i], h * w),
                SparseOp::Relu | SparseOp::ReluMaxPool => needed[i].clone(),
            };
        }
        // The image's channels are all given, read or not.
        let mut kept_in = vec![true; self.input[0]];
        for ((op, kept_out), [_, h, w]) in self.ops.iter_mut().zip(needed).zip(inputs) {
            match op {
                SparseOp::Conv(conv) => *conv = conv.restricted(&kept_in, &kept_out),
                SparseOp::Dense(dense) => *dense = dense.restricted(&kept_in, h * w, &kept_out),
                SparseOp::Relu | SparseOp::ReluMaxPool => {}
            }
            kept_in = kept_out;
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_views::{mlp, view};

    #[test]
    fn units_that_reach_no_logit_are_removed() {
        // Hidden units: h₀ = x₀ − x₁, h₁ = bias 1 only (no kept input, read by the output),
        // h₂ = x₁ (its outgoing weight removed: log α ≥ 3). Logits: (h₀ + 0.5·h₁, −h₀ + h₁).
        let first = view(
            vec![1., 0., 0., -1., 0., 1.],
            vec![0.; 6],
            &[2, 3],
            vec![0., 1., 0.],
        );
        let mut second = view(
            vec![1., -1., 0.5, 1., 7., 7.],
            vec![0., 0., 0., 0., 5., 5.],
            &[3, 2],
            vec![0., 0.],
        );
        second.name = "e".into();
        let net = mlp(&[first, second], 3.0).unwrap();
        let [
            SparseOp::Dense(hidden),
            SparseOp::Relu,
            SparseOp::Dense(output),
        ] = &net.ops[..]
        else {
            panic!("{:?}", net.ops);
        };
        assert_eq!((hidden.d_out, hidden.bias.clone()), (2, vec![0., 1.]));
        assert_eq!((output.d_in, output.inputs.clone()), (2, vec![0, 1, 0, 1]));
        // (x₀, x₁) = (1, 3): h = (0, 1) → logits (0.5, 1) → class 1; (3, 1): h = (2, 1) → (2.5, −1).
        assert_eq!(net.predict(&[1., 3., 3., 1.], 1), vec![1, 0]);
    }
}
