//! Frames: a fixed 32-byte header, an rkyv body, zero padding to a multiple of 16.
//!
//! ```text
//! offset size field (little-endian)
//! 0      4    magic "RMQ1"
//! 4      4    frame_len        header + body + padding; a multiple of 16
//! 8      4    body_len         exact rkyv length (rkyv keeps its root at the end)
//! 12     2    api_key
//! 14     2    api_version
//! 16     8    correlation_id   chosen by the requester, echoed in the response
//! 24     4    body_crc32c      crc32c(body[..body_len])
//! 28     4    header_crc32c    crc32c(bytes 0..28)
//! 32     ...  body, then zero padding up to frame_len
//! ```
//!
//! Responses reuse the request's api key; which side speaks is fixed by the connection.
//! [`decode_frame`] never allocates: it looks at the header, checks the lengths against
//! `FRAME_BYTES_MAX`, and either says how many bytes are still missing or hands back a
//! [`Frame`] borrowing the body. [`Frame::access`] validates the body with bytecheck.

use std::ops::Range;

use rkyv::api::high::{HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor::{Failure, Strategy};
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;
use rkyv::{Deserialize, Portable, Serialize};

use crate::api::{ApiKey, Body};
use crate::batch::{BatchError, BatchView, crc_covered};
use crate::limits::{FRAME_ALIGN, FRAME_BYTES_MAX, FRAME_HEADER_BYTES};

/// First four bytes of every frame. Lets a broker reject HTTP, TLS or garbage at byte one.
pub const FRAME_MAGIC: [u8; 4] = *b"RMQ1";

/// The receive and send buffer type: rkyv bodies need 16-byte alignment.
pub type FrameBuf = AlignedVec<FRAME_ALIGN>;

const AT_FRAME_LEN: usize = 4;
const AT_BODY_LEN: usize = 8;
const AT_API_KEY: usize = 12;
const AT_API_VERSION: usize = 14;
const AT_CORRELATION_ID: usize = 16;
const AT_BODY_CRC: usize = 24;
const AT_HEADER_CRC: usize = 28;

/// Why bytes are not a frame, or not the frame the caller asked for. Never echoes payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("bad frame magic {found:02x?}")]
    BadMagic { found: [u8; 4] },
    #[error("frame header checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    HeaderChecksum { stored: u32, computed: u32 },
    #[error("frame length {len} exceeds {FRAME_BYTES_MAX}")]
    FrameTooLarge { len: u32 },
    #[error(
        "frame length {len} is not a multiple of {FRAME_ALIGN} of at least {FRAME_HEADER_BYTES}"
    )]
    BadFrameLength { len: u32 },
    #[error("body length {body_len} does not pad to frame length {frame_len}")]
    BadBodyLength { body_len: u32, frame_len: u32 },
    #[error("frame body checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BodyChecksum { stored: u32, computed: u32 },
    #[error("non-zero padding after the frame body")]
    NonZeroPadding,
    #[error("unknown api key {0}")]
    UnknownApi(u16),
    #[error("frame carries api {found:?}, expected {expected:?}")]
    WrongApi { expected: ApiKey, found: u16 },
    #[error("api {api:?} version {version} is not supported")]
    UnsupportedVersion { api: ApiKey, version: u16 },
    #[error("body of api {api:?} failed validation")]
    InvalidBody { api: ApiKey },
}

/// Why a body could not be framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("frame of {len} bytes exceeds {FRAME_BYTES_MAX}")]
    FrameTooLarge { len: usize },
    #[error("rkyv could not serialize the body")]
    Serialize,
}

/// The decoded fixed header of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub frame_len: u32,
    pub body_len: u32,
    pub api_key: u16,
    pub api_version: u16,
    pub correlation_id: u64,
    pub body_crc: u32,
}

fn read<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    bytes
        .get(at..at + N)
        .and_then(|field| field.try_into().ok())
        .unwrap_or([0; N])
}

fn write(bytes: &mut [u8], at: usize, field: &[u8]) {
    if let Some(slot) = bytes.get_mut(at..at + field.len()) {
        slot.copy_from_slice(field);
    }
}

/// Frame length for a body of `body_len` bytes: header plus body, rounded up to 16.
pub const fn frame_len_for(body_len: usize) -> usize {
    (FRAME_HEADER_BYTES + body_len).next_multiple_of(FRAME_ALIGN)
}

impl FrameHeader {
    /// Reads and checks the header at the front of `buf`.
    ///
    /// `Ok(None)` while fewer than 32 bytes are present, unless the bytes so far already
    /// contradict the magic. Every length is checked here, before anyone allocates for it.
    pub fn peek(buf: &[u8]) -> Result<Option<FrameHeader>, DecodeError> {
        let seen = buf.len().min(FRAME_MAGIC.len());
        if buf.get(..seen) != FRAME_MAGIC.get(..seen) {
            let mut found = [0; 4];
            if let (Some(dst), Some(src)) = (found.get_mut(..seen), buf.get(..seen)) {
                dst.copy_from_slice(src);
            }
            return Err(DecodeError::BadMagic { found });
        }
        let Some(header) = buf.first_chunk::<FRAME_HEADER_BYTES>() else {
            return Ok(None);
        };
        let stored = u32::from_le_bytes(read(header, AT_HEADER_CRC));
        let computed = crc32c::crc32c(header.get(..AT_HEADER_CRC).unwrap_or_default());
        if stored != computed {
            return Err(DecodeError::HeaderChecksum { stored, computed });
        }
        let frame_len = u32::from_le_bytes(read(header, AT_FRAME_LEN));
        let body_len = u32::from_le_bytes(read(header, AT_BODY_LEN));
        if frame_len > FRAME_BYTES_MAX {
            return Err(DecodeError::FrameTooLarge { len: frame_len });
        }
        if (frame_len as usize) < FRAME_HEADER_BYTES
            || !(frame_len as usize).is_multiple_of(FRAME_ALIGN)
        {
            return Err(DecodeError::BadFrameLength { len: frame_len });
        }
        if body_len > frame_len || frame_len_for(body_len as usize) != frame_len as usize {
            return Err(DecodeError::BadBodyLength {
                body_len,
                frame_len,
            });
        }
        Ok(Some(FrameHeader {
            frame_len,
            body_len,
            api_key: u16::from_le_bytes(read(header, AT_API_KEY)),
            api_version: u16::from_le_bytes(read(header, AT_API_VERSION)),
            correlation_id: u64::from_le_bytes(read(header, AT_CORRELATION_ID)),
            body_crc: u32::from_le_bytes(read(header, AT_BODY_CRC)),
        }))
    }

    /// The api key, if this crate knows it.
    pub fn api(&self) -> Result<ApiKey, DecodeError> {
        ApiKey::try_from(self.api_key).map_err(|_| DecodeError::UnknownApi(self.api_key))
    }
}

/// The bytes of `whole` before and after `part`, when `part` is a slice of it.
fn around<'w>(whole: &'w [u8], part: &[u8]) -> Option<(&'w [u8], &'w [u8])> {
    let start = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    Some((whole.get(..start)?, whole.get(end..)?))
}

/// A whole frame, borrowing its body from the buffer. From [`decode_frame`] its header and
/// body checksums hold; from [`split_frame`] the header's, until the caller checks the body.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    pub header: FrameHeader,
    pub body: &'a [u8],
}

/// Decodes the frame at the front of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed (read at least up to
/// `FrameHeader::peek(buf)?.frame_len` then), or the frame and the bytes it used. For the body
/// to be accessible with rkyv, `buf` must start at a 16-aligned address ([`FrameBuf`]).
pub fn decode_frame(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, DecodeError> {
    let split = split_frame(buf)?;
    if let Some((frame, _)) = &split {
        frame.check_body()?;
    }
    Ok(split)
}

/// [`decode_frame`] but for the body's crc, which the caller checks before it trusts the
/// body: with [`Frame::check_body`], or for a produce with [`Frame::check_body_with_batch`],
/// which hashes the record batch once for both crcs. The header and the padding are checked,
/// so the frame's bounds hold; the body may be read with `access` meanwhile (bytecheck
/// validates it whatever its bytes).
pub fn split_frame(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, DecodeError> {
    let Some(header) = FrameHeader::peek(buf)? else {
        return Ok(None);
    };
    let frame_len = header.frame_len as usize;
    let Some(frame) = buf.get(..frame_len) else {
        return Ok(None);
    };
    let body_end = FRAME_HEADER_BYTES + header.body_len as usize;
    let body = frame.get(FRAME_HEADER_BYTES..body_end).unwrap_or_default();
    let padding = frame.get(body_end..).unwrap_or_default();
    if padding.iter().any(|&b| b != 0) {
        return Err(DecodeError::NonZeroPadding);
    }
    Ok(Some((Frame { header, body }, frame_len)))
}

/// Re-reads a frame this process already checked with [`decode_frame`], or with
/// [`split_frame`] where its body is checked later (a produce's, by
/// [`Frame::check_body_with_batch`]): for example one handed from the shard that received it
/// to the shard that owns its partition. Does not recompute the body crc. Still checks the
/// header, so it can never read out of bounds.
pub fn trusted_frame(buf: &[u8]) -> Option<Frame<'_>> {
    let header = FrameHeader::peek(buf).ok()??;
    let body_end = FRAME_HEADER_BYTES + header.body_len as usize;
    let body = buf.get(FRAME_HEADER_BYTES..body_end)?;
    Some(Frame { header, body })
}

impl<'a> Frame<'a> {
    /// Checks the body's crc.
    pub fn check_body(&self) -> Result<(), DecodeError> {
        self.body_crc_is(crc32c::crc32c(self.body))
    }

    /// Whether `computed`, the crc32c of the body, is the one the header carries.
    fn body_crc_is(&self, computed: u32) -> Result<(), DecodeError> {
        if computed != self.header.body_crc {
            return Err(DecodeError::BodyChecksum {
                stored: self.header.body_crc,
                computed,
            });
        }
        Ok(())
    }

    /// Checks the body's crc and validates `batch`, a record batch inside the body (a
    /// produce's), as [`BatchView::new`] does, hashing the bytes the batch's crc covers once
    /// for both: the body's crc is assembled from that pass and the rest of the body
    /// ([`crate::crc::combine`]). The outer error is the body's; the inner result is the batch's.
    /// A `batch` that is not inside the body is hashed on its own after the body.
    pub fn check_body_with_batch<'b>(
        &self,
        batch: &'b [u8],
    ) -> Result<Result<BatchView<'b>, BatchError>, DecodeError> {
        let covered = crc_covered(batch);
        let Some((before, after)) = around(self.body, covered) else {
            self.check_body()?;
            return Ok(BatchView::new(batch));
        };
        let batch_crc = crc32c::crc32c(covered);
        let upto = crate::crc::combine(crc32c::crc32c(before), batch_crc, covered.len());
        self.body_crc_is(crc32c::crc32c_append(upto, after))?;
        Ok(BatchView::with_crc(batch, batch_crc))
    }

    /// Validates the body as `T`'s archive and returns a reference into the buffer.
    ///
    /// Checks that the frame carries `T`'s api key and a supported version, then runs
    /// bytecheck. Cost does not depend on the size of opaque byte fields (record batches).
    pub fn access<T>(&self) -> Result<&'a T::Archived, DecodeError>
    where
        T: Body,
        T::Archived: Portable + for<'v> CheckBytes<HighValidator<'v, Failure>>,
    {
        self.check_api::<T>()?;
        rkyv::access::<T::Archived, Failure>(self.body)
            .map_err(|_| DecodeError::InvalidBody { api: T::API })
    }

    /// Validates and deserializes the body into an owned `T`. Allocates and copies: for
    /// control messages and tests, not for the produce and fetch paths.
    pub fn deserialize<T>(&self) -> Result<T, DecodeError>
    where
        T: Body,
        T::Archived: Portable
            + for<'v> CheckBytes<HighValidator<'v, Failure>>
            + Deserialize<T, Strategy<rkyv::de::Pool, Failure>>,
    {
        let archived = self.access::<T>()?;
        rkyv::deserialize::<T, Failure>(archived)
            .map_err(|_| DecodeError::InvalidBody { api: T::API })
    }

    fn check_api<T: Body>(&self) -> Result<(), DecodeError> {
        if self.header.api_key != T::API as u16 {
            return Err(DecodeError::WrongApi {
                expected: T::API,
                found: self.header.api_key,
            });
        }
        if !T::API.supports(self.header.api_version) {
            return Err(DecodeError::UnsupportedVersion {
                api: T::API,
                version: self.header.api_version,
            });
        }
        Ok(())
    }
}

/// Appends one frame carrying `body` to `out` and returns the frame's byte range in `out`.
///
/// `out.len()` must be a multiple of 16 (it is after any number of frames). On error `out`
/// is left as it was.
pub fn encode_frame<T>(
    out: &mut FrameBuf,
    correlation_id: u64,
    body: &T,
) -> Result<Range<usize>, EncodeError>
where
    T: Body + for<'a, 'b> Serialize<HighSerializer<&'b mut FrameBuf, ArenaHandle<'a>, Failure>>,
{
    let start = out.len();
    assert!(
        start % FRAME_ALIGN == 0,
        "frame buffer misaligned at {start}"
    );
    out.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
    let serialized = rkyv::api::high::to_bytes_in::<_, Failure>(body, &mut *out);
    if serialized.is_err() {
        out.resize(start, 0);
        return Err(EncodeError::Serialize);
    }
    let body_len = out.len() - start - FRAME_HEADER_BYTES;
    let frame_len = frame_len_for(body_len);
    if frame_len > FRAME_BYTES_MAX as usize {
        out.resize(start, 0);
        return Err(EncodeError::FrameTooLarge { len: frame_len });
    }
    out.resize(start + frame_len, 0);
    let frame = out.get_mut(start..).unwrap_or_default();
    let body_crc = crc32c::crc32c(
        frame
            .get(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + body_len)
            .unwrap_or_default(),
    );
    write(frame, 0, &FRAME_MAGIC);
    write(frame, AT_FRAME_LEN, &(frame_len as u32).to_le_bytes());
    write(frame, AT_BODY_LEN, &(body_len as u32).to_le_bytes());
    write(frame, AT_API_KEY, &(T::API as u16).to_le_bytes());
    write(frame, AT_API_VERSION, &T::VERSION.to_le_bytes());
    write(frame, AT_BODY_CRC, &body_crc.to_le_bytes());
    patch_correlation_id(frame, correlation_id);
    Ok(start..start + frame_len)
}

/// Rewrites the correlation id of an encoded frame and its header crc, so a load generator
/// can send one pre-built frame many times (40 bytes of crc instead of re-encoding).
pub fn patch_correlation_id(frame: &mut [u8], correlation_id: u64) {
    write(frame, AT_CORRELATION_ID, &correlation_id.to_le_bytes());
    let crc = crc32c::crc32c(frame.get(..AT_HEADER_CRC).unwrap_or_default());
    write(frame, AT_HEADER_CRC, &crc.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};
    use std::fmt::Debug;

    type Pool = rkyv::rancor::Strategy<rkyv::de::Pool, Failure>;

    /// What a round-trippable body needs besides the bounds on its archive.
    trait TestBody:
        Body
        + Debug
        + PartialEq
        + Sized
        + for<'a, 'b> Serialize<HighSerializer<&'b mut FrameBuf, ArenaHandle<'a>, Failure>>
    {
    }
    impl<T> TestBody for T where
        T: Body
            + Debug
            + PartialEq
            + for<'a, 'b> Serialize<HighSerializer<&'b mut FrameBuf, ArenaHandle<'a>, Failure>>
    {
    }

    fn encode<T: TestBody>(body: &T, correlation_id: u64) -> FrameBuf
    where
        T::Archived:
            Portable + for<'v> CheckBytes<HighValidator<'v, Failure>> + Deserialize<T, Pool>,
    {
        let mut buf = FrameBuf::new();
        let range = encode_frame(&mut buf, correlation_id, body).unwrap();
        assert_eq!(range, 0..buf.len());
        buf
    }

    fn roundtrip<T: TestBody>(body: &T, correlation_id: u64) -> Result<(), TestCaseError>
    where
        T::Archived:
            Portable + for<'v> CheckBytes<HighValidator<'v, Failure>> + Deserialize<T, Pool>,
    {
        let buf = encode(body, correlation_id);
        prop_assert_eq!(buf.len() % FRAME_ALIGN, 0);
        let (frame, used) = decode_frame(&buf).unwrap().unwrap();
        prop_assert_eq!(used, buf.len());
        prop_assert_eq!(frame.header.correlation_id, correlation_id);
        prop_assert_eq!(frame.header.api(), Ok(T::API));
        let decoded: T = frame.deserialize::<T>().unwrap();
        prop_assert_eq!(&decoded, body);
        Ok(())
    }

    macro_rules! roundtrip_tests {
        ($($test:ident: $ty:ty),* $(,)?) => {
            proptest! {
                $(
                    #[test]
                    fn $test(body in any::<$ty>(), correlation_id in any::<u64>()) {
                        roundtrip(&body, correlation_id)?;
                    }
                )*
            }
        };
    }

    roundtrip_tests! {
        api_versions_request_roundtrip: ApiVersionsRequest,
        api_versions_response_roundtrip: ApiVersionsResponse,
        metadata_request_roundtrip: MetadataRequest,
        metadata_response_roundtrip: MetadataResponse,
        create_topic_request_roundtrip: CreateTopicRequest,
        create_topic_response_roundtrip: CreateTopicResponse,
        delete_topic_request_roundtrip: DeleteTopicRequest,
        delete_topic_response_roundtrip: DeleteTopicResponse,
        produce_request_roundtrip: ProduceRequest,
        produce_response_roundtrip: ProduceResponse,
        fetch_request_roundtrip: FetchRequest,
        fetch_response_roundtrip: FetchResponse,
        list_offsets_request_roundtrip: ListOffsetsRequest,
        list_offsets_response_roundtrip: ListOffsetsResponse,
        offset_commit_request_roundtrip: OffsetCommitRequest,
        offset_commit_response_roundtrip: OffsetCommitResponse,
        offset_fetch_request_roundtrip: OffsetFetchRequest,
        offset_fetch_response_roundtrip: OffsetFetchResponse,
    }

    fn sample_batch() -> Vec<u8> {
        let mut builder = crate::BatchBuilder::new();
        for i in 0..10u8 {
            builder
                .append(1_700_000_000_000, &[i], &[i; 100], &[])
                .unwrap();
        }
        builder.seal().unwrap().to_vec()
    }

    fn sample_produce() -> ProduceRequest {
        ProduceRequest {
            topic: "orders".into(),
            partition: 3,
            acks: Acks::LeaderFsync,
            timeout_ms: 5_000,
            batch: sample_batch(),
        }
    }

    fn metadata_response() -> MetadataResponse {
        MetadataResponse {
            error: ErrorCode::NONE,
            shards: vec![ShardAddress {
                shard: 0,
                host: "127.0.0.1".into(),
                port: 9092,
            }],
            topics: vec![TopicMetadata {
                error: ErrorCode::NONE,
                name: "orders".into(),
                replication_factor: 1,
                min_insync: 1,
                retention_ms: Some(86_400_000),
                retention_bytes: None,
                storage: StorageKind::Disk,
                partitions: vec![PartitionMetadata {
                    error: ErrorCode::NONE,
                    partition: 0,
                    leader_shard: 0,
                    leader_epoch: 1,
                    replicas: vec![0, 1],
                    in_sync: vec![0, 1],
                    log_start_offset: 0,
                    high_watermark: 42,
                    log_end_offset: 45,
                    high_watermark_synced: 40,
                    followers: vec![ReplicaLag {
                        shard: 1,
                        state: ReplicaState::InSync,
                        records_behind: 3,
                        records_behind_synced: 5,
                        time_behind_ms: 2,
                    }],
                }],
            }],
        }
    }

    fn header_hex<T: TestBody>(body: &T) -> String
    where
        T::Archived:
            Portable + for<'v> CheckBytes<HighValidator<'v, Failure>> + Deserialize<T, Pool>,
    {
        let buf = encode(body, 0x1122_3344_5566_7788);
        buf[..FRAME_HEADER_BYTES]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// One pinned header per message. The body crc in each pins the rkyv layout of the body
    /// too, so changing a field, its order or rkyv's format is a conscious act.
    #[test]
    fn frame_headers_are_pinned() {
        let cases: Vec<(&str, String, &str)> = vec![
            (
                "ApiVersionsRequest",
                header_hex(&ApiVersionsRequest {
                    client_software: "ringmq-test/0.1".into(),
                }),
                "524d51314000000018000000000000008877665544332211ab0f8871967ffa9f",
            ),
            (
                "ApiVersionsResponse",
                header_hex(&ApiVersionsResponse {
                    error: ErrorCode::NONE,
                    broker_version: "0.1.0".into(),
                    apis: vec![ApiVersionRange {
                        api_key: 4,
                        min_version: 0,
                        max_version: 0,
                    }],
                }),
                "524d5131400000001c000000000000008877665544332211258089f435837741",
            ),
            (
                "MetadataRequest",
                header_hex(&MetadataRequest {
                    topics: vec!["orders".into()],
                }),
                "524d51313000000010000000010002008877665544332211490a69f4d56a4f99",
            ),
            (
                "MetadataResponse",
                header_hex(&metadata_response()),
                "524d513110010000e4000000010002008877665544332211a248c41dcb99246f",
            ),
            (
                "CreateTopicRequest",
                header_hex(&CreateTopicRequest {
                    name: "orders".into(),
                    partitions: 4,
                    replication_factor: 2,
                    min_insync: 1,
                    retention_ms: Some(3_600_000),
                    retention_bytes: Some(1 << 30),
                    storage: StorageKind::Memory,
                }),
                "524d513160000000380000000200010088776655443322113564d63a3967c441",
            ),
            (
                "CreateTopicResponse",
                header_hex(&CreateTopicResponse {
                    error: ErrorCode::TOPIC_ALREADY_EXISTS,
                    message: "topic 'orders' exists".into(),
                }),
                "524d51315000000024000000020001008877665544332211a3a2d4030521445f",
            ),
            (
                "DeleteTopicRequest",
                header_hex(&DeleteTopicRequest {
                    name: "orders".into(),
                }),
                "524d51313000000008000000030000008877665544332211cc26e07db3f47029",
            ),
            (
                "DeleteTopicResponse",
                header_hex(&DeleteTopicResponse {
                    error: ErrorCode::NONE,
                    message: String::new(),
                }),
                "524d5131300000000c000000030000008877665544332211104c2fef52f25aa8",
            ),
            (
                "ProduceRequest",
                header_hex(&sample_produce()),
                "524d5131a004000080040000040000008877665544332211afcb6cb7aa6a9b2f",
            ),
            (
                "ProduceResponse",
                header_hex(&ProduceResponse {
                    error: ErrorCode::NONE,
                    base_offset: 1000,
                    log_start_offset: 0,
                }),
                "524d51314000000018000000040000008877665544332211b0726860ea1ddbe8",
            ),
            (
                "FetchRequest",
                header_hex(&FetchRequest {
                    topic: "orders".into(),
                    partition: 3,
                    offset: 77,
                    max_bytes: 1 << 20,
                    max_wait_ms: 500,
                }),
                "524d513140000000200000000500000088776655443322116d36ccca7ae4a931",
            ),
            (
                "FetchResponse",
                header_hex(&FetchResponse {
                    error: ErrorCode::NONE,
                    high_watermark: 10,
                    log_start_offset: 0,
                    records: sample_batch(),
                }),
                "524d5131b004000088040000050000008877665544332211e4d00be88694158f",
            ),
            (
                "ListOffsetsRequest",
                header_hex(&ListOffsetsRequest {
                    topic: "orders".into(),
                    partition: 1,
                    spec: OffsetSpec::Timestamp(1_700_000_000_000),
                }),
                "524d513140000000200000000600000088776655443322116df08ff2e7fa68ce",
            ),
            (
                "ListOffsetsResponse",
                header_hex(&ListOffsetsResponse {
                    error: ErrorCode::NONE,
                    offset: 5,
                    timestamp_ms: 1_700_000_000_000,
                }),
                "524d5131400000001800000006000000887766554433221108996a24fd37574d",
            ),
            (
                "OffsetCommitRequest",
                header_hex(&OffsetCommitRequest {
                    group: "billing".into(),
                    topic: "orders".into(),
                    partition: 2,
                    offset: 99,
                    metadata: String::new(),
                }),
                "524d51315000000028000000070000008877665544332211d9cf5cb581a5ff56",
            ),
            (
                "OffsetCommitResponse",
                header_hex(&OffsetCommitResponse {
                    error: ErrorCode::INVALID_GROUP,
                }),
                "524d51313000000002000000070000008877665544332211241e06ddbe1e0bff",
            ),
            (
                "OffsetFetchRequest",
                header_hex(&OffsetFetchRequest {
                    group: "billing".into(),
                    topic: "orders".into(),
                    partition: 2,
                }),
                "524d51314000000014000000080000008877665544332211f84016c4ed07fe68",
            ),
            (
                "OffsetFetchResponse",
                header_hex(&OffsetFetchResponse {
                    error: ErrorCode::NONE,
                    offset: Some(99),
                    metadata: "m".into(),
                }),
                "524d5131400000002000000008000000887766554433221186fbb2b1c4441eda",
            ),
        ];
        let mismatches: Vec<String> = cases
            .iter()
            .filter(|(_, got, want)| got != want)
            .map(|(name, got, want)| format!("{name}: got {got}, pinned {want}"))
            .collect();
        assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    }

    #[test]
    fn every_truncated_prefix_asks_for_more_bytes() {
        let buf = encode(&sample_produce(), 7);
        for end in 0..buf.len() {
            assert!(
                matches!(decode_frame(&buf[..end]), Ok(None)),
                "prefix {end}"
            );
        }
        // Two frames back to back decode one at a time.
        let mut two = FrameBuf::new();
        encode_frame(&mut two, 1, &sample_produce()).unwrap();
        encode_frame(&mut two, 2, &MetadataRequest { topics: vec![] }).unwrap();
        let (first, used) = decode_frame(&two).unwrap().unwrap();
        assert_eq!(first.header.correlation_id, 1);
        let mut rest = FrameBuf::new();
        rest.extend_from_slice(&two[used..]);
        let (second, used2) = decode_frame(&rest).unwrap().unwrap();
        assert_eq!(second.header.correlation_id, 2);
        assert_eq!(used + used2, two.len());
        assert!(
            second
                .access::<MetadataRequest>()
                .unwrap()
                .topics
                .is_empty()
        );
    }

    fn reseal_header(frame: &mut [u8]) {
        let crc = crc32c::crc32c(&frame[..AT_HEADER_CRC]);
        frame[AT_HEADER_CRC..FRAME_HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn bad_headers_are_rejected_with_named_errors() {
        assert!(matches!(
            decode_frame(b"GET / HTTP/1.1\r\n"),
            Err(DecodeError::BadMagic { found }) if &found == b"GET "
        ));
        assert!(matches!(
            decode_frame(b"RX"),
            Err(DecodeError::BadMagic { .. })
        ));
        assert!(matches!(decode_frame(b"RMQ"), Ok(None)));

        let good = encode(&sample_produce(), 7);
        let mut bytes = good.to_vec();
        bytes[20] ^= 1;
        assert!(matches!(
            decode_frame(&bytes),
            Err(DecodeError::HeaderChecksum { .. })
        ));

        // A header announcing 4 GiB is refused from its 32 bytes alone.
        let mut bytes = good[..FRAME_HEADER_BYTES].to_vec();
        bytes[AT_FRAME_LEN..AT_FRAME_LEN + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        reseal_header(&mut bytes);
        assert_eq!(
            decode_frame(&bytes).unwrap_err(),
            DecodeError::FrameTooLarge { len: u32::MAX }
        );

        let mut bytes = good[..FRAME_HEADER_BYTES].to_vec();
        bytes[AT_FRAME_LEN..AT_FRAME_LEN + 4].copy_from_slice(&40u32.to_le_bytes());
        reseal_header(&mut bytes);
        assert_eq!(
            decode_frame(&bytes).unwrap_err(),
            DecodeError::BadFrameLength { len: 40 }
        );

        let mut bytes = good.to_vec();
        bytes[AT_BODY_LEN..AT_BODY_LEN + 4].copy_from_slice(&8u32.to_le_bytes());
        reseal_header(&mut bytes);
        assert!(matches!(
            decode_frame(&bytes),
            Err(DecodeError::BadBodyLength { .. })
        ));

        let mut bytes = good.to_vec();
        bytes[FRAME_HEADER_BYTES + 3] ^= 0x40;
        assert!(matches!(
            decode_frame(&bytes),
            Err(DecodeError::BodyChecksum { .. })
        ));

        // Padding after the body must be zero.
        let mut aligned = FrameBuf::new();
        encode_frame(&mut aligned, 1, &DeleteTopicRequest { name: "a".into() }).unwrap();
        let header = FrameHeader::peek(&aligned).unwrap().unwrap();
        assert!(header.frame_len as usize > FRAME_HEADER_BYTES + header.body_len as usize);
        let mut bytes = aligned.to_vec();
        *bytes.last_mut().unwrap() = 1;
        assert_eq!(
            decode_frame(&bytes).unwrap_err(),
            DecodeError::NonZeroPadding
        );
    }

    #[test]
    fn access_checks_api_and_version() {
        let buf = encode(&sample_produce(), 7);
        let (frame, _) = decode_frame(&buf).unwrap().unwrap();
        assert_eq!(
            frame.access::<FetchRequest>().unwrap_err(),
            DecodeError::WrongApi {
                expected: ApiKey::Fetch,
                found: ApiKey::Produce as u16
            }
        );
        let produce = frame.access::<ProduceRequest>().unwrap();
        assert_eq!(produce.topic, "orders");
        assert_eq!(Acks::from(&produce.acks), Acks::LeaderFsync);
        // The batch is a slice of the receive buffer, not a copy.
        let batch: &[u8] = produce.batch.as_slice();
        let start = batch.as_ptr() as usize - buf.as_ptr() as usize;
        assert!(start + batch.len() <= buf.len());
        assert!(crate::BatchView::new(batch).is_ok());

        let mut bytes = FrameBuf::new();
        bytes.extend_from_slice(&buf);
        bytes.as_mut_slice()[AT_API_VERSION] = 9;
        reseal_header(bytes.as_mut_slice());
        let (frame, _) = decode_frame(&bytes).unwrap().unwrap();
        assert_eq!(
            frame.access::<ProduceRequest>().unwrap_err(),
            DecodeError::UnsupportedVersion {
                api: ApiKey::Produce,
                version: 9
            }
        );

        let mut bytes = FrameBuf::new();
        bytes.extend_from_slice(&buf);
        bytes.as_mut_slice()[AT_API_KEY] = 200;
        reseal_header(bytes.as_mut_slice());
        let (frame, _) = decode_frame(&bytes).unwrap().unwrap();
        assert_eq!(frame.header.api(), Err(DecodeError::UnknownApi(200)));
    }

    #[test]
    fn misaligned_body_is_an_error_not_a_panic() {
        let buf = encode(&sample_produce(), 7);
        let mut shifted = FrameBuf::new();
        shifted.push(0);
        shifted.extend_from_slice(&buf);
        let (frame, _) = decode_frame(&shifted[1..]).unwrap().unwrap();
        assert_eq!(
            frame.access::<ProduceRequest>().unwrap_err(),
            DecodeError::InvalidBody {
                api: ApiKey::Produce
            }
        );
    }

    #[test]
    fn oversized_body_is_refused_and_the_buffer_left_as_it_was() {
        let mut buf = FrameBuf::new();
        encode_frame(&mut buf, 1, &MetadataRequest { topics: vec![] }).unwrap();
        let before = buf.to_vec();
        let huge = ProduceRequest {
            batch: vec![0; FRAME_BYTES_MAX as usize],
            ..sample_produce()
        };
        assert!(matches!(
            encode_frame(&mut buf, 2, &huge),
            Err(EncodeError::FrameTooLarge { .. })
        ));
        assert_eq!(buf.as_slice(), &before[..]);
    }

    #[test]
    fn trusted_frame_skips_only_the_body_crc() {
        let buf = encode(&sample_produce(), 7);
        let frame = trusted_frame(&buf).unwrap();
        assert_eq!(frame.header.correlation_id, 7);
        assert!(frame.access::<ProduceRequest>().is_ok());
        assert!(
            trusted_frame(&buf[..40]).is_none(),
            "a short buffer is refused, not read past"
        );
        let mut bad = buf.to_vec();
        bad[20] ^= 1;
        assert!(trusted_frame(&bad).is_none(), "the header is still checked");
    }

    /// Re-seals a frame's body crc (and so its header crc) over whatever its body holds now.
    fn reseal_body(frame: &mut [u8]) {
        let body_len = u32::from_le_bytes(frame[AT_BODY_LEN..AT_BODY_LEN + 4].try_into().unwrap());
        let body = &frame[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + body_len as usize];
        let crc = crc32c::crc32c(body);
        frame[AT_BODY_CRC..AT_BODY_CRC + 4].copy_from_slice(&crc.to_le_bytes());
        reseal_header(frame);
    }

    /// Where `needle` starts in `haystack`.
    fn position(haystack: &[u8], needle: &[u8]) -> usize {
        haystack
            .windows(needle.len())
            .position(|w| w == needle)
            .unwrap()
    }

    /// The produce check hashes the batch once and still tells the body's crc from the
    /// batch's: a flip anywhere in the body fails the body; a batch made bad under a re-sealed
    /// body (a hostile or buggy client) fails the batch; the whole-body check agrees.
    #[test]
    fn produce_body_and_batch_are_checked_in_one_pass() {
        let check = |bytes: &[u8]| {
            let mut buf = FrameBuf::new();
            buf.extend_from_slice(bytes);
            let (frame, _) = split_frame(&buf).unwrap().unwrap();
            let request = frame.access::<ProduceRequest>().unwrap();
            let fused = frame
                .check_body_with_batch(request.batch.as_slice())
                .map(|batch| batch.map(|view| view.as_bytes().to_vec()));
            assert_eq!(
                fused.is_ok(),
                frame.check_body().is_ok(),
                "the fused and the whole-body check disagree"
            );
            fused
        };
        let good = encode(&sample_produce(), 7).to_vec();
        let batch = sample_batch();
        assert_eq!(check(&good), Ok(Ok(batch.clone())));

        let at = FRAME_HEADER_BYTES + position(&good[FRAME_HEADER_BYTES..], &batch);
        // Before the batch (its header, not covered by the batch's crc), inside what the
        // batch's crc covers, and after the batch (the topic and the rest of the archive).
        for flip in [at + 1, at + 20, at + batch.len() - 1, at + batch.len() + 2] {
            let mut bytes = good.clone();
            bytes[flip] ^= 0x10;
            assert!(
                matches!(check(&bytes), Err(DecodeError::BodyChecksum { .. })),
                "flip at {flip}"
            );
        }
        let mut bytes = good.clone();
        bytes[at + 20] ^= 0x10;
        reseal_body(&mut bytes);
        assert!(matches!(
            check(&bytes),
            Ok(Err(BatchError::ChecksumMismatch { .. }))
        ));

        // A batch that is not inside the body is checked on its own, after the body.
        let buf = encode(&sample_produce(), 7);
        let (frame, _) = split_frame(&buf).unwrap().unwrap();
        let elsewhere = sample_batch();
        assert!(matches!(frame.check_body_with_batch(&elsewhere), Ok(Ok(_))));
        let mut bad = buf.to_vec();
        bad[FRAME_HEADER_BYTES + 3] ^= 1;
        let mut bad_buf = FrameBuf::new();
        bad_buf.extend_from_slice(&bad);
        let (frame, _) = split_frame(&bad_buf).unwrap().unwrap();
        assert!(matches!(
            frame.check_body_with_batch(&elsewhere),
            Err(DecodeError::BodyChecksum { .. })
        ));
        // A slice too short to be a batch still gets the body checked, then a batch error.
        let (frame, _) = split_frame(&buf).unwrap().unwrap();
        let short = &frame.body[..8];
        assert!(matches!(frame.check_body_with_batch(short), Ok(Err(_))));
    }

    /// `split_frame` checks all of `decode_frame` but the body's crc.
    #[test]
    fn split_frame_leaves_only_the_body_crc() {
        let good = encode(&sample_produce(), 7);
        let mut bytes = good.to_vec();
        bytes[FRAME_HEADER_BYTES + 3] ^= 0x40;
        let (frame, used) = split_frame(&bytes).unwrap().unwrap();
        assert_eq!(used, good.len());
        assert!(matches!(
            frame.check_body(),
            Err(DecodeError::BodyChecksum { .. })
        ));
        assert!(matches!(
            decode_frame(&bytes),
            Err(DecodeError::BodyChecksum { .. })
        ));
        let mut bytes = good.to_vec();
        bytes[20] ^= 1;
        assert!(matches!(
            split_frame(&bytes),
            Err(DecodeError::HeaderChecksum { .. })
        ));
        assert!(matches!(split_frame(&good[..40]), Ok(None)));
    }

    #[test]
    fn patched_correlation_id_decodes() {
        let mut buf = encode(&sample_produce(), 7);
        patch_correlation_id(buf.as_mut_slice(), 0xdead_beef);
        let (frame, _) = decode_frame(&buf).unwrap().unwrap();
        assert_eq!(frame.header.correlation_id, 0xdead_beef);
    }

    fn try_every_body(frame: &Frame<'_>) -> usize {
        macro_rules! try_access {
            ($($ty:ty),*) => { 0 $(+ usize::from(frame.access::<$ty>().is_ok()))* };
        }
        try_access!(
            ApiVersionsRequest,
            ApiVersionsResponse,
            MetadataRequest,
            MetadataResponse,
            CreateTopicRequest,
            CreateTopicResponse,
            DeleteTopicRequest,
            DeleteTopicResponse,
            ProduceRequest,
            ProduceResponse,
            FetchRequest,
            FetchResponse,
            ListOffsetsRequest,
            ListOffsetsResponse,
            OffsetCommitRequest,
            OffsetCommitResponse,
            OffsetFetchRequest,
            OffsetFetchResponse
        )
    }

    /// 10^5 random mutations of valid frames. Half re-seal both crcs after mutating, as a
    /// hostile client would, so bytecheck itself faces the garbage.
    #[test]
    fn random_mutations_never_panic() {
        let seed = rand::random::<u64>();
        let mut rng = StdRng::seed_from_u64(seed);
        let originals = [
            encode(&sample_produce(), 1).to_vec(),
            encode(&metadata_response(), 2).to_vec(),
            encode(
                &OffsetFetchResponse {
                    error: ErrorCode::NONE,
                    offset: Some(3),
                    metadata: "x".into(),
                },
                3,
            )
            .to_vec(),
        ];
        let mut body_rejected = 0;
        for case in 0..100_000 {
            let original = &originals[case % originals.len()];
            let mut bytes = original.clone();
            for _ in 0..rng.random_range(1..=4) {
                let at = rng.random_range(0..bytes.len());
                match rng.random_range(0..3) {
                    0 => bytes[at] ^= 1 << rng.random_range(0..8),
                    1 => bytes[at] = rng.random(),
                    // Only mutate the body region, to reach the rkyv validator more often.
                    _ => {
                        let at = rng.random_range(FRAME_HEADER_BYTES..bytes.len());
                        bytes[at] = rng.random();
                    }
                }
            }
            if case % 2 == 0 && bytes.len() >= FRAME_HEADER_BYTES {
                let body_len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
                if let Some(body) = bytes.get(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + body_len) {
                    let crc = crc32c::crc32c(body);
                    bytes[AT_BODY_CRC..AT_BODY_CRC + 4].copy_from_slice(&crc.to_le_bytes());
                }
                reseal_header(&mut bytes);
            }
            let mut aligned = FrameBuf::new();
            aligned.extend_from_slice(&bytes);
            if let Ok(Some((frame, _))) = decode_frame(&aligned)
                && try_every_body(&frame) == 0
            {
                body_rejected += 1;
            }
        }
        assert!(
            body_rejected > 1000,
            "too few mutations reached bytecheck: seed {seed}"
        );
    }
}
