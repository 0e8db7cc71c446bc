//! The one error type of the client library.

use std::io;
use std::net::SocketAddr;

use protocol::batch::BatchError;
use protocol::names::NameError;
use protocol::{ApiKey, BuildError, DecodeError, EncodeError, ErrorCode};

/// Everything a client call can fail with. Never echoes payload bytes.
///
/// Errors about one connection (`Io`, `Disconnected`, `Decode`, `Protocol`, `Timeout`) leave
/// that connection closed: every later call on it returns `Disconnected`, and the [`Client`]
/// opens a new one on next use. [`ClientError::is_retriable`] says whether the same request
/// may succeed later.
///
/// [`Client`]: crate::Client
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No TCP connection could be opened (or the address did not resolve).
    #[error("cannot connect to {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: io::Error,
    },
    /// Reading or writing the socket failed.
    #[error("i/o error on the connection to {peer}: {source}")]
    Io {
        peer: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// The peer closed the connection, or an earlier error on it closed it.
    #[error("connection to {peer} is closed: {reason}")]
    Disconnected { peer: SocketAddr, reason: String },
    /// A connection failed while this request was in flight on it; `reason` is that failure.
    /// The broker may or may not have applied the request.
    #[error("connection lost with the request in flight: {reason}")]
    ConnectionLost { reason: String },
    /// The peer sent bytes that are not a valid frame or body.
    #[error("bad frame from {peer}: {source}")]
    Decode {
        peer: SocketAddr,
        #[source]
        source: DecodeError,
    },
    /// The peer sent a valid frame that breaks the request/response contract (a correlation id
    /// that is not in flight, or the wrong api for it).
    #[error("protocol violation by {peer}: {reason}")]
    Protocol { peer: SocketAddr, reason: String },
    /// A request could not be framed (over `FRAME_BYTES_MAX`).
    #[error("cannot encode the request: {0}")]
    Encode(#[from] EncodeError),
    /// A fetched record batch failed validation. Nothing of that fetch was delivered.
    #[error("corrupt record batch from {topic}/{partition}: {source}")]
    CorruptBatch {
        topic: String,
        partition: u32,
        #[source]
        source: BatchError,
    },
    /// The broker answered with an error code.
    #[error("{api:?} failed: {code}{}", detail(.message))]
    Broker {
        api: ApiKey,
        code: ErrorCode,
        message: String,
    },
    /// No response arrived in time. The connection is closed, because the request's fate is
    /// unknown and a late answer must not be mistaken for a later request's.
    #[error("no response to {api:?} request {correlation_id} from {peer} within {timeout_ms} ms")]
    Timeout {
        peer: SocketAddr,
        api: ApiKey,
        correlation_id: u64,
        timeout_ms: u64,
    },
    /// The connection already has its most requests in flight; receive a response first.
    #[error("{in_flight_max} requests are already in flight to {peer}")]
    InFlightFull {
        peer: SocketAddr,
        in_flight_max: usize,
    },
    /// `wait` was asked for a correlation id that is not in flight on this connection.
    #[error("no request {correlation_id} is in flight to {peer}")]
    NotInFlight {
        peer: SocketAddr,
        correlation_id: u64,
    },
    /// The broker does not serve the api version this client speaks (learned at handshake).
    #[error("broker at {peer} does not serve {api:?} version {version}")]
    UnsupportedApi {
        peer: SocketAddr,
        api: ApiKey,
        version: u16,
    },
    /// The broker's metadata does not list the topic.
    #[error("unknown topic '{0}'")]
    UnknownTopic(String),
    /// The topic exists but has no such partition.
    #[error("topic '{topic}' has no partition {partition}")]
    UnknownPartition { topic: String, partition: u32 },
    /// The metadata names a leader shard without listing its address.
    #[error("metadata lists no address for shard {0}")]
    UnknownShard(u16),
    /// A topic name the broker would refuse.
    #[error("invalid topic name: {0}")]
    InvalidName(#[from] NameError),
    /// A record the producer cannot put in any batch (too large, too many headers).
    #[error("record refused: {0}")]
    Record(#[from] BuildError),
    /// A fetch position outside the partition's log. The consumer does not move; `seek` it.
    #[error(
        "offset {offset} of {topic}/{partition} is outside the log \
         [{log_start_offset}, {high_watermark}]"
    )]
    OffsetOutOfRange {
        topic: String,
        partition: u32,
        offset: u64,
        log_start_offset: u64,
        high_watermark: u64,
    },
    /// A retriable failure persisted past the retry policy's attempts or time.
    #[error("gave up after {attempts} attempts in {elapsed_ms} ms: {last}")]
    RetriesExhausted {
        attempts: u32,
        elapsed_ms: u64,
        #[source]
        last: Box<ClientError>,
    },
    /// The partition is not assigned to this consumer.
    #[error("{topic}/{partition} is not assigned to this consumer")]
    NotAssigned { topic: String, partition: u32 },
    /// A configuration value is out of range; `field` names it.
    #[error("invalid configuration: {field}: {reason}")]
    Config { field: &'static str, reason: String },
}

fn detail(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

impl ClientError {
    /// Whether the same request may succeed if sent again after a metadata refresh and a
    /// backoff: connection failures, timeouts, and broker codes that
    /// [`ErrorCode::is_retriable`] names.
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Broker { code, .. } => code.is_retriable(),
            ClientError::Connect { .. }
            | ClientError::Io { .. }
            | ClientError::Disconnected { .. }
            | ClientError::ConnectionLost { .. }
            | ClientError::Timeout { .. }
            | ClientError::UnknownShard(_) => true,
            _ => false,
        }
    }

    /// Whether a request in flight when this error happened may have been applied by the
    /// broker anyway: its response was lost, or the broker timed out waiting for replicas
    /// after the leader wrote it.
    pub fn is_in_doubt(&self) -> bool {
        match self {
            ClientError::Broker { code, .. } => *code == ErrorCode::TIMEOUT,
            ClientError::Io { .. }
            | ClientError::Disconnected { .. }
            | ClientError::ConnectionLost { .. }
            | ClientError::Timeout { .. } => true,
            _ => false,
        }
    }

    /// The broker's error code, when the broker answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Broker { code, .. } => Some(*code),
            ClientError::RetriesExhausted { last, .. } => last.code(),
            _ => None,
        }
    }

    pub(crate) fn broker(api: ApiKey, code: ErrorCode, message: impl Into<String>) -> ClientError {
        ClientError::Broker {
            api,
            code,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_error_shows_code_and_message() {
        let error = ClientError::broker(
            ApiKey::CreateTopic,
            ErrorCode::TOPIC_ALREADY_EXISTS,
            "taken",
        );
        assert_eq!(
            error.to_string(),
            "CreateTopic failed: TopicAlreadyExists (12): taken"
        );
        let error = ClientError::broker(ApiKey::Produce, ErrorCode::NOT_LEADER, "");
        assert_eq!(error.to_string(), "Produce failed: NotLeader (2)");
        assert!(error.is_retriable());
        assert!(!error.is_in_doubt());
    }

    #[test]
    fn retriable_and_in_doubt_follow_the_code() {
        let timeout = ClientError::broker(ApiKey::Produce, ErrorCode::TIMEOUT, "");
        assert!(timeout.is_retriable() && timeout.is_in_doubt());
        let corrupt = ClientError::broker(ApiKey::Produce, ErrorCode::CORRUPT_MESSAGE, "");
        assert!(!corrupt.is_retriable() && !corrupt.is_in_doubt());
        assert!(!ClientError::UnknownTopic("t".into()).is_retriable());
        // A request unanswered in time (a subscription's probe included) counts as a lost
        // connection: tried again on a new one.
        let unanswered = ClientError::Timeout {
            peer: SocketAddr::from(([127, 0, 0, 1], 1)),
            api: ApiKey::ApiVersions,
            correlation_id: 3,
            timeout_ms: 100,
        };
        assert!(unanswered.is_retriable());
        let exhausted = ClientError::RetriesExhausted {
            attempts: 3,
            elapsed_ms: 10,
            last: Box::new(timeout),
        };
        assert_eq!(exhausted.code(), Some(ErrorCode::TIMEOUT));
        assert!(!exhausted.is_retriable());
    }
}
