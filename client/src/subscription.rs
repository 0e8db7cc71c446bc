//! Push subscriptions: one partition's records as the broker pushes them (`Subscribe`), with
//! no request per delivery, from a position the subscription keeps across reconnects.

use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::api::{
    ApiVersionsRequest, SubscribeDelivery, SubscribeRequest, UnsubscribeRequest,
    UnsubscribeResponse,
};
use protocol::{ApiKey, ErrorCode};

use crate::client::Client;
use crate::connection::{Connection, Response};
use crate::consumer::StartOffset;
use crate::error::ClientError;
use crate::limits::IN_FLIGHT_MAX;
use crate::records::{ConsumedRecord, visit_records};
use crate::retry::RetryRun;

/// Most bytes of batches the broker puts in one delivery (it sends one whole batch when the
/// first is larger, so a subscription never stalls). 1 MiB, as the consumer's default fetch:
/// a backlog arrives in few deliveries, and several fit in the broker's window of unsent
/// responses per connection (4 MiB), so the next is on its way while the client takes one.
const DELIVERY_BYTES_MAX: u32 = 1 << 20;

/// The shortest wait of [`Subscription::next_records`]: a zero read timeout would not even
/// take a delivery already in the socket's buffer.
const WAIT_MIN: Duration = Duration::from_millis(1);

/// Longest a subscription's connection may stay silent before the subscription asks whether
/// the broker is still there, with a probe: `ApiVersions`, which any broker answers at once
/// and which changes nothing. The broker sends nothing on an idle subscription, and a dead
/// host or a network split may never close the connection (no FIN, no RST), so without a probe
/// the subscription would wait forever; a probe unanswered within the request timeout counts
/// as a lost connection. 5 s: a probe is about a hundred bytes each way per idle subscription,
/// and a dead broker is noticed within 5 s plus the request timeout. A client whose request
/// timeout is shorter probes after that instead: it asked to notice a silent broker sooner.
const SILENCE_MAX: Duration = Duration::from_secs(5);

/// Places among the requests in flight that a subscription's connection needs: its stream, a
/// probe, `close`'s `Unsubscribe` beside both, and the place a connection keeps free for a
/// stream's responses (see [`Connection`]).
const IN_FLIGHT_MIN: usize = 4;

const _: () = assert!(IN_FLIGHT_MIN <= IN_FLIGHT_MAX);

/// A subscription the broker is serving: its own connection to the leader's shard port and
/// the `Subscribe` request's correlation id, which names it for `Unsubscribe`.
#[derive(Debug)]
struct Open {
    connection: Connection,
    subscription: u64,
    opened_at: Instant,
    /// When the last frame arrived on the connection (at first, when it opened: the
    /// handshake had just been answered).
    heard_at: Instant,
    /// The correlation id of the probe in flight, if there is one.
    probe: Option<u64>,
}

impl Open {
    /// When a probe is due: `silence` after the broker was last heard, or `None` while one
    /// is in flight (its deadline bounds the wait instead).
    fn probe_due(&self, silence: Duration) -> Option<Instant> {
        match self.probe {
            Some(_) => None,
            None => Some(self.heard_at + silence),
        }
    }

    /// Sends a probe: its answer, like any frame, says the broker is there; its timeout fails
    /// the connection (`Timeout`).
    fn send_probe(&mut self, client_software: &str) -> Result<(), ClientError> {
        let probe = self.connection.send(&ApiVersionsRequest {
            client_software: client_software.to_string(),
        })?;
        self.probe = Some(probe);
        Ok(())
    }

    /// Notes that `response` arrived. `true` for a probe's answer, which says nothing more.
    fn heard(&mut self, response: &Response) -> bool {
        self.heard_at = Instant::now();
        let answers_probe = self.probe == Some(response.correlation_id());
        if answers_probe {
            self.probe = None;
        }
        answers_probe
    }
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
/// Liveness: the broker sends nothing on an idle subscription, so after a few seconds without
/// a frame (5 s, or the client's request timeout if shorter) the subscription sends a probe
/// (`ApiVersions`) on its connection; an answer, like any frame, shows the broker is there, and
/// no answer within the request timeout counts as a lost connection. So a dead broker host or a
/// network split that never closes the connection is noticed within that bound. The
/// connection needs [`ConnectionConfig::in_flight_max`](crate::ConnectionConfig) of at least 4.
///
/// On error: `NotLeader`, `ShuttingDown` or a lost connection (a probe's `Timeout` included)
/// closes the connection; the subscription refreshes the metadata and subscribes again at its
/// position after the client's [`RetryPolicy`](crate::RetryPolicy) backoff. The policy bounds
/// consecutive failures (`RetriesExhausted`); a delivery, or a subscription that stayed open
/// for the policy's `backoff_max`, ends a run of failures. Other errors (`OffsetOutOfRange`,
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
    /// Consecutive failures; no subscribe is sent before their backoff ends.
    failures: RetryRun,
}

impl Subscription {
    /// Subscribes to `topic`/`partition` from `from`: `Earliest`/`Latest` ask the leader
    /// (`ListOffsets`), `Offset` is taken as it is. Retries retriable failures per the
    /// client's retry policy. `Config` (before anything is sent) when the client's
    /// `connection.in_flight_max` is below 4, too few for the subscription's stream, a probe,
    /// `close`'s `Unsubscribe` and the place kept free for a delivery. Errors as
    /// [`Client::list_offsets`] and [`Client::leader_address`]; `RetriesExhausted` when the
    /// leader stayed unreachable. An offset outside the log is reported by the first
    /// [`next_records`](Self::next_records).
    pub fn new(
        mut client: Client,
        topic: &str,
        partition: u32,
        from: StartOffset,
    ) -> Result<Subscription, ClientError> {
        let in_flight_max = client.config().connection.in_flight_max;
        if in_flight_max < IN_FLIGHT_MIN {
            return Err(ClientError::Config {
                field: "connection.in_flight_max",
                reason: format!(
                    "{in_flight_max} is below {IN_FLIGHT_MIN}, the least a subscription needs: \
                     its stream, a liveness probe, the Unsubscribe of close, and a place kept \
                     free for a delivery"
                ),
            });
        }
        let position = from.resolve(&mut client, topic, partition)?;
        let mut subscription = Subscription {
            client,
            topic: Arc::from(topic),
            partition,
            position,
            open: None,
            failures: RetryRun::new(),
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
        self.failures.restart();
    }

    /// Waits up to about `max_wait` (at least 1 ms) for the next delivery with records at or
    /// above the position, and returns them as owned copies, in offset order. Empty when none
    /// arrived in time, or while a resubscription is backing off. Subscribes again first
    /// when a failure ended the last subscription; no subscribe starts after `max_wait`, but
    /// one that started runs to its end, so the call may return late by up to its steps'
    /// own timeouts (a metadata refresh, then a connect and a handshake to the leader: the
    /// client's `connect_timeout` and `request_timeout`, on a broker that does not answer).
    /// Sends a probe when the broker was silent too long (see [`Subscription`]).
    ///
    /// Errors: `OffsetOutOfRange` (the position is outside the log), `CorruptBatch` (nothing
    /// of that delivery is returned), `Broker` for a code that ends the subscription for good,
    /// `Decode`/`Protocol` for a broker that breaks the protocol (a delivery that skips
    /// offsets included), `RetriesExhausted` when the subscription kept failing. After any
    /// of them the position is unchanged.
    pub fn next_records(&mut self, max_wait: Duration) -> Result<Vec<ConsumedRecord>, ClientError> {
        // `None`: a wait too long to represent, that is, no bound.
        let until = Instant::now().checked_add(max_wait.max(WAIT_MIN));
        let silence = SILENCE_MAX.min(self.client.config().connection.request_timeout);
        // Each turn takes one frame, sends a probe (at most one in flight, and its answer or
        // its timeout comes before the next), ends a subscription (failures are bounded by the
        // retry policy), or returns; `until` bounds the frames taken, and with no `until` the
        // probe's deadline bounds the wait.
        loop {
            self.ensure_open(until)?;
            // Not open: `until` came before the backoff ended.
            let Some(open) = self.open.as_mut() else {
                return Ok(Vec::new());
            };
            let now = Instant::now();
            if until.is_some_and(|until| now >= until) {
                return Ok(Vec::new());
            }
            let probe_due = open.probe_due(silence);
            let received = if probe_due.is_some_and(|due| due <= now) {
                // Frames that waited in the socket while the caller was away show the broker
                // is there, and a probe would queue behind them: take one first.
                match open.connection.poll(WAIT_MIN) {
                    Ok(None) => open
                        .send_probe(&self.client.config().client_software)
                        .map(|()| None),
                    taken => taken,
                }
            } else {
                // Wake when `until` passes or a probe falls due, whichever comes first.
                match until.into_iter().chain(probe_due).min() {
                    Some(wake) => open.connection.poll(wake.saturating_duration_since(now)),
                    // A probe is in flight: its deadline ends the wait.
                    None => open.connection.recv(),
                }
            };
            let delivered = match received {
                // A probe was sent or is due, or `until` passed: the next turn sees which.
                Ok(None) if until.is_some() || probe_due.is_some() => continue,
                // Nothing in flight: not reached while the stream is open.
                Ok(None) => return Ok(Vec::new()),
                Ok(Some(response)) if open.heard(&response) => continue,
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
    /// (and a probe's answer) that arrive before it are dropped
    /// ([`position`](Self::position) still says where the next subscription should start).
    /// `Broker` if the broker refuses; the connection's error if it fails. The connection
    /// closes either way.
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
            if open.heard(&response) {
                continue;
            }
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
    /// policy. Leaves none open when `until` has passed, or when the backoff before the next
    /// attempt ends after it (it then sleeps until `until`): no attempt starts after `until`.
    /// `until` `None` waits for every backoff.
    fn ensure_open(&mut self, until: Option<Instant>) -> Result<(), ClientError> {
        // Each failed attempt counts against the retry policy, which ends the run of them.
        while self.open.is_none() {
            let now = Instant::now();
            let not_before = self.failures.not_before();
            if let Some(until) = until
                && (now >= until || not_before > until)
            {
                std::thread::sleep(until.saturating_duration_since(now));
                return Ok(());
            }
            std::thread::sleep(not_before.saturating_duration_since(now));
            match self.subscribe() {
                Ok(open) => self.open = Some(open),
                Err(error) => self.fail(error)?,
            }
        }
        Ok(())
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
        let opened_at = Instant::now();
        Ok(Open {
            connection,
            subscription,
            opened_at,
            heard_at: opened_at,
            probe: None,
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
        self.failures.end();
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
            self.failures.end();
        }
        let client = &mut self.client;
        self.failures
            .fail(&policy, error, |error| client.after_failure(error))
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
