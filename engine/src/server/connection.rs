//! Client connections: listeners, the accept loop, and each connection's read and write
//! loops.
//!
//! A connection reads frames incrementally. It peeks at each 32-byte header (checked against
//! the frame limit before anything of that size is allocated) and reads the frame into a
//! 16-aligned buffer of exactly its size. It then starts a task per request: requests run
//! concurrently (pipelining), and responses go out as they complete, matched by correlation
//! id. Requests for a partition another shard leads are forwarded through the mailbox.
//! Memory per connection is bounded: at most `CONNECTION_REQUESTS_IN_FLIGHT_MAX` requests
//! and `CONNECTION_PENDING_OUTPUT_BYTES_MAX` response bytes; past either, it stops reading.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::rc::Rc;
use std::time::Duration;

use ahash::AHashMap;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use glommio::net::{TcpListener, TcpStream};
use protocol::api::{
    CreateTopicRequest, DeleteTopicRequest, FetchRequest, ListOffsetsRequest, ProduceRequest,
};
use protocol::limits::FRAME_HEADER_BYTES;
use protocol::{ApiKey, ErrorCode, FrameBuf, FrameHeader, split_frame};

use crate::limits::{CONNECTION_PENDING_OUTPUT_BYTES_MAX, CONNECTION_REQUESTS_IN_FLIGHT_MAX};
use crate::log::notify::Notify;

use super::messages::ShardMessage;
use super::{Shard, dispatch, subscription};

/// Binds this shard's listeners: the shared port (every shard, SO_REUSEPORT) and its own.
/// Both also set SO_REUSEADDR (ringmq's glommio patch, vendor/glommio/RINGMQ.md), so that a
/// restarted broker binds past the connections it closed (FIN-WAIT, TIME-WAIT).
pub fn bind_listeners(shard: &Shard) -> io::Result<Vec<TcpListener>> {
    let host = shard.settings.host;
    let mut listeners = Vec::new();
    for port in [shard.settings.shared_port, shard.config.port] {
        let listener = TcpListener::bind((host, port))
            .map_err(|error| io::Error::other(format!("binding {host}:{port}: {error}")))?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Accepts connections until shutdown. Past `max_connections_per_shard` a new connection is
/// closed at once (the client sees a reset and may retry another shard).
pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        let seen = shard.shutdown.epoch();
        if shard.is_shutting_down() {
            return;
        }
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            wait_for_shutdown(&shard, seen).await;
            None
        })
        .await;
        let Some(accepted) = accepted else { continue };
        match accepted {
            Ok(stream) => {
                if shard.connections.get() >= shard.settings.max_connections_per_shard {
                    shard.stats.borrow_mut().connections_refused += 1;
                    drop(stream);
                    continue;
                }
                shard.stats.borrow_mut().connections_accepted += 1;
                let task = serve(Rc::clone(&shard), stream);
                if let Ok(task) = glommio::spawn_local_into(task, shard.hot) {
                    task.detach();
                }
            }
            Err(error) => {
                // Out of file descriptors or memory: back off instead of spinning.
                tracing::warn!(shard = %shard.id, %error, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Resolves when the shard starts shutting down.
async fn wait_for_shutdown(shard: &Shard, mut seen: u64) {
    while !shard.is_shutting_down() {
        shard.shutdown.changed(seen).await;
        seen = shard.shutdown.epoch();
    }
}

/// Shared state of one connection's reader, writer and request tasks.
pub(super) struct Conn {
    outbox: RefCell<VecDeque<FrameBuf>>,
    pub(super) pending_output_bytes: Cell<usize>,
    requests_in_flight: Cell<usize>,
    /// False once the read loop ended: subscriptions end with it.
    pub(super) reading: Cell<bool>,
    pub(super) closed: Cell<bool>,
    /// Subscriptions running on this connection by their `Subscribe` correlation id, and
    /// whether an `Unsubscribe` cancelled each.
    subscriptions: RefCell<AHashMap<u64, bool>>,
    pub(super) changed: Notify,
}

impl Conn {
    fn new() -> Conn {
        Conn {
            outbox: RefCell::new(VecDeque::new()),
            pending_output_bytes: Cell::new(0),
            requests_in_flight: Cell::new(0),
            reading: Cell::new(true),
            closed: Cell::new(false),
            subscriptions: RefCell::new(AHashMap::new()),
            changed: Notify::default(),
        }
    }

    /// The epochs of this connection's changes and of the shard's shutdown, taken before
    /// looking at what they guard, for `changed_or_shutdown`.
    pub(super) fn epochs(&self, shard: &Shard) -> (u64, u64) {
        (self.changed.epoch(), shard.shutdown.epoch())
    }

    /// Waits until the connection changed or the shard started shutting down since `seen`
    /// (from `epochs`).
    pub(super) async fn changed_or_shutdown(&self, shard: &Shard, (seen, shutdown): (u64, u64)) {
        futures_lite::future::or(
            self.changed.changed(seen),
            wait_for_shutdown(shard, shutdown),
        )
        .await;
    }

    /// Registers the subscription `id`; false when one with that id runs already.
    pub(super) fn subscribe(&self, id: u64) -> bool {
        let mut subscriptions = self.subscriptions.borrow_mut();
        if subscriptions.contains_key(&id) {
            return false;
        }
        subscriptions.insert(id, false);
        true
    }

    /// Whether the subscription `id` runs and is not cancelled.
    pub(super) fn is_subscribed(&self, id: u64) -> bool {
        self.subscriptions.borrow().get(&id) == Some(&false)
    }

    /// Whether the subscription `id` still runs (cancelled or not).
    pub(super) fn has_subscription(&self, id: u64) -> bool {
        self.subscriptions.borrow().contains_key(&id)
    }

    /// Cancels the subscription `id`; false when none runs (or it was cancelled already).
    pub(super) fn cancel(&self, id: u64) -> bool {
        let cancelled = match self.subscriptions.borrow_mut().get_mut(&id) {
            Some(cancelled) if !*cancelled => {
                *cancelled = true;
                true
            }
            _ => false,
        };
        self.changed.notify();
        cancelled
    }

    /// The subscription `id` ended.
    pub(super) fn unsubscribed(&self, id: u64) {
        self.subscriptions.borrow_mut().remove(&id);
        self.changed.notify();
    }

    pub(super) fn push(&self, frame: FrameBuf) {
        if self.closed.get() {
            return;
        }
        self.pending_output_bytes
            .set(self.pending_output_bytes.get() + frame.len());
        self.outbox.borrow_mut().push_back(frame);
        self.changed.notify();
    }
}

/// Why a connection's read loop ended.
#[derive(Debug, thiserror::Error)]
enum Closing {
    #[error("peer closed the connection")]
    PeerClosed,
    #[error("i/o: {0}")]
    Io(io::Error),
    #[error("bad frame: {0}")]
    BadFrame(protocol::DecodeError),
    #[error("{0} timeout")]
    Timeout(&'static str),
    #[error("unknown api key {0}")]
    UnknownApi(u16),
    #[error("shard shutting down")]
    Shutdown,
}

async fn serve(shard: Rc<Shard>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    shard.connections.set(shard.connections.get() + 1);
    let (reader, writer) = futures_lite::io::split(stream);
    let conn = Rc::new(Conn::new());
    let writer_task =
        glommio::spawn_local_into(write_loop(Rc::clone(&conn), writer), shard.hot).ok();
    let closing = read_loop(&shard, &conn, reader).await;
    conn.reading.set(false);
    conn.changed.notify();
    match &closing {
        Closing::PeerClosed | Closing::Shutdown => {}
        Closing::BadFrame(error) => {
            shard.stats.borrow_mut().frames_rejected += 1;
            tracing::warn!(shard = %shard.id, %peer, %error, "closing connection: bad frame");
        }
        other => tracing::debug!(shard = %shard.id, %peer, reason = %other, "closing connection"),
    }
    // Let requests already read finish and their responses go out, unless the peer is gone.
    if !matches!(closing, Closing::Io(_) | Closing::BadFrame(_)) {
        while conn.requests_in_flight.get() > 0 && !conn.closed.get() {
            let seen = conn.changed.epoch();
            conn.changed.changed(seen).await;
        }
    }
    conn.closed.set(true);
    conn.changed.notify();
    if let Some(task) = writer_task {
        task.await;
    }
    shard.connections.set(shard.connections.get() - 1);
}

/// Queued responses that leave in one write while they fit in this many bytes: those that
/// complete together (a group commit acknowledges many produces at once) cost one syscall.
const COALESCE_BYTES: usize = 64 << 10;

impl Conn {
    /// Appends to `joined` the frames queued behind `first` while all fit in
    /// `COALESCE_BYTES`, after `first` itself; false (and `joined` untouched) when none fits.
    fn join_queued(&self, first: &[u8], joined: &mut Vec<u8>) -> bool {
        let mut outbox = self.outbox.borrow_mut();
        // How many queued frames fit behind `first`, and the joined length.
        let (mut count, mut len) = (0, first.len());
        for next in outbox.iter() {
            if len + next.len() > COALESCE_BYTES {
                break;
            }
            len += next.len();
            count += 1;
        }
        if count == 0 {
            return false;
        }
        joined.clear();
        // One allocation of exactly what is joined, not a chain of regrowths.
        joined.reserve_exact(len);
        joined.extend_from_slice(first);
        for next in outbox.drain(..count) {
            joined.extend_from_slice(&next);
        }
        true
    }
}

async fn write_loop(conn: Rc<Conn>, mut writer: WriteHalf<TcpStream>) {
    let mut joined = Vec::new();
    loop {
        let seen = conn.changed.epoch();
        let next = conn.outbox.borrow_mut().pop_front();
        match next {
            Some(frame) => {
                let (written, len) = if conn.join_queued(&frame, &mut joined) {
                    let written = writer.write_all(&joined).await;
                    let len = joined.len();
                    // An idle connection keeps no join buffer (up to COALESCE_BYTES).
                    if conn.outbox.borrow().is_empty() {
                        joined = Vec::new();
                    }
                    (written, len)
                } else {
                    (writer.write_all(&frame).await, frame.len())
                };
                conn.pending_output_bytes
                    .set(conn.pending_output_bytes.get() - len);
                conn.changed.notify();
                if written.is_err() {
                    conn.closed.set(true);
                    conn.outbox.borrow_mut().clear();
                    break;
                }
            }
            None if conn.closed.get() => break,
            None => conn.changed.changed(seen).await,
        }
    }
    let _ = writer.close().await;
}

/// Reads with a deadline; `Ok(0)` is end of stream.
async fn read_some(
    reader: &mut ReadHalf<TcpStream>,
    buf: &mut [u8],
    deadline: Option<Duration>,
) -> Result<usize, Closing> {
    let read = async { reader.read(buf).await.map_err(glommio::GlommioError::from) };
    match deadline {
        None => read.await.map_err(|e| Closing::Io(e.into())),
        Some(limit) => match glommio::timer::timeout(limit, read).await {
            Ok(n) => Ok(n),
            Err(glommio::GlommioError::TimedOut(_)) => Err(Closing::Timeout("read")),
            Err(error) => Err(Closing::Io(error.into())),
        },
    }
}

async fn read_loop(shard: &Rc<Shard>, conn: &Rc<Conn>, mut reader: ReadHalf<TcpStream>) -> Closing {
    let mut rx = FrameBuf::with_capacity(shard.settings.connection_buffer_bytes);
    rx.resize(
        shard
            .settings
            .connection_buffer_bytes
            .max(FRAME_HEADER_BYTES * 2),
        0,
    );
    let (mut start, mut end) = (0usize, 0usize);
    loop {
        // Backpressure: a client that pipelines too much, or does not read its responses,
        // is not read from until its responses drain. Shutdown need not end this wait: the
        // shard's drain waits for requests in flight, not for connections, and a
        // subscription of such a client ends on shutdown by itself (`subscription`).
        while conn.requests_in_flight.get() >= CONNECTION_REQUESTS_IN_FLIGHT_MAX
            || conn.pending_output_bytes.get() >= CONNECTION_PENDING_OUTPUT_BYTES_MAX
        {
            if conn.closed.get() {
                return Closing::PeerClosed;
            }
            let seen = conn.changed.epoch();
            conn.changed.changed(seen).await;
        }
        if shard.is_shutting_down() {
            return Closing::Shutdown;
        }
        let unread = rx.get(start..end).unwrap_or_default();
        match FrameHeader::peek(unread) {
            Err(error) => return Closing::BadFrame(error),
            Ok(Some(header)) => {
                let frame_len = header.frame_len as usize;
                let mut frame = FrameBuf::with_capacity(frame_len);
                let have = unread.len().min(frame_len);
                frame.extend_from_slice(unread.get(..have).unwrap_or_default());
                start += have;
                if have < frame_len {
                    // Read the rest straight into the frame's own buffer: a large batch is
                    // copied from the socket once.
                    frame.resize(frame_len, 0);
                    let limit = shard.settings.frame_read_timeout;
                    let rest = frame.get_mut(have..).unwrap_or_default();
                    let read = glommio::timer::timeout(limit, async {
                        reader
                            .read_exact(rest)
                            .await
                            .map_err(glommio::GlommioError::from)
                    })
                    .await;
                    match read {
                        Ok(()) => {}
                        Err(glommio::GlommioError::TimedOut(_)) => {
                            return Closing::Timeout("frame");
                        }
                        Err(error) => return Closing::Io(error.into()),
                    }
                }
                if let Err(closing) = accept_frame(shard, conn, frame) {
                    return closing;
                }
            }
            Ok(None) => {
                // Need more bytes: make room at the end of the receive buffer.
                if start == end {
                    (start, end) = (0, 0);
                } else if start > 0 {
                    rx.as_mut_slice().copy_within(start..end, 0);
                    (start, end) = (0, end - start);
                }
                let mid_frame = end > 0;
                let deadline = if mid_frame {
                    Some(shard.settings.frame_read_timeout)
                } else if conn.requests_in_flight.get() == 0 {
                    Some(shard.settings.idle_timeout)
                } else {
                    None // a request is in progress: the client is not idle
                };
                let seen = shard.shutdown.epoch();
                let space = rx.as_mut_slice().get_mut(end..).unwrap_or_default();
                let read = futures_lite::future::or(
                    async { Some(read_some(&mut reader, space, deadline).await) },
                    async {
                        wait_for_shutdown(shard, seen).await;
                        None
                    },
                )
                .await;
                match read {
                    None => return Closing::Shutdown,
                    Some(Ok(0)) => return Closing::PeerClosed,
                    Some(Ok(n)) => end += n,
                    Some(Err(closing)) => return closing,
                }
            }
        }
    }
}

/// Where a request goes.
enum Route {
    Local,
    Shard(u16),
    /// Served by the connection it came on: a subscription streams from the shard it reached.
    Connection,
}

/// The shard that must handle this request: the partition leader for partition requests,
/// shard 0 for catalogue changes, this shard otherwise.
fn route(shard: &Shard, api: ApiKey, frame: &protocol::Frame<'_>) -> Route {
    let partition_of = |topic: &str, partition: u32| {
        let leader = shard
            .catalog()
            .topic(topic)
            .and_then(|t| t.leader_shard(partition));
        match leader {
            Some(leader) if leader != shard.id.0 => Route::Shard(leader),
            _ => Route::Local, // unknown topics are answered here
        }
    };
    let control = if shard.id.0 == 0 {
        Route::Local
    } else {
        Route::Shard(0)
    };
    match api {
        ApiKey::Produce => frame.access::<ProduceRequest>().map_or(Route::Local, |r| {
            partition_of(r.topic.as_str(), r.partition.to_native())
        }),
        ApiKey::Fetch => frame.access::<FetchRequest>().map_or(Route::Local, |r| {
            partition_of(r.topic.as_str(), r.partition.to_native())
        }),
        ApiKey::ListOffsets => frame
            .access::<ListOffsetsRequest>()
            .map_or(Route::Local, |r| {
                partition_of(r.topic.as_str(), r.partition.to_native())
            }),
        ApiKey::Subscribe | ApiKey::Unsubscribe => Route::Connection,
        ApiKey::CreateTopic if frame.access::<CreateTopicRequest>().is_ok() => control,
        ApiKey::DeleteTopic if frame.access::<DeleteTopicRequest>().is_ok() => control,
        _ => Route::Local,
    }
}

/// Checks a whole frame and starts its request task. A produce's body crc is left to the
/// shard that appends it, which checks it in the same pass as the batch's crc
/// (`dispatch::produce`); routing reads the body meanwhile through bytecheck alone.
fn accept_frame(shard: &Rc<Shard>, conn: &Rc<Conn>, frame: FrameBuf) -> Result<(), Closing> {
    let (api, correlation_id, route) = match split_frame(&frame) {
        Ok(Some((decoded, _))) => {
            let api = decoded
                .header
                .api()
                .map_err(|_| Closing::UnknownApi(decoded.header.api_key))?;
            if api != ApiKey::Produce {
                decoded.check_body().map_err(Closing::BadFrame)?;
            }
            (
                api,
                decoded.header.correlation_id,
                route(shard, api, &decoded),
            )
        }
        Ok(None) => {
            return Err(Closing::BadFrame(protocol::DecodeError::BadFrameLength {
                len: 0,
            }));
        }
        Err(error) => return Err(Closing::BadFrame(error)),
    };
    conn.requests_in_flight
        .set(conn.requests_in_flight.get() + 1);
    shard
        .requests_in_flight
        .set(shard.requests_in_flight.get() + 1);
    let (shard_ref, conn) = (Rc::clone(shard), Rc::clone(conn));
    let task = async move {
        let shard = shard_ref;
        let response = match route {
            Route::Connection => {
                shard.stats.borrow_mut().requests += 1;
                if let Some(decoded) = protocol::frame::trusted_frame(&frame) {
                    if api == ApiKey::Subscribe {
                        subscription::serve(&shard, &conn, &decoded).await;
                    } else {
                        subscription::unsubscribe(&conn, &decoded).await;
                    }
                }
                None
            }
            Route::Local => dispatch::handle(&shard, frame).await,
            Route::Shard(target) => {
                shard.stats.borrow_mut().requests_forwarded += 1;
                let asked = shard
                    .ask(target, |token| ShardMessage::Forward { token, frame })
                    .await;
                match asked {
                    Some(ShardMessage::Reply { frame, .. }) => frame,
                    _ => dispatch::error_response(api, correlation_id, ErrorCode::SHUTTING_DOWN),
                }
            }
        };
        if let Some(response) = response {
            conn.push(response);
        }
        conn.requests_in_flight
            .set(conn.requests_in_flight.get() - 1);
        conn.changed.notify();
        shard
            .requests_in_flight
            .set(shard.requests_in_flight.get() - 1);
        shard.requests_done.notify();
    };
    if let Ok(task) = glommio::spawn_local_into(task, shard.hot) {
        task.detach();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: usize, byte: u8) -> FrameBuf {
        let mut frame = FrameBuf::with_capacity(len);
        frame.resize(len, byte);
        frame
    }

    #[test]
    fn queued_frames_join_while_they_fit_and_in_order() {
        let conn = Conn::new();
        for (len, byte) in [(100, 1), (200, 2), (COALESCE_BYTES, 3), (50, 4)] {
            conn.push(frame(len, byte));
        }
        let mut joined = Vec::new();
        let first = conn.outbox.borrow_mut().pop_front().unwrap();
        assert!(conn.join_queued(&first, &mut joined));
        assert_eq!(joined.len(), 300);
        assert!(joined[..100].iter().all(|&b| b == 1) && joined[100..].iter().all(|&b| b == 2));
        // The large frame leaves on its own, and so does the last one, with nothing behind it.
        let large = conn.outbox.borrow_mut().pop_front().unwrap();
        assert!(!conn.join_queued(&large, &mut joined));
        assert_eq!(joined.len(), 300, "untouched when nothing joins");
        let last = conn.outbox.borrow_mut().pop_front().unwrap();
        assert!(!conn.join_queued(&last, &mut joined));
    }
}
