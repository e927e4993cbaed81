//! Minimum-cost assignment on a dense rectangular matrix (scipy
//! `optimize.linear_sum_assignment`): the Hungarian method with potentials, O(n² m) for
//! n = min(rows, cols). Every row (or every column, whichever are fewer) gets a partner.

/// Pairs (row, column) of a minimum-cost assignment of `cost` (`rows x cols`, row-major).
/// Costs must be finite. Among equal-cost optima the one returned may differ from scipy's.
pub(crate) fn linear_sum_assignment(cost: &[f64], rows: usize, cols: usize) -> Vec<(usize, usize)> {
    if rows == 0 || cols == 0 {
        return Vec::new();
    }
    debug_assert_eq!(cost.len(), rows * cols);
    // the method needs at most as many rows as columns; transpose otherwise
    let transposed = rows > cols;
    let (n, m) = if transposed { (cols, rows) } else { (rows, cols) };
    let a = |i: usize, j: usize| if transposed { cost[j * cols + i] } else { cost[i * cols + j] };

    // 1-based: index 0 is the virtual row/column the augmenting path starts from
    let mut u = vec![0f64; n + 1];
    let mut v = vec![0f64; m + 1];
    let mut p = vec![0usize; m + 1]; // p[j]: row matched to column j
    let mut way = vec![0usize; m + 1];
    for i in 1..=n {
        p[0] = i;
        let mut j0 = 0usize;
        let mut minv = vec![f64::INFINITY; m + 1];
        let mut used = vec![false; m + 1];
        loop {
            used[j0] = true;
            let i0 = p[j0];
            let mut delta = f64::INFINITY;
            let mut j1 = 0usize;
            for j in 1..=m {
                if used[j] {
                    continue;
                }
                let cur = a(i0 - 1, j - 1) - u[i0] - v[j];
                if cur < minv[j] {
                    minv[j] = cur;
                    way[j] = j0;
                }
                if minv[j] < delta {
                    delta = minv[j];
                    j1 = j;
                }
            }
            if j1 == 0 {
                // only with non-finite costs; leave this row unmatched rather than loop
                break;
            }
            for j in 0..=m {
                if used[j] {
                    u[p[j]] += delta;
                    v[j] -= delta;
                } else {
                    minv[j] -= delta;
                }
            }
            j0 = j1;
            if p[j0] == 0 {
                break;
            }
        }
        // augment along the path back to the virtual column
        while j0 != 0 {
            let j1 = way[j0];
            p[j0] = p[j1];
            j0 = j1;
        }
    }
    let mut pairs: Vec<(usize, usize)> = (1..=m)
        .filter(|&j| p[j] != 0)
        .map(|j| if transposed { (j - 1, p[j] - 1) } else { (p[j] - 1, j - 1) })
        .collect();
    pairs.sort_unstable();
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn total(cost: &[f64], cols: usize, pairs: &[(usize, usize)]) -> f64 {
        pairs.iter().map(|&(i, j)| cost[i * cols + j]).sum()
    }

    /// Minimum over all assignments of min(rows, cols) pairs, by exhaustive search.
    fn brute(cost: &[f64], rows: usize, cols: usize) -> f64 {
        fn go(cost: &[f64], rows: usize, cols: usize, i: usize, used: &mut Vec<bool>, left: usize) -> f64 {
            if left == 0 || i == rows {
                return if left == 0 { 0.0 } else { f64::INFINITY };
            }
            // skip row i (allowed while enough rows remain)
            let mut best =
                if rows - i > left { go(cost, rows, cols, i + 1, used, left) } else { f64::INFINITY };
            for j in 0..cols {
                if !used[j] {
                    used[j] = true;
                    best = best.min(cost[i * cols + j] + go(cost, rows, cols, i + 1, used, left - 1));
                    used[j] = false;
                }
            }
            best
        }
        go(cost, rows, cols, 0, &mut vec![false; cols], rows.min(cols))
    }

    #[test]
    fn finds_the_optimum_on_random_rectangles() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for _ in 0..300 {
            let rows = rng.gen_range(1..6);
            let cols = rng.gen_range(1..6);
            // integer-valued costs with many ties, like thresholded IoUs
            let cost: Vec<f64> = (0..rows * cols).map(|_| -(rng.gen_range(0..4) as f64) / 3.0).collect();
            let pairs = linear_sum_assignment(&cost, rows, cols);
            assert_eq!(pairs.len(), rows.min(cols));
            let mut seen_r = vec![false; rows];
            let mut seen_c = vec![false; cols];
            for &(i, j) in &pairs {
                assert!(!seen_r[i] && !seen_c[j], "one partner each");
                seen_r[i] = true;
                seen_c[j] = true;
            }
            let best = brute(&cost, rows, cols);
            assert!((total(&cost, cols, &pairs) - best).abs() < 1e-9, "{rows}x{cols}: {cost:?}");
        }
    }

    #[test]
    fn empty_is_empty() {
        assert!(linear_sum_assignment(&[], 0, 3).is_empty());
    }
}
