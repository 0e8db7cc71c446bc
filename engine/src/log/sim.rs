//! A deterministic simulated disk: the test backend behind [`Storage`].
//!
//! The log's crash, power-loss, torn-write and fault-injection tests run the real log code over
//! [`SimStorage`]. It models one machine's disk with a volatile cache, and every decision it
//! makes (latency, crash outcomes) comes from one seeded RNG, so a seed plus a history replays
//! exactly.
//!
//! # Model
//!
//! - **Files** keep two images. The *durable* image is the contents and size as of the last
//!   completed `sync`. The *current* image is what reads see: durable plus every completed
//!   write and size change since. Completed writes since the last sync are kept in order as
//!   *pending* writes (position + bytes). `sync` makes durable = current. A file opened with
//!   `dsync` makes each completed write (and the size growth it caused) durable at once;
//!   `allocate` stays pending even on a `dsync` file, as `fallocate` ignores O_DSYNC.
//! - **Directories** keep two entry maps the same way: every creation, rename and removal
//!   changes the *current* entries at once and becomes durable only with `sync_dir` of that
//!   directory. Each directory is synced on its own: a rename between two directories needs
//!   both synced, and with only one synced a crash can leave the file under both names or
//!   under neither, which is harsher than a journaling file system.
//! - **Direct I/O**: positions and lengths of `write_at` and `read_at` must be multiples of
//!   [`BLOCK_BYTES`], or the call fails with `EINVAL`.
//! - **Capacity** (optional) bounds the sum of the current sizes of all files that are linked
//!   in the current namespace or open. A write or `allocate` that would exceed it fails with
//!   `ENOSPC` and changes nothing.
//! - **Latency and reordering**: every async operation yields to the executor 0..=
//!   [`YIELDS_MAX`] times (drawn from the RNG) before it takes effect, so concurrent operations
//!   complete in seed-dependent orders. Effects apply at completion: an in-flight write is not
//!   visible, and one still in flight at a crash never lands.
//! - **Crash** ([`SimStorage::crash`]) is power loss of the whole machine: see [`CrashMode`].
//! - **Faults** ([`SimStorage::inject`]) fail chosen calls with an errno. Calls are counted
//!   when they are made (the first poll of the future), in program order; the error is
//!   returned when the call completes. A failed `sync` drops the file's pending writes from
//!   writeback, as Linux may: they stay readable, but no later `sync` makes them durable,
//!   so reporting them durable after a second sync is a lie a crash shows.
//!
//! # Not modelled
//!
//! - Short reads and writes, silent read corruption other than [`SimStorage::flip_bit`],
//!   hole punching, hard links, permissions.
//! - Journal ordering between directories, and the implicit directory durability some file
//!   systems give to a new file on `fsync` (here only `sync_dir` makes an entry durable).
//! - Space used by directories and block rounding: capacity counts file bytes only.
//!
//! Owner: one shard (or one test thread). Every type here is `!Send`: the disk sits in an
//! `Rc<RefCell<..>>`, and no borrow is ever held across an `.await`.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Component, Path};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use super::storage::{BLOCK_BYTES, IoBuffer, OpenFlags, Storage, StorageFile};

/// Unit of atomicity of the simulated device: a torn write keeps or loses each 512-byte sector
/// on its own, and nothing larger is atomic (the assumption TigerBeetle makes).
pub const SECTOR_BYTES: usize = 512;

/// Most times one operation yields to the executor before it takes effect. Three is enough
/// for two tasks' operations to overtake each other in either order.
pub const YIELDS_MAX: u64 = 3;

/// Largest simulated file. Above the log's largest segment (1 GiB), and small enough that a
/// bogus position fails with `EFBIG` instead of aborting the test on a huge allocation.
pub const SIM_FILE_BYTES_MAX: u64 = 1 << 31;

const _: () = assert!(BLOCK_BYTES.is_multiple_of(SECTOR_BYTES));
const _: () = assert!(SIM_FILE_BYTES_MAX.is_multiple_of(BLOCK_BYTES as u64));

/// What happens to each pending (completed but unsynced) write at a crash.
///
/// In every mode a file's new image starts from its durable image; pending size growth is
/// dropped, so the bytes a persisted write put beyond the durable size are lost; directory
/// changes not covered by `sync_dir` are rolled back (created files vanish, renames revert,
/// removed files come back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Every pending write is lost.
    DropPending,
    /// Each pending write is persisted whole or lost, independently, with probability 1/2.
    PersistSome,
    /// Each pending write is lost, persisted whole or torn (each with probability 1/3); a torn
    /// write keeps, per [`SECTOR_BYTES`] sector and independently, the new or the old bytes.
    Torn,
}

/// An operation a [`Fault`] can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    Open,
    Write,
    Read,
    Sync,
    Allocate,
    Truncate,
    SyncDir,
    /// Matches when either the source or the target path contains `path_contains`.
    Rename,
    Remove,
    CreateDir,
    ListDir,
}

/// Fails chosen calls of one operation.
///
/// Of the calls of `op` whose path contains `path_contains` (every call, when `None`), the
/// first `skip` succeed, the next `times` fail with `errno`, and later ones succeed again.
/// File operations match the path the file was opened under; paths are matched in their
/// normalised form (`/a/b`, absolute, no trailing slash). A failed call changes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub op: Op,
    pub path_contains: Option<String>,
    /// An OS error code such as `libc::EIO` or `libc::ENOSPC`.
    pub errno: i32,
    pub skip: u32,
    pub times: u32,
}

/// Counts of completed, successful operations, plus injected failures and crashes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    pub opens: u64,
    pub writes: u64,
    pub write_bytes: u64,
    pub reads: u64,
    pub read_bytes: u64,
    pub syncs: u64,
    pub allocates: u64,
    pub dir_syncs: u64,
    pub dirs_created: u64,
    pub renames: u64,
    pub removes: u64,
    /// Calls failed by an injected [`Fault`].
    pub faults_fired: u64,
    pub crashes: u64,
}

/// A deterministic simulated disk: a cheap handle (clones share one disk) that outlives
/// crashes.
///
/// Owner: one thread; `!Send`. Invariant, per file: applying the pending writes in order to the
/// durable image, zero-extended to the current size, gives the current image.
#[derive(Clone)]
pub struct SimStorage {
    disk: Rc<RefCell<Disk>>,
}

/// A file open on a [`SimStorage`]. Valid until the next crash; after it, every call fails
/// with `EBADF`.
pub struct SimFile {
    disk: Rc<RefCell<Disk>>,
    ino: Ino,
    /// The disk's crash generation when this handle was opened.
    generation: u64,
    /// Normalised path the file was opened under; faults match against it.
    path: String,
    dsync: bool,
}

/// A zeroed I/O buffer. Its length is whatever was asked for; a length that is not a multiple
/// of [`BLOCK_BYTES`] makes `write_at` fail with `EINVAL`, as O_DIRECT would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimBuffer(Vec<u8>);

impl AsRef<[u8]> for SimBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl AsMut<[u8]> for SimBuffer {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

impl IoBuffer for SimBuffer {
    fn truncate(&mut self, len: usize) {
        self.0.truncate(len);
    }
}

impl SimStorage {
    /// An empty disk holding only the root directory `/`, no capacity limit, no faults.
    pub fn new(seed: u64) -> Self {
        let mut dirs = BTreeMap::new();
        dirs.insert(ROOT, DirNode::default());
        let disk = Disk {
            seed,
            rng: SplitMix64(seed),
            generation: 0,
            capacity_bytes: None,
            dirs,
            files: BTreeMap::new(),
            ino_next: ROOT + 1,
            faults: Vec::new(),
            stats: SimStats::default(),
        };
        Self {
            disk: Rc::new(RefCell::new(disk)),
        }
    }

    /// The seed this disk was made with; print it when a test fails.
    pub fn seed(&self) -> u64 {
        self.disk.borrow().seed
    }

    /// Power loss of the whole machine; see [`CrashMode`]. Every open [`SimFile`] becomes
    /// invalid, and operations in flight fail when they complete (`EBADF` for file handles,
    /// `ECANCELED` for namespace operations). Consumes randomness from the disk's RNG.
    pub fn crash(&self, mode: CrashMode) {
        self.disk.borrow_mut().crash(mode);
    }

    /// Sets the byte budget over all files' current sizes (`None`: unlimited). Lowering it
    /// below the bytes in use changes no file; later growth fails with `ENOSPC`.
    pub fn set_capacity(&self, capacity_bytes: Option<u64>) {
        self.disk.borrow_mut().capacity_bytes = capacity_bytes;
    }

    /// Adds a fault; faults apply in the order injected, and each counts every matching call.
    pub fn inject(&self, fault: Fault) {
        if fault.times > 0 {
            self.disk.borrow_mut().faults.push(fault);
        }
    }

    /// Removes every fault not yet used up.
    pub fn clear_faults(&self) {
        self.disk.borrow_mut().faults.clear();
    }

    /// Flips bit `bit_index` (bit `bit_index % 8` of byte `bit_index / 8`) of the file at
    /// `path` in both images and in any pending write covering it: media corruption that no
    /// crash outcome undoes. `ENOENT` if there is no such file, `EINVAL` beyond its size.
    pub fn flip_bit(&self, path: impl AsRef<Path>, bit_index: u64) -> io::Result<()> {
        let names = parse_path(path.as_ref())?;
        let mut disk = self.disk.borrow_mut();
        let ino = disk.file_at(&names)?;
        let file = disk
            .files
            .get_mut(&ino)
            .ok_or_else(|| errno(libc::ENOENT))?;
        let byte = usize::try_from(bit_index / 8).map_err(|_| errno(libc::EINVAL))?;
        file.flip_bit(byte, 1 << (bit_index % 8))
    }

    /// Counts of completed operations so far.
    pub fn stats(&self) -> SimStats {
        self.disk.borrow().stats
    }

    /// Whether a file or directory exists at `path` in the current namespace.
    pub fn exists(&self, path: impl AsRef<Path>) -> bool {
        let disk = self.disk.borrow();
        parse_path(path.as_ref()).is_ok_and(|names| matches!(disk.lookup(&names), Ok(Some(_))))
    }

    /// Current image (what reads see) of the file at `path`; `None` if there is no such file.
    pub fn file_image(&self, path: impl AsRef<Path>) -> Option<Vec<u8>> {
        self.with_file(path.as_ref(), |file| file.current.clone())
    }

    /// Durable image of the file at `path` (found in the current namespace): what a crash
    /// keeps at least. `None` if there is no such file.
    pub fn durable_image(&self, path: impl AsRef<Path>) -> Option<Vec<u8>> {
        self.with_file(path.as_ref(), |file| file.durable.clone())
    }

    /// Number of completed but unsynced writes to the file at `path`.
    pub fn pending_writes(&self, path: impl AsRef<Path>) -> Option<usize> {
        self.with_file(path.as_ref(), |file| file.pending.len())
    }

    fn with_file<T>(&self, path: &Path, read: impl FnOnce(&FileNode) -> T) -> Option<T> {
        let names = parse_path(path).ok()?;
        let disk = self.disk.borrow();
        let ino = disk.file_at(&names).ok()?;
        disk.files.get(&ino).map(read)
    }

    /// Starts a namespace operation: draws its latency and decides its fault.
    fn begin(&self, op: Op, paths: &[&str]) -> Ticket {
        self.disk.borrow_mut().begin(Some(op), paths)
    }
}

impl fmt::Debug for SimStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.disk.try_borrow() {
            Ok(disk) => f
                .debug_struct("SimStorage")
                .field("seed", &disk.seed)
                .field("generation", &disk.generation)
                .field("files", &disk.files.len())
                .field("dirs", &disk.dirs.len())
                .finish(),
            Err(_) => f.write_str("SimStorage { <in use> }"),
        }
    }
}

impl Storage for SimStorage {
    type File = SimFile;

    async fn open(&self, path: &Path, flags: OpenFlags) -> io::Result<SimFile> {
        let names = parse_path(path)?;
        let shown = show_path(&names);
        let ticket = self.begin(Op::Open, &[&shown]);
        ticket.latency().await;
        let mut disk = self.disk.borrow_mut();
        disk.finish(&ticket, libc::ECANCELED)?;
        let ino = disk.open(&names, flags)?;
        Ok(SimFile {
            disk: Rc::clone(&self.disk),
            ino,
            generation: disk.generation,
            path: shown,
            dsync: flags.dsync,
        })
    }

    async fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let names = parse_path(path)?;
        let ticket = self.begin(Op::CreateDir, &[&show_path(&names)]);
        ticket.latency().await;
        let mut disk = self.disk.borrow_mut();
        disk.finish(&ticket, libc::ECANCELED)?;
        disk.create_dir_all(&names)
    }

    async fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let names = parse_path(path)?;
        let ticket = self.begin(Op::SyncDir, &[&show_path(&names)]);
        ticket.latency().await;
        let mut disk = self.disk.borrow_mut();
        disk.finish(&ticket, libc::ECANCELED)?;
        disk.sync_dir(&names)
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let from_names = parse_path(from)?;
        let to_names = parse_path(to)?;
        let ticket = self.begin(
            Op::Rename,
            &[&show_path(&from_names), &show_path(&to_names)],
        );
        ticket.latency().await;
        let mut disk = self.disk.borrow_mut();
        disk.finish(&ticket, libc::ECANCELED)?;
        disk.rename(&from_names, &to_names)
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        let names = parse_path(path)?;
        let ticket = self.begin(Op::Remove, &[&show_path(&names)]);
        ticket.latency().await;
        let mut disk = self.disk.borrow_mut();
        disk.finish(&ticket, libc::ECANCELED)?;
        disk.remove(&names)
    }

    async fn sleep(&self, duration: Duration) {
        // No clock: a window becomes a few scheduling rounds, enough for other tasks to
        // append meanwhile, and deterministic.
        let rounds = 1 + (duration.as_micros() as u64).min(YIELDS_MAX * 4);
        Latency {
            yields_left: rounds,
        }
        .await;
    }

    async fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let names = parse_path(path)?;
        let ticket = self.begin(Op::ListDir, &[&show_path(&names)]);
        ticket.latency().await;
        let mut disk = self.disk.borrow_mut();
        disk.finish(&ticket, libc::ECANCELED)?;
        disk.list_dir(&names)
    }
}

impl SimFile {
    /// `EBADF` once a crash has happened since this handle was opened.
    fn check_live(&self) -> io::Result<()> {
        if self.disk.borrow().generation == self.generation {
            Ok(())
        } else {
            Err(errno(libc::EBADF))
        }
    }

    /// Starts an operation on this file: checks the handle, draws latency, decides the fault.
    fn begin(&self, op: Option<Op>) -> io::Result<Ticket> {
        self.check_live()?;
        Ok(self.disk.borrow_mut().begin(op, &[&self.path]))
    }
}

impl fmt::Debug for SimFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimFile")
            .field("path", &self.path)
            .field("ino", &self.ino)
            .field("generation", &self.generation)
            .field("dsync", &self.dsync)
            .finish()
    }
}

impl Drop for SimFile {
    fn drop(&mut self) {
        // try_borrow_mut: a drop must never panic, even if someone holds the disk.
        if let Ok(mut disk) = self.disk.try_borrow_mut()
            && disk.generation == self.generation
            && let Some(file) = disk.files.get_mut(&self.ino)
        {
            file.open_handles = file.open_handles.saturating_sub(1);
        }
    }
}

impl StorageFile for SimFile {
    type Buffer = SimBuffer;
    type ReadBuf = Vec<u8>;

    fn alloc_buffer(&self, len: usize) -> SimBuffer {
        SimBuffer(vec![0; len])
    }

    async fn write_at(&self, buf: Rc<SimBuffer>, pos: u64) -> io::Result<usize> {
        check_aligned(pos, buf.0.len())?;
        let ticket = self.begin(Some(Op::Write))?;
        ticket.latency().await;
        let mut disk = self.disk.borrow_mut();
        disk.finish(&ticket, libc::EBADF)?;
        disk.write(self.ino, pos, &buf.0, self.dsync)
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        check_aligned(pos, len)?;
        let ticket = self.begin(Some(Op::Read))?;
        ticket.latency().await;
        let mut disk = self.disk.borrow_mut();
        disk.finish(&ticket, libc::EBADF)?;
        disk.read(self.ino, pos, len)
    }

    async fn sync(&self) -> io::Result<()> {
        let ticket = self.begin(Some(Op::Sync))?;
        ticket.latency().await;
        let mut disk = self.disk.borrow_mut();
        if ticket.fault.is_some()
            && ticket.generation == disk.generation
            && let Ok(file) = disk.file_mut(self.ino)
        {
            // A failed sync leaves the file's writes readable but out of writeback: no
            // later sync makes them durable.
            file.pending.clear();
            file.writeback_lost = true;
        }
        disk.finish(&ticket, libc::EBADF)?;
        disk.file_mut(self.ino)?.sync();
        disk.stats.syncs += 1;
        Ok(())
    }

    async fn allocate(&self, len: u64) -> io::Result<()> {
        let ticket = self.begin(Some(Op::Allocate))?;
        ticket.latency().await;
        let mut disk = self.disk.borrow_mut();
        disk.finish(&ticket, libc::EBADF)?;
        disk.allocate(self.ino, len)
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        let ticket = self.begin(Some(Op::Truncate))?;
        ticket.latency().await;
        let mut disk = self.disk.borrow_mut();
        disk.finish(&ticket, libc::EBADF)?;
        let len = usize::try_from(len).map_err(|_| errno(libc::EFBIG))?;
        disk.file_mut(self.ino)?.truncate(len);
        Ok(())
    }

    async fn size(&self) -> io::Result<u64> {
        let ticket = self.begin(None)?;
        ticket.latency().await;
        let mut disk = self.disk.borrow_mut();
        disk.finish(&ticket, libc::EBADF)?;
        Ok(disk.file_mut(self.ino)?.current.len() as u64)
    }

    async fn close(self) -> io::Result<()> {
        let ticket = self.begin(None)?;
        ticket.latency().await;
        // The borrow ends with this tail expression; dropping `self` then releases the handle.
        self.disk.borrow_mut().finish(&ticket, libc::EBADF)
    }
}

/// `io::Error` carrying an OS error code, as the production backend returns.
fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// O_DIRECT rule: position and length are whole blocks.
fn check_aligned(pos: u64, len: usize) -> io::Result<()> {
    if pos.is_multiple_of(BLOCK_BYTES as u64) && len.is_multiple_of(BLOCK_BYTES) {
        Ok(())
    } else {
        Err(errno(libc::EINVAL))
    }
}

/// Splits a path into its names, relative to `/` (a relative path is taken from `/`).
/// `EINVAL` for `..`, prefixes and names that are not UTF-8.
fn parse_path(path: &Path) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for component in path.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(name) => {
                let name = name.to_str().ok_or_else(|| errno(libc::EINVAL))?;
                names.push(name.to_owned());
            }
            Component::ParentDir | Component::Prefix(_) => return Err(errno(libc::EINVAL)),
        }
    }
    Ok(names)
}

/// Normalised form of a path, as faults see it: `/` or `/a/b`.
fn show_path(names: &[String]) -> String {
    if names.is_empty() {
        return "/".to_owned();
    }
    let mut shown = String::new();
    for name in names {
        shown.push('/');
        shown.push_str(name);
    }
    shown
}

/// Inode number of a file or directory; the root directory is [`ROOT`].
type Ino = u64;
const ROOT: Ino = 0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    File(Ino),
    Dir(Ino),
}

impl Entry {
    fn ino(self) -> Ino {
        match self {
            Entry::File(ino) | Entry::Dir(ino) => ino,
        }
    }
}

/// A directory's entries: `current` is what lookups see, `durable` what a crash keeps.
#[derive(Debug, Default)]
struct DirNode {
    current: BTreeMap<String, Entry>,
    durable: BTreeMap<String, Entry>,
}

/// A completed write not yet covered by a sync. `pos + bytes.len() <= SIM_FILE_BYTES_MAX`.
#[derive(Debug)]
struct PendingWrite {
    pos: usize,
    bytes: Vec<u8>,
}

impl PendingWrite {
    fn end(&self) -> usize {
        self.pos.saturating_add(self.bytes.len())
    }
}

/// A file's contents. Invariant: `current` = `durable` cut to `cut_to` and zero-extended to
/// `current.len()`, with `pending` applied in order, unless a sync failed (`writeback_lost`):
/// the writes it dropped are in `current` only, for good.
#[derive(Debug, Default)]
struct FileNode {
    current: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<PendingWrite>,
    writeback_lost: bool,
    /// The shortest the file was cut to since the last sync: the sync makes that cut
    /// durable too, so bytes past it never come back when the file grows again.
    cut_to: Option<usize>,
    /// Open handles of this generation; an unlinked file keeps its space while it is open.
    open_handles: u32,
}

impl FileNode {
    /// Applies a write to the current image and records it as pending, or, for `dsync`,
    /// makes it durable at once. The caller checked capacity and `SIM_FILE_BYTES_MAX`.
    fn write(&mut self, pos: usize, bytes: &[u8], dsync: bool) {
        if bytes.is_empty() {
            return;
        }
        let end = pos.saturating_add(bytes.len());
        put(&mut self.current, pos, bytes);
        if dsync {
            put(&mut self.durable, pos, bytes);
            // An older pending write to these bytes must not overwrite them at a crash.
            self.forget_pending(pos, end);
        } else {
            self.pending.push(PendingWrite {
                pos,
                bytes: bytes.to_vec(),
            });
        }
    }

    /// Cuts the range `start..end` out of every pending write, keeping the order of the rest.
    fn forget_pending(&mut self, start: usize, end: usize) {
        let old = std::mem::take(&mut self.pending);
        for write in old {
            if write.end() <= start || write.pos >= end {
                self.pending.push(write);
                continue;
            }
            if let Some(head) = write.bytes.get(..start.saturating_sub(write.pos))
                && !head.is_empty()
            {
                self.pending.push(PendingWrite {
                    pos: write.pos,
                    bytes: head.to_vec(),
                });
            }
            if let Some(tail) = write.bytes.get(end.saturating_sub(write.pos)..)
                && !tail.is_empty()
            {
                self.pending.push(PendingWrite {
                    pos: end,
                    bytes: tail.to_vec(),
                });
            }
        }
    }

    /// Shrinks the current image; pending writes lose what lies past `len`. The durable
    /// image keeps its size (and bytes) until `sync`, as an unsynced ftruncate may be lost.
    fn truncate(&mut self, len: usize) {
        self.current.truncate(len);
        self.cut_to = Some(self.cut_to.map_or(len, |cut| cut.min(len)));
        for write in &mut self.pending {
            write.bytes.truncate(len.saturating_sub(write.pos));
        }
        self.pending.retain(|write| !write.bytes.is_empty());
    }

    /// fdatasync: everything in the current image becomes durable.
    fn sync(&mut self) {
        if let Some(cut) = self.cut_to.take() {
            self.durable.truncate(cut);
        }
        self.durable.resize(self.current.len(), 0);
        for write in self.pending.drain(..) {
            put(&mut self.durable, write.pos, &write.bytes);
        }
        debug_assert!(
            self.writeback_lost || self.durable == self.current,
            "sim: durable/current invariant"
        );
    }

    fn flip_bit(&mut self, byte: usize, mask: u8) -> io::Result<()> {
        let current = self
            .current
            .get_mut(byte)
            .ok_or_else(|| errno(libc::EINVAL))?;
        *current ^= mask;
        let mut covered = false;
        if let Some(durable) = self.durable.get_mut(byte) {
            *durable ^= mask;
            covered = true;
        }
        for write in &mut self.pending {
            if let Some(pending) = byte
                .checked_sub(write.pos)
                .and_then(|at| write.bytes.get_mut(at))
            {
                *pending ^= mask;
                covered = true;
            }
        }
        if !covered {
            // Beyond the durable size and under no pending write (zeros from growth): record
            // the corrupted block as pending so a sync carries it to the durable image.
            let start = byte - byte % BLOCK_BYTES;
            let end = start.saturating_add(BLOCK_BYTES).min(self.current.len());
            if let Some(block) = self.current.get(start..end) {
                self.pending.push(PendingWrite {
                    pos: start,
                    bytes: block.to_vec(),
                });
            }
        }
        Ok(())
    }
}

/// Copies `bytes` into `image` at `pos`, zero-extending `image` first if needed.
fn put(image: &mut Vec<u8>, pos: usize, bytes: &[u8]) {
    let end = pos.saturating_add(bytes.len());
    if image.len() < end {
        image.resize(end, 0);
    }
    if let Some(target) = image.get_mut(pos..end) {
        target.copy_from_slice(bytes);
    }
}

/// What a crash does to one pending write.
enum Fate {
    Lost,
    Whole,
    Torn,
}

/// Applies one pending write to a post-crash image per `mode`. Bytes at or beyond the image's
/// (durable) size are dropped with the size growth.
fn settle(rng: &mut SplitMix64, mode: CrashMode, image: &mut [u8], write: &PendingWrite) {
    let fate = match mode {
        CrashMode::DropPending => Fate::Lost,
        CrashMode::PersistSome => match rng.below(2) {
            0 => Fate::Lost,
            _ => Fate::Whole,
        },
        CrashMode::Torn => match rng.below(3) {
            0 => Fate::Lost,
            1 => Fate::Whole,
            _ => Fate::Torn,
        },
    };
    let Some(target) = image.get_mut(write.pos..) else {
        return; // entirely beyond the durable size
    };
    let kept = target.len().min(write.bytes.len());
    let (Some(target), Some(source)) = (target.get_mut(..kept), write.bytes.get(..kept)) else {
        return;
    };
    match fate {
        Fate::Lost => {}
        Fate::Whole => target.copy_from_slice(source),
        Fate::Torn => {
            for (old, new) in target
                .chunks_mut(SECTOR_BYTES)
                .zip(source.chunks(SECTOR_BYTES))
            {
                if rng.below(2) == 1 {
                    old.copy_from_slice(new);
                }
            }
        }
    }
}

/// The latency and fault decision of one call, made when it is called.
struct Ticket {
    generation: u64,
    yields: u64,
    fault: Option<i32>,
}

impl Ticket {
    fn latency(&self) -> Latency {
        Latency {
            yields_left: self.yields,
        }
    }
}

/// Yields to the executor `yields_left` times: wakes itself and returns `Pending` once per
/// yield, so any executor (glommio, `block_on`, a join) polls other work in between.
struct Latency {
    yields_left: u64,
}

impl Future for Latency {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.yields_left == 0 {
            return Poll::Ready(());
        }
        self.yields_left -= 1;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, seedable, and good enough to pick outcomes.
#[derive(Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`); the modulo bias is below 2^-60 for the small `n` used.
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// The whole simulated machine: namespace, file contents, RNG, faults, counters.
#[derive(Debug)]
struct Disk {
    seed: u64,
    rng: SplitMix64,
    /// Bumped by every crash; handles and in-flight calls from older generations fail.
    generation: u64,
    capacity_bytes: Option<u64>,
    /// Directory inodes, `ROOT` always among them.
    dirs: BTreeMap<Ino, DirNode>,
    files: BTreeMap<Ino, FileNode>,
    ino_next: Ino,
    faults: Vec<Fault>,
    stats: SimStats,
}

impl Disk {
    fn begin(&mut self, op: Option<Op>, paths: &[&str]) -> Ticket {
        let yields = self.rng.below(YIELDS_MAX + 1);
        let fault = op.and_then(|op| self.match_fault(op, paths));
        Ticket {
            generation: self.generation,
            yields,
            fault,
        }
    }

    /// Counts this call against every matching fault; returns the errno of the first that
    /// fires.
    fn match_fault(&mut self, op: Op, paths: &[&str]) -> Option<i32> {
        let mut fired = None;
        for fault in &mut self.faults {
            if fault.op != op {
                continue;
            }
            if let Some(needle) = &fault.path_contains
                && !paths.iter().any(|path| path.contains(needle.as_str()))
            {
                continue;
            }
            if fault.skip > 0 {
                fault.skip -= 1;
            } else if fault.times > 0 {
                fault.times -= 1;
                fired = fired.or(Some(fault.errno));
            }
        }
        self.faults.retain(|fault| fault.times > 0);
        fired
    }

    /// Completion of a call: fails it if a crash came in between (with `stale`) or if a fault
    /// was decided for it.
    fn finish(&mut self, ticket: &Ticket, stale: i32) -> io::Result<()> {
        if ticket.generation != self.generation {
            return Err(errno(stale));
        }
        if let Some(code) = ticket.fault {
            self.stats.faults_fired += 1;
            return Err(errno(code));
        }
        Ok(())
    }

    fn new_ino(&mut self) -> Ino {
        let ino = self.ino_next;
        self.ino_next += 1;
        ino
    }

    fn dir(&self, ino: Ino) -> io::Result<&DirNode> {
        self.dirs.get(&ino).ok_or_else(|| errno(libc::ENOENT))
    }

    fn dir_mut(&mut self, ino: Ino) -> io::Result<&mut DirNode> {
        self.dirs.get_mut(&ino).ok_or_else(|| errno(libc::ENOENT))
    }

    fn file_mut(&mut self, ino: Ino) -> io::Result<&mut FileNode> {
        self.files.get_mut(&ino).ok_or_else(|| errno(libc::EBADF))
    }

    /// The directory at `names` in the current namespace, with the inodes of every directory
    /// on the way (root first, itself last).
    fn dir_chain(&self, names: &[String]) -> io::Result<Vec<Ino>> {
        let mut chain = vec![ROOT];
        let mut ino = ROOT;
        for name in names {
            match self.dir(ino)?.current.get(name) {
                Some(Entry::Dir(next)) => ino = *next,
                Some(Entry::File(_)) => return Err(errno(libc::ENOTDIR)),
                None => return Err(errno(libc::ENOENT)),
            }
            chain.push(ino);
        }
        Ok(chain)
    }

    fn dir_at(&self, names: &[String]) -> io::Result<Ino> {
        Ok(self.dir_chain(names)?.last().copied().unwrap_or(ROOT))
    }

    /// The entry at `names`: errors if a parent is missing, `None` if only the last is.
    fn lookup(&self, names: &[String]) -> io::Result<Option<Entry>> {
        let Some((name, parent)) = names.split_last() else {
            return Ok(Some(Entry::Dir(ROOT)));
        };
        let parent = self.dir_at(parent)?;
        Ok(self.dir(parent)?.current.get(name).copied())
    }

    fn file_at(&self, names: &[String]) -> io::Result<Ino> {
        match self.lookup(names)? {
            Some(Entry::File(ino)) => Ok(ino),
            Some(Entry::Dir(_)) => Err(errno(libc::EISDIR)),
            None => Err(errno(libc::ENOENT)),
        }
    }

    fn open(&mut self, names: &[String], flags: OpenFlags) -> io::Result<Ino> {
        let Some((name, parent_names)) = names.split_last() else {
            return Err(errno(libc::EISDIR));
        };
        let parent = self.dir_at(parent_names)?;
        let ino = match self.dir(parent)?.current.get(name).copied() {
            Some(Entry::File(ino)) => ino,
            Some(Entry::Dir(_)) => return Err(errno(libc::EISDIR)),
            None if flags.create => {
                let ino = self.new_ino();
                self.files.insert(ino, FileNode::default());
                self.dir_mut(parent)?
                    .current
                    .insert(name.clone(), Entry::File(ino));
                ino
            }
            None => return Err(errno(libc::ENOENT)),
        };
        let file = self.file_mut(ino)?;
        file.open_handles = file.open_handles.saturating_add(1);
        self.stats.opens += 1;
        Ok(ino)
    }

    fn create_dir_all(&mut self, names: &[String]) -> io::Result<()> {
        let mut ino = ROOT;
        for (index, name) in names.iter().enumerate() {
            ino = match self.dir(ino)?.current.get(name).copied() {
                Some(Entry::Dir(next)) => next,
                Some(Entry::File(_)) if index + 1 == names.len() => {
                    return Err(errno(libc::EEXIST));
                }
                Some(Entry::File(_)) => return Err(errno(libc::ENOTDIR)),
                None => {
                    let next = self.new_ino();
                    self.dirs.insert(next, DirNode::default());
                    self.dir_mut(ino)?
                        .current
                        .insert(name.clone(), Entry::Dir(next));
                    self.stats.dirs_created += 1;
                    next
                }
            };
        }
        Ok(())
    }

    fn sync_dir(&mut self, names: &[String]) -> io::Result<()> {
        let ino = match self.lookup(names)? {
            Some(Entry::Dir(ino)) => ino,
            Some(Entry::File(_)) => return Err(errno(libc::ENOTDIR)),
            None => return Err(errno(libc::ENOENT)),
        };
        let dir = self.dir_mut(ino)?;
        dir.durable = dir.current.clone();
        self.stats.dir_syncs += 1;
        Ok(())
    }

    /// POSIX rename(2): replaces the target; a directory may replace only an empty directory.
    fn rename(&mut self, from: &[String], to: &[String]) -> io::Result<()> {
        let (Some((from_name, from_parent)), Some((to_name, to_parent))) =
            (from.split_last(), to.split_last())
        else {
            return Err(errno(libc::EBUSY)); // renaming `/` or onto `/`
        };
        let from_dir = self.dir_at(from_parent)?;
        let source = self
            .dir(from_dir)?
            .current
            .get(from_name)
            .copied()
            .ok_or_else(|| errno(libc::ENOENT))?;
        let to_chain = self.dir_chain(to_parent)?;
        let to_dir = to_chain.last().copied().unwrap_or(ROOT);
        if from_dir == to_dir && from_name == to_name {
            return Ok(());
        }
        if let Entry::Dir(moved) = source
            && to_chain.contains(&moved)
        {
            return Err(errno(libc::EINVAL)); // a directory into its own subtree
        }
        match (source, self.dir(to_dir)?.current.get(to_name).copied()) {
            (_, Some(target)) if target.ino() == source.ino() => return Ok(()),
            (Entry::File(_), Some(Entry::Dir(_))) => return Err(errno(libc::EISDIR)),
            (Entry::Dir(_), Some(Entry::File(_))) => return Err(errno(libc::ENOTDIR)),
            (Entry::Dir(_), Some(Entry::Dir(target))) if !self.dir(target)?.current.is_empty() => {
                return Err(errno(libc::ENOTEMPTY));
            }
            _ => {}
        }
        self.dir_mut(from_dir)?.current.remove(from_name);
        self.dir_mut(to_dir)?
            .current
            .insert(to_name.clone(), source);
        self.stats.renames += 1;
        Ok(())
    }

    /// unlink(2), like the production backend: files only, `EISDIR` for a directory.
    fn remove(&mut self, names: &[String]) -> io::Result<()> {
        let Some((name, parent_names)) = names.split_last() else {
            return Err(errno(libc::EISDIR));
        };
        let parent = self.dir_at(parent_names)?;
        match self.dir(parent)?.current.get(name) {
            Some(Entry::File(_)) => {}
            Some(Entry::Dir(_)) => return Err(errno(libc::EISDIR)),
            None => return Err(errno(libc::ENOENT)),
        }
        self.dir_mut(parent)?.current.remove(name);
        self.stats.removes += 1;
        Ok(())
    }

    fn list_dir(&mut self, names: &[String]) -> io::Result<Vec<String>> {
        match self.lookup(names)? {
            // BTreeMap keys are sorted bytewise, as `Vec<String>::sort` would sort them.
            Some(Entry::Dir(ino)) => Ok(self.dir(ino)?.current.keys().cloned().collect()),
            Some(Entry::File(_)) => Err(errno(libc::ENOTDIR)),
            None => Err(errno(libc::ENOENT)),
        }
    }

    /// Sum of the current sizes of files linked in the current namespace or open.
    fn usage_bytes(&self) -> u64 {
        let mut live: BTreeSet<Ino> = self
            .files
            .iter()
            .filter(|(_, file)| file.open_handles > 0)
            .map(|(ino, _)| *ino)
            .collect();
        for dir in self.dirs.values() {
            for entry in dir.current.values() {
                if let Entry::File(ino) = entry {
                    live.insert(*ino);
                }
            }
        }
        live.iter()
            .filter_map(|ino| self.files.get(ino))
            .map(|file| file.current.len() as u64)
            .sum()
    }

    /// Fails with `ENOSPC` if growing a file by `growth_bytes` would exceed the capacity.
    fn check_capacity(&self, growth_bytes: u64) -> io::Result<()> {
        match self.capacity_bytes {
            Some(capacity) if growth_bytes > 0 => {
                if self.usage_bytes().saturating_add(growth_bytes) > capacity {
                    Err(errno(libc::ENOSPC))
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    fn write(&mut self, ino: Ino, pos: u64, bytes: &[u8], dsync: bool) -> io::Result<usize> {
        let len = bytes.len() as u64;
        let end = pos
            .checked_add(len)
            .filter(|end| *end <= SIM_FILE_BYTES_MAX)
            .ok_or_else(|| errno(libc::EFBIG))?;
        let pos = usize::try_from(pos).map_err(|_| errno(libc::EFBIG))?;
        let size = self.file_mut(ino)?.current.len() as u64;
        if !bytes.is_empty() {
            // An empty write never extends the file, wherever it points.
            self.check_capacity(end.saturating_sub(size))?;
        }
        self.file_mut(ino)?.write(pos, bytes, dsync);
        self.stats.writes += 1;
        self.stats.write_bytes += len;
        Ok(bytes.len())
    }

    fn read(&mut self, ino: Ino, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        let file = self.file_mut(ino)?;
        let size = file.current.len();
        let start = usize::try_from(pos).unwrap_or(usize::MAX).min(size);
        let end = start.saturating_add(len).min(size);
        let bytes = file.current.get(start..end).unwrap_or_default().to_vec();
        self.stats.reads += 1;
        self.stats.read_bytes += bytes.len() as u64;
        Ok(bytes)
    }

    /// fallocate without KEEP_SIZE: grows the file to `len` zero bytes, never shrinks it.
    fn allocate(&mut self, ino: Ino, len: u64) -> io::Result<()> {
        if len > SIM_FILE_BYTES_MAX {
            return Err(errno(libc::EFBIG));
        }
        let new_len = usize::try_from(len).map_err(|_| errno(libc::EFBIG))?;
        let size = self.file_mut(ino)?.current.len() as u64;
        self.check_capacity(len.saturating_sub(size))?;
        let file = self.file_mut(ino)?;
        if file.current.len() < new_len {
            file.current.resize(new_len, 0);
        }
        self.stats.allocates += 1;
        Ok(())
    }

    fn crash(&mut self, mode: CrashMode) {
        self.generation += 1;
        self.stats.crashes += 1;
        let Disk { rng, files, .. } = self;
        for file in files.values_mut() {
            let mut image = std::mem::take(&mut file.durable);
            for write in std::mem::take(&mut file.pending) {
                settle(rng, mode, &mut image, &write);
            }
            file.current = image.clone();
            file.durable = image;
            file.open_handles = 0;
            // The page cache is gone: nothing is pending, cut or lost to writeback now.
            file.cut_to = None;
            file.writeback_lost = false;
        }
        for dir in self.dirs.values_mut() {
            dir.current = dir.durable.clone();
        }
        self.collect_unreachable();
    }

    /// Drops every inode no durable entry leads to from `/` (after a crash, current =
    /// durable). The walk keeps a visited set, so it ends even if partial directory syncs left
    /// a directory under two names.
    fn collect_unreachable(&mut self) {
        let mut reachable = BTreeSet::from([ROOT]);
        let mut todo = vec![ROOT];
        while let Some(ino) = todo.pop() {
            let Some(dir) = self.dirs.get(&ino) else {
                continue;
            };
            for entry in dir.current.values() {
                if reachable.insert(entry.ino())
                    && let Entry::Dir(child) = entry
                {
                    todo.push(*child);
                }
            }
        }
        self.dirs.retain(|ino, _| reachable.contains(ino));
        self.files.retain(|ino, _| reachable.contains(ino));
        for dir in self.dirs.values_mut() {
            // Entries whose inode is gone cannot exist after the walk, but a lookup through
            // one would only fail with ENOENT anyway.
            dir.current
                .retain(|_, entry| reachable.contains(&entry.ino()));
            dir.durable
                .retain(|_, entry| reachable.contains(&entry.ino()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::{block_on, poll_once, zip};

    const CREATE: OpenFlags = OpenFlags {
        create: true,
        dsync: false,
    };
    const CREATE_DSYNC: OpenFlags = OpenFlags {
        create: true,
        dsync: true,
    };
    const EXISTING: OpenFlags = OpenFlags {
        create: false,
        dsync: false,
    };
    const MODES: [CrashMode; 3] = [
        CrashMode::DropPending,
        CrashMode::PersistSome,
        CrashMode::Torn,
    ];
    const SEEDS: u64 = 64;

    fn p(path: &str) -> &Path {
        Path::new(path)
    }

    fn filled(file: &SimFile, fill: u8, blocks: usize) -> Rc<SimBuffer> {
        let mut buf = file.alloc_buffer(blocks * BLOCK_BYTES);
        buf.as_mut().fill(fill);
        Rc::new(buf)
    }

    fn code<T: fmt::Debug>(result: io::Result<T>) -> i32 {
        result.unwrap_err().raw_os_error().unwrap()
    }

    /// A disk where `/d` and the empty file `/d/f` are durable in the namespace.
    async fn setup(seed: u64) -> (SimStorage, SimFile) {
        let sim = SimStorage::new(seed);
        sim.create_dir_all(p("/d")).await.unwrap();
        sim.sync_dir(p("/")).await.unwrap();
        let file = sim.open(p("/d/f"), CREATE).await.unwrap();
        sim.sync_dir(p("/d")).await.unwrap();
        (sim, file)
    }

    fn sectors(image: &[u8]) -> Vec<u8> {
        image
            .chunks(SECTOR_BYTES)
            .map(|sector| {
                let first = sector[0];
                assert!(sector.iter().all(|b| *b == first), "sector not uniform");
                first
            })
            .collect()
    }

    #[test]
    fn synced_data_survives_every_crash_mode() {
        for mode in MODES {
            for seed in 0..SEEDS {
                block_on(async {
                    let (sim, file) = setup(seed).await;
                    file.write_at(filled(&file, 0xAA, 2), 0).await.unwrap();
                    file.sync().await.unwrap();
                    // Unsynced extension: dropped in every mode.
                    file.write_at(filled(&file, 0xBB, 1), 2 * BLOCK_BYTES as u64)
                        .await
                        .unwrap();
                    sim.crash(mode);
                    assert_eq!(
                        sim.file_image("/d/f").unwrap(),
                        vec![0xAA; 2 * BLOCK_BYTES],
                        "mode {mode:?} seed {seed}"
                    );
                    let file = sim.open(p("/d/f"), EXISTING).await.unwrap();
                    let read = file.read_at(0, 4 * BLOCK_BYTES).await.unwrap();
                    assert_eq!(read, vec![0xAA; 2 * BLOCK_BYTES]);
                });
            }
        }
    }

    #[test]
    fn unsynced_write_is_lost_with_drop_pending() {
        block_on(async {
            let (sim, file) = setup(1).await;
            file.write_at(filled(&file, 0xAA, 1), 0).await.unwrap();
            file.sync().await.unwrap();
            file.write_at(filled(&file, 0xBB, 1), 0).await.unwrap();
            // Reads see the unsynced write; the durable image does not hold it.
            assert_eq!(
                file.read_at(0, BLOCK_BYTES).await.unwrap(),
                vec![0xBB; BLOCK_BYTES]
            );
            assert_eq!(sim.durable_image("/d/f").unwrap(), vec![0xAA; BLOCK_BYTES]);
            assert_eq!(sim.pending_writes("/d/f"), Some(1));
            sim.crash(CrashMode::DropPending);
            assert_eq!(sim.file_image("/d/f").unwrap(), vec![0xAA; BLOCK_BYTES]);
            assert_eq!(sim.pending_writes("/d/f"), Some(0));
        });
    }

    #[test]
    fn persist_some_keeps_some_writes_and_loses_others_across_seeds() {
        let (mut kept, mut lost) = (0, 0);
        for seed in 0..SEEDS {
            block_on(async {
                let (sim, file) = setup(seed).await;
                file.write_at(filled(&file, 0xAA, 2), 0).await.unwrap();
                file.sync().await.unwrap();
                file.write_at(filled(&file, 0xBB, 2), 0).await.unwrap();
                sim.crash(CrashMode::PersistSome);
                let image = sim.file_image("/d/f").unwrap();
                if image == vec![0xBB; 2 * BLOCK_BYTES] {
                    kept += 1;
                } else {
                    assert_eq!(image, vec![0xAA; 2 * BLOCK_BYTES], "seed {seed}: not whole");
                    lost += 1;
                }
            });
        }
        assert!(kept > 0 && lost > 0, "kept {kept} lost {lost}");
    }

    #[test]
    fn torn_crash_leaves_each_sector_old_or_new() {
        let (mut old, mut new, mut mixed) = (0, 0, 0);
        for seed in 0..SEEDS {
            block_on(async {
                let (sim, file) = setup(seed).await;
                file.write_at(filled(&file, 0xAA, 2), 0).await.unwrap();
                file.sync().await.unwrap();
                file.write_at(filled(&file, 0xBB, 2), 0).await.unwrap();
                sim.crash(CrashMode::Torn);
                let image = sim.file_image("/d/f").unwrap();
                assert_eq!(image.len(), 2 * BLOCK_BYTES);
                let sectors = sectors(&image);
                assert!(
                    sectors.iter().all(|s| *s == 0xAA || *s == 0xBB),
                    "seed {seed}"
                );
                if sectors.iter().all(|s| *s == 0xAA) {
                    old += 1;
                } else if sectors.iter().all(|s| *s == 0xBB) {
                    new += 1;
                } else {
                    mixed += 1;
                }
            });
        }
        assert!(
            old > 0 && new > 0 && mixed > 0,
            "old {old} new {new} mixed {mixed}"
        );
    }

    #[test]
    fn unsynced_size_growth_is_dropped() {
        for mode in MODES {
            let mut block1_new = 0;
            for seed in 0..SEEDS {
                block_on(async {
                    let (sim, file) = setup(seed).await;
                    file.allocate(2 * BLOCK_BYTES as u64).await.unwrap();
                    file.write_at(filled(&file, 0xAA, 1), 0).await.unwrap();
                    file.sync().await.unwrap();
                    file.allocate(8 * BLOCK_BYTES as u64).await.unwrap();
                    // Straddles the durable end: block 1 inside it, block 2 beyond.
                    file.write_at(filled(&file, 0xBB, 2), BLOCK_BYTES as u64)
                        .await
                        .unwrap();
                    assert_eq!(file.size().await.unwrap(), 8 * BLOCK_BYTES as u64);
                    sim.crash(mode);
                    let image = sim.file_image("/d/f").unwrap();
                    assert_eq!(image.len(), 2 * BLOCK_BYTES, "mode {mode:?} seed {seed}");
                    assert_eq!(image[..BLOCK_BYTES], [0xAA; BLOCK_BYTES]);
                    // Block 1 is inside the durable size: old zeros or new bytes, per mode.
                    let block1 = sectors(&image[BLOCK_BYTES..]);
                    assert!(block1.iter().all(|s| *s == 0 || *s == 0xBB));
                    if block1.contains(&0xBB) {
                        block1_new += 1;
                    }
                });
            }
            if mode == CrashMode::DropPending {
                assert_eq!(block1_new, 0);
            } else {
                assert!(
                    block1_new > 0,
                    "mode {mode:?}: the part inside the size never kept"
                );
            }
        }
    }

    #[test]
    fn created_file_vanishes_after_crash_unless_dir_synced() {
        block_on(async {
            let (sim, _file) = setup(3).await;
            let lost = sim.open(p("/d/lost"), CREATE).await.unwrap();
            lost.write_at(filled(&lost, 0xAA, 1), 0).await.unwrap();
            lost.sync().await.unwrap(); // data synced, entry not
            let kept = sim.open(p("/d/kept"), CREATE).await.unwrap();
            kept.write_at(filled(&kept, 0xBB, 1), 0).await.unwrap();
            kept.sync().await.unwrap();
            sim.sync_dir(p("/d")).await.unwrap();
            let late = sim.open(p("/d/late"), CREATE).await.unwrap();
            drop(late);
            sim.crash(CrashMode::PersistSome);
            assert!(!sim.exists("/d/late"));
            assert_eq!(sim.file_image("/d/kept").unwrap(), vec![0xBB; BLOCK_BYTES]);
            assert_eq!(
                sim.list_dir(p("/d")).await.unwrap(),
                vec!["f".to_owned(), "kept".to_owned(), "lost".to_owned()]
            );
        });
        // The same history, but `lost` is never covered by a dir sync.
        block_on(async {
            let (sim, _file) = setup(3).await;
            let lost = sim.open(p("/d/lost"), CREATE).await.unwrap();
            lost.write_at(filled(&lost, 0xAA, 1), 0).await.unwrap();
            lost.sync().await.unwrap();
            sim.crash(CrashMode::PersistSome);
            assert!(!sim.exists("/d/lost"));
            assert_eq!(code(sim.open(p("/d/lost"), EXISTING).await), libc::ENOENT);
            assert_eq!(sim.list_dir(p("/d")).await.unwrap(), vec!["f".to_owned()]);
        });
    }

    #[test]
    fn new_directory_needs_dir_sync_of_its_parent() {
        block_on(async {
            let sim = SimStorage::new(5);
            sim.create_dir_all(p("/a/b")).await.unwrap();
            sim.create_dir_all(p("/c")).await.unwrap();
            sim.sync_dir(p("/a")).await.unwrap(); // `b` in `a` is durable, `a` in `/` is not
            let file = sim.open(p("/a/b/f"), CREATE).await.unwrap();
            file.sync().await.unwrap();
            sim.sync_dir(p("/a/b")).await.unwrap();
            assert!(sim.exists("/a/b/f"));
            sim.crash(CrashMode::Torn);
            assert!(!sim.exists("/a"));
            assert!(!sim.exists("/c"));
            assert_eq!(sim.list_dir(p("/")).await.unwrap(), Vec::<String>::new());

            sim.create_dir_all(p("/a/b")).await.unwrap();
            sim.sync_dir(p("/")).await.unwrap();
            sim.crash(CrashMode::Torn);
            assert!(sim.exists("/a"));
            assert!(!sim.exists("/a/b"));
        });
    }

    #[test]
    fn rename_without_dir_sync_reverts_after_crash() {
        block_on(async {
            let (sim, file) = setup(11).await;
            file.write_at(filled(&file, 0xAA, 1), 0).await.unwrap();
            file.sync().await.unwrap();
            sim.rename(p("/d/f"), p("/d/g")).await.unwrap();
            assert!(!sim.exists("/d/f"));
            assert_eq!(sim.file_image("/d/g").unwrap(), vec![0xAA; BLOCK_BYTES]);
            sim.crash(CrashMode::PersistSome);
            assert!(!sim.exists("/d/g"));
            assert_eq!(sim.file_image("/d/f").unwrap(), vec![0xAA; BLOCK_BYTES]);
        });
    }

    #[test]
    fn dir_synced_rename_replaces_the_target_and_survives_crash() {
        block_on(async {
            let (sim, file) = setup(12).await;
            file.write_at(filled(&file, 0xAA, 1), 0).await.unwrap();
            file.sync().await.unwrap();
            let target = sim.open(p("/d/g"), CREATE).await.unwrap();
            target.write_at(filled(&target, 0xBB, 1), 0).await.unwrap();
            target.sync().await.unwrap();
            sim.sync_dir(p("/d")).await.unwrap();
            sim.rename(p("/d/f"), p("/d/g")).await.unwrap();
            sim.sync_dir(p("/d")).await.unwrap();
            sim.crash(CrashMode::DropPending);
            assert!(!sim.exists("/d/f"));
            assert_eq!(sim.file_image("/d/g").unwrap(), vec![0xAA; BLOCK_BYTES]);
        });
    }

    #[test]
    fn remove_without_dir_sync_comes_back_after_crash() {
        block_on(async {
            let (sim, file) = setup(13).await;
            file.write_at(filled(&file, 0xAA, 1), 0).await.unwrap();
            file.sync().await.unwrap();
            drop(file);
            sim.remove(p("/d/f")).await.unwrap();
            assert!(!sim.exists("/d/f"));
            sim.crash(CrashMode::DropPending);
            assert_eq!(sim.file_image("/d/f").unwrap(), vec![0xAA; BLOCK_BYTES]);

            sim.remove(p("/d/f")).await.unwrap();
            sim.sync_dir(p("/d")).await.unwrap();
            sim.crash(CrashMode::DropPending);
            assert!(!sim.exists("/d/f"));
        });
    }

    #[test]
    fn namespace_misuse_returns_errors() {
        block_on(async {
            let (sim, _file) = setup(14).await;
            assert_eq!(
                code(sim.open(p("/d/missing"), EXISTING).await),
                libc::ENOENT
            );
            assert_eq!(code(sim.open(p("/nodir/f"), CREATE).await), libc::ENOENT);
            assert_eq!(code(sim.open(p("/d/f/x"), CREATE).await), libc::ENOTDIR);
            assert_eq!(code(sim.open(p("/d"), CREATE).await), libc::EISDIR);
            assert_eq!(code(sim.open(p("/"), CREATE).await), libc::EISDIR);
            assert_eq!(code(sim.open(p("/d/../f"), CREATE).await), libc::EINVAL);
            assert_eq!(code(sim.remove(p("/d")).await), libc::EISDIR);
            assert_eq!(code(sim.remove(p("/d/missing")).await), libc::ENOENT);
            assert_eq!(
                code(sim.rename(p("/d/missing"), p("/d/x")).await),
                libc::ENOENT
            );
            assert_eq!(
                code(sim.rename(p("/d/f"), p("/nodir/x")).await),
                libc::ENOENT
            );
            assert_eq!(code(sim.rename(p("/d"), p("/d/sub")).await), libc::EINVAL);
            assert_eq!(code(sim.rename(p("/"), p("/x")).await), libc::EBUSY);
            assert_eq!(code(sim.list_dir(p("/d/f")).await), libc::ENOTDIR);
            assert_eq!(code(sim.list_dir(p("/nodir")).await), libc::ENOENT);
            assert_eq!(code(sim.sync_dir(p("/d/f")).await), libc::ENOTDIR);
            assert_eq!(code(sim.create_dir_all(p("/d/f")).await), libc::EEXIST);
            assert_eq!(code(sim.create_dir_all(p("/d/f/x")).await), libc::ENOTDIR);
            assert_eq!(code(sim.flip_bit("/d/f", 0)), libc::EINVAL); // empty file
            assert_eq!(code(sim.flip_bit("/d/missing", 0)), libc::ENOENT);
            // Nothing above changed the namespace.
            assert_eq!(sim.list_dir(p("/")).await.unwrap(), vec!["d".to_owned()]);
            assert_eq!(sim.list_dir(p("/d")).await.unwrap(), vec!["f".to_owned()]);
        });
    }

    #[test]
    fn list_dir_is_sorted_and_shows_files_and_subdirs() {
        block_on(async {
            let sim = SimStorage::new(15);
            sim.create_dir_all(p("/p/sub")).await.unwrap();
            for name in ["00002.log", "00001.log", "B", "a"] {
                sim.open(&Path::new("/p").join(name), CREATE).await.unwrap();
            }
            assert_eq!(
                sim.list_dir(p("/p")).await.unwrap(),
                vec!["00001.log", "00002.log", "B", "a", "sub"]
            );
            assert_eq!(sim.list_dir(p("/")).await.unwrap(), vec!["p"]);
            // A relative path is taken from `/`.
            assert_eq!(
                sim.list_dir(p("p/sub")).await.unwrap(),
                Vec::<String>::new()
            );
        });
    }

    #[test]
    fn misaligned_io_is_einval() {
        block_on(async {
            let (sim, file) = setup(16).await;
            let block = filled(&file, 0xAA, 1);
            assert_eq!(
                code(file.write_at(Rc::clone(&block), 512).await),
                libc::EINVAL
            );
            let mut short = file.alloc_buffer(BLOCK_BYTES);
            short.truncate(100);
            assert_eq!(short.as_ref().len(), 100);
            assert_eq!(code(file.write_at(Rc::new(short), 0).await), libc::EINVAL);
            file.write_at(block, 0).await.unwrap();
            assert_eq!(code(file.read_at(100, BLOCK_BYTES).await), libc::EINVAL);
            assert_eq!(code(file.read_at(0, 10).await), libc::EINVAL);
            assert_eq!(sim.file_image("/d/f").unwrap(), vec![0xAA; BLOCK_BYTES]);
            let stats = sim.stats();
            assert_eq!((stats.writes, stats.reads), (1, 0));
        });
    }

    #[test]
    fn read_at_end_of_file_is_short() {
        block_on(async {
            let (_sim, file) = setup(17).await;
            file.write_at(filled(&file, 0xAA, 2), 0).await.unwrap();
            let read = file
                .read_at(BLOCK_BYTES as u64, 4 * BLOCK_BYTES)
                .await
                .unwrap();
            assert_eq!(read, vec![0xAA; BLOCK_BYTES]);
            assert!(
                file.read_at(8 * BLOCK_BYTES as u64, BLOCK_BYTES)
                    .await
                    .unwrap()
                    .is_empty()
            );
        });
    }

    #[test]
    fn write_past_the_end_zero_fills_the_gap() {
        block_on(async {
            let (sim, file) = setup(18).await;
            file.write_at(filled(&file, 0xAA, 1), 2 * BLOCK_BYTES as u64)
                .await
                .unwrap();
            assert_eq!(file.size().await.unwrap(), 3 * BLOCK_BYTES as u64);
            let mut expected = vec![0; 2 * BLOCK_BYTES];
            expected.extend_from_slice(&[0xAA; BLOCK_BYTES]);
            assert_eq!(sim.file_image("/d/f").unwrap(), expected);
            file.sync().await.unwrap();
            assert_eq!(sim.durable_image("/d/f").unwrap(), expected);
            file.allocate(BLOCK_BYTES as u64).await.unwrap(); // never shrinks
            assert_eq!(file.size().await.unwrap(), 3 * BLOCK_BYTES as u64);
            assert_eq!(
                code(file.write_at(filled(&file, 0, 1), SIM_FILE_BYTES_MAX).await),
                libc::EFBIG
            );
            assert_eq!(code(file.allocate(u64::MAX).await), libc::EFBIG);
        });
    }

    #[test]
    fn capacity_gives_enospc_and_recovers_when_raised() {
        block_on(async {
            let (sim, file) = setup(19).await;
            sim.set_capacity(Some(2 * BLOCK_BYTES as u64));
            file.write_at(filled(&file, 0xAA, 2), 0).await.unwrap();
            let grow = file
                .write_at(filled(&file, 0xBB, 1), 2 * BLOCK_BYTES as u64)
                .await;
            assert_eq!(code(grow), libc::ENOSPC);
            assert_eq!(
                code(file.allocate(3 * BLOCK_BYTES as u64).await),
                libc::ENOSPC
            );
            let other = sim.open(p("/d/other"), CREATE).await.unwrap();
            assert_eq!(
                code(other.write_at(filled(&other, 1, 1), 0).await),
                libc::ENOSPC
            );
            assert_eq!(sim.file_image("/d/f").unwrap(), vec![0xAA; 2 * BLOCK_BYTES]);
            assert_eq!(sim.file_image("/d/other").unwrap(), Vec::<u8>::new());
            // Overwriting in place needs no space.
            file.write_at(filled(&file, 0xCC, 1), 0).await.unwrap();

            sim.set_capacity(Some(4 * BLOCK_BYTES as u64));
            file.write_at(filled(&file, 0xBB, 1), 2 * BLOCK_BYTES as u64)
                .await
                .unwrap();
            file.allocate(4 * BLOCK_BYTES as u64).await.unwrap();
            assert_eq!(file.size().await.unwrap(), 4 * BLOCK_BYTES as u64);

            // Removing a closed file frees its space; an open one keeps it until closed.
            file.close().await.unwrap();
            sim.remove(p("/d/f")).await.unwrap();
            other.write_at(filled(&other, 1, 4), 0).await.unwrap();
        });
    }

    #[test]
    fn removed_file_keeps_its_space_while_open() {
        block_on(async {
            let (sim, file) = setup(20).await;
            sim.set_capacity(Some(2 * BLOCK_BYTES as u64));
            file.write_at(filled(&file, 0xAA, 2), 0).await.unwrap();
            sim.remove(p("/d/f")).await.unwrap();
            assert_eq!(
                file.read_at(0, BLOCK_BYTES).await.unwrap(),
                vec![0xAA; BLOCK_BYTES]
            );
            let other = sim.open(p("/d/other"), CREATE).await.unwrap();
            assert_eq!(
                code(other.write_at(filled(&other, 1, 1), 0).await),
                libc::ENOSPC
            );
            file.close().await.unwrap();
            other.write_at(filled(&other, 1, 2), 0).await.unwrap();
        });
    }

    #[test]
    fn injected_faults_hit_exactly_the_configured_calls() {
        block_on(async {
            let (sim, file) = setup(21).await;
            let other = sim.open(p("/d/other"), CREATE).await.unwrap();
            sim.inject(Fault {
                op: Op::Write,
                path_contains: Some("/d/f".to_owned()),
                errno: libc::EIO,
                skip: 2,
                times: 2,
            });
            let mut outcomes = Vec::new();
            for (index, fill) in [1u8, 2, 3, 4, 5].into_iter().enumerate() {
                let result = file.write_at(filled(&file, fill, 1), 0).await;
                outcomes.push(result.map_err(|e| e.raw_os_error()));
                // A write to a path the fault does not match is never failed or counted.
                other.write_at(filled(&other, fill, 1), 0).await.unwrap();
                if index == 3 {
                    // The failed writes changed nothing.
                    assert_eq!(sim.file_image("/d/f").unwrap(), vec![2; BLOCK_BYTES]);
                }
            }
            assert_eq!(
                outcomes,
                vec![
                    Ok(BLOCK_BYTES),
                    Ok(BLOCK_BYTES),
                    Err(Some(libc::EIO)),
                    Err(Some(libc::EIO)),
                    Ok(BLOCK_BYTES)
                ]
            );
            assert_eq!(sim.file_image("/d/f").unwrap(), vec![5; BLOCK_BYTES]);
            assert_eq!(sim.stats().faults_fired, 2);
            assert_eq!(sim.stats().writes, 3 + 5);

            // Other operations, and clear_faults.
            sim.inject(Fault {
                op: Op::Open,
                path_contains: None,
                errno: libc::EMFILE,
                skip: 0,
                times: 1,
            });
            sim.inject(Fault {
                op: Op::Rename,
                path_contains: Some("target".to_owned()),
                errno: libc::EIO,
                skip: 0,
                times: 5,
            });
            assert_eq!(code(sim.open(p("/d/f"), EXISTING).await), libc::EMFILE);
            sim.open(p("/d/f"), EXISTING).await.unwrap();
            assert_eq!(
                code(sim.rename(p("/d/other"), p("/d/target")).await),
                libc::EIO
            );
            assert!(sim.exists("/d/other"));
            sim.clear_faults();
            sim.rename(p("/d/other"), p("/d/target")).await.unwrap();
            assert_eq!(sim.stats().faults_fired, 4);
        });
    }

    #[test]
    fn a_failed_sync_drops_writes_from_writeback_for_good() {
        block_on(async {
            let (sim, file) = setup(22).await;
            sim.inject(Fault {
                op: Op::Sync,
                path_contains: Some("f".to_owned()),
                errno: libc::EIO,
                skip: 0,
                times: 1,
            });
            file.write_at(filled(&file, 0xAA, 1), 0).await.unwrap();
            assert_eq!(code(file.sync().await), libc::EIO);
            assert_eq!(sim.pending_writes("/d/f"), Some(0));
            assert_eq!(sim.durable_image("/d/f").unwrap(), Vec::<u8>::new());
            assert_eq!(sim.file_image("/d/f").unwrap(), vec![0xAA; BLOCK_BYTES]);
            assert_eq!(sim.stats().syncs, 0);
            // A retry succeeds and still makes nothing of it durable.
            file.sync().await.unwrap();
            sim.crash(CrashMode::PersistSome);
            assert_eq!(sim.file_image("/d/f").unwrap(), vec![0; BLOCK_BYTES]);
        });
    }

    #[test]
    fn stale_handle_after_crash_errors_instead_of_panicking() {
        block_on(async {
            let (sim, file) = setup(23).await;
            file.write_at(filled(&file, 0xAA, 1), 0).await.unwrap();
            file.sync().await.unwrap();
            sim.crash(CrashMode::Torn);
            assert_eq!(
                code(file.write_at(filled(&file, 0xBB, 1), 0).await),
                libc::EBADF
            );
            assert_eq!(code(file.read_at(0, BLOCK_BYTES).await), libc::EBADF);
            assert_eq!(code(file.sync().await), libc::EBADF);
            assert_eq!(code(file.allocate(BLOCK_BYTES as u64).await), libc::EBADF);
            assert_eq!(code(file.size().await), libc::EBADF);
            assert_eq!(code(file.close().await), libc::EBADF);
            let file = sim.open(p("/d/f"), EXISTING).await.unwrap();
            assert_eq!(
                file.read_at(0, BLOCK_BYTES).await.unwrap(),
                vec![0xAA; BLOCK_BYTES]
            );
            // A handle from before the crash dropped after it does not disturb the new one.
            sim.crash(CrashMode::Torn);
            drop(file);
            sim.open(p("/d/f"), EXISTING).await.unwrap();
        });
    }

    #[test]
    fn in_flight_write_is_invisible_and_dies_with_a_crash() {
        let (mut delayed, mut crashed) = (0, 0);
        for seed in 0..SEEDS {
            block_on(async {
                let (sim, file) = setup(seed).await;
                let mut write = Box::pin(file.write_at(filled(&file, 0xAA, 1), 0));
                if poll_once(&mut write).await.is_some() {
                    return; // completed without yielding
                }
                delayed += 1;
                assert_eq!(sim.file_image("/d/f").unwrap(), Vec::<u8>::new());
                if seed % 2 == 0 {
                    assert_eq!(write.await.unwrap(), BLOCK_BYTES);
                    assert_eq!(sim.file_image("/d/f").unwrap(), vec![0xAA; BLOCK_BYTES]);
                } else {
                    crashed += 1;
                    sim.crash(CrashMode::PersistSome);
                    assert_eq!(code(write.await), libc::EBADF);
                    assert_eq!(sim.file_image("/d/f").unwrap(), Vec::<u8>::new());
                    let file = sim.open(p("/d/f"), EXISTING).await.unwrap();
                    assert_eq!(file.size().await.unwrap(), 0);
                }
            });
        }
        assert!(
            delayed > 0 && crashed > 0,
            "delayed {delayed} crashed {crashed}"
        );
    }

    #[test]
    fn in_flight_namespace_operation_fails_after_a_crash() {
        for seed in 0..SEEDS {
            let completed = block_on(async {
                let (sim, _file) = setup(seed).await;
                let mut create = Box::pin(sim.open(p("/d/new"), CREATE));
                if poll_once(&mut create).await.is_some() {
                    return false;
                }
                sim.crash(CrashMode::DropPending);
                assert_eq!(code(create.await), libc::ECANCELED);
                assert!(!sim.exists("/d/new"));
                true
            });
            if completed {
                return;
            }
        }
        panic!("no seed delayed the open");
    }

    #[test]
    fn concurrent_writes_complete_in_seed_dependent_order() {
        let (mut first_wins, mut second_wins) = (0, 0);
        for seed in 0..SEEDS {
            block_on(async {
                let (sim, file) = setup(seed).await;
                let (a, b) = zip(
                    file.write_at(filled(&file, 0xAA, 1), 0),
                    file.write_at(filled(&file, 0xBB, 1), 0),
                )
                .await;
                a.unwrap();
                b.unwrap();
                match sim.file_image("/d/f").unwrap()[0] {
                    0xAA => second_wins += 1, // `b` completed first
                    0xBB => first_wins += 1,
                    other => panic!("unexpected byte {other}"),
                }
            });
        }
        assert!(
            first_wins > 0 && second_wins > 0,
            "{first_wins} {second_wins}"
        );
    }

    /// A history with concurrency, syncs, a torn crash and recovery; returns everything
    /// observable about the final disk.
    fn scenario(seed: u64) -> (Vec<Option<Vec<u8>>>, Vec<String>, SimStats) {
        block_on(async {
            let (sim, file) = setup(seed).await;
            let other = sim.open(p("/d/g"), CREATE).await.unwrap();
            for round in 0..4u8 {
                let pos = u64::from(round % 3) * BLOCK_BYTES as u64;
                let (a, b) = zip(
                    file.write_at(filled(&file, round, 2), pos),
                    other.write_at(filled(&other, round + 100, 1), pos),
                )
                .await;
                a.unwrap();
                b.unwrap();
                if round == 1 {
                    let (a, b) = zip(file.sync(), sim.sync_dir(p("/d"))).await;
                    a.unwrap();
                    b.unwrap();
                }
            }
            sim.rename(p("/d/g"), p("/d/h")).await.unwrap();
            sim.crash(CrashMode::Torn);
            let images = ["/d/f", "/d/g", "/d/h"]
                .iter()
                .map(|path| sim.file_image(path))
                .collect();
            (images, sim.list_dir(p("/d")).await.unwrap(), sim.stats())
        })
    }

    #[test]
    fn same_seed_and_operations_give_identical_disks() {
        for seed in [0, 1, 42, u64::MAX] {
            assert_eq!(scenario(seed), scenario(seed), "seed {seed}");
        }
        // And the seed matters: some pair of seeds ends differently.
        let first = scenario(0).0;
        assert!((1..16).any(|seed| scenario(seed).0 != first));
    }

    #[test]
    fn dsync_writes_are_durable_without_sync() {
        block_on(async {
            let sim = SimStorage::new(24);
            sim.create_dir_all(p("/d")).await.unwrap();
            sim.sync_dir(p("/")).await.unwrap();
            let file = sim.open(p("/d/f"), CREATE_DSYNC).await.unwrap();
            sim.sync_dir(p("/d")).await.unwrap();
            file.write_at(filled(&file, 0xAA, 2), 0).await.unwrap();
            assert_eq!(
                sim.durable_image("/d/f").unwrap(),
                vec![0xAA; 2 * BLOCK_BYTES]
            );
            assert_eq!(sim.pending_writes("/d/f"), Some(0));
            sim.crash(CrashMode::DropPending);
            assert_eq!(sim.file_image("/d/f").unwrap(), vec![0xAA; 2 * BLOCK_BYTES]);
            assert_eq!(sim.stats().syncs, 0);
        });
    }

    #[test]
    fn dsync_write_is_not_undone_by_an_older_pending_write() {
        for seed in 0..SEEDS {
            block_on(async {
                let (sim, plain) = setup(seed).await;
                let dsync = sim.open(p("/d/f"), CREATE_DSYNC).await.unwrap();
                plain.allocate(3 * BLOCK_BYTES as u64).await.unwrap();
                plain.sync().await.unwrap();
                plain.write_at(filled(&plain, 0xAA, 3), 0).await.unwrap();
                dsync
                    .write_at(filled(&dsync, 0xBB, 1), BLOCK_BYTES as u64)
                    .await
                    .unwrap();
                sim.crash(CrashMode::Torn);
                let image = sim.file_image("/d/f").unwrap();
                assert_eq!(
                    image[BLOCK_BYTES..2 * BLOCK_BYTES],
                    [0xBB; BLOCK_BYTES],
                    "{seed}"
                );
                for sector in sectors(&image[..BLOCK_BYTES])
                    .into_iter()
                    .chain(sectors(&image[2 * BLOCK_BYTES..]))
                {
                    assert!(sector == 0 || sector == 0xAA, "seed {seed}");
                }
            });
        }
    }

    #[test]
    fn flip_bit_corrupts_both_images_and_survives_crash() {
        block_on(async {
            let (sim, file) = setup(25).await;
            file.write_at(filled(&file, 0, 1), 0).await.unwrap();
            file.sync().await.unwrap();
            file.write_at(filled(&file, 0, 1), BLOCK_BYTES as u64)
                .await
                .unwrap();
            sim.flip_bit("/d/f", 8 * 10 + 3).unwrap(); // byte 10, bit 3: durable
            let late = (BLOCK_BYTES as u64 + 20) * 8; // byte 4116, bit 0: pending only
            sim.flip_bit("/d/f", late).unwrap();
            let current = sim.file_image("/d/f").unwrap();
            assert_eq!(current[10], 0b1000);
            assert_eq!(current[BLOCK_BYTES + 20], 1);
            assert_eq!(sim.durable_image("/d/f").unwrap()[10], 0b1000);
            assert_eq!(file.read_at(0, BLOCK_BYTES).await.unwrap()[10], 0b1000);
            file.sync().await.unwrap();
            sim.crash(CrashMode::DropPending);
            let image = sim.file_image("/d/f").unwrap();
            assert_eq!((image[10], image[BLOCK_BYTES + 20]), (0b1000, 1));
            assert_eq!(image.iter().filter(|b| **b != 0).count(), 2);
        });
    }

    #[test]
    fn flip_bit_in_unwritten_growth_reaches_the_durable_image_on_sync() {
        block_on(async {
            let (sim, file) = setup(26).await;
            file.allocate(2 * BLOCK_BYTES as u64).await.unwrap();
            sim.flip_bit("/d/f", (BLOCK_BYTES as u64 + 5) * 8).unwrap();
            file.sync().await.unwrap();
            assert_eq!(sim.durable_image("/d/f").unwrap()[BLOCK_BYTES + 5], 1);
        });
    }

    #[test]
    fn stats_count_completed_operations() {
        block_on(async {
            let (sim, file) = setup(27).await;
            file.write_at(filled(&file, 1, 2), 0).await.unwrap();
            file.write_at(filled(&file, 1, 1), 0).await.unwrap();
            file.read_at(0, 4 * BLOCK_BYTES).await.unwrap();
            file.sync().await.unwrap();
            file.allocate(4 * BLOCK_BYTES as u64).await.unwrap();
            sim.rename(p("/d/f"), p("/d/g")).await.unwrap();
            sim.remove(p("/d/g")).await.unwrap();
            sim.crash(CrashMode::DropPending);
            assert_eq!(
                sim.stats(),
                SimStats {
                    opens: 1,
                    writes: 2,
                    write_bytes: 3 * BLOCK_BYTES as u64,
                    reads: 1,
                    read_bytes: 2 * BLOCK_BYTES as u64,
                    syncs: 1,
                    allocates: 1,
                    dir_syncs: 2,
                    dirs_created: 1,
                    renames: 1,
                    removes: 1,
                    faults_fired: 0,
                    crashes: 1,
                }
            );
        });
    }
}
