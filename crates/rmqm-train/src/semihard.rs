//! Semihard triplet mining and the semihard triplet loss as one custom op.
//!
//! The loss was first written as a candle graph: the mined triplets' distances gathered with two
//! `index_select`s, `d(a,p) - d(a,n) + margin`, then `mean_all`. Its backward scatters every mined
//! triplet back with `index_add` (a PGD batch of 256 images of 10 classes tests some
//! 256 x 25 x 230 candidate triplets). [`SemihardLoss`] computes the same value and the same gradient bit for bit
//! (a test in `losses` compares both on random batches) from a count of the triplets each distance
//! enters.

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor, bail};
use rmqm_models::kernels::Real;

/// Calls `visit(a, p, ks)` for every anchor-positive pair of a batch with at least one semihard
/// negative, in the order a, then p ascending, `ks` the pair's semihard negatives ascending:
/// label[a] == label[p], a != p, label[k] != label[a], and d(a,p) < d(a,k) < d(a,p) + margin,
/// from a distance matrix given row-major.
pub fn for_each_semihard_triplet(
    distances: &[f64],
    labels: &[i64],
    margin: f64,
    mut visit: impl FnMut(usize, usize, &[usize]),
) {
    let n = labels.len();
    assert_eq!(
        distances.len(),
        n * n,
        "distances must be n x n for n labels"
    );
    let mut negatives: Vec<(usize, f64)> = Vec::with_capacity(n);
    // One slot more than the negatives: the branch-free scan below writes every candidate at the
    // next free slot and advances only past the semihard ones.
    let mut semihard = vec![0usize; n + 1];
    for (a, row) in distances.chunks_exact(n.max(1)).enumerate().take(n) {
        let label = labels[a];
        negatives.clear();
        negatives.extend((0..n).filter(|&k| labels[k] != label).map(|k| (k, row[k])));
        for p in (0..n).filter(|&p| p != a && labels[p] == label) {
            let dap = row[p];
            let ceiling = dap + margin;
            let mut found = 0;
            for &(k, dan) in &negatives {
                semihard[found] = k;
                found += usize::from((dap < dan) & (dan < ceiling));
            }
            if found > 0 {
                visit(a, p, &semihard[..found]);
            }
        }
    }
}

/// The semihard triplets of one batch, as the loss reads them.
#[derive(Debug, Clone, PartialEq)]
pub struct SemihardMining {
    /// Flat indices into the n x n distance matrix of each triplet's d(a,p) and d(a,n), in
    /// mining order.
    pairs: Vec<(u32, u32)>,
    /// Per distance-matrix entry: +m when it is the d(a,p) of m triplets, -m when it is the d(a,n)
    /// of m triplets (an entry is never both: its two points share a label or they do not).
    signed_counts: Vec<i32>,
}

impl SemihardMining {
    /// Mines the semihard triplets of a batch from its distance matrix (row-major, n x n).
    pub fn of(distances: &[f64], labels: &[i64], margin: f64) -> Self {
        let n = labels.len();
        assert!(
            n * n <= u32::MAX as usize,
            "batch of {n} is too large to mine"
        );
        let mut pairs = Vec::new();
        let mut signed_counts = vec![0i32; n * n];
        for_each_semihard_triplet(distances, labels, margin, |a, p, ks| {
            let ap = a * n + p;
            signed_counts[ap] += ks.len() as i32;
            for &k in ks {
                let an = a * n + k;
                pairs.push((ap as u32, an as u32));
                signed_counts[an] -= 1;
            }
        });
        SemihardMining {
            pairs,
            signed_counts,
        }
    }

    /// The number of mined triplets.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// True when the batch has no semihard triplet.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Flat indices of each triplet's d(a,p), in mining order.
    pub fn positive_indices(&self) -> Vec<u32> {
        self.pairs.iter().map(|&(ap, _)| ap).collect()
    }

    /// Flat indices of each triplet's d(a,n), in mining order.
    pub fn negative_indices(&self) -> Vec<u32> {
        self.pairs.iter().map(|&(_, an)| an).collect()
    }
}

/// The mean over mined triplets of d(a,p) - d(a,n) + margin, applied to the n x n distance matrix
/// as `d.apply_op1(SemihardLoss { .. })`; its value and gradient equal, bit for bit, those of the
/// candle graph `(d[ap] - d[an] + margin).mean_all()` with `index_select` gathers.
#[derive(Debug, Clone)]
pub struct SemihardLoss {
    /// The triplets mined from the same matrix.
    pub mining: SemihardMining,
    /// The margin (added in the distances' dtype, as `Tensor + f64` does).
    pub margin: f64,
}

impl SemihardLoss {
    /// The forward value in `T`: each triplet's `(d_ap - d_an) + margin` as candle's `sub` and
    /// `affine` round it, summed by candle's own `sum_all` (its summation order depends on the
    /// target's SIMD width), then candle's `/ count` (an `affine` by 1/count).
    fn value<T: Real>(&self, d: &[T]) -> Result<T> {
        let margin = T::from_f64(self.margin);
        let per_triplet: Vec<T> = self
            .mining
            .pairs
            .iter()
            .map(|&(ap, an)| {
                let mut v = d[ap as usize] - d[an as usize];
                v += margin;
                v
            })
            .collect();
        let count = per_triplet.len();
        (Tensor::from_vec(per_triplet, count, &Device::Cpu)?.mean_all()?).to_scalar::<T>()
    }

    /// The gradient with respect to the distances, given `step`, the gradient each triplet's term
    /// receives (the upstream gradient times 1/count, as the graph's `affine` backward rounds it):
    /// the graph's `index_add` adds `step` once per triplet, in order, into zeros, so an entry used
    /// by m triplets receives the m-fold running sum, the same for every entry with that m.
    fn gradient<T: Real>(&self, step: T) -> Vec<T> {
        let most = self
            .mining
            .signed_counts
            .iter()
            .map(|c| c.unsigned_abs() as usize)
            .max()
            .unwrap_or(0);
        let mut running_sums = Vec::with_capacity(most + 1);
        let mut sum = T::default();
        running_sums.push(sum);
        for _ in 0..most {
            sum += step;
            running_sums.push(sum);
        }
        self.mining
            .signed_counts
            .iter()
            .map(|&c| {
                let s = running_sums[c.unsigned_abs() as usize];
                if c < 0 { T::default() - s } else { s }
            })
            .collect()
    }
}

impl CustomOp1 for SemihardLoss {
    fn name(&self) -> &'static str {
        "rmqm-semihard-triplet-loss"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some((start, end)) = l.contiguous_offsets() else {
            bail!("semihard triplet loss: the distance matrix must be contiguous")
        };
        if end - start != self.mining.signed_counts.len() {
            bail!(
                "semihard triplet loss: {} distances for a mining of {}",
                end - start,
                self.mining.signed_counts.len()
            )
        }
        let out = match s {
            CpuStorage::F32(d) => CpuStorage::F32(vec![self.value(&d[start..end])?]),
            CpuStorage::F64(d) => CpuStorage::F64(vec![self.value(&d[start..end])?]),
            _ => bail!("semihard triplet loss: the distances must be f32 or f64"),
        };
        Ok((out, Shape::from(())))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // The graph's mean backward: `grad.affine(1 / count, 0)`, in the dtype; exact in f64.
        let step = grad
            .affine(1.0 / self.mining.len() as f64, 0.0)?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        let gradient = match arg.dtype() {
            DType::F32 => Tensor::from_vec(self.gradient(step as f32), arg.shape(), arg.device()),
            DType::F64 => Tensor::from_vec(self.gradient(step), arg.shape(), arg.device()),
            d => bail!("semihard triplet loss: unsupported dtype {d:?}"),
        }?;
        Ok(Some(gradient))
    }
}
