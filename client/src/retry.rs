//! Retry policy: exponential backoff with a bound on attempts and on total time.

use std::time::Duration;

use crate::error::ClientError;

/// How often and for how long a retriable failure is retried.
///
/// An operation makes at most `attempts_max` attempts, and none starts later than
/// `elapsed_max` after the first. Before retry `n` (1-based) it waits
/// `backoff_initial * 2^(n-1)`, capped at `backoff_max`. No jitter: a blocking client has one
/// thread per producer, so synchronised retries from one process are not a concern here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included. At least 1 (1 = never retry).
    pub attempts_max: u32,
    /// Wait before the first retry.
    pub backoff_initial: Duration,
    /// Longest wait between two attempts.
    pub backoff_max: Duration,
    /// No attempt starts later than this after the first one.
    pub elapsed_max: Duration,
}

impl Default for RetryPolicy {
    /// 10 attempts, 10 ms doubling to 1 s, within 30 s.
    fn default() -> Self {
        RetryPolicy {
            attempts_max: 10,
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_secs(1),
            elapsed_max: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries.
    pub fn never() -> RetryPolicy {
        RetryPolicy {
            attempts_max: 1,
            ..RetryPolicy::default()
        }
    }

    /// The wait before retry number `retry` (1 = the first retry). Saturates at `backoff_max`.
    pub fn backoff(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(31);
        self.backoff_initial
            .saturating_mul(1u32 << doublings)
            .min(self.backoff_max)
    }

    /// Whether another attempt may start, after `attempts` attempts of which the first began
    /// `elapsed` ago, once the backoff before it has passed.
    pub fn allows(&self, attempts: u32, elapsed: Duration) -> bool {
        attempts < self.attempts_max
            && elapsed.saturating_add(self.backoff(attempts)) <= self.elapsed_max
    }

    /// Checks the fields; names the bad one.
    pub fn validate(&self) -> Result<(), ClientError> {
        if self.attempts_max == 0 {
            return Err(ClientError::Config {
                field: "retry.attempts_max",
                reason: "must be at least 1".into(),
            });
        }
        if self.backoff_initial > self.backoff_max {
            return Err(ClientError::Config {
                field: "retry.backoff_initial",
                reason: format!(
                    "{:?} exceeds backoff_max {:?}",
                    self.backoff_initial, self.backoff_max
                ),
            });
        }
        Ok(())
    }

    /// Runs `attempt` until it succeeds, fails with a non-retriable error, or the policy is
    /// spent. `before_retry` runs before each retry (refresh metadata, drop a connection).
    /// Sleeps between attempts on the calling thread.
    pub(crate) fn run<T, S>(
        &self,
        state: &mut S,
        mut attempt: impl FnMut(&mut S) -> Result<T, ClientError>,
        mut before_retry: impl FnMut(&mut S, &ClientError),
    ) -> Result<T, ClientError> {
        let started = std::time::Instant::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let error = match attempt(state) {
                Ok(value) => return Ok(value),
                Err(error) if !error.is_retriable() => return Err(error),
                Err(error) => error,
            };
            if !self.allows(attempts, started.elapsed()) {
                return Err(exhausted(attempts, started.elapsed(), error));
            }
            before_retry(state, &error);
            std::thread::sleep(self.backoff(attempts));
        }
    }
}

/// The error reported when a retriable failure outlived the policy.
pub(crate) fn exhausted(attempts: u32, elapsed: Duration, last: ClientError) -> ClientError {
    ClientError::RetriesExhausted {
        attempts,
        elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        last: Box::new(last),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{ApiKey, ErrorCode};
    use std::time::Instant;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            attempts_max: 5,
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(50),
            elapsed_max: Duration::from_secs(10),
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = policy();
        let waits: Vec<u128> = (1..=6).map(|n| p.backoff(n).as_millis()).collect();
        assert_eq!(waits, [10, 20, 40, 50, 50, 50]);
        // Huge retry numbers saturate instead of overflowing.
        assert_eq!(p.backoff(u32::MAX), Duration::from_millis(50));
        let unbounded = RetryPolicy {
            backoff_max: Duration::MAX,
            ..p
        };
        assert_eq!(unbounded.backoff(64), Duration::from_millis(10) * (1 << 31));
    }

    #[test]
    fn attempts_and_elapsed_time_are_bounded() {
        let p = policy();
        assert!(p.allows(1, Duration::ZERO));
        assert!(p.allows(4, Duration::ZERO));
        assert!(!p.allows(5, Duration::ZERO), "5 attempts is the most");
        // The next backoff (10 ms after 1 attempt) must still fit in elapsed_max.
        assert!(p.allows(1, Duration::from_millis(9_990)));
        assert!(!p.allows(1, Duration::from_millis(9_991)));
        assert!(!RetryPolicy::never().allows(1, Duration::ZERO));
    }

    #[test]
    fn run_stops_after_attempts_max_and_reports_the_last_error() {
        let p = RetryPolicy {
            backoff_initial: Duration::from_millis(1),
            backoff_max: Duration::from_millis(2),
            ..policy()
        };
        let mut calls = 0u32;
        let mut refreshes = 0u32;
        let started = Instant::now();
        let result: Result<(), ClientError> = p.run(
            &mut (),
            |_| {
                calls += 1;
                Err(ClientError::broker(
                    ApiKey::Metadata,
                    ErrorCode::NOT_LEADER,
                    "",
                ))
            },
            |_, _| refreshes += 1,
        );
        assert_eq!(calls, 5);
        assert_eq!(refreshes, 4);
        // 1 + 2 + 2 + 2 ms of backoff; well under a second even on a loaded machine.
        assert!(started.elapsed() >= Duration::from_millis(7));
        assert!(started.elapsed() < Duration::from_secs(1));
        match result {
            Err(ClientError::RetriesExhausted { attempts, last, .. }) => {
                assert_eq!(attempts, 5);
                assert_eq!(last.code(), Some(ErrorCode::NOT_LEADER));
            }
            other => panic!("expected RetriesExhausted, got {other:?}"),
        }
    }

    #[test]
    fn run_does_not_retry_a_permanent_error_and_returns_success() {
        let p = policy();
        let mut calls = 0;
        let result: Result<(), ClientError> = p.run(
            &mut (),
            |_| {
                calls += 1;
                Err(ClientError::UnknownTopic("t".into()))
            },
            |_, _| {},
        );
        assert!(matches!(result, Err(ClientError::UnknownTopic(_))));
        assert_eq!(calls, 1);

        let mut calls = 0;
        let result = p.run(
            &mut (),
            |_| {
                calls += 1;
                if calls < 3 {
                    Err(ClientError::broker(
                        ApiKey::Fetch,
                        ErrorCode::SHUTTING_DOWN,
                        "",
                    ))
                } else {
                    Ok(calls)
                }
            },
            |_, _| {},
        );
        assert_eq!(result.unwrap(), 3);
    }

    #[test]
    fn elapsed_bound_stops_retries_before_attempts_run_out() {
        let p = RetryPolicy {
            attempts_max: 1000,
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_millis(20),
            elapsed_max: Duration::from_millis(100),
        };
        let mut calls = 0u32;
        let started = Instant::now();
        let result: Result<(), ClientError> = p.run(
            &mut (),
            |_| {
                calls += 1;
                Err(ClientError::broker(ApiKey::Fetch, ErrorCode::TIMEOUT, ""))
            },
            |_, _| {},
        );
        assert!(matches!(result, Err(ClientError::RetriesExhausted { .. })));
        assert!((2..=6).contains(&calls), "{calls} attempts");
        assert!(started.elapsed() < Duration::from_millis(500));
    }

    #[test]
    fn validate_names_the_field() {
        let bad = RetryPolicy {
            attempts_max: 0,
            ..policy()
        };
        assert!(matches!(
            bad.validate(),
            Err(ClientError::Config {
                field: "retry.attempts_max",
                ..
            })
        ));
        assert!(policy().validate().is_ok());
    }
}
