//! The noise walk's draws in AVX-512 lanes: eight pixels at a time take the ziggurat's first try,
//! `StandardNormal`'s fast path in rand_distr 0.5, on eight 64-bit words of the pixel's stream,
//! read ahead in bulk ([`WordStream`]).
//!
//! A first try is accepted in about 99% of draws. Where it is not (a draw that takes the
//! ziggurat's slow path, rejection or tail, and more words), the lanes stop at that pixel and
//! rand_distr's own sampler makes the draw (`noise::add_clipped_noise`). Each accepted lane does
//! what the sampler and the walk do, in their order and precision: u = (bits >> 12 as a double in
//! [2, 4)) - 3, x = u * x_i, |x| < x_(i+1), z = x as f32, then clip(pixel + eps * z, 0, 1) as
//! multiply then add in f32. So the pixels are the scalar path's bit for bit (tested against it).

use crate::ziggurat_table::ZIG_NORM_X;
use rand::RngCore;
use rand_chacha::ChaCha8Rng;
use std::arch::x86_64::{
    _CMP_GT_OQ, _CMP_LT_OQ, _mm256_add_ps, _mm256_cmp_ps_mask, _mm256_loadu_ps,
    _mm256_mask_blend_ps, _mm256_mask_storeu_ps, _mm256_mul_ps, _mm256_set1_ps, _mm256_storeu_ps,
    _mm512_and_si512, _mm512_castpd_si512, _mm512_castsi512_pd, _mm512_cmp_pd_mask,
    _mm512_cvtpd_ps, _mm512_i64gather_pd, _mm512_loadu_si512, _mm512_mul_pd, _mm512_or_si512,
    _mm512_set1_epi64, _mm512_set1_pd, _mm512_srli_epi64, _mm512_sub_pd,
};

/// Pixels drawn side by side: the 64-bit lanes of a register.
pub(crate) const LANES: usize = 8;

/// Appends clip(clean[p] + eps * z_p, 0, 1) to `out` for the pixels p = 0, 1, ... whose draw z_p
/// is the first try on `words[p]`, in whole groups of [`LANES`], and stops before the first pixel
/// whose first try is rejected (or when fewer than [`LANES`] pixels or words are left). Returns
/// the pixels appended, which is also the words used.
pub(crate) fn first_tries(clean: &[f32], eps: f32, words: &[u64], out: &mut Vec<f32>) -> usize {
    let groups = clean.len().min(words.len()) / LANES;
    out.reserve(groups * LANES);
    let start = out.len();
    // SAFETY: clean and words hold groups * LANES values each, and out has room for as many past
    // its length (reserved above); AVX-512F and VL are enabled for the whole build wherever this
    // module is compiled.
    let taken = unsafe {
        first_tries_unchecked(
            clean.as_ptr(),
            eps,
            words.as_ptr(),
            groups,
            out.as_mut_ptr().add(start),
        )
    };
    // SAFETY: first_tries_unchecked wrote `taken` (<= groups * LANES) values from out's length on.
    unsafe { out.set_len(start + taken) };
    taken
}

/// [`first_tries`] on raw pointers: writes the accepted pixels to `out` and returns how many.
///
/// # Safety
/// `clean` and `words` point to `groups * LANES` readable values each, `out` to as many writable
/// ones; the CPU has AVX-512F and AVX-512VL.
#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn first_tries_unchecked(
    clean: *const f32,
    eps: f32,
    words: *const u64,
    groups: usize,
    out: *mut f32,
) -> usize {
    let strip_index = _mm512_set1_epi64(0xff);
    let exponent_two = _mm512_set1_epi64(1024 << 52);
    let three = _mm512_set1_pd(3.0);
    let magnitude = _mm512_set1_epi64(i64::MAX);
    let (zero, one, eps) = (
        _mm256_set1_ps(0.0),
        _mm256_set1_ps(1.0),
        _mm256_set1_ps(eps),
    );
    for g in 0..groups {
        // SAFETY: group g < groups, so its LANES words, pixels and outputs lie inside the ranges
        // the caller guarantees; strip indices are 0..=255, so x_i and x_(i+1) lie inside the
        // 257-value table.
        unsafe {
            let bits = _mm512_loadu_si512(words.add(g * LANES).cast());
            let i = _mm512_and_si512(bits, strip_index);
            let x_i = _mm512_i64gather_pd::<8>(i, ZIG_NORM_X.as_ptr());
            let x_next = _mm512_i64gather_pd::<8>(i, ZIG_NORM_X.as_ptr().add(1));
            let in_two_to_four = _mm512_or_si512(_mm512_srli_epi64::<12>(bits), exponent_two);
            let u = _mm512_sub_pd(_mm512_castsi512_pd(in_two_to_four), three);
            let x = _mm512_mul_pd(u, x_i);
            let abs_x = _mm512_castsi512_pd(_mm512_and_si512(_mm512_castpd_si512(x), magnitude));
            let accepted = _mm512_cmp_pd_mask::<_CMP_LT_OQ>(abs_x, x_next);
            let z = _mm512_cvtpd_ps(x);
            let moved = _mm256_add_ps(_mm256_loadu_ps(clean.add(g * LANES)), _mm256_mul_ps(eps, z));
            // f32::clamp's comparisons: below 0 becomes 0, above 1 becomes 1, NaN stays.
            let floored =
                _mm256_mask_blend_ps(_mm256_cmp_ps_mask::<_CMP_LT_OQ>(moved, zero), moved, zero);
            let clipped =
                _mm256_mask_blend_ps(_mm256_cmp_ps_mask::<_CMP_GT_OQ>(floored, one), floored, one);
            if accepted == 0xff {
                _mm256_storeu_ps(out.add(g * LANES), clipped);
            } else {
                let first = accepted.trailing_ones() as usize;
                _mm256_mask_storeu_ps(out.add(g * LANES), (1u8 << first) - 1, clipped);
                return g * LANES + first;
            }
        }
    }
    groups * LANES
}

/// The 64-bit words of a ChaCha stream, read ahead into a buffer: the lanes look at the words to
/// come ([`WordStream::ahead`]) and take those they use ([`WordStream::skip`]); rand_distr's sampler
/// draws the others through [`RngCore::next_u64`], in the same order as from the stream itself.
pub(crate) struct WordStream {
    rng: ChaCha8Rng,
    buffer: [u64; WordStream::WORDS],
    next: usize,
}

impl WordStream {
    /// Words read ahead at a time.
    const WORDS: usize = 256;

    /// The words of `rng` from its current position on.
    pub(crate) fn new(rng: ChaCha8Rng) -> Self {
        let mut stream = WordStream {
            rng,
            buffer: [0; Self::WORDS],
            next: Self::WORDS,
        };
        stream.refill();
        stream
    }

    /// Moves the unread words to the front and fills the rest from the rng: its bytes in bulk,
    /// read as little-endian words, which are its `next_u64` words while the stream has only
    /// ever been read by whole words (as here, from its start).
    fn refill(&mut self) {
        let unread = Self::WORDS - self.next;
        self.buffer.copy_within(self.next.., 0);
        let mut bytes = [0u8; 8 * Self::WORDS];
        let bytes = &mut bytes[..8 * self.next];
        self.rng.fill_bytes(bytes);
        for (w, b) in self.buffer[unread..].iter_mut().zip(bytes.chunks_exact(8)) {
            *w = u64::from_le_bytes(b.try_into().expect("8 bytes"));
        }
        self.next = 0;
    }

    /// The next words, without taking them: at least [`WordStream::WORDS`] / 2.
    pub(crate) fn ahead(&mut self) -> &[u64] {
        if self.next > Self::WORDS / 2 {
            self.refill();
        }
        &self.buffer[self.next..]
    }

    /// Takes `n` words (at most those [`WordStream::ahead`] showed).
    pub(crate) fn skip(&mut self, n: usize) {
        assert!(self.next + n <= Self::WORDS, "skipped past the words read");
        self.next += n;
    }
}

impl RngCore for WordStream {
    fn next_u64(&mut self) -> u64 {
        if self.next == Self::WORDS {
            self.refill();
        }
        self.next += 1;
        self.buffer[self.next - 1]
    }

    /// Half a word: the normal sampler never draws 32 bits, so this is not the rng's own
    /// `next_u32` (which would split words).
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }

    /// Whole words, little-endian (the normal sampler never fills bytes).
    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for chunk in dst.chunks_mut(8) {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes()[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn the_word_stream_reads_as_the_rng_does() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let mut stream = WordStream::new(ChaCha8Rng::seed_from_u64(9));
        for round in 0..40 {
            // Look ahead, take some, draw some one at a time: the rng's words in order.
            let ahead = stream.ahead().to_vec();
            let take = (round * 37) % ahead.len().min(100);
            for &w in &ahead[..take] {
                assert_eq!(w, rng.next_u64());
            }
            stream.skip(take);
            for _ in 0..(round % 7) * 31 {
                assert_eq!(stream.next_u64(), rng.next_u64());
            }
        }
    }
}
