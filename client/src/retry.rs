//! Retry policy: exponential backoff with a bound on attempts and on total time.

use std::time::{Duration, Instant};

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

/// A run of consecutive failures of an operation that keeps going (a subscription, one
/// partition's fetches), judged by a [`RetryPolicy`]: how many, since when, and when the next
/// attempt may start.
///
/// Owner: the operation's owner (one thread).
/// Invariant: `failures == 0` exactly when `first_failure_at` is `None`, and
/// `failures < policy.attempts_max` between calls (the failure that reaches it ends the run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetryRun {
    failures: u32,
    first_failure_at: Option<Instant>,
    /// No attempt starts before this (the backoff after the last failure).
    not_before: Instant,
}

impl RetryRun {
    /// No failures; the next attempt may start at once.
    pub(crate) fn new() -> RetryRun {
        RetryRun {
            failures: 0,
            first_failure_at: None,
            not_before: Instant::now(),
        }
    }

    /// When the next attempt may start.
    pub(crate) fn not_before(&self) -> Instant {
        self.not_before
    }

    /// Counts `error`, a failure of the operation now. `Ok` when another attempt may start
    /// after the backoff ([`not_before`](Self::not_before)), once `before_retry` ran (refresh
    /// metadata). Otherwise the error to report: `error` itself when it is not retriable (it
    /// does not count), or `RetriesExhausted` when the policy is spent (the run ends, so the
    /// next failure starts a new one).
    pub(crate) fn fail(
        &mut self,
        policy: &RetryPolicy,
        error: ClientError,
        before_retry: impl FnOnce(&ClientError),
    ) -> Result<(), ClientError> {
        self.fail_at(policy, error, Instant::now(), before_retry)
    }

    fn fail_at(
        &mut self,
        policy: &RetryPolicy,
        error: ClientError,
        now: Instant,
        before_retry: impl FnOnce(&ClientError),
    ) -> Result<(), ClientError> {
        if !error.is_retriable() {
            return Err(error);
        }
        self.failures += 1;
        let first = *self.first_failure_at.get_or_insert(now);
        let elapsed = now.saturating_duration_since(first);
        if !policy.allows(self.failures, elapsed) {
            let attempts = self.failures;
            self.end();
            return Err(exhausted(attempts, elapsed, error));
        }
        self.not_before = now + policy.backoff(self.failures);
        self.check_invariants();
        before_retry(&error);
        Ok(())
    }

    /// The operation succeeded (or was served long enough): a later failure starts a new run.
    /// The backoff already scheduled stays.
    pub(crate) fn end(&mut self) {
        self.failures = 0;
        self.first_failure_at = None;
        self.check_invariants();
    }

    /// Ends the run and lets the next attempt start at once (the caller moved elsewhere: a
    /// seek).
    pub(crate) fn restart(&mut self) {
        self.end();
        self.not_before = Instant::now();
    }

    fn check_invariants(&self) {
        assert!((self.failures == 0) == self.first_failure_at.is_none());
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

    fn not_leader() -> ClientError {
        ClientError::broker(ApiKey::Fetch, ErrorCode::NOT_LEADER, "")
    }

    #[test]
    fn a_run_backs_off_per_failure_and_ends_when_the_policy_is_spent() {
        let p = policy();
        let mut run = RetryRun::new();
        let start = Instant::now();
        let mut refreshes = 0;
        for failure in 1..=4 {
            run.fail_at(&p, not_leader(), start, |_| refreshes += 1)
                .unwrap();
            assert_eq!(run.not_before(), start + p.backoff(failure));
        }
        assert_eq!(refreshes, 4);
        // The fifth failure spends the five attempts: reported, without a refresh.
        match run.fail_at(&p, not_leader(), start, |_| refreshes += 1) {
            Err(ClientError::RetriesExhausted { attempts, last, .. }) => {
                assert_eq!(attempts, 5);
                assert_eq!(last.code(), Some(ErrorCode::NOT_LEADER));
            }
            other => panic!("expected RetriesExhausted, got {other:?}"),
        }
        assert_eq!(refreshes, 4);
        // The run ended with the report: the next failure is the first of a new one.
        run.fail_at(&p, not_leader(), start, |_| {}).unwrap();
        assert_eq!(run.not_before(), start + p.backoff(1));
    }

    #[test]
    fn a_run_ends_once_the_elapsed_bound_would_pass() {
        let p = policy();
        let mut run = RetryRun::new();
        let start = Instant::now();
        run.fail_at(&p, not_leader(), start, |_| {}).unwrap();
        // Timed from the run's first failure, not the last.
        run.fail_at(&p, not_leader(), start + Duration::from_secs(5), |_| {})
            .unwrap();
        let result = run.fail_at(&p, not_leader(), start + Duration::from_secs(10), |_| {});
        assert!(
            matches!(
                result,
                Err(ClientError::RetriesExhausted {
                    attempts: 3,
                    elapsed_ms: 10_000,
                    ..
                })
            ),
            "{result:?}"
        );
        // The report ended the run: the next one is timed from its own first failure.
        let later = start + Duration::from_secs(20);
        run.fail_at(&p, not_leader(), later, |_| {}).unwrap();
        run.fail_at(&p, not_leader(), later + Duration::from_secs(5), |_| {})
            .unwrap();
    }

    #[test]
    fn a_permanent_error_is_returned_as_it_is_and_not_counted() {
        let p = policy();
        let mut run = RetryRun::new();
        let start = Instant::now();
        run.fail_at(&p, not_leader(), start, |_| {}).unwrap();
        let mut refreshed = false;
        let result = run.fail_at(&p, ClientError::UnknownTopic("t".into()), start, |_| {
            refreshed = true
        });
        assert!(matches!(result, Err(ClientError::UnknownTopic(_))));
        assert!(!refreshed);
        // Still the second failure of the run.
        run.fail_at(&p, not_leader(), start, |_| {}).unwrap();
        assert_eq!(run.not_before(), start + p.backoff(2));
    }

    #[test]
    fn end_starts_a_new_run_and_restart_also_drops_the_backoff() {
        let p = policy();
        let mut run = RetryRun::new();
        let start = Instant::now();
        for _ in 0..3 {
            run.fail_at(&p, not_leader(), start, |_| {}).unwrap();
        }
        run.end();
        assert_eq!(run.not_before(), start + p.backoff(3), "the backoff stays");
        for _ in 0..4 {
            run.fail_at(&p, not_leader(), start, |_| {}).unwrap();
        }
        assert_eq!(
            run.not_before(),
            start + p.backoff(4),
            "four of five, not seven"
        );
        run.restart();
        assert!(run.not_before() <= Instant::now());
        run.fail_at(&p, not_leader(), start, |_| {}).unwrap();
        assert_eq!(run.not_before(), start + p.backoff(1));
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
