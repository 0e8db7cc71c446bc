//! How much of a core the machine takes from a thread that never sleeps, as a spinning shard
//! sees it: a thread pinned to the core reads the clock in a loop, and every gap of
//! [`GAP_MIN`] or more between two reads is time the core spent elsewhere (an interrupt,
//! another thread, the host).
//!
//! Measured twice: alone, and beside a second thread on the same core that wakes at a fixed
//! rate, as the kernel's helper threads wake on a shard's core for each of its writes and
//! syncs (the io_uring worker that runs an fdatasync, the block layer's flush work, the
//! file system's completion work). The difference per wake-up is what one such wake-up
//! costs a busy shard at least (the waking thread here does no work): 23-25 us on the
//! reference VM (tuning/README.md, "What the shard's core pays for the kernel's helpers").

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::least_timer_slack;
use crate::machine::pin;

/// The shortest gap between two clock reads that counts as time taken from the spinner.
/// A read takes well under a microsecond, so anything this long is something else.
pub const GAP_MIN: Duration = Duration::from_micros(5);

/// What a spinning thread on one core lost over `span`.
#[derive(Debug, Clone, Copy)]
pub struct CoreNoise {
    pub span: Duration,
    /// The sum of the gaps of at least [`GAP_MIN`].
    pub lost: Duration,
    pub gaps: u64,
    pub gaps_over_100us: u64,
    pub longest: Duration,
    /// How often the second thread woke (0 when the spinner ran alone).
    pub wakeups: u64,
}

impl CoreNoise {
    /// Spins on `core` for `span`; with `wake_every`, beside a thread on the same core that
    /// sleeps that long between wake-ups (counted while the spinner runs). `None` when a
    /// thread could not be pinned to `core` (the process may not run there).
    pub fn measure(core: usize, span: Duration, wake_every: Option<Duration>) -> Option<CoreNoise> {
        let spinning = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let wakeups = Arc::new(AtomicU64::new(0));
        let waker = wake_every.map(|interval| {
            let (spinning, stop, wakeups) = (
                Arc::clone(&spinning),
                Arc::clone(&stop),
                Arc::clone(&wakeups),
            );
            std::thread::spawn(move || {
                let pinned = pin(core);
                least_timer_slack("core noise waker");
                while pinned && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(interval);
                    if spinning.load(Ordering::Relaxed) {
                        wakeups.fetch_add(1, Ordering::Relaxed);
                    }
                }
                pinned
            })
        });
        let spinner = {
            let spinning = Arc::clone(&spinning);
            std::thread::spawn(move || {
                if !pin(core) {
                    return None;
                }
                spinning.store(true, Ordering::Relaxed);
                let noise = spin(span);
                spinning.store(false, Ordering::Relaxed);
                Some(noise)
            })
        };
        // A panic in either thread (only possible in a debug build) measured nothing.
        let noise = spinner.join().ok().flatten();
        stop.store(true, Ordering::Relaxed);
        let waker_pinned = waker.is_none_or(|waker| waker.join().unwrap_or(false));
        Some(CoreNoise {
            wakeups: wakeups.load(Ordering::Relaxed),
            ..noise.filter(|_| waker_pinned)?
        })
    }

    /// The share of the span the spinner lost.
    pub fn lost_fraction(&self) -> f64 {
        self.lost.as_secs_f64() / self.span.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// Microseconds a spinner lost per wake-up of the other thread, beyond what it lost alone
    /// (`alone`, scaled to this span). `None` when the other thread never woke.
    pub fn per_wakeup_us(&self, alone: &CoreNoise) -> Option<f64> {
        if self.wakeups == 0 {
            return None;
        }
        let extra = self.lost.as_secs_f64() - alone.lost_fraction() * self.span.as_secs_f64();
        Some(extra * 1e6 / self.wakeups as f64)
    }
}

/// Reads the clock in a loop for `span` on the calling thread.
fn spin(span: Duration) -> CoreNoise {
    let started = Instant::now();
    let mut noise = CoreNoise::empty(span);
    let mut before = started;
    loop {
        let now = Instant::now();
        noise.count(now - before);
        before = now;
        if now - started >= span {
            noise.span = now - started;
            return noise;
        }
    }
}

impl CoreNoise {
    fn empty(span: Duration) -> CoreNoise {
        CoreNoise {
            span,
            lost: Duration::ZERO,
            gaps: 0,
            gaps_over_100us: 0,
            longest: Duration::ZERO,
            wakeups: 0,
        }
    }

    /// One interval between two clock reads: a gap if it is at least [`GAP_MIN`].
    fn count(&mut self, interval: Duration) {
        if interval >= GAP_MIN {
            self.lost += interval;
            self.gaps += 1;
            self.gaps_over_100us += u64::from(interval > Duration::from_micros(100));
            self.longest = self.longest.max(interval);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(micros: u64) -> Duration {
        Duration::from_micros(micros)
    }

    #[test]
    fn only_intervals_of_at_least_gap_min_count_as_lost() {
        let mut noise = CoreNoise::empty(us(1_000));
        for interval in [
            us(0),
            us(4),
            us(5),
            us(100),
            us(101),
            Duration::from_nanos(4_999),
        ] {
            noise.count(interval);
        }
        assert_eq!(noise.gaps, 3);
        assert_eq!(noise.gaps_over_100us, 1);
        assert_eq!(noise.lost, us(206));
        assert_eq!(noise.longest, us(101));
        assert!((noise.lost_fraction() - 0.206).abs() < 1e-9);
    }

    #[test]
    fn the_cost_per_wakeup_is_what_the_spinner_lost_beyond_its_own_noise() {
        let alone = CoreNoise {
            lost: us(10_000),
            ..CoreNoise::empty(Duration::from_secs(1))
        };
        assert_eq!(alone.per_wakeup_us(&alone), None);
        // Over twice the span, 1 % of it (20 ms) is the noise alone; the other 100 ms is
        // 4,000 wake-ups' worth.
        let beside = CoreNoise {
            lost: us(120_000),
            wakeups: 4_000,
            ..CoreNoise::empty(Duration::from_secs(2))
        };
        let cost = beside.per_wakeup_us(&alone).unwrap_or(f64::NAN);
        assert!((cost - 25.0).abs() < 1e-9, "{cost}");
    }

    /// A core this process may run on (CI machines may not offer core 0).
    fn some_core() -> usize {
        core_affinity::get_core_ids()
            .and_then(|ids| ids.first().map(|id| id.id))
            .unwrap_or(0)
    }

    #[test]
    fn a_measured_span_accounts_for_no_more_than_its_own_length() {
        let noise = CoreNoise::measure(some_core(), us(20_000), None);
        let noise = noise.unwrap_or_else(|| panic!("no core to spin on"));
        assert!(noise.span >= us(20_000));
        assert!(noise.lost <= noise.span);
        assert_eq!(noise.wakeups, 0);
    }

    #[test]
    fn the_thread_beside_the_spinner_wakes_and_is_counted() {
        let noise = CoreNoise::measure(some_core(), us(50_000), Some(us(200)));
        let noise = noise.unwrap_or_else(|| panic!("no core to spin on"));
        // Some, and at most one per 200 us the spinner ran: the waker sleeps at least that
        // long each time and is counted only while the spinner runs.
        assert!(noise.wakeups > 0);
        let most = noise.span.as_micros() / 200 + 1;
        assert!(
            u128::from(noise.wakeups) <= most,
            "{} wake-ups",
            noise.wakeups
        );
    }

    #[test]
    fn a_core_the_process_may_not_run_on_measures_nothing() {
        assert!(CoreNoise::measure(usize::MAX, us(1_000), None).is_none());
        assert!(CoreNoise::measure(usize::MAX, us(1_000), Some(us(200))).is_none());
    }
}
