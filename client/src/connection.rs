//! One TCP connection to a broker: framing, pipelining and correlation-id matching.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use protocol::api::{ApiVersionRange, ApiVersionsRequest, ApiVersionsResponse};
use protocol::{ApiKey, Body, Frame, FrameBuf, encode_frame};
use rkyv::api::high::{HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor::{Failure, Strategy};
use rkyv::ser::allocator::ArenaHandle;
use rkyv::{Archive, Deserialize, Portable, Serialize};

use crate::error::ClientError;
use crate::limits::IN_FLIGHT_MAX;
use crate::reader::{FrameReader, OwnedFrame, ReadError};

/// A body this client can frame and send: every request type in `protocol::api`.
pub trait Request:
    Body + for<'a, 'b> Serialize<HighSerializer<&'b mut FrameBuf, ArenaHandle<'a>, Failure>>
{
}

impl<T> Request for T where
    T: Body + for<'a, 'b> Serialize<HighSerializer<&'b mut FrameBuf, ArenaHandle<'a>, Failure>>
{
}

/// A body this client can validate and read in place: every response type in `protocol::api`.
pub trait Reply: Body<Archived: Portable + for<'v> CheckBytes<HighValidator<'v, Failure>>> {}

impl<T> Reply for T where
    T: Body<Archived: Portable + for<'v> CheckBytes<HighValidator<'v, Failure>>>
{
}

/// A [`Reply`] that can also be deserialized into an owned value (small control messages).
pub trait OwnedReply:
    Reply + Sized + Archive<Archived: Deserialize<Self, Strategy<rkyv::de::Pool, Failure>>>
{
}

impl<T> OwnedReply for T where
    T: Reply + Archive<Archived: Deserialize<T, Strategy<rkyv::de::Pool, Failure>>>
{
}

/// Timeouts and bounds of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionConfig {
    /// Longest a TCP connect may take, per resolved address.
    pub connect_timeout: Duration,
    /// How long a request waits for its response, from when it was written. A request that
    /// expects a long poll (`Fetch`) adds its own wait on top (`send_with_timeout`).
    pub request_timeout: Duration,
    /// Longest one blocking socket write may stall (the broker is not reading).
    pub write_timeout: Duration,
    /// Most requests in flight (sent and not yet taken by `recv`/`wait`), 1..=`IN_FLIGHT_MAX`.
    pub in_flight_max: usize,
}

impl Default for ConnectionConfig {
    /// 5 s to connect, 30 s per request and per write, 64 requests in flight.
    fn default() -> Self {
        ConnectionConfig {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            in_flight_max: 64,
        }
    }
}

impl ConnectionConfig {
    /// Checks the fields; names the bad one.
    pub fn validate(&self) -> Result<(), ClientError> {
        let positive = [
            ("connection.connect_timeout", self.connect_timeout),
            ("connection.request_timeout", self.request_timeout),
            ("connection.write_timeout", self.write_timeout),
        ];
        if let Some((field, _)) = positive.iter().find(|(_, value)| value.is_zero()) {
            return Err(ClientError::Config {
                field,
                reason: "must be more than zero".into(),
            });
        }
        if !(1..=IN_FLIGHT_MAX).contains(&self.in_flight_max) {
            return Err(ClientError::Config {
                field: "connection.in_flight_max",
                reason: format!("{} is outside 1..={IN_FLIGHT_MAX}", self.in_flight_max),
            });
        }
        Ok(())
    }
}

/// A response that matched a request in flight: a checked frame that owns its bytes.
#[derive(Debug)]
pub struct Response {
    peer: SocketAddr,
    frame: OwnedFrame,
}

impl Response {
    /// The broker that sent it.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The correlation id of the request this answers.
    pub fn correlation_id(&self) -> u64 {
        self.frame.header().correlation_id
    }

    /// The api of the request this answers.
    pub fn api_key(&self) -> u16 {
        self.frame.header().api_key
    }

    /// The frame, for callers that want `protocol` directly.
    pub fn frame(&self) -> Frame<'_> {
        self.frame.frame()
    }

    /// Validates the body as `T` (bytecheck) and borrows it in place: no copy, whatever the
    /// size of a record payload. `Decode` if the body is not a valid `T`.
    pub fn access<T: Reply>(&self) -> Result<&T::Archived, ClientError> {
        self.frame
            .frame()
            .access::<T>()
            .map_err(|source| ClientError::Decode {
                peer: self.peer,
                source,
            })
    }

    /// Validates and deserializes the body into an owned `T` (allocates; for control
    /// messages). `Decode` if the body is not a valid `T`.
    pub fn deserialize<T: OwnedReply>(&self) -> Result<T, ClientError> {
        let archived = self.access::<T>()?;
        rkyv::deserialize::<T, Failure>(archived).map_err(|_| ClientError::Decode {
            peer: self.peer,
            source: protocol::DecodeError::InvalidBody { api: T::API },
        })
    }
}

/// A request whose response has not arrived yet.
#[derive(Debug, Clone, Copy)]
struct Pending {
    api: ApiKey,
    deadline: Instant,
    timeout: Duration,
}

/// One blocking TCP connection (TCP_NODELAY) to a broker address.
///
/// Owner: one thread; `&mut self` on every call. Requests are pipelined: `send` writes a
/// frame and returns its correlation id at once; responses may come back in any order and are
/// matched by correlation id (`wait` for one, `recv` for whichever comes first). Responses that
/// arrive while waiting for another are kept until asked for.
///
/// A stream (`send_stream`, for `Subscribe`) is one request answered by any number of
/// responses under its correlation id, with no deadline, until `end_stream`. Its responses
/// come from `recv`/`poll` (or `take_received`), never `wait`.
///
/// Invariant: `pending.len() + streams.len() + ready.len() <= config.in_flight_max`; every
/// response in `ready` answered a request that was in `pending` or `streams`. While a stream
/// is open, requests (`send`, `send_with_timeout`, `send_stream`) leave one place free:
/// `pending.len() + streams.len() < config.in_flight_max`. A stream's responses may arrive
/// before the one `wait` looks for, and each is kept, so without that place a table full of
/// requests would let `wait` read nothing, and nothing could ever be taken.
///
/// On error: an i/o error, a bad frame, a response nobody asked for, the peer closing, or a
/// request outliving its timeout closes the connection. The call that saw it returns the
/// cause; later calls return `Disconnected` (responses already received can still be taken).
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    config: ConnectionConfig,
    next_correlation_id: u64,
    send_buf: FrameBuf,
    reader: FrameReader,
    pending: HashMap<u64, Pending>,
    /// Open streams: correlation id -> the api of their responses.
    streams: HashMap<u64, ApiKey>,
    ready: VecDeque<Response>,
    /// What the broker serves, once the handshake told us.
    apis: Option<Vec<ApiVersionRange>>,
    /// Why the connection was closed, once it was.
    closed: Option<String>,
}

impl Connection {
    /// Opens a connection to `address` (`host:port`), trying each resolved address in turn
    /// within `connect_timeout`. `Connect` if none accepts; `Config` for a bad config.
    pub fn connect(address: &str, config: ConnectionConfig) -> Result<Connection, ClientError> {
        config.validate()?;
        let connect_error = |source| ClientError::Connect {
            address: address.to_string(),
            source,
        };
        let candidates = address.to_socket_addrs().map_err(connect_error)?;
        let mut last_error = io::Error::new(io::ErrorKind::NotFound, "address resolved to nothing");
        for candidate in candidates {
            match TcpStream::connect_timeout(&candidate, config.connect_timeout) {
                Ok(stream) => {
                    return Connection::from_stream(stream, config).map_err(connect_error);
                }
                Err(error) => last_error = error,
            }
        }
        Err(connect_error(last_error))
    }

    fn from_stream(stream: TcpStream, config: ConnectionConfig) -> io::Result<Connection> {
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(config.write_timeout))?;
        Ok(Connection {
            peer: stream.peer_addr()?,
            stream,
            config,
            next_correlation_id: 1,
            send_buf: FrameBuf::new(),
            reader: FrameReader::new(),
            pending: HashMap::new(),
            streams: HashMap::new(),
            ready: VecDeque::new(),
            apis: None,
            closed: None,
        })
    }

    /// The broker's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The timeouts and bounds this connection was opened with.
    pub fn config(&self) -> &ConnectionConfig {
        &self.config
    }

    /// Requests sent whose responses have not been taken yet (pending or received), open
    /// streams included.
    pub fn in_flight(&self) -> usize {
        self.pending.len() + self.streams.len() + self.ready.len()
    }

    /// Whether an error closed the connection.
    pub fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    /// The apis the broker listed at the handshake, if there was one.
    pub fn broker_apis(&self) -> Option<&[ApiVersionRange]> {
        self.apis.as_deref()
    }

    /// `ApiVersions`: tells the broker who we are and learns what it serves. From then on,
    /// sending a request the broker does not serve fails with `UnsupportedApi` before anything
    /// is written. `Broker` if the broker answers with an error.
    pub fn handshake(&mut self, client_software: &str) -> Result<ApiVersionsResponse, ClientError> {
        let response: ApiVersionsResponse = self.request(&ApiVersionsRequest {
            client_software: client_software.to_string(),
        })?;
        if !response.error.is_ok() {
            return Err(ClientError::broker(ApiKey::ApiVersions, response.error, ""));
        }
        self.apis = Some(response.apis.clone());
        Ok(response)
    }

    /// Writes a request and returns its correlation id; its response is due within
    /// `request_timeout`. `InFlightFull` when `in_flight_max` requests are in flight, or
    /// `in_flight_max - 1` while a stream is open (one place stays free for its responses).
    pub fn send<T: Request>(&mut self, body: &T) -> Result<u64, ClientError> {
        self.send_with_timeout(body, self.config.request_timeout)
    }

    /// Like [`send`](Self::send), with the response due within `response_timeout` (a fetch
    /// passes its long-poll wait plus the request timeout).
    pub fn send_with_timeout<T: Request>(
        &mut self,
        body: &T,
        response_timeout: Duration,
    ) -> Result<u64, ClientError> {
        self.check_open()?;
        self.check_room(false)?;
        let correlation_id = self.write(body)?;
        let pending = Pending {
            api: T::API,
            deadline: Instant::now() + response_timeout,
            timeout: response_timeout,
        };
        self.pending.insert(correlation_id, pending);
        self.check_invariants();
        Ok(correlation_id)
    }

    /// Writes a request the broker will not answer (a produce with `Acks::None`). Returns once
    /// the whole frame is in the socket's send buffer; nothing says the broker read it. It
    /// takes no place among the requests in flight, so it is never refused for want of one.
    pub fn send_without_response<T: Request>(&mut self, body: &T) -> Result<u64, ClientError> {
        self.check_open()?;
        self.write(body)
    }

    /// Writes a request the broker answers with a stream of responses under its correlation
    /// id (`Subscribe`), and returns that id. The stream has no deadline: its responses come
    /// from [`recv`](Self::recv) or [`poll`](Self::poll) until [`end_stream`](Self::end_stream).
    /// It takes one place among the requests in flight until then, and one more stays free
    /// for its responses (see the invariant). `InFlightFull` when fewer than two places are
    /// free.
    pub fn send_stream<T: Request>(&mut self, body: &T) -> Result<u64, ClientError> {
        self.check_open()?;
        self.check_room(true)?;
        let correlation_id = self.write(body)?;
        self.streams.insert(correlation_id, T::API);
        self.check_invariants();
        Ok(correlation_id)
    }

    /// Stops expecting responses to the stream `correlation_id` (the broker said its last):
    /// a later one is a protocol violation. Returns whether the stream was open. Responses
    /// already received stay to be taken.
    pub fn end_stream(&mut self, correlation_id: u64) -> bool {
        self.streams.remove(&correlation_id).is_some()
    }

    /// Sends `body`, waits for its response and deserializes it. For control messages.
    pub fn request<Req: Request, Resp: OwnedReply>(
        &mut self,
        body: &Req,
    ) -> Result<Resp, ClientError> {
        let correlation_id = self.send(body)?;
        self.wait(correlation_id)?.deserialize::<Resp>()
    }

    /// Waits for the response to `correlation_id`, keeping responses to other requests that
    /// arrive first. `Timeout` (and the connection closes) once the request's timeout passed;
    /// `NotInFlight` for an id that is not in flight (a stream's id included).
    /// `InFlightFull` (the connection stays open) when a stream's responses kept meanwhile
    /// would exceed `in_flight_max`: take them with `take_received` first. With none kept, it
    /// always reads at least one frame (requests leave a place free while a stream is open).
    pub fn wait(&mut self, correlation_id: u64) -> Result<Response, ClientError> {
        if let Some(at) = self
            .ready
            .iter()
            .position(|r| r.correlation_id() == correlation_id)
            && let Some(response) = self.ready.remove(at)
        {
            return Ok(response);
        }
        self.check_open()?;
        let Some(deadline) = self.pending.get(&correlation_id).map(|p| p.deadline) else {
            return Err(ClientError::NotInFlight {
                peer: self.peer,
                correlation_id,
            });
        };
        // Each turn takes one pending request off the table or keeps one more stream response,
        // and both are bounded by `in_flight_max`, so this ends within that many turns, or at
        // the deadline.
        loop {
            // A stream's response adds to what is kept: refuse before reading one too many.
            if !self.streams.is_empty() && self.in_flight() >= self.config.in_flight_max {
                return Err(ClientError::InFlightFull {
                    peer: self.peer,
                    in_flight_max: self.config.in_flight_max,
                });
            }
            let Some(frame) = self.read_until(Some(deadline))? else {
                return Err(self.time_out(correlation_id));
            };
            let response = self.accept(frame)?;
            if response.correlation_id() == correlation_id {
                return Ok(response);
            }
            self.ready.push_back(response);
        }
    }

    /// Returns the next response to any request in flight: one already received, or the
    /// first to arrive. `Ok(None)` when nothing is in flight. `Timeout` (and the connection
    /// closes) when the oldest deadline passes first. With only streams open there is no
    /// deadline: it waits until a response arrives or the connection fails.
    pub fn recv(&mut self) -> Result<Option<Response>, ClientError> {
        self.poll_until(None)
    }

    /// Like [`recv`](Self::recv), but gives up after `wait` and returns `Ok(None)`; a request
    /// is still only timed out at its own deadline.
    pub fn poll(&mut self, wait: Duration) -> Result<Option<Response>, ClientError> {
        self.poll_until(Some(Instant::now() + wait))
    }

    fn poll_until(&mut self, until: Option<Instant>) -> Result<Option<Response>, ClientError> {
        if let Some(response) = self.ready.pop_front() {
            return Ok(Some(response));
        }
        self.check_open()?;
        let oldest = self
            .pending
            .iter()
            .min_by_key(|(_, p)| p.deadline)
            .map(|(&id, p)| (id, p.deadline));
        if oldest.is_none() && self.streams.is_empty() {
            return Ok(None);
        }
        // `None`: only streams are open and the caller set no bound.
        let deadline = until
            .into_iter()
            .chain(oldest.map(|(_, request_deadline)| request_deadline))
            .min();
        match self.read_until(deadline)? {
            Some(frame) => self.accept(frame).map(Some),
            None => match oldest {
                Some((id, request_deadline)) if deadline >= Some(request_deadline) => {
                    Err(self.time_out(id))
                }
                _ => Ok(None),
            },
        }
    }

    /// A response that already arrived (while `wait` looked for another), without reading
    /// the socket. Works on a closed connection too: answers received before the failure
    /// still count.
    pub fn take_received(&mut self) -> Option<Response> {
        self.ready.pop_front()
    }

    /// Closes the connection; later calls return `Disconnected` with `reason`.
    pub fn close(&mut self, reason: impl Into<String>) {
        if self.closed.is_none() {
            self.closed = Some(reason.into());
            self.pending.clear();
            self.streams.clear();
            // The socket may already be gone; there is nothing more to do about it.
            let _ = self.stream.shutdown(Shutdown::Both);
        }
    }

    /// Whether one more request fits: `InFlightFull` when it would leave no place free while
    /// a stream is open (`opens_stream`: this request opens one), or none at all.
    fn check_room(&self, opens_stream: bool) -> Result<(), ClientError> {
        let kept_free = usize::from(opens_stream || !self.streams.is_empty());
        if self.in_flight() + 1 + kept_free > self.config.in_flight_max {
            return Err(ClientError::InFlightFull {
                peer: self.peer,
                in_flight_max: self.config.in_flight_max,
            });
        }
        Ok(())
    }

    fn check_invariants(&self) {
        assert!(self.in_flight() <= self.config.in_flight_max);
        assert!(
            self.streams.is_empty()
                || self.pending.len() + self.streams.len() < self.config.in_flight_max
        );
    }

    fn check_open(&self) -> Result<(), ClientError> {
        match &self.closed {
            None => Ok(()),
            Some(reason) => Err(ClientError::Disconnected {
                peer: self.peer,
                reason: reason.clone(),
            }),
        }
    }

    fn check_api(&self, api: ApiKey, version: u16) -> Result<(), ClientError> {
        let Some(apis) = &self.apis else {
            return Ok(());
        };
        let served = apis.iter().any(|range| {
            range.api_key == api as u16
                && range.min_version <= version
                && version <= range.max_version
        });
        if served {
            Ok(())
        } else {
            Err(ClientError::UnsupportedApi {
                peer: self.peer,
                api,
                version,
            })
        }
    }

    fn write<T: Request>(&mut self, body: &T) -> Result<u64, ClientError> {
        self.check_api(T::API, T::VERSION)?;
        let correlation_id = self.next_correlation_id;
        self.send_buf.clear();
        encode_frame(&mut self.send_buf, correlation_id, body)?;
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
        if let Err(source) = self.stream.write_all(&self.send_buf) {
            // Part of the frame may be on the wire; the stream cannot carry another.
            self.close(format!("write failed: {source}"));
            return Err(ClientError::Io {
                peer: self.peer,
                source,
            });
        }
        Ok(correlation_id)
    }

    /// Reads one frame, or `Ok(None)` once `deadline` has passed. With no deadline, blocks
    /// until a frame arrives or the connection fails (an open stream's wait).
    fn read_until(&mut self, deadline: Option<Instant>) -> Result<Option<OwnedFrame>, ClientError> {
        // Each turn reads bytes or sleeps in a read timeout, so this ends by the deadline (with
        // none, once a frame arrives or the connection fails).
        loop {
            let timeout = match deadline {
                None => None,
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(None);
                    }
                    // A zero timeout means "block forever" to the socket: never pass one.
                    Some(left.max(Duration::from_millis(1)))
                }
            };
            let mut source = TimedRead {
                stream: &self.stream,
                timeout: Some(timeout),
            };
            match self.reader.next_frame(&mut source) {
                Ok(frame) => return Ok(Some(frame)),
                Err(ReadError::Io(source)) if is_timeout(&source) => {}
                Err(ReadError::Io(source)) => return Err(self.fail_io(source)),
                Err(ReadError::Closed { mid_frame }) => {
                    let reason = if mid_frame {
                        "the broker closed the connection in the middle of a frame"
                    } else {
                        "the broker closed the connection"
                    };
                    self.close(reason);
                    return Err(ClientError::Disconnected {
                        peer: self.peer,
                        reason: reason.into(),
                    });
                }
                Err(ReadError::Decode(source)) => {
                    self.close(format!("bad frame: {source}"));
                    return Err(ClientError::Decode {
                        peer: self.peer,
                        source,
                    });
                }
            }
        }
    }

    /// Matches a frame to the request or stream it answers. A request leaves the table; a
    /// stream stays until `end_stream`.
    fn accept(&mut self, frame: OwnedFrame) -> Result<Response, ClientError> {
        let header = *frame.header();
        let expected = match self.streams.get(&header.correlation_id) {
            Some(&api) => Some(api),
            None => self
                .pending
                .remove(&header.correlation_id)
                .map(|pending| pending.api),
        };
        let reason = match expected {
            Some(api) if api as u16 == header.api_key => {
                return Ok(Response {
                    peer: self.peer,
                    frame,
                });
            }
            Some(api) => format!(
                "response to {:?} request {} carries api {}",
                api, header.correlation_id, header.api_key
            ),
            None => format!(
                "response with correlation id {}, which is not in flight",
                header.correlation_id
            ),
        };
        self.close(reason.clone());
        Err(ClientError::Protocol {
            peer: self.peer,
            reason,
        })
    }

    fn time_out(&mut self, correlation_id: u64) -> ClientError {
        let pending = self.pending.get(&correlation_id).copied();
        self.close(format!("request {correlation_id} timed out"));
        let (api, timeout) = pending.map_or((ApiKey::ApiVersions, Duration::ZERO), |p| {
            (p.api, p.timeout)
        });
        ClientError::Timeout {
            peer: self.peer,
            api,
            correlation_id,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        }
    }

    fn fail_io(&mut self, source: io::Error) -> ClientError {
        self.close(format!("i/o error: {source}"));
        ClientError::Io {
            peer: self.peer,
            source,
        }
    }
}

/// The socket as the frame reader reads it. The read timeout is set just before the first
/// read, so a frame the reader already holds (several small ones arrive per read, a stream's
/// deliveries among them) costs no system call.
struct TimedRead<'a> {
    stream: &'a TcpStream,
    /// The timeout still to set; `Some(None)` blocks with none.
    timeout: Option<Option<Duration>>,
}

impl io::Read for TimedRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(timeout) = self.timeout.take() {
            self.stream.set_read_timeout(timeout)?;
        }
        io::Read::read(&mut self.stream, buf)
    }
}

fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}
