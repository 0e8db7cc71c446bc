//! The I/O seam of the log: every byte the log reads or writes goes through [`Storage`].
//!
//! Three backends implement it: [`DmaStorage`] (glommio `DmaFile`: O_DIRECT over io_uring, the
//! production path), `log::memory::MemStorage` (a shard's in-memory files, for memory topics)
//! and `log::sim::SimStorage` (a deterministic simulated disk that separates pending from
//! durable writes, crashes, tears writes and injects errors, for tests). [`ShardStorage`] is
//! the first or the second, as a topic's storage says: the type a broker's replicas run on.
//!
//! Contract every backend keeps, and the log relies on:
//! - Positions and lengths of `write_at` and `read_at` are multiples of [`BLOCK_BYTES`].
//! - A completed `write_at` survives a process crash; it survives power loss only once a
//!   later `sync` on that file completed (or at once, for files opened with `dsync`).
//! - `allocate` sets the file size (never shrinks it) and `truncate` shrinks it; the new size
//!   survives power loss only after `sync`. A new file or rename survives power loss only
//!   after `sync_dir` on its directory.
//! - Errors are `io::Error`s carrying the OS error code (EIO, ENOSPC, ...).
//!
//! Owner: one shard. Every type here is `!Send`: a log and its files never leave their core.

use std::io;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use super::memory::{MemFile, MemStorage};

/// Alignment of every direct-I/O position and length. The devices here report 512-byte
/// logical blocks but 4 KiB physical sectors; writing whole 4 KiB blocks avoids the device's
/// read-modify-write.
pub const BLOCK_BYTES: usize = 4096;

/// How a file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpenFlags {
    /// Create the file if it does not exist.
    pub create: bool,
    /// Open with O_DSYNC: every completed write is durable, no `sync` needed.
    pub dsync: bool,
}

/// A buffer for direct I/O: aligned, a multiple of [`BLOCK_BYTES`] long.
pub trait IoBuffer: AsRef<[u8]> + AsMut<[u8]> {
    /// Shortens the buffer to `len` bytes (a multiple of `BLOCK_BYTES`); cannot grow it.
    fn truncate(&mut self, len: usize);
}

/// A file opened for direct I/O. `'static`, like its buffers: the log's own tasks hold them
/// while they run its writes and syncs.
#[allow(async_fn_in_trait)] // shard-local futures: never Send, by design
pub trait StorageFile: 'static {
    type Buffer: IoBuffer + 'static;
    type ReadBuf: Deref<Target = [u8]>;

    /// An aligned buffer of `len` bytes (a multiple of `BLOCK_BYTES`). Its contents are
    /// unspecified: callers zero what they write (the log pads only the last block, so a
    /// group commit never pays for clearing a whole buffer).
    fn alloc_buffer(&self, len: usize) -> Self::Buffer;

    /// Writes the whole buffer at `pos`. Returns the bytes written; fewer than the buffer's
    /// length is a short write, which the log treats as a failure.
    async fn write_at(&self, buf: Rc<Self::Buffer>, pos: u64) -> io::Result<usize>;

    /// Reads up to `len` bytes at `pos`; fewer only at the end of the file.
    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Self::ReadBuf>;

    /// fdatasync: every write completed before this call is durable once it returns Ok.
    async fn sync(&self) -> io::Result<()>;

    /// Grows the file to `len` bytes of allocated space (fallocate without KEEP_SIZE).
    async fn allocate(&self, len: u64) -> io::Result<()>;

    async fn size(&self) -> io::Result<u64>;

    /// Shrinks the file to `len` bytes (ftruncate); like a size change, durable after `sync`.
    async fn truncate(&self, len: u64) -> io::Result<()>;

    async fn close(self) -> io::Result<()>;
}

/// A file system as the log sees it.
#[allow(async_fn_in_trait)] // shard-local futures: never Send, by design
pub trait Storage: 'static {
    type File: StorageFile;

    async fn open(&self, path: &Path, flags: OpenFlags) -> io::Result<Self::File>;

    /// Creates `path` and any missing parents. New directories become durable only after
    /// `sync_dir` of their parent.
    async fn create_dir_all(&self, path: &Path) -> io::Result<()>;

    /// fsync of a directory: makes its entries (creations, renames, removals) durable.
    async fn sync_dir(&self, path: &Path) -> io::Result<()>;

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;

    async fn remove(&self, path: &Path) -> io::Result<()>;

    /// Names of the entries of a directory, sorted.
    async fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;

    /// Waits about `duration` without blocking the shard: the group-commit window. The
    /// simulated disk has no clock; it yields to the executor instead.
    async fn sleep(&self, duration: Duration);
}

/// `write_at` of the whole buffer: a short write is an error too, as the log treats it.
pub(crate) async fn write_whole<F: StorageFile>(
    file: &F,
    buf: Rc<F::Buffer>,
    pos: u64,
) -> io::Result<()> {
    let len = (*buf).as_ref().len();
    let written = file.write_at(buf, pos).await?;
    if written != len {
        return Err(io::Error::other(format!("short write {written} of {len}")));
    }
    Ok(())
}

/// Rounds `len` up to a whole number of blocks.
pub const fn block_ceil(len: u64) -> u64 {
    len.next_multiple_of(BLOCK_BYTES as u64)
}

/// Rounds `pos` down to the start of its block.
pub const fn block_floor(pos: u64) -> u64 {
    pos - pos % BLOCK_BYTES as u64
}

/// The production backend: glommio `DmaFile`s, O_DIRECT over the shard's io_uring.
///
/// Must be used inside a glommio executor. Per PLATFORM §1.5, each shard opens a non-empty
/// probe file read-write in each data directory before any other DMA file ([`probe_dir`]),
/// or glommio 0.9 may misdetect polled I/O and slow file-extending writes 35x.
#[derive(Debug, Clone, Copy, Default)]
pub struct DmaStorage;

impl IoBuffer for glommio::io::DmaBuffer {
    fn truncate(&mut self, len: usize) {
        self.trim_to_size(len);
    }
}

/// Wraps glommio's `ReadResult` so the seam does not leak glommio types to the log's users.
pub struct DmaRead(glommio::io::ReadResult);

impl Deref for DmaRead {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl StorageFile for glommio::io::DmaFile {
    type Buffer = glommio::io::DmaBuffer;
    type ReadBuf = DmaRead;

    fn alloc_buffer(&self, len: usize) -> glommio::io::DmaBuffer {
        self.alloc_dma_buffer(len)
    }

    async fn write_at(&self, buf: Rc<glommio::io::DmaBuffer>, pos: u64) -> io::Result<usize> {
        Ok(self.write_rc_at(buf, pos).await?)
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<DmaRead> {
        Ok(DmaRead(self.read_at_aligned(pos, len).await?))
    }

    async fn sync(&self) -> io::Result<()> {
        Ok(self.fdatasync().await?)
    }

    async fn allocate(&self, len: u64) -> io::Result<()> {
        Ok(self.pre_allocate(len, false).await?)
    }

    async fn size(&self) -> io::Result<u64> {
        Ok(self.file_size().await?)
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        Ok(glommio::io::DmaFile::truncate(self, len).await?)
    }

    async fn close(self) -> io::Result<()> {
        Ok(glommio::io::DmaFile::close(self).await?)
    }
}

impl Storage for DmaStorage {
    type File = glommio::io::DmaFile;

    async fn open(&self, path: &Path, flags: OpenFlags) -> io::Result<glommio::io::DmaFile> {
        let mut options = glommio::io::OpenOptions::new();
        // Read-write even for files only written: a write-only open breaks glommio's iopoll
        // probe (PLATFORM §1.5).
        options.read(true).write(true).create(flags.create);
        if flags.dsync {
            options.custom_flags(libc::O_DSYNC);
        }
        Ok(options.dma_open(path).await?)
    }

    async fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        // glommio has no mkdir; directories are made at start-up and segment creation is
        // the only other caller, so a blocking mkdir of an existing path is a cheap stat.
        std::fs::create_dir_all(path)
    }

    async fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let dir = glommio::io::Directory::open(path).await?;
        let synced = dir.sync().await;
        let closed = dir.close().await;
        synced?;
        Ok(closed?)
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        Ok(glommio::io::rename(from, to).await?)
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        Ok(glommio::io::remove(path).await?)
    }

    async fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        // Directory listing has no io_uring opcode; it runs at open and recovery only.
        let mut names = Vec::new();
        for entry in std::fs::read_dir(path)? {
            if let Some(name) = entry?.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    async fn sleep(&self, duration: Duration) {
        glommio::timer::sleep(duration).await;
    }
}

/// Name of the probe file [`probe_dir`] leaves in each data directory.
pub const PROBE_FILE: &str = ".dma-probe";

/// Opens a non-empty probe file read-write with direct I/O in `dir`, so glommio 0.9 decides
/// correctly whether the device supports polled I/O (PLATFORM §1.5). Call it on each shard,
/// for each data directory, before opening any other DMA file there.
pub async fn probe_dir(dir: &Path) -> io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(PROBE_FILE);
    // A plain buffered write: the probe must be non-empty before its first direct open.
    std::fs::write(&path, [0u8; BLOCK_BYTES])?;
    let file = DmaStorage
        .open(
            &path,
            OpenFlags {
                create: false,
                dsync: false,
            },
        )
        .await?;
    let read = StorageFile::read_at(&file, 0, BLOCK_BYTES).await;
    StorageFile::close(file).await?;
    read?;
    Ok(path)
}

/// What a shard's replica logs run on: the disk (O_DIRECT) or the shard's memory, as each
/// topic's storage says. One type, so leaders and followers of either kind live side by side.
#[derive(Debug, Clone)]
pub enum ShardStorage {
    Disk(DmaStorage),
    Memory(MemStorage),
}

/// A file of a [`ShardStorage`].
pub enum ShardFile {
    Disk(glommio::io::DmaFile),
    Memory(MemFile),
}

/// What a read of a [`ShardFile`] returns.
pub enum ShardRead {
    Disk(DmaRead),
    Memory(Vec<u8>),
}

impl Deref for ShardRead {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ShardRead::Disk(read) => read,
            ShardRead::Memory(read) => read,
        }
    }
}

impl StorageFile for ShardFile {
    type Buffer = glommio::io::DmaBuffer;
    type ReadBuf = ShardRead;

    fn alloc_buffer(&self, len: usize) -> glommio::io::DmaBuffer {
        match self {
            ShardFile::Disk(file) => StorageFile::alloc_buffer(file, len),
            ShardFile::Memory(file) => file.alloc_buffer(len),
        }
    }

    async fn write_at(&self, buf: Rc<glommio::io::DmaBuffer>, pos: u64) -> io::Result<usize> {
        match self {
            ShardFile::Disk(file) => StorageFile::write_at(file, buf, pos).await,
            ShardFile::Memory(file) => file.write_at(buf, pos).await,
        }
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<ShardRead> {
        match self {
            ShardFile::Disk(file) => StorageFile::read_at(file, pos, len)
                .await
                .map(ShardRead::Disk),
            ShardFile::Memory(file) => file.read_at(pos, len).await.map(ShardRead::Memory),
        }
    }

    async fn sync(&self) -> io::Result<()> {
        match self {
            ShardFile::Disk(file) => StorageFile::sync(file).await,
            ShardFile::Memory(file) => file.sync().await,
        }
    }

    async fn allocate(&self, len: u64) -> io::Result<()> {
        match self {
            ShardFile::Disk(file) => StorageFile::allocate(file, len).await,
            ShardFile::Memory(file) => file.allocate(len).await,
        }
    }

    async fn size(&self) -> io::Result<u64> {
        match self {
            ShardFile::Disk(file) => StorageFile::size(file).await,
            ShardFile::Memory(file) => file.size().await,
        }
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        match self {
            ShardFile::Disk(file) => StorageFile::truncate(file, len).await,
            ShardFile::Memory(file) => file.truncate(len).await,
        }
    }

    async fn close(self) -> io::Result<()> {
        match self {
            ShardFile::Disk(file) => StorageFile::close(file).await,
            ShardFile::Memory(file) => file.close().await,
        }
    }
}

impl Storage for ShardStorage {
    type File = ShardFile;

    async fn open(&self, path: &Path, flags: OpenFlags) -> io::Result<ShardFile> {
        match self {
            ShardStorage::Disk(disk) => disk.open(path, flags).await.map(ShardFile::Disk),
            ShardStorage::Memory(memory) => memory.open(path, flags).await.map(ShardFile::Memory),
        }
    }

    async fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        match self {
            ShardStorage::Disk(disk) => disk.create_dir_all(path).await,
            ShardStorage::Memory(memory) => memory.create_dir_all(path).await,
        }
    }

    async fn sync_dir(&self, path: &Path) -> io::Result<()> {
        match self {
            ShardStorage::Disk(disk) => disk.sync_dir(path).await,
            ShardStorage::Memory(memory) => memory.sync_dir(path).await,
        }
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        match self {
            ShardStorage::Disk(disk) => disk.rename(from, to).await,
            ShardStorage::Memory(memory) => memory.rename(from, to).await,
        }
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        match self {
            ShardStorage::Disk(disk) => disk.remove(path).await,
            ShardStorage::Memory(memory) => memory.remove(path).await,
        }
    }

    async fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        match self {
            ShardStorage::Disk(disk) => disk.list_dir(path).await,
            ShardStorage::Memory(memory) => memory.list_dir(path).await,
        }
    }

    async fn sleep(&self, duration: Duration) {
        glommio::timer::sleep(duration).await;
    }
}

impl ShardStorage {
    /// Deletes `dir` and everything in it: a deleted topic's replica.
    pub fn remove_tree(&self, dir: &Path) -> io::Result<()> {
        match self {
            // Deleting a topic is rare; a blocking unlink of its files is acceptable.
            ShardStorage::Disk(_) => std::fs::remove_dir_all(dir),
            ShardStorage::Memory(memory) => {
                memory.remove_tree(dir);
                Ok(())
            }
        }
    }
}
