//! A keyed fixed-window rate limiter for the diagnostics endpoints.
//!
//! Each client key gets a window that starts at its first request and lasts one minute; within a
//! window exactly `limit` requests pass and the rest are rejected until it ends. One mutex guards
//! the whole table, so concurrent requests on any number of threads see one count: the
//! diagnostics endpoints take a few requests per minute per client, far too few for the lock to
//! matter. A fixed window was chosen over a token bucket (such as the `governor` crate's GCRA)
//! because it enforces "N per window" exactly and makes `RateLimit-Remaining` and
//! `RateLimit-Reset` exact numbers, where a bucket would let a burst of N and then a trickle
//! through within the same minute.
//!
//! Memory is bounded by [`MAX_TRACKED_CLIENTS`]. When the table is full, expired windows are
//! dropped first; if every window is still running, the one that started earliest is evicted.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Clients tracked at once. At about 64 bytes per entry the table stays under a megabyte.
pub const MAX_TRACKED_CLIENTS: usize = 10_000;

/// The state of the caller's window after a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateStatus {
    /// Whether this request may proceed.
    pub allowed: bool,
    /// Requests per window.
    pub limit: u32,
    /// Requests left in the current window after this one.
    pub remaining: u32,
    /// Time until the current window ends.
    pub reset: Duration,
    /// The request is the first one rejected in its window, which is the one worth logging.
    pub first_rejection: bool,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    count: u32,
}

/// Allows `limit` requests per key and window.
#[derive(Debug)]
pub struct RateLimiter {
    limit: u32,
    window: Duration,
    max_keys: usize,
    windows: Mutex<HashMap<IpAddr, Window>>,
}

impl RateLimiter {
    /// Creates a limiter of `limit` requests per minute, or `None` for 0, which means unlimited.
    pub fn per_minute(limit: u32) -> Option<Self> {
        (limit > 0).then(|| Self::new(limit, Duration::from_secs(60), MAX_TRACKED_CLIENTS))
    }

    pub fn new(limit: u32, window: Duration, max_keys: usize) -> Self {
        Self {
            limit,
            window,
            max_keys: max_keys.max(1),
            windows: Mutex::new(HashMap::new()),
        }
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Counts one request of `key` at `now` and returns whether it may proceed.
    pub fn check(&self, key: IpAddr, now: Instant) -> RateStatus {
        // A panic elsewhere cannot leave a window half-updated, so a poisoned table is still valid.
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        if !windows.contains_key(&key) && windows.len() >= self.max_keys {
            self.make_room(&mut windows, now);
        }
        let window = windows.entry(key).or_insert(Window {
            started: now,
            count: 0,
        });
        if now.duration_since(window.started) >= self.window {
            *window = Window {
                started: now,
                count: 0,
            };
        }
        window.count = window.count.saturating_add(1);
        let reset = self
            .window
            .saturating_sub(now.duration_since(window.started));
        RateStatus {
            allowed: window.count <= self.limit,
            limit: self.limit,
            remaining: self.limit.saturating_sub(window.count),
            reset,
            first_rejection: window.count == self.limit.saturating_add(1),
        }
    }

    /// Drops expired windows, then, if none expired, the window that started earliest.
    fn make_room(&self, windows: &mut HashMap<IpAddr, Window>, now: Instant) {
        windows.retain(|_, window| now.duration_since(window.started) < self.window);
        if windows.len() < self.max_keys {
            return;
        }
        let oldest = windows
            .iter()
            .min_by_key(|(_, window)| window.started)
            .map(|(key, _)| *key);
        if let Some(key) = oldest {
            windows.remove(&key);
        }
    }

    /// Clients currently tracked.
    pub fn tracked(&self) -> usize {
        self.windows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    #[test]
    fn passes_exactly_the_limit_per_window() {
        let limiter = RateLimiter::new(3, Duration::from_secs(60), 10);
        let now = Instant::now();
        let allowed: Vec<bool> = (0..5).map(|_| limiter.check(ip(1), now).allowed).collect();
        assert_eq!(allowed, [true, true, true, false, false]);
    }

    #[test]
    fn counts_remaining_and_marks_the_first_rejection() {
        let limiter = RateLimiter::new(2, Duration::from_secs(60), 10);
        let now = Instant::now();
        let statuses: Vec<RateStatus> = (0..4).map(|_| limiter.check(ip(1), now)).collect();
        let remaining: Vec<u32> = statuses.iter().map(|s| s.remaining).collect();
        assert_eq!(remaining, [1, 0, 0, 0]);
        let first: Vec<bool> = statuses.iter().map(|s| s.first_rejection).collect();
        assert_eq!(first, [false, false, true, false]);
    }

    #[test]
    fn window_restarts_after_it_ends() {
        let limiter = RateLimiter::new(1, Duration::from_secs(60), 10);
        let start = Instant::now();
        assert!(limiter.check(ip(1), start).allowed);
        let later = start + Duration::from_secs(30);
        let limited = limiter.check(ip(1), later);
        assert!(!limited.allowed);
        assert_eq!(limited.reset, Duration::from_secs(30));
        assert!(
            limiter
                .check(ip(1), start + Duration::from_secs(60))
                .allowed
        );
    }

    #[test]
    fn clients_have_separate_windows() {
        let limiter = RateLimiter::new(1, Duration::from_secs(60), 10);
        let now = Instant::now();
        assert!(limiter.check(ip(1), now).allowed);
        assert!(limiter.check(ip(2), now).allowed);
        assert!(!limiter.check(ip(1), now).allowed);
    }

    #[test]
    fn table_never_grows_past_its_bound() {
        let limiter = RateLimiter::new(5, Duration::from_secs(60), 100);
        let now = Instant::now();
        for n in 0..1_000u32 {
            let key = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n));
            limiter.check(key, now + Duration::from_millis(u64::from(n)));
        }
        assert_eq!(limiter.tracked(), 100);
    }

    #[test]
    fn expired_windows_are_dropped_before_running_ones() {
        let limiter = RateLimiter::new(1, Duration::from_secs(60), 2);
        let start = Instant::now();
        limiter.check(ip(1), start);
        limiter.check(ip(2), start + Duration::from_secs(59));
        limiter.check(ip(3), start + Duration::from_secs(61));
        let running = limiter.check(ip(2), start + Duration::from_secs(62));
        assert!(!running.allowed, "the running window of ip 2 was kept");
    }

    #[test]
    fn concurrent_checks_pass_exactly_the_limit() {
        let limiter = RateLimiter::new(50, Duration::from_secs(60), 10);
        let now = Instant::now();
        let allowed = std::sync::atomic::AtomicU32::new(0);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..100 {
                        if limiter.check(ip(1), now).allowed {
                            allowed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(allowed.into_inner(), 50);
    }
}
