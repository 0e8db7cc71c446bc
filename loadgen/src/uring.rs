//! The ringmq transport: one raw io_uring ring per worker thread driving many TCP
//! connections, with at most one send and one receive in flight per connection.
//!
//! The only `unsafe` in loadgen is here: pushing a submission hands the kernel a pointer into
//! a connection's buffer, and the kernel may write into it (receive) or read it (send) until
//! the completion arrives. The invariant that keeps that sound:
//!
//! - A buffer lent to the kernel is never resized, moved, freed or written by us while its
//!   operation is outstanding. `tx_busy` / `rx_busy` say an operation is outstanding; every
//!   method that touches `tx_flight` or `rx` checks them first, and they are cleared only
//!   when that operation's completion is reaped.
//! - Connections live in `conns`, which is filled once in `new` and never resized; the
//!   buffers are separate heap allocations, so even moving a `Conn` would not move them.
//! - `Drop` shuts every socket down and reaps until no operation is outstanding. If the
//!   kernel does not give every completion back within a bound, the buffers and sockets are
//!   leaked (never freed) rather than risk the kernel writing into freed memory.
//!
//! Frames arrive in a 16-aligned [`FrameBuf`] and always start at a multiple of 16 in it, so
//! the caller can validate bodies with rkyv in place.

use std::io;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use io_uring::{IoUring, opcode, types};
use protocol::FrameBuf;
use protocol::FrameHeader;
use protocol::limits::{FRAME_ALIGN, FRAME_BYTES_MAX};

/// Receive buffer of a connection at first (grows to the largest frame it must hold).
const RX_BYTES_INITIAL: usize = 256 << 10;

/// A receive is armed only with at least this much free space; less, and the buffer is
/// compacted first.
const RX_SPARE_BYTES_MIN: usize = 64 << 10;

/// Most connections one ring drives: two entries each (send, receive) must fit the ring's
/// largest submission queue (32768 entries).
pub const CONNECTIONS_PER_RING_MAX: usize = 16_000;

/// Longest `Drop` waits for the kernel to hand back outstanding operations.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

const OP_SEND: u64 = 0;
const OP_RECV: u64 = 1;

/// Why a connection stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnError {
    #[error("the peer closed the connection")]
    PeerClosed,
    #[error("send failed: {0}")]
    Send(String),
    #[error("receive failed: {0}")]
    Recv(String),
}

/// One connection's buffers and the state of its two operations.
///
/// Invariant: `tx_sent <= tx_flight.len()`; `rx_start <= rx_len <= rx.len()`;
/// `rx_start` is a multiple of `FRAME_ALIGN`.
struct Conn {
    stream: TcpStream,
    /// Bytes handed to the kernel (from `tx_sent` on). Untouched while `tx_busy`.
    tx_flight: Vec<u8>,
    tx_sent: usize,
    tx_busy: bool,
    /// Frames waiting for the current send to finish.
    tx_queue: Vec<u8>,
    /// Fully initialised; the kernel writes into `rx[rx_len..]` while `rx_busy`.
    rx: FrameBuf,
    rx_start: usize,
    rx_len: usize,
    rx_busy: bool,
    failed: Option<ConnError>,
}

impl Conn {
    fn new(stream: TcpStream) -> Conn {
        let mut rx = FrameBuf::with_capacity(RX_BYTES_INITIAL);
        rx.resize(RX_BYTES_INITIAL, 0);
        Conn {
            stream,
            tx_flight: Vec::new(),
            tx_sent: 0,
            tx_busy: false,
            tx_queue: Vec::new(),
            rx,
            rx_start: 0,
            rx_len: 0,
            rx_busy: false,
            failed: None,
        }
    }

    /// Makes room for the next receive. Only while no receive is outstanding.
    fn prepare_rx(&mut self) {
        assert!(!self.rx_busy, "rx buffer touched while lent to the kernel");
        let spare = self.rx.len() - self.rx_len;
        // The next frame may be larger than the buffer: grow to hold it whole.
        let pending = self.rx.get(self.rx_start..self.rx_len).unwrap_or_default();
        let need = match FrameHeader::peek(pending) {
            Ok(Some(header)) => header.frame_len as usize,
            _ => 0,
        };
        if spare >= RX_SPARE_BYTES_MIN && self.rx_start + need <= self.rx.len() {
            return;
        }
        if self.rx_start > 0 {
            self.rx.copy_within(self.rx_start..self.rx_len, 0);
            self.rx_len -= self.rx_start;
            self.rx_start = 0;
        }
        let wanted = (need + RX_SPARE_BYTES_MIN).min(FRAME_BYTES_MAX as usize + RX_SPARE_BYTES_MIN);
        if self.rx.len() < wanted {
            let mut grown = FrameBuf::with_capacity(wanted.next_power_of_two());
            grown.resize(wanted.next_power_of_two(), 0);
            if let (Some(dst), Some(src)) =
                (grown.get_mut(..self.rx_len), self.rx.get(..self.rx_len))
            {
                dst.copy_from_slice(src);
            }
            self.rx = grown;
        }
    }
}

/// A ring and the connections it drives.
///
/// Owner: one worker thread (the ring is not shared). Operations are armed by [`poll`],
/// which also waits for and reaps completions.
///
/// [`poll`]: Transport::poll
pub struct Transport {
    conns: Vec<Conn>,
    ring: IoUring,
    outstanding: usize,
    /// Connections that received bytes in the last `poll`.
    readable: Vec<usize>,
}

impl Transport {
    /// A ring for `streams` (at most `CONNECTIONS_PER_RING_MAX`).
    pub fn new(streams: Vec<TcpStream>) -> io::Result<Transport> {
        if streams.len() > CONNECTIONS_PER_RING_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} connections on one ring; at most {CONNECTIONS_PER_RING_MAX}",
                    streams.len()
                ),
            ));
        }
        let entries = (2 * streams.len() + 8).next_power_of_two().max(64) as u32;
        let ring = IoUring::new(entries)?;
        let conns = streams
            .into_iter()
            .map(|stream| {
                stream.set_nodelay(true)?;
                Ok(Conn::new(stream))
            })
            .collect::<io::Result<Vec<Conn>>>()?;
        Ok(Transport {
            conns,
            ring,
            outstanding: 0,
            readable: Vec::new(),
        })
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Appends bytes to send on `conn` after what is already queued.
    pub fn queue(&mut self, conn: usize, bytes: &[u8]) {
        if let Some(c) = self.conns.get_mut(conn) {
            c.tx_queue.extend_from_slice(bytes);
        }
    }

    /// Bytes queued or in flight on `conn` and not yet taken by the kernel.
    pub fn unsent_bytes(&self, conn: usize) -> usize {
        self.conns.get(conn).map_or(0, |c| {
            c.tx_queue.len() + c.tx_flight.len().saturating_sub(c.tx_sent)
        })
    }

    /// Why `conn` stopped, if it did.
    pub fn failure(&self, conn: usize) -> Option<&ConnError> {
        self.conns.get(conn).and_then(|c| c.failed.as_ref())
    }

    /// Bytes received on `conn` and not yet consumed; starts 16-aligned at a frame boundary.
    pub fn received(&self, conn: usize) -> &[u8] {
        self.conns
            .get(conn)
            .and_then(|c| c.rx.get(c.rx_start..c.rx_len))
            .unwrap_or_default()
    }

    /// Marks `bytes` (whole frames, a multiple of 16) at the front of `received` consumed.
    pub fn consume(&mut self, conn: usize, bytes: usize) {
        if let Some(c) = self.conns.get_mut(conn) {
            debug_assert!(bytes.is_multiple_of(FRAME_ALIGN));
            c.rx_start = (c.rx_start + bytes).min(c.rx_len);
            if c.rx_start == c.rx_len && !c.rx_busy {
                c.rx_start = 0;
                c.rx_len = 0;
            }
        }
    }

    /// Connections that received bytes during the last `poll`.
    pub fn readable(&self) -> &[usize] {
        &self.readable
    }

    /// Arms sends and receives, submits, waits up to `timeout` for at least one completion
    /// (`None`: until one arrives; zero: not at all) and reaps every completion there is.
    pub fn poll(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.readable.clear();
        self.arm()?;
        let submitter = self.ring.submitter();
        let waited = match timeout {
            Some(t) if t.is_zero() => submitter.submit(),
            Some(t) => {
                let timespec = types::Timespec::from(t);
                let args = types::SubmitArgs::new().timespec(&timespec);
                submitter.submit_with_args(1, &args)
            }
            None => submitter.submit_and_wait(1),
        };
        match waited {
            Ok(_) => {}
            Err(error)
                if matches!(
                    error.raw_os_error(),
                    Some(libc_errno::ETIME | libc_errno::EINTR | libc_errno::EBUSY)
                ) => {}
            Err(error) => return Err(error),
        }
        self.reap();
        Ok(())
    }

    /// Pushes one send per idle connection with bytes to send and one receive per idle
    /// connection that is still open.
    fn arm(&mut self) -> io::Result<()> {
        for index in 0..self.conns.len() {
            let Some(conn) = self.conns.get_mut(index) else {
                continue;
            };
            if conn.failed.is_some() {
                continue;
            }
            if !conn.tx_busy {
                if conn.tx_sent >= conn.tx_flight.len() && !conn.tx_queue.is_empty() {
                    std::mem::swap(&mut conn.tx_flight, &mut conn.tx_queue);
                    conn.tx_queue.clear();
                    conn.tx_sent = 0;
                }
                if conn.tx_sent < conn.tx_flight.len() {
                    let rest = conn.tx_flight.get(conn.tx_sent..).unwrap_or_default();
                    let len = rest.len().min(u32::MAX as usize) as u32;
                    let entry =
                        opcode::Send::new(types::Fd(conn.stream.as_raw_fd()), rest.as_ptr(), len)
                            .build()
                            .user_data((index as u64) << 1 | OP_SEND);
                    conn.tx_busy = true;
                    // SAFETY: `entry` reads `tx_flight` from `tx_sent` on and names this
                    // connection's socket, and `tx_busy` is set: `push`'s contract holds.
                    unsafe { push(&mut self.ring, &entry) }?;
                    self.outstanding += 1;
                }
            }
            if !conn.rx_busy {
                conn.prepare_rx();
                let spare = conn.rx.len() - conn.rx_len;
                let start = conn.rx_len;
                if let Some(tail) = conn.rx.get_mut(start..) {
                    let len = spare.min(u32::MAX as usize) as u32;
                    let entry = opcode::Recv::new(
                        types::Fd(conn.stream.as_raw_fd()),
                        tail.as_mut_ptr(),
                        len,
                    )
                    .build()
                    .user_data((index as u64) << 1 | OP_RECV);
                    conn.rx_busy = true;
                    // SAFETY: `entry` writes into `rx` from `rx_len` on and names this
                    // connection's socket, and `rx_busy` is set: `push`'s contract holds.
                    unsafe { push(&mut self.ring, &entry) }?;
                    self.outstanding += 1;
                }
            }
        }
        Ok(())
    }

    /// Takes every completion off the ring and updates its connection.
    fn reap(&mut self) {
        for cqe in self.ring.completion() {
            let (user_data, result) = (cqe.user_data(), cqe.result());
            self.outstanding = self.outstanding.saturating_sub(1);
            let index = (user_data >> 1) as usize;
            let Some(conn) = self.conns.get_mut(index) else {
                continue;
            };
            if user_data & 1 == OP_SEND {
                conn.tx_busy = false;
                match result {
                    n if n >= 0 => {
                        conn.tx_sent = (conn.tx_sent + n as usize).min(conn.tx_flight.len())
                    }
                    n if -n == libc_errno::EINTR || -n == libc_errno::EAGAIN => {}
                    n => {
                        conn.failed.get_or_insert(ConnError::Send(
                            io::Error::from_raw_os_error(-n).to_string(),
                        ));
                    }
                }
            } else {
                conn.rx_busy = false;
                match result {
                    0 => {
                        conn.failed.get_or_insert(ConnError::PeerClosed);
                    }
                    n if n > 0 => {
                        conn.rx_len = (conn.rx_len + n as usize).min(conn.rx.len());
                        self.readable.push(index);
                    }
                    n if -n == libc_errno::EINTR || -n == libc_errno::EAGAIN => {}
                    n => {
                        conn.failed.get_or_insert(ConnError::Recv(
                            io::Error::from_raw_os_error(-n).to_string(),
                        ));
                    }
                }
            }
        }
    }
}

/// Pushes one entry armed by [`Transport::arm`], submitting first if the queue is full.
///
/// # Safety
///
/// `entry` must point into one connection's `tx_flight` (a send, from `tx_sent`) or `rx` (a
/// receive, from `rx_len`) and name that connection's socket, and the connection's `tx_busy` /
/// `rx_busy` must already be set. Then the memory and the fd stay valid for as long as the
/// kernel may use them: until `reap` sees this entry's completion no method resizes, writes or
/// frees that buffer (they all check the flags; `prepare_rx` asserts it), the connection is
/// never removed from `conns`, and `Drop` waits for every completion or leaks the buffers and
/// sockets.
unsafe fn push(ring: &mut IoUring, entry: &io_uring::squeue::Entry) -> io::Result<()> {
    // SAFETY: the caller keeps `entry`'s buffer and fd valid until its completion (above).
    if unsafe { ring.submission().push(entry) }.is_ok() {
        return Ok(());
    }
    // Full: hand the queue to the kernel, then there is room.
    ring.submit()?;
    // SAFETY: as above; the same entry, not yet pushed.
    if unsafe { ring.submission().push(entry) }.is_err() {
        return Err(io::Error::other("io_uring submission queue stays full"));
    }
    Ok(())
}

impl Drop for Transport {
    fn drop(&mut self) {
        for conn in &self.conns {
            let _ = conn.stream.shutdown(std::net::Shutdown::Both);
        }
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while self.outstanding > 0 && Instant::now() < deadline {
            let timespec = types::Timespec::from(Duration::from_millis(50));
            let args = types::SubmitArgs::new().timespec(&timespec);
            let _ = self.ring.submitter().submit_with_args(1, &args);
            // Count only: a shut-down connection re-arms nothing.
            let done = self.ring.completion().count();
            self.outstanding = self.outstanding.saturating_sub(done);
        }
        if self.outstanding > 0 {
            // The kernel still holds pointers into these buffers: never free them.
            for conn in self.conns.drain(..) {
                std::mem::forget(conn);
            }
        }
    }
}

/// The errno values the ring reports (Linux, every architecture).
mod libc_errno {
    pub const EINTR: i32 = 4;
    pub const EAGAIN: i32 = 11;
    pub const EBUSY: i32 = 16;
    pub const ETIME: i32 = 62;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// Frames sent through the ring arrive whole and in order at a plain socket, and frames
    /// from the socket arrive aligned in `received`, including one larger than the initial
    /// receive buffer.
    #[test]
    fn frames_cross_the_ring_both_ways() {
        use protocol::api::MetadataRequest;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let mut transport = Transport::new(vec![client]).unwrap();

        let mut frame = FrameBuf::new();
        protocol::encode_frame(
            &mut frame,
            7,
            &MetadataRequest {
                topics: vec!["t".into()],
            },
        )
        .unwrap();
        for _ in 0..100 {
            transport.queue(0, &frame);
        }
        let expected = frame.len() * 100;
        let echo = std::thread::spawn(move || {
            let mut got = vec![0u8; expected];
            server.read_exact(&mut got).unwrap();
            let mut big = FrameBuf::new();
            let request = MetadataRequest {
                topics: vec!["x".repeat(100); 4000],
            };
            protocol::encode_frame(&mut big, 9, &request).unwrap();
            assert!(big.len() > RX_BYTES_INITIAL);
            server.write_all(&big).unwrap();
            (got, big.len(), server)
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut big_len = None;
        while big_len.is_none() && Instant::now() < deadline {
            transport.poll(Some(Duration::from_millis(10))).unwrap();
            if let Ok(Some((decoded, used))) = protocol::decode_frame(transport.received(0)) {
                assert_eq!(decoded.header.correlation_id, 9);
                big_len = Some(used);
                transport.consume(0, used);
            }
        }
        let (got, len, _server) = echo.join().unwrap();
        for chunk in got.chunks(frame.len()) {
            assert_eq!(chunk, &frame[..]);
        }
        assert_eq!(big_len, Some(len));
        assert!(transport.received(0).is_empty());
    }

    #[test]
    fn a_closed_peer_is_reported() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let mut transport = Transport::new(vec![client]).unwrap();
        drop(server);
        let deadline = Instant::now() + Duration::from_secs(5);
        while transport.failure(0).is_none() && Instant::now() < deadline {
            transport.poll(Some(Duration::from_millis(10))).unwrap();
        }
        assert_eq!(transport.failure(0), Some(&ConnError::PeerClosed));
    }
}
