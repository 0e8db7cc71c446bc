//! Incremental frame decoding from a byte stream into 16-aligned buffers.
//!
//! Owner: whoever reads one stream (a [`Connection`](crate::Connection), or a tool reading
//! frames off a socket); not shared.
//!
//! Small frames (up to `READ_BUFFER_BYTES`) arrive in one shared buffer, several per read, and
//! are copied out body-only into a buffer of their own. A larger frame, once its header has
//! been checked against `FRAME_BYTES_MAX`, is read straight into a buffer of exactly its size,
//! so a 4 MiB fetch response is never copied. Every frame starts at a multiple of 16 in the
//! shared buffer (frame lengths are multiples of 16), so bodies stay aligned for rkyv.

use std::io::{self, Read};
use std::ops::Range;

use protocol::limits::FRAME_HEADER_BYTES;
use protocol::{DecodeError, Frame, FrameBuf, FrameHeader, decode_frame};

use crate::limits::READ_BUFFER_BYTES;

/// A checked frame that owns its bytes: the header, and a buffer holding the body at a
/// 16-aligned position.
#[derive(Debug)]
pub struct OwnedFrame {
    header: FrameHeader,
    buf: FrameBuf,
    body: Range<usize>,
}

impl OwnedFrame {
    pub fn header(&self) -> &FrameHeader {
        &self.header
    }

    /// The frame borrowed as `protocol` sees it, for [`Frame::access`] (zero-copy).
    pub fn frame(&self) -> Frame<'_> {
        Frame {
            header: self.header,
            body: self.buf.get(self.body.clone()).unwrap_or_default(),
        }
    }
}

/// Why no frame came out of the stream.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The read failed. `WouldBlock`/`TimedOut` (a socket read timeout) leave the reader
    /// consistent: call again to go on.
    #[error("read failed: {0}")]
    Io(io::Error),
    /// The stream ended; `mid_frame` when part of a frame had arrived.
    #[error("the peer closed the connection{}", if *mid_frame { " in the middle of a frame" } else { "" })]
    Closed { mid_frame: bool },
    /// The bytes are not a frame. The stream cannot be resynchronised.
    #[error("bad frame: {0}")]
    Decode(DecodeError),
}

/// A frame larger than the shared buffer, being read into its own buffer.
#[derive(Debug)]
struct LargeFrame {
    buf: FrameBuf,
    filled: usize,
}

/// Decodes frames from a stream, one call per frame.
///
/// Invariant: `start <= end <= buf.len() == READ_BUFFER_BYTES`, and `start` is a multiple of
/// 16. While `large` is `Some`, the shared buffer is empty.
#[derive(Debug)]
pub struct FrameReader {
    buf: FrameBuf,
    start: usize,
    end: usize,
    large: Option<LargeFrame>,
}

impl Default for FrameReader {
    fn default() -> Self {
        FrameReader::new()
    }
}

impl FrameReader {
    pub fn new() -> FrameReader {
        let mut buf = FrameBuf::with_capacity(READ_BUFFER_BYTES);
        buf.resize(READ_BUFFER_BYTES, 0);
        FrameReader {
            buf,
            start: 0,
            end: 0,
            large: None,
        }
    }

    /// Returns the next whole frame, reading from `source` as needed.
    ///
    /// Loops only while reads return bytes; a frame is at most `FRAME_BYTES_MAX`, so the
    /// number of reads is bounded by its length.
    pub fn next_frame(&mut self, source: &mut impl Read) -> Result<OwnedFrame, ReadError> {
        loop {
            if let Some(large) = &mut self.large {
                if large.filled == large.buf.len() {
                    return self.finish_large();
                }
                let unfilled = large.buf.get_mut(large.filled..).unwrap_or_default();
                large.filled += read_some(source, unfilled, true)?;
                continue;
            }
            let unread = self.buf.get(self.start..self.end).unwrap_or_default();
            match decode_frame(unread) {
                Err(error) => return Err(ReadError::Decode(error)),
                Ok(Some((frame, used))) => {
                    let owned = copy_body(&frame);
                    self.consume(used);
                    return Ok(owned);
                }
                Ok(None) => {}
            }
            // The header, once complete, was checked by decode_frame above, so `frame_len`
            // is at most FRAME_BYTES_MAX before we allocate for it.
            let header = FrameHeader::peek(unread).map_err(ReadError::Decode)?;
            if let Some(header) = header
                && header.frame_len as usize > READ_BUFFER_BYTES
            {
                self.start_large(header.frame_len as usize);
                continue;
            }
            if self.end == self.buf.len() {
                self.compact();
            }
            let free = self.buf.get_mut(self.end..).unwrap_or_default();
            let mid_frame = self.end > self.start;
            self.end += read_some(source, free, mid_frame)?;
        }
    }

    fn consume(&mut self, used: usize) {
        self.start += used;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Moves the unread bytes to the front. `start` is a multiple of 16, so alignment holds.
    fn compact(&mut self) {
        let (start, end) = (self.start, self.end);
        self.buf.as_mut_slice().copy_within(start..end, 0);
        self.end = end - start;
        self.start = 0;
    }

    fn start_large(&mut self, frame_len: usize) {
        let mut buf = FrameBuf::with_capacity(frame_len);
        buf.resize(frame_len, 0);
        let have = self.buf.get(self.start..self.end).unwrap_or_default();
        if let Some(dst) = buf.get_mut(..have.len()) {
            dst.copy_from_slice(have);
        }
        self.large = Some(LargeFrame {
            buf,
            filled: have.len(),
        });
        self.start = 0;
        self.end = 0;
    }

    fn finish_large(&mut self) -> Result<OwnedFrame, ReadError> {
        let Some(large) = self.large.take() else {
            return Err(ReadError::Closed { mid_frame: false });
        };
        let header = match decode_frame(&large.buf) {
            Ok(Some((frame, _))) => frame.header,
            Ok(None) => return Err(ReadError::Closed { mid_frame: true }),
            Err(error) => return Err(ReadError::Decode(error)),
        };
        Ok(OwnedFrame {
            header,
            body: FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + header.body_len as usize,
            buf: large.buf,
        })
    }
}

/// Reads at least one byte into `into` (retrying `Interrupted`), or reports why not.
fn read_some(source: &mut impl Read, into: &mut [u8], mid_frame: bool) -> Result<usize, ReadError> {
    loop {
        match source.read(into) {
            Ok(0) => return Err(ReadError::Closed { mid_frame }),
            Ok(n) => return Ok(n),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(ReadError::Io(error)),
        }
    }
}

fn copy_body(frame: &Frame<'_>) -> OwnedFrame {
    let mut buf = FrameBuf::with_capacity(frame.body.len());
    buf.extend_from_slice(frame.body);
    OwnedFrame {
        header: frame.header,
        body: 0..frame.body.len(),
        buf,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::api::{FetchResponse, ListOffsetsResponse};
    use protocol::{ErrorCode, encode_frame};

    /// Hands out its bytes `chunk` at a time, then says `WouldBlock` once per `stall_every`
    /// reads, then ends.
    struct Chunked {
        bytes: Vec<u8>,
        at: usize,
        chunk: usize,
        reads: usize,
        stall_every: usize,
    }

    impl Read for Chunked {
        fn read(&mut self, into: &mut [u8]) -> io::Result<usize> {
            self.reads += 1;
            if self.stall_every > 0 && self.reads.is_multiple_of(self.stall_every) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = self.chunk.min(into.len()).min(self.bytes.len() - self.at);
            into[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    fn list_offsets(offset: u64) -> ListOffsetsResponse {
        ListOffsetsResponse {
            error: ErrorCode::NONE,
            offset,
            timestamp_ms: 0,
        }
    }

    fn frames(count: u64) -> FrameBuf {
        let mut out = FrameBuf::new();
        for id in 0..count {
            encode_frame(&mut out, id, &list_offsets(id * 10)).unwrap();
        }
        out
    }

    /// Reads every frame, retrying `WouldBlock` as a connection does after a read timeout.
    fn read_all(source: &mut Chunked) -> (Vec<OwnedFrame>, ReadError) {
        let mut reader = FrameReader::new();
        let mut got = Vec::new();
        for _ in 0..1_000_000 {
            match reader.next_frame(source) {
                Ok(frame) => got.push(frame),
                Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(end) => return (got, end),
            }
        }
        panic!("reader did not finish");
    }

    #[test]
    fn frames_split_at_every_size_decode_in_order() {
        let bytes = frames(40).to_vec();
        for chunk in [1, 3, 16, 31, 32, 33, 100, 4096] {
            let mut source = Chunked {
                bytes: bytes.clone(),
                at: 0,
                chunk,
                reads: 0,
                stall_every: 7,
            };
            let (got, end) = read_all(&mut source);
            assert!(
                matches!(end, ReadError::Closed { mid_frame: false }),
                "{end:?}"
            );
            assert_eq!(got.len(), 40, "chunk {chunk}");
            for (id, frame) in got.iter().enumerate() {
                assert_eq!(frame.header().correlation_id, id as u64);
                let body = frame.frame().access::<ListOffsetsResponse>().unwrap();
                assert_eq!(body.offset, id as u64 * 10);
            }
        }
    }

    #[test]
    fn shared_buffer_wraps_many_times() {
        // ~3 MiB of small frames through a 64 KiB buffer, in reads that straddle frames.
        let bytes = frames(50_000).to_vec();
        assert!(bytes.len() > 40 * READ_BUFFER_BYTES);
        let mut source = Chunked {
            bytes,
            at: 0,
            chunk: 5000,
            reads: 0,
            stall_every: 0,
        };
        let (got, _) = read_all(&mut source);
        assert_eq!(got.len(), 50_000);
        assert_eq!(got[49_999].header().correlation_id, 49_999);
    }

    #[test]
    fn large_frame_is_read_into_its_own_buffer_without_losing_its_neighbours() {
        let records: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut bytes = FrameBuf::new();
        encode_frame(&mut bytes, 1, &list_offsets(1)).unwrap();
        encode_frame(
            &mut bytes,
            2,
            &FetchResponse {
                error: ErrorCode::NONE,
                high_watermark: 9,
                log_start_offset: 0,
                records: records.clone(),
            },
        )
        .unwrap();
        encode_frame(&mut bytes, 3, &list_offsets(3)).unwrap();
        for chunk in [7, 4096, 1 << 20] {
            let mut source = Chunked {
                bytes: bytes.to_vec(),
                at: 0,
                chunk,
                reads: 0,
                stall_every: 5,
            };
            let (got, _) = read_all(&mut source);
            let ids: Vec<u64> = got.iter().map(|f| f.header().correlation_id).collect();
            assert_eq!(ids, [1, 2, 3], "chunk {chunk}");
            let fetch = got[1].frame().access::<FetchResponse>().unwrap();
            assert_eq!(fetch.records.as_slice(), &records[..]);
            // The large frame was not copied out: its body sits after the header in its buffer.
            assert_eq!(got[1].body.start, FRAME_HEADER_BYTES);
        }
    }

    #[test]
    fn stream_ending_inside_a_frame_is_reported_as_mid_frame() {
        let bytes = frames(2).to_vec();
        for cut in [1, 31, 32, 40, bytes.len() - 1] {
            let mut source = Chunked {
                bytes: bytes[..cut].to_vec(),
                at: 0,
                chunk: 3,
                reads: 0,
                stall_every: 0,
            };
            let (_, end) = read_all(&mut source);
            assert!(
                matches!(end, ReadError::Closed { mid_frame: true }),
                "cut {cut}: {end:?}"
            );
        }
    }

    #[test]
    fn oversized_header_is_refused_before_reading_the_body() {
        let mut bytes = frames(1).to_vec();
        bytes[4..8].copy_from_slice(&(64u32 << 20).to_le_bytes());
        let crc = crc32c::crc32c(&bytes[..28]);
        bytes[28..32].copy_from_slice(&crc.to_le_bytes());
        let mut source = Chunked {
            bytes,
            at: 0,
            chunk: 32,
            reads: 0,
            stall_every: 0,
        };
        let mut reader = FrameReader::new();
        let result = reader.next_frame(&mut source);
        assert!(
            matches!(
                result,
                Err(ReadError::Decode(DecodeError::FrameTooLarge { .. }))
            ),
            "{result:?}"
        );
        assert!(reader.large.is_none());
        assert_eq!(source.reads, 1);
    }

    #[test]
    fn garbage_is_a_decode_error() {
        let mut source = Chunked {
            bytes: b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec(),
            at: 0,
            chunk: 100,
            reads: 0,
            stall_every: 0,
        };
        let mut reader = FrameReader::new();
        assert!(matches!(
            reader.next_frame(&mut source),
            Err(ReadError::Decode(DecodeError::BadMagic { .. }))
        ));
    }
}
