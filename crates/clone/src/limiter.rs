//! One token bucket shared by all copy workers, so `--limit-net-bw` bounds
//! the whole clone rather than each worker.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Aggregate bandwidth limit; unlimited when built with `None`.
#[derive(Debug)]
pub struct Limiter {
    rate: Option<u64>,
    state: Mutex<(Instant, u64)>,
}

impl Limiter {
    /// `rate` bytes/s over all workers.
    pub fn new(rate: Option<u64>) -> Self {
        Self {
            rate: rate.filter(|r| *r > 0),
            state: Mutex::new((Instant::now(), 0)),
        }
    }

    /// Whether a limit is set (callers then copy in small pieces).
    pub fn is_limited(&self) -> bool {
        self.rate.is_some()
    }

    /// Accounts `bytes` and sleeps until the aggregate rate allows them.
    pub fn consume(&self, bytes: u64) {
        let Some(rate) = self.rate else {
            return;
        };
        let wait = {
            let mut state = match self.state.lock() {
                Ok(s) => s,
                Err(poisoned) => poisoned.into_inner(),
            };
            state.1 += bytes;
            let due = state.0 + Duration::from_secs_f64(state.1 as f64 / rate as f64);
            due.saturating_duration_since(Instant::now())
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_the_aggregate_rate() {
        let limiter = Limiter::new(Some(1_000_000));
        let started = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for _ in 0..5 {
                        limiter.consume(20_000);
                    }
                });
            }
        });
        // 200 kB at 1 MB/s: at least 0.2 s whatever the thread count.
        assert!(started.elapsed() >= Duration::from_millis(190));
        assert!(!Limiter::new(None).is_limited());
    }
}
