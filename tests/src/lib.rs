//! Shared helpers for the integration tests in `tests/it/`: an in-process broker on the
//! `tiny` profile with OS-assigned ports and a temporary data directory, and a raw protocol
//! connection for tests that must speak bytes the client library never would.
#![forbid(unsafe_code)]
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use engine::broker::{self, BrokerHandle, BrokerOptions};
use engine::config::Profile;
use protocol::{Body, FrameBuf, FrameHeader, decode_frame, encode_frame};
use rkyv::api::high::{HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor::{Failure, Strategy};
use rkyv::ser::allocator::ArenaHandle;

/// A broker running in this process.
pub struct TestBroker {
    handle: Option<BrokerHandle>,
    dir: tempfile::TempDir,
    pub address: SocketAddr,
    pub shard_addresses: Vec<SocketAddr>,
}

impl TestBroker {
    /// Starts a broker on the `tiny` profile in a fresh temporary directory.
    pub fn start() -> TestBroker {
        let dir = tempfile::tempdir().expect("temp dir");
        let handle = start_in(dir.path());
        let (address, shard_addresses) = addresses(&handle);
        TestBroker {
            handle: Some(handle),
            dir,
            address,
            shard_addresses,
        }
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Graceful stop, then a new broker on the same data (on new ports).
    pub fn restart(&mut self) {
        self.stop();
        let handle = start_in(self.dir.path());
        (self.address, self.shard_addresses) = addresses(&handle);
        self.handle = Some(handle);
    }

    pub fn stop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.shutdown().expect("clean shutdown");
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.stop();
    }
}

fn start_in(dir: &Path) -> BrokerHandle {
    let options = BrokerOptions {
        data_dir: Some(dir.to_path_buf()),
        port: Some(0),
    };
    broker::start(Profile::tiny(), options).expect("broker starts")
}

fn addresses(handle: &BrokerHandle) -> (SocketAddr, Vec<SocketAddr>) {
    let shards = handle
        .shards
        .iter()
        .map(|s| SocketAddr::new(s.host.parse().expect("host"), s.port))
        .collect();
    (handle.address, shards)
}

/// A TCP relay on 127.0.0.1 to an address that can change: a bootstrap address that stays
/// the same while the broker behind it restarts on new ports ([`TestBroker::restart`]).
/// Clients find the shard ports through metadata, so only the bootstrap needs it. Each
/// accepted connection is piped to the target of the moment; one the target refuses is
/// closed at once, as a stopped broker's port would be.
pub struct Relay {
    pub address: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
    stop: Arc<AtomicBool>,
    accepting: Option<JoinHandle<()>>,
}

impl Relay {
    pub fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("relay bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let address = listener.local_addr().expect("relay address");
        let target = Arc::new(Mutex::new(target));
        let stop = Arc::new(AtomicBool::new(false));
        let accepting = {
            let (target, stop) = (Arc::clone(&target), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            let to = *target.lock().expect("target");
                            std::thread::spawn(move || relay(client, to));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
            })
        };
        Relay {
            address,
            target,
            stop,
            accepting: Some(accepting),
        }
    }

    /// Connections accepted from now on go to `target`; open ones stay where they are.
    pub fn retarget(&self, target: SocketAddr) {
        *self.target.lock().expect("target") = target;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(accepting) = self.accepting.take() {
            let _ = accepting.join();
        }
    }
}

/// Pipes `client` to `target` both ways until either side closes, then closes both.
fn relay(client: TcpStream, target: SocketAddr) {
    let Ok(upstream) = TcpStream::connect(target) else {
        return; // dropping `client` closes it
    };
    let (Ok(mut client_in), Ok(mut upstream_in)) = (client.try_clone(), upstream.try_clone())
    else {
        return;
    };
    let (mut client_out, mut upstream_out) = (client, upstream);
    let back = std::thread::spawn(move || {
        let _ = std::io::copy(&mut upstream_in, &mut client_out);
        let _ = client_out.shutdown(Shutdown::Both);
        let _ = upstream_in.shutdown(Shutdown::Both);
    });
    let _ = std::io::copy(&mut client_in, &mut upstream_out);
    let _ = upstream_out.shutdown(Shutdown::Both);
    let _ = client_in.shutdown(Shutdown::Both);
    let _ = back.join();
}

/// One TCP connection speaking raw frames, with blocking reads bounded by a timeout.
pub struct RawConn {
    pub stream: TcpStream,
    rx: Vec<u8>,
}

impl RawConn {
    pub fn connect(address: SocketAddr) -> RawConn {
        let stream = TcpStream::connect(address).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        RawConn {
            stream,
            rx: Vec::new(),
        }
    }

    pub fn send<T>(&mut self, correlation_id: u64, body: &T)
    where
        T: Body
            + for<'a, 'b> rkyv::Serialize<HighSerializer<&'b mut FrameBuf, ArenaHandle<'a>, Failure>>,
    {
        let mut frame = FrameBuf::new();
        encode_frame(&mut frame, correlation_id, body).expect("encode");
        self.stream.write_all(&frame).expect("write");
    }

    /// Reads one whole frame; `None` if the broker closed the connection or the read timed out.
    pub fn recv_frame(&mut self) -> Option<FrameBuf> {
        loop {
            if let Ok(Some(header)) = FrameHeader::peek(&self.rx) {
                let len = header.frame_len as usize;
                if self.rx.len() >= len {
                    let mut frame = FrameBuf::with_capacity(len);
                    frame.extend_from_slice(&self.rx[..len]);
                    self.rx.drain(..len);
                    return Some(frame);
                }
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.rx.extend_from_slice(&chunk[..n]),
                // A signal landed on this thread mid-read: not the broker's doing.
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
    }

    /// Reads one response and deserializes it as `T` (checking api and correlation id).
    pub fn recv<T>(&mut self, correlation_id: u64) -> T
    where
        T: Body,
        T::Archived: rkyv::Portable
            + for<'v> CheckBytes<HighValidator<'v, Failure>>
            + rkyv::Deserialize<T, Strategy<rkyv::de::Pool, Failure>>,
    {
        let frame = self.recv_frame().expect("a response");
        let (decoded, _) = decode_frame(&frame).expect("valid").expect("whole");
        assert_eq!(decoded.header.correlation_id, correlation_id);
        decoded.deserialize::<T>().expect("response body")
    }

    /// Whether the broker closed the connection (reads end) within the read timeout.
    pub fn closed_by_peer(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    return matches!(
                        error.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                    );
                }
            }
        }
    }
}
