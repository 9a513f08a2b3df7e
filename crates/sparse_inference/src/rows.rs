//! The storage both sparse layers share: entries grouped in rows, one row per output unit or
//! channel, and the row operations that dead-unit pruning needs.

/// Entries grouped in rows, as both sparse layers store them: row `j` (an output unit or
/// channel) holds the entries `start[j]..start[j + 1]` of `index` and `values`, and has bias
/// `bias[j]`. An entry's index lies in input group `index / group_len` (an input channel).
pub(crate) struct Rows<'a> {
    pub(crate) start: &'a [u32],
    pub(crate) index: &'a [u32],
    pub(crate) values: &'a [f32],
    pub(crate) bias: &'a [f32],
}

impl Rows<'_> {
    pub(crate) fn entries(&self, j: usize) -> std::ops::Range<usize> {
        self.start[j] as usize..self.start[j + 1] as usize
    }

    /// Which of the `groups` input groups the entries of the `needed` rows read.
    pub(crate) fn groups_read(
        &self,
        needed: &[bool],
        group_len: usize,
        groups: usize,
    ) -> Vec<bool> {
        let mut read = vec![false; groups];
        for j in (0..self.bias.len()).filter(|&j| needed[j]) {
            for &i in &self.index[self.entries(j)] {
                read[i as usize / group_len] = true;
            }
        }
        read
    }

    /// Only the rows in `kept_out`, on inputs that keep only the groups in `kept_in` (which
    /// must hold every group read): each entry's group moves to its place among the kept ones.
    pub(crate) fn kept(&self, kept_in: &[bool], group_len: usize, kept_out: &[bool]) -> KeptRows {
        let mut next = 0..;
        let group: Vec<Option<usize>> = kept_in
            .iter()
            .map(|&k| k.then(|| next.next().expect("unbounded")))
            .collect();
        let mut rows = KeptRows {
            start: vec![0],
            index: Vec::new(),
            values: Vec::new(),
            bias: Vec::new(),
        };
        for j in (0..self.bias.len()).filter(|&j| kept_out[j]) {
            for k in self.entries(j) {
                let (g, within) = (
                    self.index[k] as usize / group_len,
                    self.index[k] as usize % group_len,
                );
                let g = group[g].expect("kept_in holds every group read");
                rows.index.push((g * group_len + within) as u32);
                rows.values.push(self.values[k]);
            }
            rows.start.push(rows.index.len() as u32);
            rows.bias.push(self.bias[j]);
        }
        rows
    }
}

/// The rows [`Rows::kept`] returns, in the same layout.
pub(crate) struct KeptRows {
    pub(crate) start: Vec<u32>,
    pub(crate) index: Vec<u32>,
    pub(crate) values: Vec<f32>,
    pub(crate) bias: Vec<f32>,
}
