//! Summary statistics of samples (CPU percentages, latencies).
//!
//! Percentiles use the **nearest-rank** method: the p-th percentile of n sorted samples is the
//! sample at 1-based rank `ceil(p / 100 * n)` (rank 1 for p = 0). It is always one of the
//! observed values, so a "p99 CPU" is a CPU reading that really happened.

use serde::Serialize;

/// The nearest-rank percentile `p` (0..=100) of `samples`; `None` when there are none.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    Some(percentile_sorted(&sorted, p))
}

fn percentile_sorted(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len();
    let rank = ((p.clamp(0.0, 100.0) / 100.0) * n as f64).ceil() as usize;
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
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
        if sorted.is_empty() {
            return Summary::default();
        }
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        Summary {
            count: n,
            mean: sorted.iter().sum::<f64>() / n as f64,
            p50: percentile_sorted(&sorted, 50.0),
            p95: percentile_sorted(&sorted, 95.0),
            p99: percentile_sorted(&sorted, 99.0),
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

    #[test]
    fn nearest_rank_on_known_samples() {
        // The textbook example: 15, 20, 35, 40, 50.
        let s = [50.0, 15.0, 40.0, 20.0, 35.0];
        assert_eq!(percentile(&s, 5.0), Some(15.0));
        assert_eq!(percentile(&s, 30.0), Some(20.0));
        assert_eq!(percentile(&s, 40.0), Some(20.0));
        assert_eq!(percentile(&s, 50.0), Some(35.0));
        assert_eq!(percentile(&s, 100.0), Some(50.0));
        assert_eq!(percentile(&s, 0.0), Some(15.0));
        assert_eq!(percentile(&[], 50.0), None);
        // 1..=100: p99 is 99, p95 is 95, p50 is 50.
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&hundred, 99.0), Some(99.0));
        assert_eq!(percentile(&hundred, 95.0), Some(95.0));
        assert_eq!(percentile(&hundred, 50.0), Some(50.0));
        assert_eq!(percentile(&hundred, 99.5), Some(100.0));
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
