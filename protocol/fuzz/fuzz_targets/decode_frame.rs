//! Feeds arbitrary bytes to the frame decoder and, for every frame that decodes, to every
//! body's rkyv validation. A produce's one-pass check (body and batch crc together) must
//! agree with the two separate checks. Copies into a 16-aligned buffer first, as the
//! broker's receive buffers are. Must never panic, whatever the input.
//!
//! The first input byte picks a mode: odd re-seals the first frame's body and header crc32c
//! (as a hostile client would), so the fuzzer reaches bytecheck instead of the checksums.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::api::*;
use protocol::{BatchView, FrameBuf, decode_frame, split_frame};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else { return };
    let mut buf = FrameBuf::new();
    buf.extend_from_slice(data);
    if mode & 1 == 1 && buf.len() >= 32 {
        let body_len = u32::from_le_bytes(buf[8..12].try_into().unwrap()) as usize;
        if let Some(body) = buf.get(32..32 + body_len) {
            let crc = crc32c::crc32c(body);
            buf.as_mut_slice()[24..28].copy_from_slice(&crc.to_le_bytes());
        }
        let crc = crc32c::crc32c(&buf[..28]);
        buf.as_mut_slice()[28..32].copy_from_slice(&crc.to_le_bytes());
    }
    let mut rest: &[u8] = &buf;
    // Walk back-to-back frames as a connection would; each frame is a multiple of 16, so
    // every later frame stays aligned.
    while let Ok(Some((frame, used))) = split_frame(rest) {
        let body_ok = frame.check_body().is_ok();
        assert_eq!(body_ok, decode_frame(rest).is_ok());
        if let Ok(produce) = frame.access::<ProduceRequest>() {
            let batch = produce.batch.as_slice();
            match frame.check_body_with_batch(batch) {
                Ok(fused) => {
                    assert!(body_ok);
                    assert_eq!(fused.is_ok(), BatchView::new(batch).is_ok());
                }
                Err(_) => assert!(!body_ok),
            }
        }
        if !body_ok {
            rest = rest.get(used..).unwrap_or_default();
            continue;
        }
        macro_rules! access_all {
            ($($ty:ty),*) => { $( let _ = frame.access::<$ty>(); )* };
        }
        access_all!(
            ApiVersionsRequest, ApiVersionsResponse, MetadataRequest, MetadataResponse,
            CreateTopicRequest, CreateTopicResponse, DeleteTopicRequest, DeleteTopicResponse,
            ProduceResponse, FetchRequest, ListOffsetsRequest, ListOffsetsResponse,
            OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse
        );
        if let Ok(produce) = frame.access::<ProduceRequest>() {
            if let Ok(batch) = BatchView::new(produce.batch.as_slice()) {
                assert_eq!(batch.records().count(), batch.record_count() as usize);
            }
        }
        if let Ok(fetch) = frame.access::<FetchResponse>() {
            for batch in protocol::Batches::new(fetch.records.as_slice()).flatten() {
                assert_eq!(batch.records().count(), batch.record_count() as usize);
            }
        }
        rest = rest.get(used..).unwrap_or_default();
    }
});
