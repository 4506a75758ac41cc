//! The project's own seeded random numbers.
//!
//! candle's CPU RNG cannot be seeded, so every random draw (weight init, shuffling, dropout
//! masks) comes from here. A stream is derived from the experiment seed and a few labels
//! (a weight's dotted path, the epoch, the step), so a draw does not depend on how many
//! draws happened before it elsewhere, nor on the thread count.
//!
//! The generator is xoshiro256++ seeded through SplitMix64 (Blackman and Vigna).

/// A labelled part of a stream's identity: a number or a name.
pub enum Label<'a> {
    N(u64),
    S(&'a str),
}

impl From<u64> for Label<'_> {
    fn from(n: u64) -> Self {
        Label::N(n)
    }
}
impl From<usize> for Label<'_> {
    fn from(n: usize) -> Self {
        Label::N(n as u64)
    }
}
impl<'a> From<&'a str> for Label<'a> {
    fn from(s: &'a str) -> Self {
        Label::S(s)
    }
}

#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a: a stable hash of a label (std's hashers may change between releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        Rng { s: [splitmix64(&mut x), splitmix64(&mut x), splitmix64(&mut x), splitmix64(&mut x)] }
    }

    /// The stream for `seed` and `labels`, e.g. `Rng::derive(seed, &["shuffle".into(), epoch.into()])`.
    pub fn derive(seed: u64, labels: &[Label]) -> Self {
        let mut x = seed;
        let mut h = splitmix64(&mut x);
        for l in labels {
            let v = match l {
                Label::N(n) => *n,
                Label::S(s) => fnv1a(s.as_bytes()),
            };
            let mut y = h ^ v;
            h = splitmix64(&mut y);
        }
        Rng::new(h)
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1), 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [0, 1), 24 bits.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// Standard normal, by the Box-Muller transform.
    pub fn next_normal(&mut self) -> f64 {
        let u1 = 1.0 - self.next_f64(); // (0, 1]: ln is finite
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Uniform in [0, n), without modulo bias (Lemire's method).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0)"); // ok: callers pass lengths of non-empty slices
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = (self.next_u64() as u128) * (n as u128);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            xs.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_matches_reference_values() {
        // Reference: the first outputs of Vigna's splitmix64.c seeded with 0.
        let mut x = 0u64;
        assert_eq!(splitmix64(&mut x), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(&mut x), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn derived_streams_are_stable_and_distinct() {
        let a = Rng::derive(7, &["shuffle".into(), 3u64.into()]).next_u64();
        let b = Rng::derive(7, &["shuffle".into(), 3u64.into()]).next_u64();
        let c = Rng::derive(7, &["shuffle".into(), 4u64.into()]).next_u64();
        let d = Rng::derive(8, &["shuffle".into(), 3u64.into()]).next_u64();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }

    #[test]
    fn uniform_draws_have_the_right_mean() {
        let mut r = Rng::new(1);
        let n = 100_000;
        let mean: f64 = (0..n).map(|_| r.next_f64()).sum::<f64>() / n as f64;
        // Standard error of the mean of U(0,1) is sqrt(1/12/n) ~ 0.0009.
        assert!((mean - 0.5).abs() < 0.005, "{mean}");
        let mut counts = [0usize; 3];
        for _ in 0..30_000 {
            counts[r.below(3) as usize] += 1;
        }
        for c in counts {
            assert!((c as i64 - 10_000).abs() < 500, "{counts:?}");
        }
    }

    #[test]
    fn normal_draws_have_unit_variance() {
        let mut r = Rng::new(2);
        let n = 100_000;
        let xs: Vec<f64> = (0..n).map(|_| r.next_normal()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        // Standard errors: 0.003 for the mean, 0.0045 for the variance.
        assert!(mean.abs() < 0.015 && (var - 1.0).abs() < 0.025, "{mean} {var}");
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut xs: Vec<usize> = (0..1000).collect();
        Rng::new(3).shuffle(&mut xs);
        assert_ne!(xs, (0..1000).collect::<Vec<_>>());
        xs.sort();
        assert_eq!(xs, (0..1000).collect::<Vec<_>>());
    }
}
