//! Request handling on the shard that owns the request's partition (or on shard 0 for
//! catalogue changes), and the mapping of engine errors to the protocol's error codes.

use std::rc::Rc;
use std::time::Duration;

use protocol::api::*;
use protocol::frame::trusted_frame;
use protocol::limits::{FETCH_BYTES_MAX, FETCH_WAIT_MS_MAX, PRODUCE_TIMEOUT_MS_MAX};
use protocol::{
    Acks, ApiKey, Body, ErrorCode, Frame, FrameBuf, OffsetSpec, StorageKind, encode_frame,
};
use rkyv::api::high::HighSerializer;
use rkyv::rancor::Failure;
use rkyv::ser::allocator::ArenaHandle;

use crate::control::catalog::Catalog;
use crate::limits::MEMORY_RETENTION_BYTES_DEFAULT;
use crate::log::LogError;
use crate::log::storage::ShardStorage;
use crate::replication::{Leader, ReplError, ReplicaStatus};

use super::Shard;
use super::messages::ShardMessage;

/// Produce timeout when the client asks for 0: the acks policy gets this long.
const PRODUCE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

/// The code a client sees for a log error.
pub fn log_error_code(error: &LogError) -> ErrorCode {
    match error {
        LogError::OffsetOutOfRange { .. } => ErrorCode::OFFSET_OUT_OF_RANGE,
        LogError::InvalidBatch(_) => ErrorCode::CORRUPT_MESSAGE,
        LogError::Closed => ErrorCode::SHUTTING_DOWN,
        LogError::Failed { .. }
        | LogError::Damaged { .. }
        | LogError::NoSpace
        | LogError::Corrupt { .. }
        | LogError::Config { .. }
        | LogError::Io { .. } => ErrorCode::STORAGE_ERROR,
    }
}

fn produce_error_code(error: &ReplError) -> ErrorCode {
    match error {
        ReplError::InvalidBatch(protocol::BatchError::BadLength { len })
            if *len > protocol::limits::BATCH_BYTES_MAX =>
        {
            ErrorCode::MESSAGE_TOO_LARGE
        }
        ReplError::InvalidBatch(_) => ErrorCode::CORRUPT_MESSAGE,
        ReplError::Log(error) => log_error_code(error),
        // Appended but not confirmed in time: the client may retry (in doubt).
        ReplError::InDoubt(_) => ErrorCode::TIMEOUT,
        ReplError::NotLeader => ErrorCode::NOT_LEADER,
        ReplError::NotEnoughReplicas { .. } => ErrorCode::NOT_ENOUGH_REPLICAS,
    }
}

/// Encodes a response frame.
pub fn encode<T>(correlation_id: u64, body: &T) -> Option<FrameBuf>
where
    T: Body
        + for<'a, 'b> rkyv::Serialize<HighSerializer<&'b mut FrameBuf, ArenaHandle<'a>, Failure>>,
{
    let mut out = FrameBuf::new();
    match encode_frame(&mut out, correlation_id, body) {
        Ok(_) => Some(out),
        Err(error) => {
            tracing::error!(api = ?T::API, %error, "response does not fit a frame");
            None
        }
    }
}

/// A response of `api`'s type carrying only `code`: for requests that cannot be served.
pub fn error_response(api: ApiKey, correlation_id: u64, code: ErrorCode) -> Option<FrameBuf> {
    let message = String::new();
    match api {
        ApiKey::ApiVersions => encode(
            correlation_id,
            &ApiVersionsResponse {
                error: code,
                broker_version: String::new(),
                apis: vec![],
            },
        ),
        ApiKey::Metadata => encode(
            correlation_id,
            &MetadataResponse {
                error: code,
                shards: vec![],
                topics: vec![],
            },
        ),
        ApiKey::CreateTopic => encode(
            correlation_id,
            &CreateTopicResponse {
                error: code,
                message,
            },
        ),
        ApiKey::DeleteTopic => encode(
            correlation_id,
            &DeleteTopicResponse {
                error: code,
                message,
            },
        ),
        ApiKey::Produce => encode(
            correlation_id,
            &ProduceResponse {
                error: code,
                base_offset: 0,
                log_start_offset: 0,
            },
        ),
        ApiKey::Fetch => encode(
            correlation_id,
            &FetchResponse {
                error: code,
                high_watermark: 0,
                log_start_offset: 0,
                records: vec![],
            },
        ),
        ApiKey::ListOffsets => encode(
            correlation_id,
            &ListOffsetsResponse {
                error: code,
                offset: 0,
                timestamp_ms: -1,
            },
        ),
        ApiKey::Subscribe => encode(
            correlation_id,
            &SubscribeDelivery {
                error: code,
                high_watermark: 0,
                log_start_offset: 0,
                records: vec![],
            },
        ),
        ApiKey::Unsubscribe => encode(correlation_id, &UnsubscribeResponse { error: code }),
        ApiKey::OffsetCommit => encode(correlation_id, &OffsetCommitResponse { error: code }),
        ApiKey::OffsetFetch => encode(
            correlation_id,
            &OffsetFetchResponse {
                error: code,
                offset: None,
                metadata: message,
            },
        ),
    }
}

/// Handles one request frame (checked by the connection that received it, all but a
/// produce's body crc, which `produce` checks in one pass with its batch) and returns the
/// encoded response, or `None` when the request wants none (`acks = none`).
pub async fn handle(shard: &Rc<Shard>, frame: FrameBuf) -> Option<FrameBuf> {
    let decoded = trusted_frame(&frame)?;
    let correlation_id = decoded.header.correlation_id;
    let api = decoded.header.api().ok()?;
    shard.stats.borrow_mut().requests += 1;
    let invalid = || error_response(api, correlation_id, ErrorCode::INVALID_REQUEST);
    match api {
        ApiKey::ApiVersions => encode(correlation_id, &api_versions()),
        ApiKey::Metadata => match decoded.deserialize::<MetadataRequest>() {
            Ok(request) => encode(correlation_id, &metadata(shard, request).await),
            Err(_) => invalid(),
        },
        ApiKey::CreateTopic => match decoded.deserialize::<CreateTopicRequest>() {
            Ok(request) => encode(correlation_id, &create_topic(shard, request).await),
            Err(_) => invalid(),
        },
        ApiKey::DeleteTopic => match decoded.deserialize::<DeleteTopicRequest>() {
            Ok(request) => encode(correlation_id, &delete_topic(shard, request).await),
            Err(_) => invalid(),
        },
        ApiKey::Produce => produce(shard, &decoded).await,
        ApiKey::Fetch => fetch(shard, &decoded).await,
        ApiKey::ListOffsets => list_offsets(shard, &decoded).await,
        // Consumer-group offsets arrive with consumer groups. Subscriptions are served by
        // the connection they came on (`subscription`), never forwarded here.
        ApiKey::OffsetCommit | ApiKey::OffsetFetch | ApiKey::Subscribe | ApiKey::Unsubscribe => {
            invalid()
        }
    }
}

/// Apis this build knows but does not serve yet: consumer-group offsets arrive with groups.
const UNSERVED: [ApiKey; 2] = [ApiKey::OffsetCommit, ApiKey::OffsetFetch];

fn api_versions() -> ApiVersionsResponse {
    let served = ApiKey::ALL
        .into_iter()
        .filter(|api| !UNSERVED.contains(api));
    ApiVersionsResponse {
        error: ErrorCode::NONE,
        broker_version: env!("CARGO_PKG_VERSION").into(),
        apis: served
            .map(|api| {
                let (min_version, max_version) = api.versions();
                ApiVersionRange {
                    api_key: api as u16,
                    min_version,
                    max_version,
                }
            })
            .collect(),
    }
}

/// The leader replica of the partition named in a request if this shard leads it, or the
/// code to answer with.
pub(super) fn local_leader(
    shard: &Shard,
    topic: &str,
    partition: u32,
) -> Result<Rc<Leader<ShardStorage>>, ErrorCode> {
    if let Some(found) = shard.leader(topic, partition) {
        return Ok(found);
    }
    let catalog = shard.catalog();
    let known = catalog
        .topic(topic)
        .is_some_and(|t| (partition as usize) < t.partitions.len());
    Err(if known {
        ErrorCode::NOT_LEADER
    } else {
        ErrorCode::UNKNOWN_TOPIC_OR_PARTITION
    })
}

async fn produce(shard: &Rc<Shard>, frame: &Frame<'_>) -> Option<FrameBuf> {
    let correlation_id = frame.header.correlation_id;
    // The connection left the body's crc to this shard: checked in one pass with the batch's
    // below, or here when the body is no produce archive at all, to tell damage in transit
    // from a malformed request. A body that fails it is answered whatever its acks say:
    // they are part of what failed.
    let Ok(request) = frame.access::<ProduceRequest>() else {
        let code = match frame.check_body() {
            Ok(()) => ErrorCode::INVALID_REQUEST,
            Err(_) => ErrorCode::CORRUPT_MESSAGE,
        };
        return error_response(ApiKey::Produce, correlation_id, code);
    };
    let batch = match frame.check_body_with_batch(request.batch.as_slice()) {
        Ok(batch) => batch,
        Err(error) => {
            tracing::debug!(%error, "produce frame refused");
            return error_response(ApiKey::Produce, correlation_id, ErrorCode::CORRUPT_MESSAGE);
        }
    };
    let acks = Acks::from(&request.acks);
    let respond = |error: ErrorCode, base_offset: u64, log_start_offset: u64| {
        if acks == Acks::None {
            return None;
        }
        encode(
            correlation_id,
            &ProduceResponse {
                error,
                base_offset,
                log_start_offset,
            },
        )
    };
    let leader = match local_leader(shard, request.topic.as_str(), request.partition.to_native()) {
        Ok(leader) => leader,
        Err(code) => return respond(code, 0, 0),
    };
    // A memory topic has nothing to sync: refused, never silently acked as written.
    if acks.needs_fsync() && matches!(leader.log().storage(), ShardStorage::Memory(_)) {
        return respond(ErrorCode::INVALID_ACKS, 0, 0);
    }
    let timeout_ms = request.timeout_ms.to_native().min(PRODUCE_TIMEOUT_MS_MAX);
    let timeout = if timeout_ms == 0 {
        PRODUCE_TIMEOUT_DEFAULT
    } else {
        Duration::from_millis(u64::from(timeout_ms))
    };
    let produced = match batch {
        Ok(batch) => leader.produce_view(batch, acks, timeout).await,
        Err(error) => Err(ReplError::from(error)),
    };
    match produced {
        // With `acks = none` nobody waits for the commit; the leader starts it itself.
        Ok(appended) => respond(
            ErrorCode::NONE,
            appended.base_offset,
            leader.log().offsets().log_start,
        ),
        Err(error @ ReplError::InDoubt(_)) => {
            // Appended but not confirmed in time: say what the log was still waiting for.
            // Debug, like every produce failure: a stalled disk times out every pipelined
            // request at once, and the shard's I/O watch already warns about it once a second.
            let (offsets, io) = (leader.log().offsets(), leader.log().io_in_flight());
            tracing::debug!(topic = %leader.key.topic, partition = leader.key.partition, %error,
                next = offsets.next, written = offsets.written, synced = offsets.synced, ?io,
                "produce not confirmed in time");
            respond(produce_error_code(&error), 0, offsets.log_start)
        }
        Err(error) => {
            tracing::debug!(topic = %leader.key.topic, partition = leader.key.partition, %error, "produce failed");
            respond(
                produce_error_code(&error),
                0,
                leader.log().offsets().log_start,
            )
        }
    }
}

async fn fetch(shard: &Rc<Shard>, frame: &Frame<'_>) -> Option<FrameBuf> {
    let correlation_id = frame.header.correlation_id;
    let Ok(request) = frame.access::<FetchRequest>() else {
        return error_response(ApiKey::Fetch, correlation_id, ErrorCode::INVALID_REQUEST);
    };
    let leader = match local_leader(shard, request.topic.as_str(), request.partition.to_native()) {
        Ok(leader) => leader,
        Err(code) => return error_response(ApiKey::Fetch, correlation_id, code),
    };
    let max_bytes = request.max_bytes.to_native().min(FETCH_BYTES_MAX) as usize;
    let max_wait = Duration::from_millis(u64::from(
        request.max_wait_ms.to_native().min(FETCH_WAIT_MS_MAX),
    ));
    let response = match leader
        .fetch(request.offset.to_native(), max_bytes, max_wait)
        .await
    {
        Ok(fetched) => FetchResponse {
            error: ErrorCode::NONE,
            high_watermark: fetched.high_watermark,
            log_start_offset: fetched.log_start_offset,
            records: fetched.records,
        },
        Err(error) => FetchResponse {
            error: log_error_code(&error),
            high_watermark: leader.hw(),
            log_start_offset: leader.log().offsets().log_start,
            records: vec![],
        },
    };
    encode(correlation_id, &response)
}

async fn list_offsets(shard: &Rc<Shard>, frame: &Frame<'_>) -> Option<FrameBuf> {
    let correlation_id = frame.header.correlation_id;
    let Ok(request) = frame.deserialize::<ListOffsetsRequest>() else {
        return error_response(
            ApiKey::ListOffsets,
            correlation_id,
            ErrorCode::INVALID_REQUEST,
        );
    };
    let leader = match local_leader(shard, &request.topic, request.partition) {
        Ok(leader) => leader,
        Err(code) => return error_response(ApiKey::ListOffsets, correlation_id, code),
    };
    let offsets = leader.log().offsets();
    let high_watermark = leader.hw();
    let (offset, timestamp_ms) = match request.spec {
        OffsetSpec::Earliest => (offsets.log_start, -1),
        OffsetSpec::Latest => (high_watermark, -1),
        OffsetSpec::Timestamp(timestamp_ms) => match leader
            .log()
            .offset_for_time(timestamp_ms)
            .await
        {
            Ok(Some(offset)) if offset < high_watermark => (offset, timestamp_ms),
            Ok(_) => (high_watermark, -1),
            Err(error) => {
                return error_response(ApiKey::ListOffsets, correlation_id, log_error_code(&error));
            }
        },
    };
    encode(
        correlation_id,
        &ListOffsetsResponse {
            error: ErrorCode::NONE,
            offset,
            timestamp_ms,
        },
    )
}

async fn metadata(shard: &Rc<Shard>, request: MetadataRequest) -> MetadataResponse {
    let catalog = shard.catalog();
    let names: Vec<String> = if request.topics.is_empty() {
        catalog.topics().iter().map(|t| t.name.clone()).collect()
    } else {
        request.topics
    };
    let offsets = partition_offsets(shard, &catalog, &names).await;
    let topics = names
        .iter()
        .map(|name| match catalog.topic(name) {
            None => TopicMetadata {
                error: ErrorCode::UNKNOWN_TOPIC_OR_PARTITION,
                name: name.clone(),
                replication_factor: 0,
                min_insync: 0,
                retention_ms: None,
                retention_bytes: None,
                storage: StorageKind::Disk,
                partitions: vec![],
            },
            Some(topic) => TopicMetadata {
                error: ErrorCode::NONE,
                name: topic.name.clone(),
                replication_factor: topic.replication_factor,
                min_insync: topic.min_insync,
                retention_ms: topic.retention_ms,
                retention_bytes: topic.retention_bytes,
                storage: topic.storage,
                partitions: topic
                    .partitions
                    .iter()
                    .enumerate()
                    .map(|(index, placement)| {
                        let known = offsets.get(&(topic.name.clone(), index as u32)).cloned();
                        let error = if known.is_some() {
                            ErrorCode::NONE
                        } else {
                            ErrorCode::STORAGE_ERROR
                        };
                        let status = known.unwrap_or_default();
                        PartitionMetadata {
                            error,
                            partition: index as u32,
                            leader_shard: placement.replicas.first().copied().unwrap_or(0),
                            leader_epoch: placement.leader_epoch,
                            replicas: placement.replicas.clone(),
                            in_sync: status.isr,
                            log_start_offset: status.log_start,
                            high_watermark: status.hw,
                            log_end_offset: status.log_end,
                            high_watermark_synced: status.hw_synced,
                            followers: status.followers,
                        }
                    })
                    .collect(),
            },
        })
        .collect();
    MetadataResponse {
        error: ErrorCode::NONE,
        shards: shard.addresses.clone(),
        topics,
    }
}

/// (log start, high watermark) of every partition of `names`, asking each leader shard.
async fn partition_offsets(
    shard: &Rc<Shard>,
    catalog: &Catalog,
    names: &[String],
) -> ahash::AHashMap<(String, u32), ReplicaStatus> {
    let mut by_shard: Vec<Vec<(String, u32)>> = vec![Vec::new(); usize::from(shard.shards)];
    for topic in names.iter().filter_map(|name| catalog.topic(name)) {
        for (index, placement) in topic.partitions.iter().enumerate() {
            if let Some(list) = placement
                .replicas
                .first()
                .and_then(|s| by_shard.get_mut(usize::from(*s)))
            {
                list.push((topic.name.clone(), index as u32));
            }
        }
    }
    let mut offsets = ahash::AHashMap::new();
    for (target, partitions) in by_shard.into_iter().enumerate() {
        if partitions.is_empty() {
            continue;
        }
        let answers: Vec<Option<ReplicaStatus>> = if target == usize::from(shard.id.0) {
            partitions
                .iter()
                .map(|(topic, index)| shard.leader(topic, *index).map(|l| l.status()))
                .collect()
        } else {
            let query = partitions.clone();
            match shard
                .ask(target as u16, |token| ShardMessage::OffsetsQuery {
                    token,
                    partitions: query,
                })
                .await
            {
                Some(ShardMessage::OffsetsReply { offsets, .. }) => offsets,
                _ => vec![None; partitions.len()],
            }
        };
        for (key, answer) in partitions.into_iter().zip(answers) {
            if let Some(answer) = answer {
                offsets.insert(key, answer);
            }
        }
    }
    offsets
}

async fn create_topic(shard: &Rc<Shard>, mut request: CreateTopicRequest) -> CreateTopicResponse {
    // The profile's retention applies where the request sets none; the catalogue records the
    // effective values, so `describe` shows what the broker enforces.
    let defaults = shard.log_defaults();
    request.retention_ms = request.retention_ms.or(defaults.retention_ms);
    request.retention_bytes = request.retention_bytes.or(defaults.retention_bytes);
    if request.storage == StorageKind::Memory {
        request.retention_bytes = request
            .retention_bytes
            .or(Some(MEMORY_RETENTION_BYTES_DEFAULT));
    }
    let change = |catalog: &Catalog| catalog.with_topic(&request, shard.shards);
    match change_catalog(shard, change).await {
        Ok(()) => CreateTopicResponse {
            error: ErrorCode::NONE,
            message: String::new(),
        },
        Err((error, message)) => CreateTopicResponse { error, message },
    }
}

async fn delete_topic(shard: &Rc<Shard>, request: DeleteTopicRequest) -> DeleteTopicResponse {
    let change = |catalog: &Catalog| catalog.without_topic(&request.name);
    match change_catalog(shard, change).await {
        Ok(()) => DeleteTopicResponse {
            error: ErrorCode::NONE,
            message: String::new(),
        },
        Err((error, message)) => DeleteTopicResponse { error, message },
    }
}

/// Changes the catalogue on shard 0: computes the new one, persists it durably, and has
/// every shard apply it before answering. Changes run one at a time.
pub(crate) async fn change_catalog(
    shard: &Rc<Shard>,
    change: impl FnOnce(&Catalog) -> Result<Catalog, crate::control::catalog::Refusal>,
) -> Result<(), (ErrorCode, String)> {
    let Some(dir) = shard.catalog_dir().cloned() else {
        return Err((
            ErrorCode::NOT_CONTROLLER,
            format!("{} does not run the control plane", shard.id),
        ));
    };
    let _permit = shard
        .control_lock()
        .acquire_permit(1)
        .await
        .map_err(|error| (ErrorCode::SHUTTING_DOWN, error.to_string()))?;
    let next = change(&shard.catalog()).map_err(|refusal| (refusal.code, refusal.message))?;
    next.persist(&dir).await.map_err(|error| {
        (
            ErrorCode::STORAGE_ERROR,
            format!("persisting the catalogue: {error}"),
        )
    })?;
    let mut errors = Vec::new();
    for target in 0..shard.shards {
        if target == shard.id.0 {
            continue;
        }
        let catalog = next.clone();
        match shard
            .ask(target, |token| ShardMessage::Apply { token, catalog })
            .await
        {
            Some(ShardMessage::Applied { error: None, .. }) => {}
            Some(ShardMessage::Applied {
                error: Some(error), ..
            }) => errors.push(error),
            _ => errors.push(format!("shard {target} did not answer")),
        }
    }
    if let Err(error) = shard.apply_catalog(next).await {
        errors.push(error);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err((ErrorCode::STORAGE_ERROR, errors.join("; ")))
    }
}
