//! Summary statistics of samples (CPU percentages, latencies): the one percentile of the crate.
//!
//! Percentiles use the **nearest-rank** method: the p-th percentile of n sorted samples is the
//! sample at 1-based rank `ceil(p / 100 * n)` (rank 1 for p = 0). It is always one of the
//! observed values, so a "p99 CPU" is a CPU reading that really happened.
//!
//! Which percentile is asked for is a [`Percentile`], built from a percent or a fraction by name,
//! so a fraction can never be read as a percent (`0.99` meaning p99 would otherwise silently
//! return the smallest sample).

use serde::Serialize;

/// A percentile rank, held in percent (0..=100). Build it with [`Percentile::percent`] or
/// [`Percentile::fraction`], or use the constants.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Percentile(f64);

/// A percentile rank outside its scale.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PercentileError {
    #[error("percentile {value} is outside 0..=100 (give a percent, e.g. 99 for p99)")]
    Percent { value: f64 },
    #[error("percentile fraction {value} is outside 0..=1 (give a fraction, e.g. 0.99 for p99)")]
    Fraction { value: f64 },
}

impl Percentile {
    pub const P50: Percentile = Percentile(50.0);
    pub const P95: Percentile = Percentile(95.0);
    pub const P99: Percentile = Percentile(99.0);

    /// The percentile `p` in percent, 0..=100 (99 is p99).
    pub fn percent(p: f64) -> Result<Percentile, PercentileError> {
        if (0.0..=100.0).contains(&p) {
            Ok(Percentile(p))
        } else {
            Err(PercentileError::Percent { value: p })
        }
    }

    /// The percentile `q` as a fraction, 0..=1 (0.99 is p99).
    pub fn fraction(q: f64) -> Result<Percentile, PercentileError> {
        if (0.0..=1.0).contains(&q) {
            Ok(Percentile(q * 100.0))
        } else {
            Err(PercentileError::Fraction { value: q })
        }
    }

    /// The rank in percent.
    pub fn as_percent(self) -> f64 {
        self.0
    }
}

/// The nearest-rank percentile `p` of `samples` (non-finite values are ignored); `None` when
/// there are none.
///
/// The rank is typed, so a bare number does not compile:
///
/// ```compile_fail
/// sentinel_bench::stats::percentile(&[1.0, 2.0], 0.99);
/// ```
pub fn percentile(samples: &[f64], p: Percentile) -> Option<f64> {
    let sorted = sorted_finite(samples);
    (!sorted.is_empty()).then(|| percentile_sorted(&sorted, p))
}

/// The largest finite sample; `None` when there are none.
pub fn max(samples: &[f64]) -> Option<f64> {
    samples
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .reduce(f64::max)
}

fn sorted_finite(samples: &[f64]) -> Vec<f64> {
    let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    sorted
}

/// `sorted` must be sorted and non-empty.
fn percentile_sorted(sorted: &[f64], p: Percentile) -> f64 {
    let n = sorted.len();
    let rank = ((p.0 / 100.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

/// Mean, nearest-rank percentiles and maximum of a series.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Summary {
    pub count: usize,
    pub mean: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    /// Summarises `samples` (non-finite values are ignored); all zeros when there are none.
    pub fn of(samples: &[f64]) -> Summary {
        let sorted = sorted_finite(samples);
        if sorted.is_empty() {
            return Summary::default();
        }
        let n = sorted.len();
        Summary {
            count: n,
            mean: sorted.iter().sum::<f64>() / n as f64,
            p50: percentile_sorted(&sorted, Percentile::P50),
            p95: percentile_sorted(&sorted, Percentile::P95),
            p99: percentile_sorted(&sorted, Percentile::P99),
            max: sorted[n - 1],
        }
    }

    /// p99 / p50, the latency predictability ratio; `None` when p50 is zero.
    pub fn p99_over_p50(&self) -> Option<f64> {
        (self.p50 > 0.0).then(|| self.p99 / self.p50)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pct(p: f64) -> Percentile {
        Percentile::percent(p).unwrap()
    }

    #[test]
    fn nearest_rank_on_known_samples() {
        // The textbook example: 15, 20, 35, 40, 50.
        let s = [50.0, 15.0, 40.0, 20.0, 35.0];
        assert_eq!(percentile(&s, pct(5.0)), Some(15.0));
        assert_eq!(percentile(&s, pct(30.0)), Some(20.0));
        assert_eq!(percentile(&s, pct(40.0)), Some(20.0));
        assert_eq!(percentile(&s, Percentile::P50), Some(35.0));
        assert_eq!(percentile(&s, pct(100.0)), Some(50.0));
        assert_eq!(percentile(&s, pct(0.0)), Some(15.0));
        assert_eq!(percentile(&[], Percentile::P50), None);
        assert_eq!(percentile(&[f64::NAN], Percentile::P50), None);
        // 1..=100: p99 is 99, p95 is 95, p50 is 50.
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&hundred, Percentile::P99), Some(99.0));
        assert_eq!(percentile(&hundred, Percentile::P95), Some(95.0));
        assert_eq!(percentile(&hundred, Percentile::P50), Some(50.0));
        assert_eq!(percentile(&hundred, pct(99.5)), Some(100.0));
    }

    #[test]
    fn a_fraction_is_never_read_as_a_percent() {
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        // The old misuse: 0.99 meant as p99 but read as the 0.99th percentile, the minimum.
        assert_eq!(percentile(&hundred, pct(0.99)), Some(1.0));
        // Said as a fraction it is p99.
        let p99 = Percentile::fraction(0.99).unwrap();
        assert!((p99.as_percent() - 99.0).abs() < 1e-9);
        assert_eq!(percentile(&hundred, p99), Some(99.0));
        assert_eq!(Percentile::fraction(0.5), Ok(Percentile::P50));
        // Each constructor rejects the other scale's p99 and anything out of range.
        assert_eq!(
            Percentile::fraction(99.0),
            Err(PercentileError::Fraction { value: 99.0 })
        );
        assert!(Percentile::percent(100.5).is_err());
        assert!(Percentile::percent(-1.0).is_err());
        assert!(Percentile::percent(f64::NAN).is_err());
        let err = Percentile::percent(990.0).unwrap_err().to_string();
        assert!(err.contains("99 for p99"), "{err}");
    }

    #[test]
    fn max_ignores_non_finite_values() {
        assert_eq!(max(&[1.0, f64::NAN, 3.0, 2.0]), Some(3.0));
        assert_eq!(max(&[]), None);
    }

    #[test]
    fn summary_of_a_spiky_series() {
        // Ten samples, one spike: p99 and max see it, p50 does not.
        let s = [10.0, 12.0, 11.0, 10.0, 9.0, 10.0, 13.0, 10.0, 95.0, 10.0];
        let sum = Summary::of(&s);
        assert_eq!(sum.count, 10);
        assert!((sum.mean - 19.0).abs() < 1e-9);
        assert_eq!(sum.p50, 10.0);
        assert_eq!(sum.p95, 95.0);
        assert_eq!(sum.p99, 95.0);
        assert_eq!(sum.max, 95.0);
        assert_eq!(sum.p99_over_p50(), Some(9.5));
        assert_eq!(Summary::of(&[]), Summary::default());
        assert_eq!(Summary::of(&[f64::NAN, 4.0]).mean, 4.0);
        assert_eq!(Summary::default().p99_over_p50(), None);
    }
}
