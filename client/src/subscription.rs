//! Push subscriptions: one partition's records as the broker pushes them (`Subscribe`), with
//! no request per delivery, from a position the subscription keeps across reconnects.

use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::api::{SubscribeDelivery, SubscribeRequest, UnsubscribeRequest, UnsubscribeResponse};
use protocol::{ApiKey, ErrorCode};

use crate::client::Client;
use crate::connection::{Connection, Response};
use crate::consumer::StartOffset;
use crate::error::ClientError;
use crate::records::{ConsumedRecord, visit_records};
use crate::retry::exhausted;

/// Most bytes of batches the broker puts in one delivery (it sends one whole batch when the
/// first is larger, so a subscription never stalls). 1 MiB, as the consumer's default fetch:
/// a backlog arrives in few deliveries, and several fit in the broker's window of unsent
/// responses per connection (4 MiB), so the next is on its way while the client takes one.
const DELIVERY_BYTES_MAX: u32 = 1 << 20;

/// The shortest wait of [`Subscription::next_records`]: a zero read timeout would not even
/// take a delivery already in the socket's buffer.
const WAIT_MIN: Duration = Duration::from_millis(1);

/// A subscription the broker is serving: its own connection to the leader's shard port and
/// the `Subscribe` request's correlation id, which names it for `Unsubscribe`.
#[derive(Debug)]
struct Open {
    connection: Connection,
    subscription: u64,
    opened_at: Instant,
}

/// One partition's records, pushed by the broker as they are committed.
///
/// Owner: one thread. It owns its [`Client`] (metadata, retry policy, connection settings)
/// and a connection of its own to the partition leader's shard port, where the broker serves
/// subscriptions whatever the client's [`Routing`](crate::Routing).
///
/// Invariant: `position` is the offset of the next record to return. Records below it are
/// skipped (a delivery's first batch may start before it) and every returned record is the
/// one at `position`, so records come back in offset order, each once, across
/// resubscriptions. Every batch of a delivery is checked (lengths, crc32c) before any of its
/// records is returned.
///
/// On error: `NotLeader`, `ShuttingDown` or a lost connection closes the connection; the
/// subscription refreshes the metadata and subscribes again at its position after the
/// client's [`RetryPolicy`](crate::RetryPolicy) backoff. The policy bounds consecutive
/// failures (`RetriesExhausted`); a delivery, or a subscription that stayed open for the
/// policy's `backoff_max`, ends a run of failures. Other errors (`OffsetOutOfRange`,
/// `CorruptBatch`, a broker breaking the protocol) are returned as they are; the position does
/// not move, and the next call subscribes again there ([`seek`](Self::seek) moves it).
///
/// Dropping a subscription closes its connection, which ends it on the broker as well;
/// [`close`](Self::close) also waits for the broker to confirm.
#[derive(Debug)]
pub struct Subscription {
    client: Client,
    topic: Arc<str>,
    partition: u32,
    position: u64,
    /// `None` between a failure and the next subscribe.
    open: Option<Open>,
    /// Consecutive failures, and when the first of them happened.
    failures: u32,
    first_failure_at: Option<Instant>,
    /// No subscribe is sent before this (backoff after a failure).
    not_before: Instant,
}

impl Subscription {
    /// Subscribes to `topic`/`partition` from `from`: `Earliest`/`Latest` ask the leader
    /// (`ListOffsets`), `Offset` is taken as it is. Retries retriable failures per the
    /// client's retry policy. Errors as [`Client::list_offsets`] and
    /// [`Client::leader_address`]; `RetriesExhausted` when the leader stayed unreachable.
    /// An offset outside the log is reported by the first [`next_records`](Self::next_records).
    pub fn new(
        mut client: Client,
        topic: &str,
        partition: u32,
        from: StartOffset,
    ) -> Result<Subscription, ClientError> {
        let position = from.resolve(&mut client, topic, partition)?;
        let mut subscription = Subscription {
            client,
            topic: Arc::from(topic),
            partition,
            position,
            open: None,
            failures: 0,
            first_failure_at: None,
            not_before: Instant::now(),
        };
        subscription.ensure_open(None)?;
        Ok(subscription)
    }

    /// The offset of the next record [`next_records`](Self::next_records) returns.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The topic this subscription reads.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition this subscription reads.
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// Moves the position: the current subscription ends (its connection closes) and the
    /// next [`next_records`](Self::next_records) subscribes at `offset`. For example after
    /// `OffsetOutOfRange`, to the log start that error names.
    pub fn seek(&mut self, offset: u64) {
        self.open = None;
        self.position = offset;
        self.end_failures();
        self.not_before = Instant::now();
    }

    /// Waits up to about `max_wait` (at least 1 ms) for the next delivery with records at or
    /// above the position, and returns them as owned copies, in offset order. Empty when none
    /// arrived in time, or while a resubscription is backing off. Subscribes again first
    /// when a failure ended the last subscription.
    ///
    /// Errors: `OffsetOutOfRange` (the position is outside the log), `CorruptBatch` (nothing
    /// of that delivery is returned), `Broker` for a code that ends the subscription for good,
    /// `Decode`/`Protocol` for a broker that breaks the protocol (a delivery that skips
    /// offsets included), `RetriesExhausted` when the subscription kept failing. After any
    /// of them the position is unchanged.
    pub fn next_records(&mut self, max_wait: Duration) -> Result<Vec<ConsumedRecord>, ClientError> {
        // `None`: a wait too long to represent, that is, no bound.
        let until = Instant::now().checked_add(max_wait.max(WAIT_MIN));
        // Each turn takes one delivery, or ends a subscription (failures are bounded by the
        // retry policy), or returns; `until` bounds the deliveries taken.
        loop {
            if !self.ensure_open(until)? {
                return Ok(Vec::new());
            }
            let Some(open) = self.open.as_mut() else {
                return Ok(Vec::new());
            };
            let received = match until {
                Some(until) => match until.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => open.connection.poll(left),
                    _ => return Ok(Vec::new()),
                },
                None => open.connection.recv(),
            };
            let delivered = match received {
                // The stream stays registered while open: nothing arrived in time.
                Ok(None) => return Ok(Vec::new()),
                Ok(Some(response)) => self.deliver(&response),
                Err(error) => Err(error),
            };
            match delivered {
                Ok(records) if records.is_empty() => {}
                Ok(records) => return Ok(records),
                Err(error) => self.fail(error)?,
            }
        }
    }

    /// Ends the subscription: sends `Unsubscribe` and waits, up to the client's request
    /// timeout, for the broker's answer, which comes once no delivery follows; deliveries
    /// that arrive before it are dropped ([`position`](Self::position) still says where the
    /// next subscription should start). `Broker` if the broker refuses; the connection's
    /// error if it fails. The connection closes either way.
    pub fn close(mut self) -> Result<(), ClientError> {
        let Some(mut open) = self.open.take() else {
            return Ok(());
        };
        let request = UnsubscribeRequest {
            subscription: open.subscription,
        };
        let unsubscribe = open.connection.send(&request)?;
        let mut ended_by_broker = false;
        // Each turn takes one frame, and the Unsubscribe's deadline bounds the wait.
        while let Some(response) = open.connection.recv()? {
            if response.correlation_id() != unsubscribe {
                // A delivery. One with an error ended the subscription already; the broker
                // then answers that it knows no such subscription.
                let ended = response
                    .access::<SubscribeDelivery>()
                    .is_ok_and(|delivery| !delivery.error.get().is_ok());
                if ended {
                    ended_by_broker = true;
                    open.connection.end_stream(open.subscription);
                }
                continue;
            }
            let answer: UnsubscribeResponse = response.deserialize()?;
            return match answer.error {
                ErrorCode::NONE => Ok(()),
                ErrorCode::INVALID_REQUEST if ended_by_broker => Ok(()),
                code => Err(ClientError::broker(ApiKey::Unsubscribe, code, "")),
            };
        }
        // Nothing is in flight any more, so the answer was taken above: not reached.
        Ok(())
    }

    /// Subscribes if no subscription is open, retrying retriable failures per the retry
    /// policy. `Ok(false)` when the backoff before the next attempt ends after `until` (it
    /// then sleeps until `until`); `until` `None` waits for every backoff.
    fn ensure_open(&mut self, until: Option<Instant>) -> Result<bool, ClientError> {
        // Each failed attempt counts against the retry policy, which ends the run of them.
        while self.open.is_none() {
            let now = Instant::now();
            if let Some(until) = until
                && self.not_before > until
            {
                std::thread::sleep(until.saturating_duration_since(now));
                return Ok(false);
            }
            std::thread::sleep(self.not_before.saturating_duration_since(now));
            match self.subscribe() {
                Ok(open) => self.open = Some(open),
                Err(error) => self.fail(error)?,
            }
        }
        Ok(true)
    }

    /// One attempt: a new connection to the leader's shard port and `Subscribe` at the
    /// position. Whether the broker serves it shows in its first delivery.
    fn subscribe(&mut self) -> Result<Open, ClientError> {
        let address = self.client.leader_address(&self.topic, self.partition)?;
        let mut connection = self.client.open_connection(&address)?;
        let subscription = connection.send_stream(&SubscribeRequest {
            topic: self.topic.to_string(),
            partition: self.partition,
            offset: self.position,
            max_bytes: DELIVERY_BYTES_MAX,
        })?;
        Ok(Open {
            connection,
            subscription,
            opened_at: Instant::now(),
        })
    }

    /// Takes one delivery: its records at or above the position, in order. An error
    /// delivery (which ends the subscription) becomes the error it names.
    fn deliver(&mut self, response: &Response) -> Result<Vec<ConsumedRecord>, ClientError> {
        let delivery = response.access::<SubscribeDelivery>()?;
        let code = delivery.error.get();
        let high_watermark = delivery.high_watermark.to_native();
        if code == ErrorCode::OFFSET_OUT_OF_RANGE {
            return Err(ClientError::OffsetOutOfRange {
                topic: self.topic.to_string(),
                partition: self.partition,
                offset: self.position,
                log_start_offset: delivery.log_start_offset.to_native(),
                high_watermark,
            });
        }
        if !code.is_ok() {
            return Err(ClientError::broker(ApiKey::Subscribe, code, ""));
        }
        let mut records = Vec::new();
        let (topic, partition) = (&self.topic, self.partition);
        let visited = visit_records(
            delivery.records.as_slice(),
            self.position,
            high_watermark,
            |record| records.push(ConsumedRecord::copied(topic, partition, &record)),
        )
        .map_err(|source| ClientError::CorruptBatch {
            topic: topic.to_string(),
            partition,
            source,
        })?;
        if let Some(skipped) = first_gap(self.position, &records) {
            return Err(ClientError::Protocol {
                peer: response.peer(),
                reason: format!(
                    "a delivery of {topic}/{partition} has offset {skipped} where {} was due",
                    self.position
                ),
            });
        }
        self.position = visited.position;
        // The broker served the subscription: a later failure starts a new run.
        self.end_failures();
        Ok(records)
    }

    /// A failure of the subscription, or of an attempt to open one: closes its connection,
    /// then schedules a resubscription after the backoff, or returns the error (not
    /// retriable, or the retry policy is spent).
    fn fail(&mut self, error: ClientError) -> Result<(), ClientError> {
        let policy = self.client.config().retry;
        let served = self
            .open
            .take()
            .is_some_and(|open| open.opened_at.elapsed() >= policy.backoff_max);
        if served {
            self.end_failures();
        }
        if !error.is_retriable() {
            return Err(error);
        }
        let now = Instant::now();
        self.failures += 1;
        let first = *self.first_failure_at.get_or_insert(now);
        let elapsed = now.saturating_duration_since(first);
        if !policy.allows(self.failures, elapsed) {
            let attempts = self.failures;
            self.end_failures();
            return Err(exhausted(attempts, elapsed, error));
        }
        self.not_before = now + policy.backoff(self.failures);
        self.client.after_failure(&error);
        Ok(())
    }

    fn end_failures(&mut self) {
        self.failures = 0;
        self.first_failure_at = None;
    }
}

/// The first offset in `records` that does not follow on from `position` densely, if any.
fn first_gap(position: u64, records: &[ConsumedRecord]) -> Option<u64> {
    records
        .iter()
        .zip(position..)
        .find(|(record, due)| record.offset != *due)
        .map(|(record, _)| record.offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(offsets: &[u64]) -> Vec<ConsumedRecord> {
        let topic: Arc<str> = Arc::from("t");
        offsets
            .iter()
            .map(|&offset| ConsumedRecord {
                topic: Arc::clone(&topic),
                partition: 0,
                offset,
                timestamp_ms: 0,
                key: vec![],
                value: vec![],
                headers: vec![],
            })
            .collect()
    }

    #[test]
    fn records_that_skip_an_offset_are_a_gap() {
        assert_eq!(first_gap(5, &at(&[])), None);
        assert_eq!(first_gap(5, &at(&[5, 6, 7])), None);
        assert_eq!(
            first_gap(5, &at(&[6, 7])),
            Some(6),
            "the first is not the due one"
        );
        assert_eq!(first_gap(5, &at(&[5, 6, 8])), Some(8));
    }
}
