//! Small dense linear algebra shared by the metric and probe crates (which must not compile candle):
//! blocked, multi-core matrix products on top of `matrixmultiply`, and symmetric eigenvalues via
//! `nalgebra`.

use rayon::prelude::*;

#[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
mod products_lanes;

/// `c (m x n) = alpha * a (m x k) * b (k x n) + beta * c`, row-major f32, parallel over row blocks of `a`.
pub fn matmul(
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    beta: f32,
) {
    assert_eq!(a.len(), m * k);
    assert_eq!(b.len(), k * n);
    assert_eq!(c.len(), m * n);
    if m == 0 || n == 0 {
        return;
    }
    let block = m
        .div_ceil(rayon::current_num_threads().max(1) * 4)
        .clamp(1, 256);
    c.par_chunks_mut(block * n)
        .zip(a.par_chunks(block * k))
        .for_each(|(c_blk, a_blk)| {
            let rows = a_blk.len() / k.max(1);
            block_product(a_blk, b, c_blk, rows, n, k, alpha, beta);
        });
}

/// The whole of `c (m x n) = alpha * a (m x k) * b (k x n) + beta * c` on one core:
/// matrixmultiply's `sgemm`, or the same sums without packing `a` (`products_lanes`) where the
/// build has AVX-512 and the product is a plain one (alpha 1, beta 0, as the probe's are).
#[allow(clippy::too_many_arguments)]
fn block_product(
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    beta: f32,
) {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    if alpha == 1.0 && beta == 0.0 {
        return products_lanes::product(a, b, c, m, n, k);
    }
    sgemm_strided(a, Strides { row: k, column: 1 }, b, c, m, n, k, alpha, beta);
}

/// Where element (i, j) of a matrix lies: `i * row + j * column`.
#[derive(Debug, Clone, Copy)]
struct Strides {
    row: usize,
    column: usize,
}

/// `c (m x n) = alpha * a * b + beta * c` by matrixmultiply's `sgemm`, `a` (m x k) read through
/// `a_strides` (row-major, or a row-major k x m read as its transpose), `b` and `c` row-major.
#[allow(clippy::too_many_arguments)]
fn sgemm_strided(
    a: &[f32],
    a_strides: Strides,
    b: &[f32],
    c: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    beta: f32,
) {
    let last_a = (m.max(1) - 1) * a_strides.row + (k.max(1) - 1) * a_strides.column;
    assert!(
        (m == 0 || k == 0 || a.len() > last_a) && b.len() >= k * n && c.len() >= m * n,
        "product sizes"
    );
    // SAFETY: every element of a that the strides name lies in a (asserted above), b holds k x n
    // and c m x n elements, row-major; c is borrowed exclusively and overlaps neither operand.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            a.as_ptr(),
            a_strides.row as isize,
            a_strides.column as isize,
            b.as_ptr(),
            n as isize,
            1,
            beta,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

/// `c (m x n) = alpha * a^T * b + beta * c` where `a` is (k x m) and `b` is (k x n), row-major f32;
/// the `k` rows are split across cores and the partial products summed.
pub fn matmul_at_b(
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    beta: f32,
) {
    assert_eq!(a.len(), k * m);
    assert_eq!(b.len(), k * n);
    assert_eq!(c.len(), m * n);
    let parts = rayon::current_num_threads().max(1).min(k.max(1));
    let chunk = k.div_ceil(parts).max(1);
    let partials: Vec<Vec<f32>> = (0..k.div_ceil(chunk))
        .into_par_iter()
        .map(|p| {
            let r0 = p * chunk;
            let r1 = (r0 + chunk).min(k);
            let mut out = vec![0.0f32; m * n];
            part_product_at_b(
                &a[r0 * m..r1 * m],
                &b[r0 * n..r1 * n],
                &mut out,
                m,
                n,
                r1 - r0,
            );
            out
        })
        .collect();
    for (i, x) in c.iter_mut().enumerate() {
        let s: f32 = partials.iter().map(|p| p[i]).sum();
        *x = alpha * s + beta * *x;
    }
}

/// `c (m x n) = a^T b` for `a` (k x m) and `b` (k x n) on one core into a fresh `c`:
/// matrixmultiply's `sgemm` on `a`'s transpose, or the same sums without packing it
/// (`products_lanes`) where the build has AVX-512.
fn part_product_at_b(a: &[f32], b: &[f32], c: &mut [f32], m: usize, n: usize, k: usize) {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    return products_lanes::product_at_b(a, b, c, m, n, k);
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx512f")))]
    sgemm_product_at_b(a, b, c, m, n, k)
}

/// [`part_product_at_b`] by matrixmultiply's `sgemm`, reading `a` as its transpose.
#[cfg_attr(
    all(target_arch = "x86_64", target_feature = "avx512f"),
    allow(dead_code)
)]
fn sgemm_product_at_b(a: &[f32], b: &[f32], c: &mut [f32], m: usize, n: usize, k: usize) {
    let a_columns = Strides { row: 1, column: m };
    sgemm_strided(a, a_columns, b, c, m, n, k, 1.0, 0.0);
}

/// Adds `x^T x` for `rows` rows of `x` (row-major, `dim` columns) into the `dim x dim` f64 matrix `gram`.
pub fn add_gram_f64(gram: &mut [f64], x: &[f64], rows: usize, dim: usize) {
    assert_eq!(gram.len(), dim * dim);
    assert_eq!(x.len(), rows * dim);
    // SAFETY: x holds rows x dim elements (asserted above), read as its dim x rows transpose
    // (strides 1, dim) and as itself (strides dim, 1); gram holds dim x dim (asserted above) and
    // is borrowed exclusively, so it overlaps neither operand.
    unsafe {
        matrixmultiply::dgemm(
            dim,
            rows,
            dim,
            1.0,
            x.as_ptr(),
            1,
            dim as isize,
            x.as_ptr(),
            dim as isize,
            1,
            1.0,
            gram.as_mut_ptr(),
            dim as isize,
            1,
        );
    }
}

/// Eigenvalues of the symmetric `n x n` matrix `m` (row-major f64), sorted descending.
pub fn symmetric_eigenvalues(m: &[f64], n: usize) -> Vec<f64> {
    assert_eq!(m.len(), n * n);
    if n == 0 {
        return Vec::new();
    }
    // The eigenvalues alone: the same tridiagonalisation and QR sweeps as `symmetric_eigen`, so
    // the same values bit for bit, without forming Q or rotating it.
    let mat = nalgebra::DMatrix::from_row_slice(n, n, m);
    let mut v: Vec<f64> = mat.symmetric_eigenvalues().iter().copied().collect();
    v.sort_by(|a, b| b.total_cmp(a));
    v
}

/// Eigenvalues and eigenvectors of a symmetric matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct SymmetricEigen {
    /// Eigenvalues, descending.
    pub values: Vec<f64>,
    /// Eigenvectors as the columns of an `n x n` row-major matrix, in the order of `values`.
    pub vectors: Vec<f64>,
}

/// Eigenvalues and eigenvectors of the symmetric `n x n` matrix `m` (row-major f64).
pub fn symmetric_eigen(m: &[f64], n: usize) -> SymmetricEigen {
    assert_eq!(m.len(), n * n);
    let eig = nalgebra::SymmetricEigen::new(nalgebra::DMatrix::from_row_slice(n, n, m));
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| eig.eigenvalues[b].total_cmp(&eig.eigenvalues[a]));
    let mut vectors = vec![0.0; n * n];
    for (col, &k) in order.iter().enumerate() {
        for row in 0..n {
            vectors[row * n + col] = eig.eigenvectors[(row, k)];
        }
    }
    SymmetricEigen {
        values: order.iter().map(|&k| eig.eigenvalues[k]).collect(),
        vectors,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|t| a[i * k + t] * b[t * n + j]).sum();
            }
        }
        c
    }

    fn transpose(x: &[f32], r: usize, c: usize) -> Vec<f32> {
        let mut t = vec![0.0; r * c];
        for i in 0..r {
            for j in 0..c {
                t[j * r + i] = x[i * c + j];
            }
        }
        t
    }

    #[test]
    fn products_match_naive() {
        let (m, n, k) = (37, 11, 19);
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) / 3.0)
            .collect();
        let want = naive(&a, &b, m, n, k);
        let mut c = vec![0.0; m * n];
        matmul(&a, &b, &mut c, m, n, k, 1.0, 0.0);
        assert!(c.iter().zip(&want).all(|(x, y)| (x - y).abs() < 1e-4));
        let at = transpose(&a, m, k);
        let mut c3 = vec![1.0; m * n];
        matmul_at_b(&at, &b, &mut c3, m, n, k, 2.0, 1.0);
        assert!(
            c3.iter()
                .zip(&want)
                .all(|(x, y)| (x - (2.0 * y + 1.0)).abs() < 1e-3)
        );
    }

    #[test]
    fn unpacked_products_equal_matrixmultiplys_bit_for_bit() {
        // Depths across matrixmultiply's 256-deep blocks, classes across 16-lane tiles, rows and
        // columns across the groups of 8 and 16; values of both signs, zeros and negative zeros.
        let value = |i: usize, salt: usize| match (i * 7919 + salt * 104_729) % 23 {
            0 => 0.0,
            1 => -0.0,
            v => (v as f32 - 11.0) / 7.0 * (1.0 + (i % 5) as f32 / 9.0),
        };
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for n in [1, 10, 16, 17, 40] {
            for k in [0, 1, 255, 256, 257, 600] {
                for m in [1, 7, 8, 9, 33] {
                    let a: Vec<f32> = (0..m * k).map(|i| value(i, 1)).collect();
                    let b: Vec<f32> = (0..k * n).map(|i| value(i, 2)).collect();
                    let (mut ours, mut theirs) = (vec![f32::NAN; m * n], vec![f32::NAN; m * n]);
                    block_product(&a, &b, &mut ours, m, n, k, 1.0, 0.0);
                    let rows = Strides { row: k, column: 1 };
                    sgemm_strided(&a, rows, &b, &mut theirs, m, n, k, 1.0, 0.0);
                    assert_eq!(bits(&ours), bits(&theirs), "a b: {m} x {k} x {n}");
                    let (mut ours, mut theirs) = (vec![f32::NAN; m * n], vec![f32::NAN; m * n]);
                    part_product_at_b(&a, &b[..k * n], &mut ours, m, n, k);
                    sgemm_product_at_b(&a, &b[..k * n], &mut theirs, m, n, k);
                    assert_eq!(bits(&ours), bits(&theirs), "a^T b: {m} x {k} x {n}");
                }
            }
        }
    }

    #[test]
    fn eigenvalues_of_a_known_matrix() {
        let m = [2.0, 1.0, 1.0, 2.0];
        let e = symmetric_eigenvalues(&m, 2);
        assert!((e[0] - 3.0).abs() < 1e-12 && (e[1] - 1.0).abs() < 1e-12);
        let x = [1.0, 2.0, 3.0, 4.0];
        let mut g = vec![0.0; 4];
        add_gram_f64(&mut g, &x, 2, 2);
        assert_eq!(g, vec![10.0, 14.0, 14.0, 20.0]);
    }

    #[test]
    fn eigenvectors_rebuild_the_matrix() {
        let n = 4;
        let m: Vec<f64> = (0..n * n)
            .map(|k| {
                let (i, j) = (k / n, k % n);
                1.0 / (1.0 + i as f64 + j as f64) + if i == j { 2.0 } else { 0.0 }
            })
            .collect();
        let e = symmetric_eigen(&m, n);
        assert!(e.values.windows(2).all(|w| w[0] >= w[1]));
        assert_eq!(e.values, symmetric_eigenvalues(&m, n));
        for i in 0..n {
            for j in 0..n {
                let v: f64 = (0..n)
                    .map(|k| e.vectors[i * n + k] * e.values[k] * e.vectors[j * n + k])
                    .sum();
                assert!((v - m[i * n + j]).abs() < 1e-12, "{i} {j}: {v}");
            }
        }
    }

    #[test]
    fn eigenvalues_alone_equal_the_full_decomposition_bit_for_bit() {
        // A Gram matrix of a size where QR sweeps run long (97 x 97, rank 60, so a cluster of
        // near-zero eigenvalues too): the eigenvalue-only path must take the same steps.
        let (rows, n) = (60, 97);
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let x: Vec<f64> = (0..rows * n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
            })
            .collect();
        let mut gram = vec![0.0; n * n];
        add_gram_f64(&mut gram, &x, rows, n);
        let alone = symmetric_eigenvalues(&gram, n);
        let full = symmetric_eigen(&gram, n).values;
        assert_eq!(
            alone.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            full.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }
}
