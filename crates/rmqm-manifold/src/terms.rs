//! The per-image terms of both conventions.

/// Terms of one image under the paper's printed equations (2)-(4).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PaperTerms {
    /// (1/J) sum_{j=1..J} d0_j.
    pub d: f64,
    /// (1/J) sum_{j=1..J} |d0_j - d0_{j-1}| / d0_j, with d0_0 = 0.
    pub d_rc: f64,
    /// (1/J) sum_{j=2..J} |dp_j - dp_{j-1}| / dp_j.
    pub p_rc: f64,
    /// D_RC terms that were 0/0 (counted as 0).
    pub d_rc_zero_over_zero: u32,
    /// D_RC terms x/0 with x > 0 (left out of the sum, which is still divided by J).
    pub d_rc_left_out: u32,
    /// P_RC terms that were 0/0.
    pub p_rc_zero_over_zero: u32,
    /// P_RC terms x/0 with x > 0, left out.
    pub p_rc_left_out: u32,
}

/// Terms of one image as the authors' public code computes them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReferenceTerms {
    /// mean_{j=1..J} d0_j.
    pub mean_d0: f64,
    /// mean_{j=1..J} dp_j.
    pub mean_dp: f64,
    /// mean_{j=2..J} |d0_j / d0_{j-1} - 1|; `None` when any term is infinite or NaN (image dropped).
    pub spike_orig: Option<f64>,
    /// mean_{j=2..J} |dp_j / dp_{j-1} - 1|; `None` when dropped.
    pub spike_prev: Option<f64>,
}

/// Everything measured on one image's trajectory.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageTerms {
    /// The image's id.
    pub image_id: u32,
    /// The image's label.
    pub label: i32,
    /// d0_j for j = 0..=J (d0_0 = 0).
    pub d0: Vec<f64>,
    /// dp_j for j = 0..=J (dp_0 = 0 by convention; undefined).
    pub dp: Vec<f64>,
    /// Paper convention.
    pub paper: PaperTerms,
    /// Reference convention.
    pub reference: ReferenceTerms,
}

/// The relative change |a - b| / a with the zero-denominator rule: 0/0 = 0, x/0 = None (left out).
fn relative_change(a: f64, b: f64) -> Result<f64, ()> {
    let num = (a - b).abs();
    if a > 0.0 {
        Ok(num / a)
    } else if num == 0.0 {
        Ok(0.0)
    } else {
        Err(())
    }
}

/// Each step's distances, j = 0..=J (both 0 at j = 0).
pub(crate) struct Distances {
    /// d0_j = |e_j - e_0|, between L2-normalised embeddings.
    pub(crate) d0: Vec<f64>,
    /// dp_j = |e_j - e_(j-1)|.
    pub(crate) dp: Vec<f64>,
}

/// The distances of the `rows` (`dim` values each) once normalised: in AVX-512 lanes where the
/// build has them, else in generic blocks; the same values bit for bit either way.
fn distances(rows: &[f32], dim: usize) -> Distances {
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx512f",
        target_feature = "avx512vl"
    ))]
    return super::terms_lanes::distances(rows, dim);
    #[cfg(not(all(
        target_arch = "x86_64",
        target_feature = "avx512f",
        target_feature = "avx512vl"
    )))]
    blocks::distances_in_blocks(rows, dim)
}

/// The generic path: eight rows side by side in plain Rust (what builds without AVX-512 run, and
/// what the tests compare the lanes with).
mod blocks {
    #![cfg_attr(
        all(
            target_arch = "x86_64",
            target_feature = "avx512f",
            target_feature = "avx512vl",
            not(test)
        ),
        allow(dead_code)
    )]
    use super::Distances;

    /// Rows measured side by side, one to a SIMD lane: the sums of different rows advance together, so
    /// their dependent adds overlap instead of each waiting on the previous one. Every sum keeps its own
    /// order (element 0 first, from zero), so the results equal summing each row alone.
    const LANES: usize = 8;

    /// One element of `LANES` consecutive rows.
    type Lanes = [f64; LANES];

    /// A trajectory's rows normalised to unit length (a zero row stays zero: it has no direction), in
    /// blocks of `LANES` rows stored element-major: element `i` of block `b` holds element `i` of rows
    /// `LANES * b ..` in its lanes, zeros past the last row.
    fn normalised_blocks(rows: &[f32], dim: usize) -> Vec<Lanes> {
        let n = rows.len() / dim;
        let mut blocks = vec![[0.0; LANES]; n.div_ceil(LANES) * dim];
        for (b, block) in blocks.chunks_exact_mut(dim).enumerate() {
            let first = b * LANES;
            let row = |k: usize| &rows[(first + k) * dim..(first + k + 1) * dim];
            if n - first >= LANES {
                // A whole block: each element gathers its lanes from the rows at once.
                let block_rows: [&[f32]; LANES] = std::array::from_fn(row);
                for (i, element) in block.iter_mut().enumerate() {
                    *element = block_rows.map(|r| r[i] as f64);
                }
            } else {
                for k in 0..n - first {
                    for (element, &v) in block.iter_mut().zip(row(k)) {
                        element[k] = v as f64;
                    }
                }
            }
            let mut squares = [0.0; LANES];
            for element in block.iter() {
                for k in 0..LANES {
                    squares[k] += element[k] * element[k];
                }
            }
            let inverse_norms = squares.map(|square| {
                let norm = square.sqrt();
                if norm > 0.0 { 1.0 / norm } else { 0.0 }
            });
            for element in block.iter_mut() {
                for k in 0..LANES {
                    element[k] *= inverse_norms[k];
                }
            }
        }
        blocks
    }

    /// [`distances`] in generic code, eight rows side by side.
    pub(super) fn distances_in_blocks(rows: &[f32], dim: usize) -> Distances {
        let n = rows.len() / dim;
        let blocks = normalised_blocks(rows, dim);
        let clean = &blocks[..dim];
        let mut d0 = Vec::with_capacity(blocks.len() / dim * LANES);
        let mut dp = Vec::with_capacity(d0.capacity());
        let mut previous_block: Option<&[Lanes]> = None;
        for block in blocks.chunks_exact(dim) {
            let mut to_clean = [0.0; LANES];
            let mut to_previous = [0.0; LANES];
            for (i, (element, clean_element)) in block.iter().zip(clean).enumerate() {
                // Row r's predecessor: lane k - 1, or the previous block's last lane for k = 0.
                let before = previous_block.map_or(0.0, |p| p[i][LANES - 1]);
                let previous: Lanes =
                    std::array::from_fn(|k| if k == 0 { before } else { element[k - 1] });
                let c = clean_element[0];
                for k in 0..LANES {
                    to_clean[k] += (c - element[k]) * (c - element[k]);
                    to_previous[k] += (previous[k] - element[k]) * (previous[k] - element[k]);
                }
            }
            d0.extend(to_clean.map(f64::sqrt));
            dp.extend(to_previous.map(f64::sqrt));
            previous_block = Some(block);
        }
        d0.truncate(n);
        dp.truncate(n);
        d0[0] = 0.0;
        dp[0] = 0.0;
        Distances { d0, dp }
    }
}

/// Computes one image's terms from its J+1 raw embeddings (`rows`, step-major, `dim` each); J >= 2.
pub fn image_terms(image_id: u32, label: i32, rows: &[f32], dim: usize) -> ImageTerms {
    let n = rows.len() / dim;
    assert!(n >= 3, "a trajectory needs steps 0..J with J >= 2");
    let j_max = n - 1;
    let Distances { d0, dp } = distances(rows, dim);
    let jf = j_max as f64;

    // Paper convention.
    let d = d0[1..].iter().sum::<f64>() / jf;
    let (mut d_rc_sum, mut d_zz, mut d_lo) = (0.0, 0, 0);
    for j in 1..n {
        match relative_change(d0[j], d0[j - 1]) {
            Ok(v) => {
                if d0[j] == 0.0 {
                    d_zz += 1;
                }
                d_rc_sum += v;
            }
            Err(()) => d_lo += 1,
        }
    }
    let (mut p_rc_sum, mut p_zz, mut p_lo) = (0.0, 0, 0);
    for j in 2..n {
        match relative_change(dp[j], dp[j - 1]) {
            Ok(v) => {
                if dp[j] == 0.0 {
                    p_zz += 1;
                }
                p_rc_sum += v;
            }
            Err(()) => p_lo += 1,
        }
    }
    let paper = PaperTerms {
        d,
        d_rc: d_rc_sum / jf,
        p_rc: p_rc_sum / jf,
        d_rc_zero_over_zero: d_zz,
        d_rc_left_out: d_lo,
        p_rc_zero_over_zero: p_zz,
        p_rc_left_out: p_lo,
    };

    // Reference convention: pandas pct_change along j = 1..J, then mean of |.|; any inf/NaN drops the image.
    let pct_mean = |s: &[f64]| -> Option<f64> {
        let mut sum = 0.0;
        for j in 2..n {
            let v = s[j] / s[j - 1] - 1.0;
            if !v.is_finite() {
                return None;
            }
            sum += v.abs();
        }
        Some(sum / (n - 2) as f64)
    };
    let reference = ReferenceTerms {
        mean_d0: d,
        mean_dp: dp[1..].iter().sum::<f64>() / jf,
        spike_orig: pct_mean(&d0),
        spike_prev: pct_mean(&dp),
    };
    ImageTerms {
        image_id,
        label,
        d0,
        dp,
        paper,
        reference,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unit vectors on a great circle at angles j*delta: a walk with constant steps.
    fn arc(n: usize, delta: f64, scale: f32) -> Vec<f32> {
        (0..n)
            .flat_map(|j| {
                let t = j as f64 * delta;
                [(t.cos() as f32) * scale, (t.sin() as f32) * scale, 0.0]
            })
            .collect()
    }

    /// d0 and dp as the first version computed them: each distance summed alone.
    fn distances_one_at_a_time(rows: &[f32], dim: usize) -> (Vec<f64>, Vec<f64>) {
        let normed: Vec<Vec<f64>> = rows
            .chunks_exact(dim)
            .map(|row| {
                let norm = row
                    .iter()
                    .map(|&v| (v as f64) * (v as f64))
                    .sum::<f64>()
                    .sqrt();
                let inv = if norm > 0.0 { 1.0 / norm } else { 0.0 };
                row.iter().map(|&v| v as f64 * inv).collect()
            })
            .collect();
        let distance = |a: &[f64], b: &[f64]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y) * (x - y))
                .sum::<f64>()
                .sqrt()
        };
        let n = normed.len();
        let mut d0 = vec![0.0; n];
        let mut dp = vec![0.0; n];
        for j in 1..n {
            d0[j] = distance(&normed[0], &normed[j]);
            dp[j] = distance(&normed[j - 1], &normed[j]);
        }
        (d0, dp)
    }

    #[test]
    fn distances_summed_side_by_side_equal_each_summed_alone() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 7.0
        };
        // Step counts that leave every remainder group (8, 4, 2, 1) in use; a zero row and a row
        // of negative zeros among them.
        for (steps, dim) in [(3, 1), (4, 7), (16, 5), (24, 33), (101, 512), (102, 64)] {
            let mut rows: Vec<f32> = (0..steps * dim).map(|_| next()).collect();
            rows[dim..2 * dim].fill(0.0);
            if steps > 5 {
                rows[4 * dim..5 * dim].fill(-0.0);
            }
            let t = image_terms(0, 0, &rows, dim);
            let (d0, dp) = distances_one_at_a_time(&rows, dim);
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&t.d0), bits(&d0), "d0, {steps} steps of {dim}");
            assert_eq!(bits(&t.dp), bits(&dp), "dp, {steps} steps of {dim}");
            // The generic blocks too, where the build measures in AVX-512 lanes.
            let blocks = blocks::distances_in_blocks(&rows, dim);
            assert_eq!(bits(&blocks.d0), bits(&d0), "blocks d0, {steps} x {dim}");
            assert_eq!(bits(&blocks.dp), bits(&dp), "blocks dp, {steps} x {dim}");
        }
    }

    #[test]
    fn constant_steps_on_an_arc_have_closed_forms() {
        let (n, delta) = (11, 0.05);
        let t = image_terms(3, 1, &arc(n, delta, 5.0), 3);
        let jf = (n - 1) as f64;
        let chord = |k: f64| 2.0 * (k * delta / 2.0).sin();
        let d: f64 = (1..n).map(|j| chord(j as f64)).sum::<f64>() / jf;
        let d_rc: f64 = (1..n)
            .map(|j| (chord(j as f64) - chord(j as f64 - 1.0)).abs() / chord(j as f64))
            .sum::<f64>()
            / jf;
        assert!((t.paper.d - d).abs() < 1e-6, "{} {}", t.paper.d, d);
        assert!((t.paper.d_rc - d_rc).abs() < 1e-6);
        assert!(
            t.paper.p_rc.abs() < 1e-5,
            "constant steps: no spikes, {}",
            t.paper.p_rc
        );
        assert!((t.reference.mean_dp - chord(1.0)).abs() < 1e-6);
        let spike: f64 = (2..n)
            .map(|j| (chord(j as f64) / chord(j as f64 - 1.0) - 1.0).abs())
            .sum::<f64>()
            / (jf - 1.0);
        assert!((t.reference.spike_orig.unwrap() - spike).abs() < 1e-6);
        assert!(t.reference.spike_prev.unwrap() < 1e-5);
    }
}
