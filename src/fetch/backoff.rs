//! How long to wait before the next attempt.
//!
//! Exponential backoff with "full jitter": the delay before retry `n` is
//! uniform in `[0, min(cap, base * 2^(n-1))]`. Full jitter spreads many
//! clients hitting one recovering mirror (a CI fleet after an outage) better
//! than a fixed schedule does, at no cost to a lone client.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// No single wait is longer than this, whatever the attempt number or a
/// server's `Retry-After` says: a build should fail visibly rather than
/// hang for an hour because a mirror asked it to.
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(30);

/// The wait before retry number `retry` (1 for the first retry).
pub(crate) fn delay(base: Duration, retry: u32) -> Duration {
    let ceiling = ceiling(base, retry);
    // A fraction in [0, 1] with 53 bits of precision.
    let fraction = (random() >> 11) as f64 / (1u64 << 53) as f64;
    ceiling.mul_f64(fraction)
}

/// The upper bound of the jittered delay before retry `retry`.
pub(crate) fn ceiling(base: Duration, retry: u32) -> Duration {
    let factor = 1u32
        .checked_shl(retry.saturating_sub(1))
        .unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(MAX_DELAY)
}

/// The wait a server asked for with `Retry-After`, capped.
pub(crate) fn server_delay(requested: Duration) -> Duration {
    requested.min(MAX_DELAY)
}

/// A random u64. Jitter needs no cryptographic quality, only independence
/// between processes and calls, which std's randomly keyed SipHash over a
/// counter gives without another dependency.
fn random() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static KEYS: RandomState = RandomState::new();
    }
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    KEYS.with(|keys| keys.hash_one(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_then_caps() {
        let base = Duration::from_millis(500);
        assert_eq!(ceiling(base, 1), Duration::from_millis(500));
        assert_eq!(ceiling(base, 2), Duration::from_secs(1));
        assert_eq!(ceiling(base, 3), Duration::from_secs(2));
        assert_eq!(ceiling(base, 7), MAX_DELAY);
        assert_eq!(ceiling(base, 40), MAX_DELAY);
        assert_eq!(ceiling(base, u32::MAX), MAX_DELAY);
    }

    #[test]
    fn delay_stays_within_its_ceiling_and_varies() {
        let base = Duration::from_millis(100);
        let delays: Vec<Duration> = (0..200).map(|_| delay(base, 3)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(400)));
        let first = delays[0];
        assert!(delays.iter().any(|d| *d != first), "no jitter");
    }

    #[test]
    fn server_delay_is_capped() {
        assert_eq!(server_delay(Duration::from_secs(3)), Duration::from_secs(3));
        assert_eq!(server_delay(Duration::from_secs(3600)), MAX_DELAY);
    }
}
