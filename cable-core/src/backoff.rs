//! Reconnection delays for adapter authors.
//!
//! Every node of a fleet loses its backend connection at the same moment
//! when the backend restarts. With fixed delays they would all retry at the
//! same moments too, and hit the backend in waves just as it comes back.
//! [`Backoff`] grows the delay exponentially and draws each one at random
//! from the upper half of the current ceiling ("equal jitter"): attempts
//! spread out across the fleet, yet no node ever retries in a tight loop.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::time::Duration;

/// Delays between reconnection attempts: exponential growth with jitter, a
/// cap, and a reset once a connection succeeds.
///
/// Attempt `n` (from 0) waits a random delay in
/// `[ceiling / 2, ceiling]`, where `ceiling = min(first * 2^n, max)`. So the
/// delays never go below `first / 2` nor above `max`; while the ceiling
/// doubles, every delay is at least as long as the one before, and once it
/// is capped they stay within `[max / 2, max]`.
///
/// Each instance has its own random sequence, seeded from the operating
/// system's randomness (through std's `RandomState`), so two processes that
/// lose their backend together do not retry together.
///
/// ```
/// use std::time::Duration;
/// use cable_core::pubsub::Backoff;
///
/// let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
/// let first = backoff.next_delay();
/// assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
/// let second = backoff.next_delay();
/// assert!(second >= Duration::from_millis(100) && second <= Duration::from_millis(200));
/// backoff.reset(); // connected again: the next outage starts small
/// assert!(backoff.next_delay() <= Duration::from_millis(100));
/// ```
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    ceiling: Duration,
    failures: u32,
    rng: Rng,
}

impl Backoff {
    /// Ceiling of the first delay: 100 ms.
    pub const DEFAULT_FIRST: Duration = Duration::from_millis(100);
    /// Cap on the delays: 5 s.
    pub const DEFAULT_MAX: Duration = Duration::from_secs(5);

    /// Delays whose ceiling starts at `first` and doubles up to `max` (raised
    /// to `first` if smaller).
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max: max.max(first),
            ceiling: first,
            failures: 0,
            rng: Rng::new(),
        }
    }

    /// The delay to wait before the next attempt; grows the ceiling for the
    /// one after.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling;
        self.ceiling = ceiling.saturating_mul(2).min(self.max);
        self.failures = self.failures.saturating_add(1);
        let half = ceiling / 2;
        // Nanoseconds: u64 holds 584 years, far more than any sane cap.
        let span = u64::try_from((ceiling - half).as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(self.rng.below(span.saturating_add(1)))
    }

    /// Starts over from `first`: call it once a connection is up again.
    pub fn reset(&mut self) {
        self.ceiling = self.first;
        self.failures = 0;
    }

    /// Delays handed out since the last reset (failed attempts in a row).
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

impl Default for Backoff {
    /// 100 ms doubling up to 5 s.
    fn default() -> Self {
        Backoff::new(Self::DEFAULT_FIRST, Self::DEFAULT_MAX)
    }
}

/// A tiny generator: SipHash of a counter under a key std draws from the
/// OS. Not for cryptography; plenty for spreading retries, and no dependency.
#[derive(Clone)]
struct Rng {
    state: RandomState,
    counter: u64,
}

impl Rng {
    fn new() -> Self {
        Rng {
            state: RandomState::new(),
            counter: 0,
        }
    }

    /// A number in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: u64) -> u64 {
        self.counter = self.counter.wrapping_add(1);
        let x = self.state.hash_one(self.counter);
        // Multiply-shift instead of `%`: no modulo bias worth speaking of.
        ((u128::from(x) * u128::from(n)) >> 64) as u64
    }
}

impl std::fmt::Debug for Rng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rng")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    #[test]
    fn delays_stay_within_the_upper_half_of_a_doubling_capped_ceiling() {
        for _ in 0..200 {
            let mut b = Backoff::new(FIRST, MAX);
            let mut ceiling = FIRST;
            for _ in 0..20 {
                let d = b.next_delay();
                assert!(
                    d >= ceiling / 2 && d <= ceiling,
                    "{d:?} outside {ceiling:?}"
                );
                assert!(d >= FIRST / 2 && d <= MAX, "{d:?}");
                ceiling = (ceiling * 2).min(MAX);
            }
        }
    }

    #[test]
    fn delays_grow_until_the_cap() {
        let mut b = Backoff::new(FIRST, MAX);
        let delays: Vec<Duration> = (0..12).map(|_| b.next_delay()).collect();
        // Ceilings 0.1, 0.2, ... 3.2 s double exactly: each delay is at least
        // the one before. The next ceiling is capped at 5 s.
        for pair in delays[..6].windows(2) {
            assert!(pair[0] <= pair[1], "{delays:?}");
        }
        assert!(delays[0] <= FIRST);
        // 100 ms * 2^6 = 6.4 s: capped from the seventh delay on.
        assert!(delays[6..].iter().all(|d| *d >= MAX / 2), "{delays:?}");
        assert_eq!(b.failures(), 12);
    }

    #[test]
    fn instances_do_not_move_in_lockstep() {
        let firsts: Vec<Duration> = (0..16)
            .map(|_| Backoff::new(FIRST, MAX).next_delay())
            .collect();
        assert!(
            firsts.iter().any(|d| *d != firsts[0]),
            "16 instances drew the same first delay: {firsts:?}"
        );
        // One instance's delays at the cap vary too.
        let mut b = Backoff::new(FIRST, MAX);
        let capped: Vec<Duration> = (0..30).map(|_| b.next_delay()).skip(10).collect();
        assert!(capped.iter().any(|d| *d != capped[0]), "{capped:?}");
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new(FIRST, MAX);
        for _ in 0..10 {
            b.next_delay();
        }
        assert!(b.next_delay() >= MAX / 2);
        b.reset();
        assert_eq!(b.failures(), 0);
        let d = b.next_delay();
        assert!(d >= FIRST / 2 && d <= FIRST, "{d:?}");
    }

    #[test]
    fn odd_bounds_are_harmless() {
        let mut zero = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(zero.next_delay(), Duration::ZERO);
        let mut inverted = Backoff::new(Duration::from_secs(1), Duration::from_millis(1));
        for _ in 0..5 {
            let d = inverted.next_delay();
            assert!(d >= Duration::from_millis(500) && d <= Duration::from_secs(1));
        }
        let mut huge = Backoff::new(Duration::MAX, Duration::MAX);
        assert!(huge.next_delay() >= Duration::MAX / 2);
        let d = Backoff::default().next_delay();
        assert!(d <= Backoff::DEFAULT_FIRST);
    }
}
