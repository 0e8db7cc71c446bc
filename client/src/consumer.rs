//! The consumer: long-poll fetches from assigned partitions, records in offset order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::api::FetchRequest;
use protocol::api::FetchResponse;
use protocol::limits::{FETCH_BYTES_MAX, FETCH_WAIT_MS_MAX};
use protocol::{ApiKey, ErrorCode, OffsetSpec, Record};

use crate::client::{Client, ConnectionId};
use crate::connection::Response;
use crate::error::ClientError;
use crate::limits::POLL_SLICE_MS;
use crate::records::{ConsumedRecord, visit_records};
use crate::retry::{RetryPolicy, RetryRun};

/// Where a newly assigned partition starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOffset {
    /// The first offset still in the log.
    Earliest,
    /// The next offset to be written: only records produced from now on.
    Latest,
    /// This exact offset.
    Offset(u64),
}

impl StartOffset {
    /// The offset this names in one partition. `Earliest`/`Latest` ask the leader
    /// (`ListOffsets`, with retries); errors as [`Client::list_offsets`]. `Offset` only checks
    /// that the partition exists.
    pub(crate) fn resolve(
        self,
        client: &mut Client,
        topic: &str,
        partition: u32,
    ) -> Result<u64, ClientError> {
        match self {
            StartOffset::Earliest => client.list_offsets(topic, partition, OffsetSpec::Earliest),
            StartOffset::Latest => client.list_offsets(topic, partition, OffsetSpec::Latest),
            StartOffset::Offset(offset) => {
                client.partition_address(topic, partition)?;
                Ok(offset)
            }
        }
    }
}

/// How a [`Consumer`] fetches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerConfig {
    /// Bytes one fetch asks for per partition, 1..=`FETCH_BYTES_MAX`. The broker still sends
    /// one whole batch when the first is larger, so a consumer never stalls.
    pub fetch_bytes_max: u32,
    /// Retries of a partition's fetch after retriable errors and lost connections.
    pub retry: RetryPolicy,
}

impl Default for ConsumerConfig {
    /// 1 MiB per partition per fetch.
    fn default() -> Self {
        ConsumerConfig {
            fetch_bytes_max: 1 << 20,
            retry: RetryPolicy::default(),
        }
    }
}

impl ConsumerConfig {
    /// Checks the fields; names the bad one.
    pub fn validate(&self) -> Result<(), ClientError> {
        if !(1..=FETCH_BYTES_MAX).contains(&self.fetch_bytes_max) {
            return Err(ClientError::Config {
                field: "consumer.fetch_bytes_max",
                reason: format!("{} is outside 1..={FETCH_BYTES_MAX}", self.fetch_bytes_max),
            });
        }
        self.retry.validate()
    }
}

/// A fetch sent and not yet answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InFlightFetch {
    connection: ConnectionId,
    correlation_id: u64,
    offset: u64,
}

/// One assigned partition and where this consumer is in it.
#[derive(Debug)]
struct Assignment {
    topic: Arc<str>,
    partition: u32,
    /// Offset of the next record to deliver.
    position: u64,
    fetch: Option<InFlightFetch>,
    /// Consecutive retriable failures of its fetches; no fetch is sent before their backoff
    /// ends.
    failures: RetryRun,
}

impl Assignment {
    fn is(&self, topic: &str, partition: u32) -> bool {
        &*self.topic == topic && self.partition == partition
    }
}

/// Reads records from explicitly assigned partitions (no consumer groups yet).
///
/// Owner: one thread. `poll` keeps one long-poll fetch in flight per partition, sent to the
/// partition's leader (refreshing metadata after `NOT_LEADER` and the like, with backoff).
/// Every batch received is validated ([`BatchView`](protocol::BatchView)) before any record
/// of the fetch is delivered; records below the position (a batch may start before it) are
/// skipped, and the position advances past each delivered record.
///
/// On error: `OffsetOutOfRange` when the position left the log (retention, or past the end):
/// the position does not move until [`seek`](Self::seek). A corrupt batch delivers nothing of
/// its fetch. When one partition fails while others delivered records, the records are
/// returned and the error comes from the next `poll`.
#[derive(Debug)]
pub struct Consumer {
    client: Client,
    config: ConsumerConfig,
    assignments: Vec<Assignment>,
    /// An error to report from the next `poll`, held back because records came with it.
    stashed: Option<ClientError>,
}

impl Consumer {
    /// A consumer over `client` with nothing assigned. `Config` for a bad config.
    pub fn new(client: Client, config: ConsumerConfig) -> Result<Consumer, ClientError> {
        config.validate()?;
        Ok(Consumer {
            client,
            config,
            assignments: Vec::new(),
            stashed: None,
        })
    }

    /// The client, for metadata and control calls between polls.
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Starts consuming a partition (or moves an assigned one) at `from`, and returns the
    /// position. `Earliest`/`Latest` ask the leader (`ListOffsets`, with retries); errors as
    /// [`Client::list_offsets`]. `Offset` only checks that the partition exists.
    pub fn assign(
        &mut self,
        topic: &str,
        partition: u32,
        from: StartOffset,
    ) -> Result<u64, ClientError> {
        let position = from.resolve(&mut self.client, topic, partition)?;
        match self.assignments.iter_mut().find(|a| a.is(topic, partition)) {
            Some(assignment) => seek_to(assignment, position),
            None => self.assignments.push(Assignment {
                topic: Arc::from(topic),
                partition,
                position,
                fetch: None,
                failures: RetryRun::new(),
            }),
        }
        Ok(position)
    }

    /// Stops consuming a partition. Returns whether it was assigned. A fetch still in flight
    /// for it is ignored when it arrives.
    pub fn unassign(&mut self, topic: &str, partition: u32) -> bool {
        let before = self.assignments.len();
        self.assignments.retain(|a| !a.is(topic, partition));
        self.assignments.len() != before
    }

    /// Moves an assigned partition's position; the next poll fetches from there.
    /// `NotAssigned` if it is not assigned.
    pub fn seek(&mut self, topic: &str, partition: u32, offset: u64) -> Result<(), ClientError> {
        let Some(assignment) = self.assignments.iter_mut().find(|a| a.is(topic, partition)) else {
            return Err(ClientError::NotAssigned {
                topic: topic.to_string(),
                partition,
            });
        };
        seek_to(assignment, offset);
        Ok(())
    }

    /// Offset of the next record `poll` delivers from the partition; `None` if not assigned.
    pub fn position(&self, topic: &str, partition: u32) -> Option<u64> {
        self.assignments
            .iter()
            .find(|a| a.is(topic, partition))
            .map(|a| a.position)
    }

    /// Assigned partitions, in assignment order.
    pub fn assignments(&self) -> Vec<(String, u32)> {
        self.assignments
            .iter()
            .map(|a| (a.topic.to_string(), a.partition))
            .collect()
    }

    /// Waits up to about `max_wait` (capped at `FETCH_WAIT_MS_MAX`) for records, and returns
    /// them as owned copies, in offset order per partition. Empty when none arrived in time.
    /// Errors as [`poll_with`](Self::poll_with).
    pub fn poll(&mut self, max_wait: Duration) -> Result<Vec<ConsumedRecord>, ClientError> {
        let mut records = Vec::new();
        self.poll_with(max_wait, |topic, partition, record| {
            records.push(ConsumedRecord::copied(topic, partition, &record));
        })?;
        Ok(records)
    }

    /// Like [`poll`](Self::poll), but hands each record to `visit` borrowed from the receive
    /// buffer (no copy), and returns how many it delivered.
    ///
    /// Returns as soon as one fetch delivered records, or when every fetch answered empty
    /// (the broker holds each up to `max_wait`); at once when nothing is assigned. Fetches
    /// still in flight stay in flight for the next poll. Errors: `OffsetOutOfRange`,
    /// `CorruptBatch`, `Broker` for a non-retriable code, `Decode`/`Protocol` for a broker
    /// that breaks the protocol, `RetriesExhausted` when a partition kept failing (leader
    /// unreachable, or no answer within the fetch's wait plus the request timeout).
    pub fn poll_with(
        &mut self,
        max_wait: Duration,
        mut visit: impl FnMut(&Arc<str>, u32, Record<'_>),
    ) -> Result<usize, ClientError> {
        if let Some(error) = self.stashed.take() {
            return Err(error);
        }
        let max_wait = max_wait.min(Duration::from_millis(u64::from(FETCH_WAIT_MS_MAX)));
        let started = Instant::now();
        let poll_end = started + max_wait;
        // A safety net past every request deadline; the connections time requests out first.
        let give_up = poll_end + self.client.config().connection.request_timeout;
        let mut delivered = 0;
        self.start_fetches(max_wait);
        while delivered == 0 && self.stashed.is_none() {
            let now = Instant::now();
            if now >= give_up {
                break;
            }
            let connections = self.fetch_connections();
            if connections.is_empty() {
                // Every fetch has answered. Fetch again only for partitions whose backoff
                // ends before the poll does; the others had their answer (empty) already.
                let backoff_end = self
                    .assignments
                    .iter()
                    .filter(|a| a.fetch.is_none() && a.failures.not_before() > now)
                    .map(|a| a.failures.not_before())
                    .min();
                match backoff_end {
                    Some(at) if at < poll_end => {
                        std::thread::sleep(at - now);
                        self.start_fetches(poll_end.saturating_duration_since(Instant::now()));
                        continue;
                    }
                    _ => break,
                }
            }
            // A blocking socket waits on one connection at a time: with several, take turns
            // in short slices so a record on any of them is seen promptly.
            let slice = (connections.len() > 1).then(|| Duration::from_millis(POLL_SLICE_MS));
            for id in connections {
                let received = match self.client.connection(id) {
                    None => Err(ClientError::ConnectionLost {
                        reason: "the connection was dropped".into(),
                    }),
                    Some(connection) => match slice {
                        None => connection.recv(),
                        Some(slice) => connection.poll(slice),
                    },
                };
                match received {
                    Ok(Some(response)) => delivered += self.handle_fetch(id, &response, &mut visit),
                    Ok(None) if slice.is_none() => self.connection_failed(
                        id,
                        ClientError::ConnectionLost {
                            reason: "the connection forgot the fetches in flight".into(),
                        },
                    ),
                    Ok(None) => {}
                    Err(error) => self.connection_failed(id, error),
                }
            }
        }
        match self.stashed.take() {
            Some(error) if delivered == 0 => Err(error),
            stashed => {
                self.stashed = stashed;
                Ok(delivered)
            }
        }
    }

    /// Distinct connections with a fetch in flight.
    fn fetch_connections(&self) -> Vec<ConnectionId> {
        let mut connections: Vec<ConnectionId> = self
            .assignments
            .iter()
            .filter_map(|a| a.fetch.map(|f| f.connection))
            .collect();
        connections.sort_unstable();
        connections.dedup();
        connections
    }

    /// Sends a fetch for every partition that has none in flight and is not backing off.
    /// Returns how many were sent.
    fn start_fetches(&mut self, max_wait: Duration) -> usize {
        let now = Instant::now();
        let mut started = 0;
        for at in 0..self.assignments.len() {
            let ready = self
                .assignments
                .get(at)
                .is_some_and(|a| a.fetch.is_none() && a.failures.not_before() <= now);
            if ready {
                match self.send_fetch(at, max_wait) {
                    Ok(true) => started += 1,
                    Ok(false) => {}
                    Err(error) => self.fail(at, error),
                }
            }
        }
        started
    }

    /// Sends assignment `at`'s fetch. `Ok(false)` when its connection has no free slot (one
    /// stays free for metadata requests); it is tried again on the next round.
    fn send_fetch(&mut self, at: usize, max_wait: Duration) -> Result<bool, ClientError> {
        let Some(assignment) = self.assignments.get(at) else {
            return Ok(false);
        };
        let (topic, partition, offset) = (
            Arc::clone(&assignment.topic),
            assignment.partition,
            assignment.position,
        );
        let id = self.client.route(&topic, partition)?;
        let Some(connection) = self.client.connection(id) else {
            return Ok(false);
        };
        if connection.in_flight() + 1 >= connection.config().in_flight_max {
            return Ok(false);
        }
        let request = FetchRequest {
            topic: topic.to_string(),
            partition,
            offset,
            max_bytes: self.config.fetch_bytes_max,
            max_wait_ms: u32::try_from(max_wait.as_millis()).unwrap_or(FETCH_WAIT_MS_MAX),
        };
        let timeout = max_wait.saturating_add(connection.config().request_timeout);
        let sent = connection.send_with_timeout(&request, timeout);
        if connection.is_closed() {
            self.client.drop_connection(id);
        }
        let correlation_id = sent?;
        if let Some(assignment) = self.assignments.get_mut(at) {
            assignment.fetch = Some(InFlightFetch {
                connection: id,
                correlation_id,
                offset,
            });
        }
        Ok(true)
    }

    /// Delivers the records of one fetch response; returns how many.
    fn handle_fetch(
        &mut self,
        id: ConnectionId,
        response: &Response,
        visit: &mut impl FnMut(&Arc<str>, u32, Record<'_>),
    ) -> usize {
        let correlation_id = response.correlation_id();
        let Some(at) = self.assignments.iter().position(|a| {
            a.fetch
                .is_some_and(|f| f.connection == id && f.correlation_id == correlation_id)
        }) else {
            // The partition was unassigned or moved since: nobody wants this answer.
            return 0;
        };
        let body = match response.access::<FetchResponse>() {
            Ok(body) => body,
            Err(error) => {
                self.clear_fetch(at);
                self.stash(error);
                return 0;
            }
        };
        let code = body.error.get();
        let high_watermark = body.high_watermark.to_native();
        let log_start_offset = body.log_start_offset.to_native();
        let Some(assignment) = self.assignments.get_mut(at) else {
            return 0;
        };
        let fetched_at = assignment.fetch.take().map(|f| f.offset);
        if fetched_at != Some(assignment.position) {
            // Sent before a seek; seek clears the fetch, so this is only a safety net.
            return 0;
        }
        if code == ErrorCode::OFFSET_OUT_OF_RANGE {
            let error = ClientError::OffsetOutOfRange {
                topic: assignment.topic.to_string(),
                partition: assignment.partition,
                offset: assignment.position,
                log_start_offset,
                high_watermark,
            };
            self.stash(error);
            return 0;
        }
        if !code.is_ok() {
            self.fail(at, ClientError::broker(ApiKey::Fetch, code, ""));
            return 0;
        }
        let (topic, partition) = (Arc::clone(&assignment.topic), assignment.partition);
        let visited = visit_records(
            body.records.as_slice(),
            assignment.position,
            high_watermark,
            |record| visit(&topic, partition, record),
        );
        match visited {
            Ok(visited) => {
                assignment.position = visited.position;
                assignment.failures.end();
                visited.delivered
            }
            Err(source) => {
                self.stash(ClientError::CorruptBatch {
                    topic: topic.to_string(),
                    partition,
                    source,
                });
                0
            }
        }
    }

    /// A connection failed: drop it, and retry every fetch that was in flight on it.
    fn connection_failed(&mut self, id: ConnectionId, error: ClientError) {
        self.client.drop_connection(id);
        let affected: Vec<usize> = (0..self.assignments.len())
            .filter(|&at| {
                self.assignments
                    .get(at)
                    .and_then(|a| a.fetch)
                    .is_some_and(|f| f.connection == id)
            })
            .collect();
        if !error.is_retriable() {
            // A bad frame or a protocol violation: report it once, then retry the fetches on
            // a new connection.
            for &at in &affected {
                self.clear_fetch(at);
            }
            self.stash(error);
            return;
        }
        let reason = error.to_string();
        for at in affected {
            self.clear_fetch(at);
            self.fail(
                at,
                ClientError::ConnectionLost {
                    reason: reason.clone(),
                },
            );
        }
    }

    fn clear_fetch(&mut self, at: usize) {
        if let Some(assignment) = self.assignments.get_mut(at) {
            assignment.fetch = None;
        }
    }

    /// A fetch of assignment `at` failed: back off and retry if allowed, or report.
    fn fail(&mut self, at: usize, error: ClientError) {
        let policy = self.config.retry;
        let Some(assignment) = self.assignments.get_mut(at) else {
            return;
        };
        let client = &mut self.client;
        let failed = assignment
            .failures
            .fail(&policy, error, |error| client.after_failure(error));
        if let Err(error) = failed {
            self.stash(error);
        }
    }

    /// Keeps the first error for the caller; later ones in the same poll are dropped (their
    /// partitions fail again on the next fetch).
    fn stash(&mut self, error: ClientError) {
        if self.stashed.is_none() {
            self.stashed = Some(error);
        }
    }
}

fn seek_to(assignment: &mut Assignment, offset: u64) {
    assignment.position = offset;
    assignment.fetch = None;
    assignment.failures.restart();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_checked() {
        let bad = ConsumerConfig {
            fetch_bytes_max: 0,
            ..ConsumerConfig::default()
        };
        assert!(matches!(
            bad.validate(),
            Err(ClientError::Config {
                field: "consumer.fetch_bytes_max",
                ..
            })
        ));
    }
}
