//! Requests and responses: api keys, error codes, and the rkyv bodies of every api.
//!
//! Numbers here are stable: an api key, an error code or a field order never changes its
//! meaning once released. A changed body layout is a new api version.

use rkyv::{Archive, Deserialize, Serialize};

#[cfg(test)]
use proptest_derive::Arbitrary;

/// Stable numeric identifiers of the apis, carried in every frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ApiKey {
    ApiVersions = 0,
    Metadata = 1,
    CreateTopic = 2,
    DeleteTopic = 3,
    Produce = 4,
    Fetch = 5,
    ListOffsets = 6,
    OffsetCommit = 7,
    OffsetFetch = 8,
    Subscribe = 9,
    Unsubscribe = 10,
}

impl ApiKey {
    pub const ALL: [ApiKey; 11] = [
        ApiKey::ApiVersions,
        ApiKey::Metadata,
        ApiKey::CreateTopic,
        ApiKey::DeleteTopic,
        ApiKey::Produce,
        ApiKey::Fetch,
        ApiKey::ListOffsets,
        ApiKey::OffsetCommit,
        ApiKey::OffsetFetch,
        ApiKey::Subscribe,
        ApiKey::Unsubscribe,
    ];

    /// The versions of this api this build reads and writes, `(min, max)`. Every body is
    /// framed with its api's newest version.
    ///
    /// Metadata 1 added the end offset, the synced high watermark and each follower's lag to
    /// `PartitionMetadata`, and Metadata 2 a topic's storage to `TopicMetadata`; CreateTopic 1
    /// added the storage to its request. No release ever served the older versions, so none
    /// is kept for them.
    pub const fn versions(self) -> (u16, u16) {
        match self {
            ApiKey::Metadata => (2, 2),
            ApiKey::CreateTopic => (1, 1),
            _ => (0, 0),
        }
    }

    pub const fn supports(self, version: u16) -> bool {
        let (min, max) = self.versions();
        min <= version && version <= max
    }
}

impl TryFrom<u16> for ApiKey {
    type Error = u16;

    fn try_from(key: u16) -> Result<ApiKey, u16> {
        ApiKey::ALL
            .into_iter()
            .find(|api| *api as u16 == key)
            .ok_or(key)
    }
}

/// A request or response body, tied to the api key and version it is framed with.
pub trait Body: Archive {
    const API: ApiKey;
    const VERSION: u16;
}

/// The outcome code in every response. `ErrorCode::NONE` is success.
///
/// A newtype rather than an enum so that a code from a newer broker still decodes; `name()`
/// says `"Unknown"` for codes this build does not know.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug, Clone, Copy, PartialEq, Eq))]
#[cfg_attr(test, derive(Arbitrary))]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    pub const NONE: ErrorCode = ErrorCode(0);
    pub const UNKNOWN_TOPIC_OR_PARTITION: ErrorCode = ErrorCode(1);
    pub const NOT_LEADER: ErrorCode = ErrorCode(2);
    pub const OFFSET_OUT_OF_RANGE: ErrorCode = ErrorCode(3);
    pub const CORRUPT_MESSAGE: ErrorCode = ErrorCode(4);
    pub const MESSAGE_TOO_LARGE: ErrorCode = ErrorCode(5);
    pub const NOT_ENOUGH_REPLICAS: ErrorCode = ErrorCode(6);
    pub const TIMEOUT: ErrorCode = ErrorCode(7);
    pub const INVALID_REQUEST: ErrorCode = ErrorCode(8);
    pub const DUPLICATE_SEQUENCE: ErrorCode = ErrorCode(9);
    pub const OUT_OF_ORDER_SEQUENCE: ErrorCode = ErrorCode(10);
    pub const STORAGE_ERROR: ErrorCode = ErrorCode(11);
    pub const TOPIC_ALREADY_EXISTS: ErrorCode = ErrorCode(12);
    pub const INVALID_TOPIC: ErrorCode = ErrorCode(13);
    pub const INVALID_PARTITIONS: ErrorCode = ErrorCode(14);
    pub const INVALID_REPLICATION_FACTOR: ErrorCode = ErrorCode(15);
    pub const UNSUPPORTED_VERSION: ErrorCode = ErrorCode(16);
    pub const INVALID_GROUP: ErrorCode = ErrorCode(17);
    pub const NOT_CONTROLLER: ErrorCode = ErrorCode(18);
    pub const SHUTTING_DOWN: ErrorCode = ErrorCode(19);
    /// The topic's storage cannot give the acks policy asked for: an fsync policy on a
    /// memory topic, which has nothing to sync.
    pub const INVALID_ACKS: ErrorCode = ErrorCode(20);

    /// Every code this build knows, with its name.
    pub const KNOWN: [(ErrorCode, &'static str); 21] = [
        (ErrorCode::NONE, "None"),
        (
            ErrorCode::UNKNOWN_TOPIC_OR_PARTITION,
            "UnknownTopicOrPartition",
        ),
        (ErrorCode::NOT_LEADER, "NotLeader"),
        (ErrorCode::OFFSET_OUT_OF_RANGE, "OffsetOutOfRange"),
        (ErrorCode::CORRUPT_MESSAGE, "CorruptMessage"),
        (ErrorCode::MESSAGE_TOO_LARGE, "MessageTooLarge"),
        (ErrorCode::NOT_ENOUGH_REPLICAS, "NotEnoughReplicas"),
        (ErrorCode::TIMEOUT, "Timeout"),
        (ErrorCode::INVALID_REQUEST, "InvalidRequest"),
        (ErrorCode::DUPLICATE_SEQUENCE, "DuplicateSequence"),
        (ErrorCode::OUT_OF_ORDER_SEQUENCE, "OutOfOrderSequence"),
        (ErrorCode::STORAGE_ERROR, "StorageError"),
        (ErrorCode::TOPIC_ALREADY_EXISTS, "TopicAlreadyExists"),
        (ErrorCode::INVALID_TOPIC, "InvalidTopic"),
        (ErrorCode::INVALID_PARTITIONS, "InvalidPartitions"),
        (
            ErrorCode::INVALID_REPLICATION_FACTOR,
            "InvalidReplicationFactor",
        ),
        (ErrorCode::UNSUPPORTED_VERSION, "UnsupportedVersion"),
        (ErrorCode::INVALID_GROUP, "InvalidGroup"),
        (ErrorCode::NOT_CONTROLLER, "NotController"),
        (ErrorCode::SHUTTING_DOWN, "ShuttingDown"),
        (ErrorCode::INVALID_ACKS, "InvalidAcks"),
    ];

    pub fn is_ok(self) -> bool {
        self == ErrorCode::NONE
    }

    pub fn name(self) -> &'static str {
        ErrorCode::KNOWN
            .iter()
            .find(|(code, _)| *code == self)
            .map_or("Unknown", |(_, name)| name)
    }

    /// Whether a client should refresh metadata and retry the same request.
    pub fn is_retriable(self) -> bool {
        matches!(
            self,
            ErrorCode::NOT_LEADER
                | ErrorCode::NOT_ENOUGH_REPLICAS
                | ErrorCode::TIMEOUT
                | ErrorCode::NOT_CONTROLLER
                | ErrorCode::SHUTTING_DOWN
        )
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

impl ArchivedErrorCode {
    pub fn get(&self) -> ErrorCode {
        ErrorCode(self.0.to_native())
    }
}

/// Where a follower replica stands with its leader.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug, Clone, Copy, PartialEq, Eq))]
#[cfg_attr(test, derive(Arbitrary))]
#[repr(u8)]
pub enum ReplicaState {
    /// In the in-sync set: it holds the high watermark back and may take over.
    InSync = 0,
    /// Out of the set (behind past a lag bound, or not yet joined in this leader's term);
    /// it joins once it holds everything below the watermarks.
    CatchingUp = 1,
    /// Its log failed; it stays out of the set until it reopens its log (about a second
    /// later, then backing off while the disk keeps failing) and catches up.
    Failed = 2,
}

impl ReplicaState {
    /// The spelling `ringmq topic describe` prints: `in-sync`, `catching-up`, `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaState::InSync => "in-sync",
            ReplicaState::CatchingUp => "catching-up",
            ReplicaState::Failed => "failed",
        }
    }
}

/// When the broker acknowledges a produce (DESIGN §3, RELIABILITY Part B).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug, Clone, Copy, PartialEq, Eq))]
#[cfg_attr(test, derive(Arbitrary))]
#[repr(u8)]
pub enum Acks {
    /// No response is sent.
    None = 0,
    /// After the leader's write completed.
    Leader = 1,
    /// After the leader's write and an fdatasync covering it completed.
    LeaderFsync = 2,
    /// After every in-sync replica's write completed.
    All = 3,
    /// After every in-sync replica wrote and fdatasynced.
    AllFsync = 4,
}

impl Acks {
    pub const ALL: [Acks; 5] = [
        Acks::None,
        Acks::Leader,
        Acks::LeaderFsync,
        Acks::All,
        Acks::AllFsync,
    ];

    /// The spelling used on command lines and in configuration: `none`, `leader`,
    /// `leader+fsync`, `all`, `all+fsync`.
    pub fn as_str(self) -> &'static str {
        match self {
            Acks::None => "none",
            Acks::Leader => "leader",
            Acks::LeaderFsync => "leader+fsync",
            Acks::All => "all",
            Acks::AllFsync => "all+fsync",
        }
    }

    pub fn needs_fsync(self) -> bool {
        matches!(self, Acks::LeaderFsync | Acks::AllFsync)
    }
}

impl std::str::FromStr for Acks {
    type Err = String;

    fn from_str(text: &str) -> Result<Acks, String> {
        Acks::ALL
            .into_iter()
            .find(|acks| acks.as_str() == text)
            .ok_or_else(|| {
                format!(
                    "unknown acks '{text}': expected none, leader, leader+fsync, all or all+fsync"
                )
            })
    }
}

impl From<&ArchivedAcks> for Acks {
    fn from(acks: &ArchivedAcks) -> Acks {
        match acks {
            ArchivedAcks::None => Acks::None,
            ArchivedAcks::Leader => Acks::Leader,
            ArchivedAcks::LeaderFsync => Acks::LeaderFsync,
            ArchivedAcks::All => Acks::All,
            ArchivedAcks::AllFsync => Acks::AllFsync,
        }
    }
}

/// Where a topic's partitions keep their records.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[rkyv(derive(Debug, Clone, Copy, PartialEq, Eq))]
#[cfg_attr(test, derive(Arbitrary))]
#[repr(u8)]
pub enum StorageKind {
    /// Each replica's log on its shard's disk (O_DIRECT, checksummed segments): records
    /// survive restarts, and the `+fsync` acks policies make them survive power loss.
    #[default]
    Disk = 0,
    /// Each replica's log in its shard's memory, like a JetStream memory stream: no disk
    /// I/O, so a record is readable as soon as it is appended. A restart empties the topic
    /// (it keeps its definition), and the `+fsync` acks policies are refused.
    Memory = 1,
}

impl StorageKind {
    pub const ALL: [StorageKind; 2] = [StorageKind::Disk, StorageKind::Memory];

    /// The spelling used on command lines and in `describe`: `disk`, `memory`.
    pub fn as_str(self) -> &'static str {
        match self {
            StorageKind::Disk => "disk",
            StorageKind::Memory => "memory",
        }
    }
}

impl std::str::FromStr for StorageKind {
    type Err = String;

    fn from_str(text: &str) -> Result<StorageKind, String> {
        StorageKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
            .ok_or_else(|| format!("unknown storage '{text}': expected disk or memory"))
    }
}

/// Declares rkyv bodies with the derives every message shares, and binds each to its api.
macro_rules! bodies {
    ($($api:ident => $(#[$meta:meta])* struct $name:ident { $($(#[$fmeta:meta])* $field:ident : $ty:ty),* $(,)? })*) => {
        $(
            $(#[$meta])*
            #[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
            #[rkyv(derive(Debug))]
            #[cfg_attr(test, derive(Arbitrary))]
            pub struct $name { $($(#[$fmeta])* pub $field: $ty),* }

            impl Body for $name {
                const API: ApiKey = ApiKey::$api;
                const VERSION: u16 = ApiKey::$api.versions().1;
            }
        )*
    };
}

/// A structure shared by several bodies (not framed on its own).
macro_rules! parts {
    ($($(#[$meta:meta])* struct $name:ident { $($(#[$fmeta:meta])* $field:ident : $ty:ty),* $(,)? })*) => {
        $(
            $(#[$meta])*
            #[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
            #[rkyv(derive(Debug))]
            #[cfg_attr(test, derive(Arbitrary))]
            pub struct $name { $($(#[$fmeta])* pub $field: $ty),* }
        )*
    };
}

parts! {
    /// One api this broker serves and the versions of it.
    struct ApiVersionRange { api_key: u16, min_version: u16, max_version: u16 }

    /// Where a shard listens: clients connect to a partition leader's shard directly.
    struct ShardAddress { shard: u16, host: String, port: u16 }

    struct PartitionMetadata {
        error: ErrorCode,
        partition: u32,
        /// Shard of the leader replica; look its address up in `MetadataResponse::shards`.
        leader_shard: u16,
        leader_epoch: u32,
        /// Shards holding a replica, leader first.
        replicas: Vec<u16>,
        /// Shards whose replica is in sync.
        in_sync: Vec<u16>,
        log_start_offset: u64,
        high_watermark: u64,
        /// The offset after the leader's last record (committed or not).
        log_end_offset: u64,
        /// The offset below which every in-sync replica has synced its records to disk (what
        /// `all+fsync` waits for).
        high_watermark_synced: u64,
        /// Each follower replica as the leader sees it.
        #[cfg_attr(test, proptest(strategy = "proptest::collection::vec(proptest::arbitrary::any::<ReplicaLag>(), 0..4)"))]
        followers: Vec<ReplicaLag>,
    }

    /// How far a follower replica is behind its leader.
    struct ReplicaLag {
        shard: u16,
        state: ReplicaState,
        /// Records the leader holds beyond this replica's completed writes.
        records_behind: u64,
        /// Records the leader holds beyond what this replica has synced to disk.
        records_behind_synced: u64,
        /// Milliseconds since this replica last held everything the leader held; 0 while
        /// it does.
        time_behind_ms: u64,
    }

    struct TopicMetadata {
        error: ErrorCode,
        name: String,
        replication_factor: u16,
        min_insync: u16,
        /// Milliseconds a segment is kept after its last write; `None` keeps it forever.
        retention_ms: Option<u64>,
        /// Bytes a partition may keep before old segments go; `None` for no bound.
        retention_bytes: Option<u64>,
        storage: StorageKind,
        partitions: Vec<PartitionMetadata>,
    }
}

/// Which offset `ListOffsets` looks up.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
#[cfg_attr(test, derive(Arbitrary))]
pub enum OffsetSpec {
    /// The first offset still in the log.
    Earliest,
    /// The offset the next record will get (the high watermark).
    Latest,
    /// The first offset whose record timestamp is at or after this many ms since the epoch.
    Timestamp(i64),
}

bodies! {
    ApiVersions => /// Handshake: the client names itself, the broker lists what it serves.
    struct ApiVersionsRequest { client_software: String }
    ApiVersions => struct ApiVersionsResponse {
        error: ErrorCode,
        broker_version: String,
        apis: Vec<ApiVersionRange>,
    }

    Metadata => /// An empty `topics` asks for every topic.
    struct MetadataRequest { topics: Vec<String> }
    Metadata => struct MetadataResponse {
        error: ErrorCode,
        shards: Vec<ShardAddress>,
        topics: Vec<TopicMetadata>,
    }

    CreateTopic => struct CreateTopicRequest {
        name: String,
        partitions: u32,
        replication_factor: u16,
        /// In-sync replicas an `all` produce needs; at most `replication_factor`.
        min_insync: u16,
        retention_ms: Option<u64>,
        /// With `StorageKind::Memory`, also the bound of each partition's memory; the broker
        /// sets one when neither the request nor its profile does.
        retention_bytes: Option<u64>,
        storage: StorageKind,
    }
    CreateTopic => struct CreateTopicResponse { error: ErrorCode, message: String }

    DeleteTopic => struct DeleteTopicRequest { name: String }
    DeleteTopic => struct DeleteTopicResponse { error: ErrorCode, message: String }

    Produce => /// One record batch for one partition. The broker stores `batch` as sent, after
    /// stamping its base offset.
    struct ProduceRequest {
        topic: String,
        partition: u32,
        acks: Acks,
        /// Milliseconds to wait for the acks policy before answering `Timeout`.
        timeout_ms: u32,
        batch: Vec<u8>,
    }
    Produce => struct ProduceResponse {
        error: ErrorCode,
        /// Offset of the batch's first record.
        base_offset: u64,
        log_start_offset: u64,
    }

    Fetch => /// Long poll: answered once data at `offset` exists or `max_wait_ms` passed.
    struct FetchRequest {
        topic: String,
        partition: u32,
        offset: u64,
        max_bytes: u32,
        max_wait_ms: u32,
    }
    Fetch => struct FetchResponse {
        error: ErrorCode,
        high_watermark: u64,
        log_start_offset: u64,
        /// Whole batches as stored, concatenated. The first may start before the requested
        /// offset; consumers skip records below it. At least one batch when any exists, even
        /// above `max_bytes`, so a consumer never stalls behind a large batch.
        records: Vec<u8>,
    }

    Subscribe => /// Push delivery: the broker answers with a stream of `SubscribeDelivery` frames,
    /// all with this request's correlation id, each holding the whole batches committed
    /// after the previous one, from the batch holding `offset` on. It sends a delivery as
    /// soon as records are committed, without a request per delivery, while the
    /// connection's unsent responses stay under its bound (a consumer that does not read
    /// holds deliveries back; the broker queues at most one more for it). A delivery with an
    /// error ends the subscription: `NotLeader` once the leader's term ended (leadership
    /// moved or the topic was deleted: subscribe again where the metadata says), the log's
    /// error once it failed, `ShuttingDown`. `Unsubscribe` and closing the connection end it
    /// too.
    /// Served on the partition leader's shard only: connect to its shard port.
    struct SubscribeRequest {
        topic: String,
        partition: u32,
        offset: u64,
        /// Most bytes of batches per delivery (at least one batch).
        max_bytes: u32,
    }
    Subscribe => struct SubscribeDelivery {
        error: ErrorCode,
        high_watermark: u64,
        log_start_offset: u64,
        /// Whole batches as stored, as in `FetchResponse::records`; the first delivery's
        /// first batch may start before the requested offset.
        records: Vec<u8>,
    }

    Unsubscribe => /// Ends the subscription started by the `Subscribe` request with this
    /// correlation id on this connection; answered once no more of its deliveries follow.
    struct UnsubscribeRequest { subscription: u64 }
    Unsubscribe => struct UnsubscribeResponse { error: ErrorCode }

    ListOffsets => struct ListOffsetsRequest { topic: String, partition: u32, spec: OffsetSpec }
    ListOffsets => struct ListOffsetsResponse { error: ErrorCode, offset: u64, timestamp_ms: i64 }

    OffsetCommit => struct OffsetCommitRequest {
        group: String,
        topic: String,
        partition: u32,
        /// The next offset the group will consume.
        offset: u64,
        metadata: String,
    }
    OffsetCommit => struct OffsetCommitResponse { error: ErrorCode }

    OffsetFetch => struct OffsetFetchRequest { group: String, topic: String, partition: u32 }
    OffsetFetch => struct OffsetFetchResponse {
        error: ErrorCode,
        /// `None` when the group has committed nothing for the partition.
        offset: Option<u64>,
        metadata: String,
    }
}
