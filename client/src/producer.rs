//! The producer: batches records per partition, pipelines batches, retries what failed.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use protocol::api::{ProduceRequest, ProduceResponse};
use protocol::limits::{BATCH_BYTES_MAX, BATCH_HEADER_BYTES, PRODUCE_TIMEOUT_MS_MAX};
use protocol::{Acks, ApiKey, Header};

use crate::accumulator::{Accumulator, SealedBatch};
use crate::client::{Client, ConnectionId};
use crate::connection::{ConnectionConfig, Response};
use crate::error::ClientError;
use crate::limits::OUTCOMES_KEPT_MAX;
use crate::retry::{RetryPolicy, exhausted};

/// How a [`Producer`] batches, acknowledges and retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerConfig {
    /// When the broker answers a produce (see [`Acks`]). With `Acks::None` it never does.
    pub acks: Acks,
    /// A partition's batch is sent once it holds this many bytes (header included) or the
    /// next record would take it over. `BATCH_HEADER_BYTES + 1 ..= BATCH_BYTES_MAX`.
    pub batch_bytes: usize,
    /// A batch is sent at the latest this long after its first record (checked on every
    /// `send` and by `flush`). Zero sends every record at once.
    pub linger: Duration,
    /// Most produce requests awaiting their response on one connection. Must stay below the
    /// connection's `in_flight_max`, which keeps a slot for metadata requests.
    pub max_in_flight: usize,
    /// How long the broker may wait for the acks policy before answering `TIMEOUT`
    /// (at most `PRODUCE_TIMEOUT_MS_MAX`). The client waits this plus the request timeout.
    pub produce_timeout: Duration,
    /// Retries of a batch after retriable errors and lost connections.
    pub retry: RetryPolicy,
}

impl Default for ProducerConfig {
    /// `Acks::All`, 64 KiB batches, 5 ms linger, 16 in flight, 30 s produce timeout.
    fn default() -> Self {
        ProducerConfig {
            acks: Acks::All,
            batch_bytes: 64 << 10,
            linger: Duration::from_millis(5),
            max_in_flight: 16,
            produce_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
        }
    }
}

impl ProducerConfig {
    /// Checks the fields; names the bad one.
    pub fn validate(&self) -> Result<(), ClientError> {
        let bad = |field, reason: String| Err(ClientError::Config { field, reason });
        if !(BATCH_HEADER_BYTES + 1..=BATCH_BYTES_MAX as usize).contains(&self.batch_bytes) {
            return bad(
                "producer.batch_bytes",
                format!(
                    "{} is outside {}..={BATCH_BYTES_MAX}",
                    self.batch_bytes,
                    BATCH_HEADER_BYTES + 1
                ),
            );
        }
        if self.max_in_flight == 0 {
            return bad("producer.max_in_flight", "must be at least 1".into());
        }
        let timeout_ms = self.produce_timeout.as_millis();
        if timeout_ms == 0 || timeout_ms > u128::from(PRODUCE_TIMEOUT_MS_MAX) {
            return bad(
                "producer.produce_timeout",
                format!("{timeout_ms} ms is outside 1..={PRODUCE_TIMEOUT_MS_MAX} ms"),
            );
        }
        self.retry.validate()
    }

    /// `validate`, and that `max_in_flight` stays below `connection`'s `in_flight_max` (one
    /// request slot stays free for metadata): what `Producer::new` checks.
    pub fn validate_for(&self, connection: &ConnectionConfig) -> Result<(), ClientError> {
        self.validate()?;
        let in_flight_max = connection.in_flight_max;
        if self.max_in_flight >= in_flight_max {
            return Err(ClientError::Config {
                field: "producer.max_in_flight",
                reason: format!(
                    "{} must be below the connection's in_flight_max {in_flight_max}",
                    self.max_in_flight
                ),
            });
        }
        Ok(())
    }
}

/// A batch the broker stored (or, with `Acks::None`, that was written to the socket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchAck {
    /// Topic the batch went to.
    pub topic: String,
    /// Partition the batch went to.
    pub partition: u32,
    /// Offset of the batch's first record; record `i` has `base_offset + i`. `None` with
    /// `Acks::None`, where the broker says nothing.
    pub base_offset: Option<u64>,
    /// Records in the batch.
    pub records: u32,
    /// Sequence (as returned by `send`) of the batch's first record.
    pub first_sequence: u64,
}

/// A batch that could not be stored.
#[derive(Debug)]
pub struct FailedBatch {
    /// Topic the batch was for.
    pub topic: String,
    /// Partition the batch was for.
    pub partition: u32,
    /// Records in the batch, none of which is known to be stored.
    pub records: u32,
    /// Sequence (as returned by `send`) of the batch's first record.
    pub first_sequence: u64,
    /// Why: a non-retriable error, or `RetriesExhausted` wrapping the last retriable one.
    pub error: ClientError,
}

/// What `flush` reports when a batch failed: every outcome since the last flush.
#[derive(Debug, thiserror::Error)]
#[error("{} of {} batches failed; first: {}", .failed.len(), .failed.len() + .acked.len(), first_error(.failed))]
pub struct FlushError {
    /// Batches stored since the last flush, in the order their answers arrived.
    pub acked: Vec<BatchAck>,
    /// Batches that could not be stored since the last flush.
    pub failed: Vec<FailedBatch>,
}

fn first_error(failed: &[FailedBatch]) -> String {
    failed
        .first()
        .map_or_else(String::new, |batch| batch.error.to_string())
}

/// Counters since the producer was made. Plain integers, read by the owner.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProducerStats {
    /// Produce requests written (first attempts and retries).
    pub batches_sent: u64,
    /// Batches the broker acknowledged (or, with `Acks::None`, that were written).
    pub batches_acked: u64,
    /// Batches given up on (see [`FailedBatch`]).
    pub batches_failed: u64,
    /// Batches scheduled again after a retriable failure.
    pub retries: u64,
    /// Batches re-sent after an attempt whose outcome was unknown (response lost with the
    /// connection, request timed out, or broker `TIMEOUT`): each may be stored twice, as there
    /// is no idempotent producer yet.
    pub possible_duplicates: u64,
    /// Outcomes (acks or failures) not kept for `flush` because `OUTCOMES_KEPT_MAX` were
    /// already waiting: a producer that never flushes still has bounded memory.
    pub outcomes_not_kept: u64,
}

/// A sealed batch on its way: waiting for its backoff, or in flight.
#[derive(Debug)]
struct PendingBatch {
    batch: SealedBatch,
    attempts: u32,
    first_attempt_at: Option<Instant>,
    not_before: Instant,
    /// The last attempt's outcome is unknown, so the next one may duplicate it.
    in_doubt: bool,
}

/// Sends records to partitions in batches, over the [`Client`]'s connections.
///
/// Owner: one thread. `send` appends a record to its partition's open batch and sends the
/// batches that are due (full, or older than `linger`); it blocks only while a connection
/// has `max_in_flight` batches awaiting responses. `flush` sends everything and waits until
/// every batch is acknowledged or has failed.
///
/// Retries: a batch that meets a retriable error (`NOT_LEADER`, `TIMEOUT`, ...) or loses its
/// connection is sent again after a backoff and a metadata refresh, within `retry`. Retries
/// may reorder batches of one partition, and a batch whose response was lost may be stored
/// twice; [`ProducerStats::possible_duplicates`] counts those.
///
/// Outcomes wait for the next `flush`, at most `OUTCOMES_KEPT_MAX` of them; beyond that only
/// the counters in [`ProducerStats`] move. Records still in open batches when the producer is
/// dropped are not sent: flush first.
#[derive(Debug)]
pub struct Producer {
    client: Client,
    config: ProducerConfig,
    accumulator: Accumulator,
    /// Scratch space for batches the accumulator sealed; empty between calls.
    sealed: Vec<SealedBatch>,
    /// Batches waiting for their backoff before the next attempt.
    waiting: VecDeque<PendingBatch>,
    in_flight: HashMap<(ConnectionId, u64), PendingBatch>,
    acked: Vec<BatchAck>,
    failed: Vec<FailedBatch>,
    stats: ProducerStats,
}

impl Producer {
    /// A producer over `client`. `Config` if a field is out of range, or if `max_in_flight`
    /// does not stay below the connection's `in_flight_max`.
    pub fn new(client: Client, config: ProducerConfig) -> Result<Producer, ClientError> {
        config.validate_for(&client.config().connection)?;
        Ok(Producer {
            accumulator: Accumulator::new(config.batch_bytes, config.linger),
            client,
            config,
            sealed: Vec::new(),
            waiting: VecDeque::new(),
            in_flight: HashMap::new(),
            acked: Vec::new(),
            failed: Vec::new(),
            stats: ProducerStats::default(),
        })
    }

    /// The configuration the producer was made with.
    pub fn config(&self) -> &ProducerConfig {
        &self.config
    }

    /// The counters so far.
    pub fn stats(&self) -> ProducerStats {
        self.stats
    }

    /// The client, for metadata and control calls between sends.
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Records in open batches, not yet sent.
    pub fn records_buffered(&self) -> u64 {
        self.accumulator.records_open()
    }

    /// Batches awaiting a response, plus batches waiting to be retried.
    pub fn batches_pending(&self) -> usize {
        self.in_flight.len() + self.waiting.len()
    }

    /// Sends one record with the current time and no headers. See [`send_with`].
    ///
    /// [`send_with`]: Self::send_with
    pub fn send(
        &mut self,
        topic: &str,
        partition: u32,
        key: &[u8],
        value: &[u8],
    ) -> Result<u64, ClientError> {
        self.send_with(topic, partition, now_ms(), key, value, &[])
    }

    /// Appends a record (timestamp in ms since the Unix epoch; an empty key means "no key")
    /// to its partition's batch, and sends the batches that are due. Returns the record's
    /// sequence among the records this producer sent to the partition; [`BatchAck`] and
    /// [`FailedBatch`] name the sequences they cover.
    ///
    /// Errors are about this record only: `UnknownTopic`/`UnknownPartition` (after a metadata
    /// refresh), or `Record` when it fits no batch; then nothing of it was queued. Failures of
    /// batches sent meanwhile are reported by the next [`flush`](Self::flush).
    pub fn send_with(
        &mut self,
        topic: &str,
        partition: u32,
        timestamp_ms: i64,
        key: &[u8],
        value: &[u8],
        headers: &[Header<'_>],
    ) -> Result<u64, ClientError> {
        self.check_partition(topic, partition)?;
        let now = Instant::now();
        let mut sealed = std::mem::take(&mut self.sealed);
        let appended = self.accumulator.append(
            topic,
            partition,
            timestamp_ms,
            key,
            value,
            headers,
            now,
            &mut sealed,
        );
        self.accumulator.seal_expired(now, &mut sealed);
        for batch in sealed.drain(..) {
            self.dispatch(PendingBatch::new(batch, now));
        }
        self.sealed = sealed;
        self.dispatch_due(Instant::now());
        Ok(appended?)
    }

    /// Sends every open batch and waits until each batch sent so far is acknowledged or has
    /// failed (retries included, so this may take up to the retry policy's `elapsed_max`).
    /// Returns the acknowledgements since the last flush, in arrival order; if any batch
    /// failed, `FlushError` carries both the failures and the acknowledgements.
    ///
    /// With `Acks::None` it returns once every batch is written to its socket: nothing says
    /// the broker read it.
    pub fn flush(&mut self) -> Result<Vec<BatchAck>, FlushError> {
        let now = Instant::now();
        let mut sealed = std::mem::take(&mut self.sealed);
        self.accumulator.seal_all(&mut sealed);
        for batch in sealed.drain(..) {
            self.dispatch(PendingBatch::new(batch, now));
        }
        self.sealed = sealed;
        // Each turn takes a response, loses a connection, or sleeps until a retry is due;
        // every batch has bounded attempts and time, so this ends.
        loop {
            self.dispatch_due(Instant::now());
            if let Some(&(connection, _)) = self.in_flight.keys().next() {
                // A failure is recorded against the batches; nothing more to do here.
                let _ = self.receive_one(connection);
                continue;
            }
            let Some(due) = self.waiting.iter().map(|p| p.not_before).min() else {
                break;
            };
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        let acked = std::mem::take(&mut self.acked);
        let failed = std::mem::take(&mut self.failed);
        if failed.is_empty() {
            Ok(acked)
        } else {
            Err(FlushError { acked, failed })
        }
    }

    /// Fails early, and clearly, for a partition the broker does not have.
    fn check_partition(&mut self, topic: &str, partition: u32) -> Result<(), ClientError> {
        let unknown = |error: &ClientError| {
            matches!(
                error,
                ClientError::UnknownTopic(_) | ClientError::UnknownPartition { .. }
            )
        };
        match self.client.cached_metadata().partition(topic, partition) {
            Err(error) if unknown(&error) => {}
            // A partition with an error (no leader yet) is retried when its batch is sent.
            _ => return Ok(()),
        }
        match self.client.metadata()?.partition(topic, partition) {
            Err(error) if unknown(&error) => Err(error),
            _ => Ok(()),
        }
    }

    /// Sends the waiting batches whose backoff has passed.
    fn dispatch_due(&mut self, now: Instant) {
        // Visit each waiting batch once: dispatch may queue batches again.
        for _ in 0..self.waiting.len() {
            let Some(pending) = self.waiting.pop_front() else {
                break;
            };
            if pending.not_before <= now {
                self.dispatch(pending);
            } else {
                self.waiting.push_back(pending);
            }
        }
    }

    /// One attempt at sending a batch. Whatever happens is recorded against the batch: in
    /// flight, acknowledged (`Acks::None`), waiting for a retry, or failed.
    fn dispatch(&mut self, mut pending: PendingBatch) {
        pending.attempts += 1;
        pending.first_attempt_at.get_or_insert_with(Instant::now);
        let route = self
            .client
            .route(&pending.batch.topic, pending.batch.partition)
            .and_then(|id| self.wait_for_slot(id).map(|()| id));
        let id = match route {
            Ok(id) => id,
            Err(error) => return self.retry_or_fail(pending, error, false),
        };
        let Some(connection) = self.client.connection(id) else {
            let error = ClientError::ConnectionLost {
                reason: "the connection was dropped before the batch was written".into(),
            };
            return self.retry_or_fail(pending, error, false);
        };
        let request = ProduceRequest {
            topic: pending.batch.topic.clone(),
            partition: pending.batch.partition,
            acks: self.config.acks,
            timeout_ms: u32::try_from(self.config.produce_timeout.as_millis()).unwrap_or(u32::MAX),
            batch: std::mem::take(&mut pending.batch.bytes),
        };
        let response_timeout = self
            .config
            .produce_timeout
            .saturating_add(connection.config().request_timeout);
        let sent = if self.config.acks == Acks::None {
            connection.send_without_response(&request)
        } else {
            connection.send_with_timeout(&request, response_timeout)
        };
        let closed = connection.is_closed();
        pending.batch.bytes = request.batch;
        match sent {
            Ok(correlation_id) => {
                self.stats.batches_sent += 1;
                if pending.in_doubt {
                    self.stats.possible_duplicates += 1;
                    pending.in_doubt = false;
                }
                if self.config.acks == Acks::None {
                    self.acknowledge(pending, None);
                } else {
                    self.in_flight.insert((id, correlation_id), pending);
                }
            }
            Err(error) => {
                if closed {
                    self.connection_lost(id, &error);
                }
                // A write that failed left at most a partial frame, which the broker drops.
                self.retry_or_fail(pending, error, false);
            }
        }
    }

    /// Receives responses on connection `id` until it has a free slot. `Err` once the
    /// connection failed (its batches are then already scheduled for retry).
    fn wait_for_slot(&mut self, id: ConnectionId) -> Result<(), ClientError> {
        // Each turn takes one response off the connection or fails, so at most
        // `max_in_flight` turns.
        loop {
            let in_flight = self.client.connection(id).map(|c| c.in_flight());
            match in_flight {
                None => {
                    return Err(ClientError::ConnectionLost {
                        reason: "the connection was dropped".into(),
                    });
                }
                Some(count) if count < self.config.max_in_flight => return Ok(()),
                Some(_) => self.receive_one(id)?,
            }
        }
    }

    /// Takes one response from connection `id` and records its batch's outcome. If the
    /// connection fails, every batch in flight on it is scheduled for retry, and the error is
    /// returned.
    fn receive_one(&mut self, id: ConnectionId) -> Result<(), ClientError> {
        let received = match self.client.connection(id) {
            Some(connection) => connection.recv(),
            None => Err(ClientError::ConnectionLost {
                reason: "the connection was dropped".into(),
            }),
        };
        match received {
            Ok(Some(response)) => {
                self.handle_response(id, response);
                Ok(())
            }
            Ok(None) => {
                // The connection has nothing pending, yet batches are in flight on it: they
                // cannot be answered any more.
                let error = ClientError::ConnectionLost {
                    reason: "the connection forgot the requests in flight".into(),
                };
                self.connection_lost(id, &error);
                Err(error)
            }
            Err(error) => {
                self.connection_lost(id, &error);
                Err(error)
            }
        }
    }

    fn handle_response(&mut self, id: ConnectionId, response: Response) {
        // Only produce requests are left in flight on a producer's connections (control
        // calls wait for their own answers), so every response has its batch.
        let Some(pending) = self.in_flight.remove(&(id, response.correlation_id())) else {
            debug_assert!(false, "response to a request the producer did not send");
            return;
        };
        let (code, base_offset) = match response.access::<ProduceResponse>() {
            Ok(body) => (body.error.get(), body.base_offset.to_native()),
            Err(error) => return self.retry_or_fail(pending, error, false),
        };
        if code.is_ok() {
            self.acknowledge(pending, Some(base_offset));
        } else {
            let error = ClientError::broker(ApiKey::Produce, code, "");
            let in_doubt = error.is_in_doubt();
            self.retry_or_fail(pending, error, in_doubt);
        }
    }

    /// Drops connection `id` and schedules every batch in flight on it for retry: their
    /// responses are lost, so each may have been stored.
    fn connection_lost(&mut self, id: ConnectionId, error: &ClientError) {
        // Answers that arrived before the failure still count. Bounded by the connection's
        // in-flight table.
        while let Some(response) = self
            .client
            .connection(id)
            .and_then(|connection| connection.take_received())
        {
            self.handle_response(id, response);
        }
        self.client.drop_connection(id);
        let lost: Vec<(ConnectionId, u64)> = self
            .in_flight
            .keys()
            .filter(|(connection, _)| *connection == id)
            .copied()
            .collect();
        for key in lost {
            if let Some(pending) = self.in_flight.remove(&key) {
                let lost = ClientError::ConnectionLost {
                    reason: error.to_string(),
                };
                self.retry_or_fail(pending, lost, true);
            }
        }
    }

    fn acknowledge(&mut self, pending: PendingBatch, base_offset: Option<u64>) {
        self.stats.batches_acked += 1;
        if self.acked.len() + self.failed.len() >= OUTCOMES_KEPT_MAX {
            self.stats.outcomes_not_kept += 1;
            return;
        }
        let batch = pending.batch;
        self.acked.push(BatchAck {
            topic: batch.topic,
            partition: batch.partition,
            base_offset,
            records: batch.records,
            first_sequence: batch.first_sequence,
        });
    }

    /// Schedules another attempt after a backoff if the error is retriable and the policy
    /// allows; otherwise records the batch as failed.
    fn retry_or_fail(&mut self, mut pending: PendingBatch, error: ClientError, in_doubt: bool) {
        let now = Instant::now();
        let elapsed = pending
            .first_attempt_at
            .map_or(Duration::ZERO, |first| now.saturating_duration_since(first));
        let policy = self.config.retry;
        if error.is_retriable() && policy.allows(pending.attempts, elapsed) {
            self.stats.retries += 1;
            self.client.after_failure(&error);
            pending.in_doubt |= in_doubt;
            pending.not_before = now + policy.backoff(pending.attempts);
            self.waiting.push_back(pending);
            return;
        }
        let error = if error.is_retriable() {
            exhausted(pending.attempts, elapsed, error)
        } else {
            error
        };
        self.stats.batches_failed += 1;
        if self.acked.len() + self.failed.len() >= OUTCOMES_KEPT_MAX {
            self.stats.outcomes_not_kept += 1;
            return;
        }
        let batch = pending.batch;
        self.failed.push(FailedBatch {
            topic: batch.topic,
            partition: batch.partition,
            records: batch.records,
            first_sequence: batch.first_sequence,
            error,
        });
    }
}

impl PendingBatch {
    fn new(batch: SealedBatch, now: Instant) -> PendingBatch {
        PendingBatch {
            batch,
            attempts: 0,
            first_attempt_at: None,
            not_before: now,
            in_doubt: false,
        }
    }
}

/// Milliseconds since the Unix epoch; 0 if the clock is before it.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        })
}
