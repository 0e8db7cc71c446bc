//! The memory backend of the log: a shard's in-memory file system, for topics created with
//! `StorageKind::Memory`.
//!
//! The log runs unchanged over it: segments, index, checkpoints and retention work as on disk
//! (with the settings of [`log_config`]), but a write is a copy into memory that completes at
//! once and a sync has nothing to do. So a memory topic costs no device time and no I/O syscall per record, and
//! its records become readable as soon as the log takes them. A restart starts it empty.
//!
//! Files grow in chunks as they are written: a segment created at 128 MiB holds only what was
//! written into it, and `allocate` records a size without backing it. Reads past the written
//! data (within the size) return zeros, as a fallocated file does.
//!
//! Owner: one shard (`!Send`, like every storage backend).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use super::storage::{BLOCK_BYTES, OpenFlags, Storage, StorageFile};
use super::{LogConfig, Preallocate};

/// Bytes a file grows by: small enough that an index or checkpoint file stays small, large
/// enough that a segment is a few hundred allocations.
const CHUNK_BYTES: usize = 64 << 10;

/// Largest segment of a memory log (or its tail buffer, if larger: one write never spans two
/// segments). Retention deletes whole sealed segments, so small ones let it free memory in
/// small steps.
pub const SEGMENT_BYTES_MAX: u64 = 8 << 20;

/// `config` as a log over [`MemStorage`] runs it. Files are only sized, never zeroed (zeroing
/// would fill memory with a whole segment up front); segments are at most
/// [`SEGMENT_BYTES_MAX`]; and retention deletes a sealed segment instead of recycling it as
/// the next one, which on disk saves extent conversions but in memory would keep a whole
/// segment of old records alive. So once retention has run, the log's files hold no more
/// than its `retention.bytes` of records.
pub fn log_config(mut config: LogConfig) -> LogConfig {
    config.preallocate = Preallocate::Fallocate;
    config.recycle_segments = false;
    let most = SEGMENT_BYTES_MAX.max(config.write_buffer_bytes);
    config.segment_bytes = config.segment_bytes.min(most);
    config
}

/// One shard's in-memory file system. Clones share it.
#[derive(Debug, Clone, Default)]
pub struct MemStorage {
    fs: Rc<RefCell<MemFs>>,
}

#[derive(Debug, Default)]
struct MemFs {
    dirs: BTreeSet<PathBuf>,
    files: BTreeMap<PathBuf, Rc<MemData>>,
}

/// A file's contents: chunks allocated on first write, and the file's size.
#[derive(Debug, Default)]
struct MemData {
    chunks: RefCell<Vec<Option<Box<[u8]>>>>,
    size: Cell<u64>,
}

/// An open memory file.
#[derive(Debug)]
pub struct MemFile {
    data: Rc<MemData>,
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such memory file or directory", path.display()),
    )
}

fn misaligned(what: &str, value: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{what} {value} is not a multiple of {BLOCK_BYTES}"),
    )
}

impl MemStorage {
    /// Bytes held by every file under `dir` (the chunks written, not the sizes).
    pub fn bytes_under(&self, dir: &Path) -> u64 {
        let fs = self.fs.borrow();
        fs.files
            .iter()
            .filter(|(path, _)| path.starts_with(dir))
            .map(|(_, data)| data.held_bytes())
            .sum()
    }

    /// Removes `dir` and everything under it; a missing `dir` is not an error.
    pub fn remove_tree(&self, dir: &Path) {
        let mut fs = self.fs.borrow_mut();
        fs.files.retain(|path, _| !path.starts_with(dir));
        fs.dirs.retain(|path| !path.starts_with(dir));
    }
}

impl MemData {
    fn held_bytes(&self) -> u64 {
        let chunks = self.chunks.borrow();
        chunks.iter().flatten().map(|c| c.len() as u64).sum()
    }

    fn write(&self, pos: u64, bytes: &[u8]) {
        let mut chunks = self.chunks.borrow_mut();
        let mut at = pos as usize;
        let mut rest = bytes;
        while !rest.is_empty() {
            let (index, offset) = (at / CHUNK_BYTES, at % CHUNK_BYTES);
            if chunks.len() <= index {
                chunks.resize_with(index + 1, || None);
            }
            let Some(slot) = chunks.get_mut(index) else {
                unreachable!("resized above");
            };
            let chunk = slot.get_or_insert_with(|| vec![0; CHUNK_BYTES].into_boxed_slice());
            let n = rest.len().min(CHUNK_BYTES - offset);
            let (now, later) = rest.split_at(n);
            if let Some(dst) = chunk.get_mut(offset..offset + n) {
                dst.copy_from_slice(now);
            }
            rest = later;
            at += n;
        }
        let end = pos + bytes.len() as u64;
        if end > self.size.get() {
            self.size.set(end);
        }
    }

    /// Up to `len` bytes from `pos`, stopping at the size; zeros where nothing was written.
    /// Each byte is written once (a fetch reads through here).
    fn read(&self, pos: u64, len: usize) -> Vec<u8> {
        let len = self.size.get().saturating_sub(pos).min(len as u64) as usize;
        let mut out = Vec::with_capacity(len);
        let chunks = self.chunks.borrow();
        while out.len() < len {
            let at = pos as usize + out.len();
            let (index, offset) = (at / CHUNK_BYTES, at % CHUNK_BYTES);
            let n = (len - out.len()).min(CHUNK_BYTES - offset);
            let written = chunks.get(index).and_then(Option::as_ref);
            match written.and_then(|chunk| chunk.get(offset..offset + n)) {
                Some(src) => out.extend_from_slice(src),
                None => out.resize(out.len() + n, 0),
            }
        }
        out
    }

    fn truncate(&self, len: u64) {
        let mut chunks = self.chunks.borrow_mut();
        let keep = (len as usize).div_ceil(CHUNK_BYTES);
        chunks.truncate(keep);
        // Zero what the last kept chunk holds past the new end, so a later growth reads zeros.
        let offset = len as usize % CHUNK_BYTES;
        if offset > 0
            && let Some(Some(last)) = chunks.last_mut()
            && let Some(tail) = last.get_mut(offset..)
        {
            tail.fill(0);
        }
        self.size.set(len);
    }
}

impl StorageFile for MemFile {
    type Buffer = glommio::io::DmaBuffer;
    type ReadBuf = Vec<u8>;

    fn alloc_buffer(&self, len: usize) -> glommio::io::DmaBuffer {
        // The shard's own buffer arena, as a disk file's buffers come from.
        glommio::allocate_dma_buffer(len)
    }

    async fn write_at(&self, buf: Rc<glommio::io::DmaBuffer>, pos: u64) -> io::Result<usize> {
        let bytes = buf.as_bytes();
        if !pos.is_multiple_of(BLOCK_BYTES as u64) {
            return Err(misaligned("write position", pos));
        }
        if !bytes.len().is_multiple_of(BLOCK_BYTES) {
            return Err(misaligned("write length", bytes.len() as u64));
        }
        self.data.write(pos, bytes);
        Ok(bytes.len())
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        if !pos.is_multiple_of(BLOCK_BYTES as u64) {
            return Err(misaligned("read position", pos));
        }
        Ok(self.data.read(pos, len))
    }

    async fn sync(&self) -> io::Result<()> {
        Ok(())
    }

    async fn allocate(&self, len: u64) -> io::Result<()> {
        if len > self.data.size.get() {
            self.data.size.set(len);
        }
        Ok(())
    }

    async fn size(&self) -> io::Result<u64> {
        Ok(self.data.size.get())
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        self.data.truncate(len);
        Ok(())
    }

    async fn close(self) -> io::Result<()> {
        Ok(())
    }
}

impl Storage for MemStorage {
    type File = MemFile;

    async fn open(&self, path: &Path, flags: OpenFlags) -> io::Result<MemFile> {
        let mut fs = self.fs.borrow_mut();
        if let Some(data) = fs.files.get(path) {
            return Ok(MemFile {
                data: Rc::clone(data),
            });
        }
        let parent = path.parent().unwrap_or(Path::new(""));
        if !flags.create || !fs.dirs.contains(parent) {
            return Err(not_found(path));
        }
        let data = Rc::new(MemData::default());
        fs.files.insert(path.to_path_buf(), Rc::clone(&data));
        Ok(MemFile { data })
    }

    async fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut fs = self.fs.borrow_mut();
        for dir in path.ancestors() {
            if !dir.as_os_str().is_empty() {
                fs.dirs.insert(dir.to_path_buf());
            }
        }
        Ok(())
    }

    async fn sync_dir(&self, path: &Path) -> io::Result<()> {
        if self.fs.borrow().dirs.contains(path) {
            Ok(())
        } else {
            Err(not_found(path))
        }
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut fs = self.fs.borrow_mut();
        let data = fs.files.remove(from).ok_or_else(|| not_found(from))?;
        fs.files.insert(to.to_path_buf(), data);
        Ok(())
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        match self.fs.borrow_mut().files.remove(path) {
            Some(_) => Ok(()),
            None => Err(not_found(path)),
        }
    }

    async fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let fs = self.fs.borrow();
        if !fs.dirs.contains(path) {
            return Err(not_found(path));
        }
        let children = fs.dirs.iter().chain(fs.files.keys());
        let mut names: Vec<String> = children
            .filter(|child| child.parent() == Some(path))
            .filter_map(|child| child.file_name()?.to_str().map(str::to_owned))
            .collect();
        names.sort();
        Ok(names)
    }

    async fn sleep(&self, duration: Duration) {
        glommio::timer::sleep(duration).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_grow_in_chunks_and_reads_see_zeros_past_them() {
        let data = MemData::default();
        let block = vec![7u8; BLOCK_BYTES];
        data.write(
            CHUNK_BYTES as u64 - BLOCK_BYTES as u64,
            &[block.clone(), block].concat(),
        );
        assert_eq!(data.size.get(), CHUNK_BYTES as u64 + BLOCK_BYTES as u64);
        assert_eq!(
            data.held_bytes(),
            2 * CHUNK_BYTES as u64,
            "the first chunk and the second"
        );
        let read = data.read(0, CHUNK_BYTES + 2 * BLOCK_BYTES);
        assert_eq!(read.len(), CHUNK_BYTES + BLOCK_BYTES, "stops at the size");
        let sevens = CHUNK_BYTES - BLOCK_BYTES..CHUNK_BYTES + BLOCK_BYTES;
        assert!(read[sevens.clone()].iter().all(|&b| b == 7));
        assert!(read[..sevens.start].iter().all(|&b| b == 0));
    }

    #[test]
    fn truncate_drops_and_zeroes_what_lies_past_the_end() {
        let data = MemData::default();
        data.write(0, &vec![1u8; 3 * CHUNK_BYTES]);
        data.truncate(CHUNK_BYTES as u64 + BLOCK_BYTES as u64);
        assert_eq!(data.held_bytes(), 2 * CHUNK_BYTES as u64);
        // Growing again reads zeros where the old bytes were.
        data.size.set(3 * CHUNK_BYTES as u64);
        let read = data.read(0, 3 * CHUNK_BYTES);
        let end = CHUNK_BYTES + BLOCK_BYTES;
        assert!(read[..end].iter().all(|&b| b == 1));
        assert!(read[end..].iter().all(|&b| b == 0));
    }

    #[test]
    fn files_live_in_directories_and_go_with_their_tree() {
        glommio::LocalExecutor::default().run(async {
            let fs = MemStorage::default();
            let dir = Path::new("/data/shard-0/t-0");
            let create = OpenFlags {
                create: true,
                dsync: false,
            };
            let missing = fs.open(&dir.join("0.log"), create).await;
            assert_eq!(
                missing.err().map(|e| e.kind()),
                Some(io::ErrorKind::NotFound)
            );
            fs.create_dir_all(dir).await.unwrap();
            let file = fs.open(&dir.join("0.log"), create).await.unwrap();
            let mut buf = file.alloc_buffer(BLOCK_BYTES);
            buf.as_bytes_mut().fill(9);
            assert_eq!(file.write_at(Rc::new(buf), 0).await.unwrap(), BLOCK_BYTES);
            fs.rename(&dir.join("0.log"), &dir.join("1.log"))
                .await
                .unwrap();
            let reopened = fs.open(&dir.join("1.log"), OpenFlags::default()).await;
            let read = reopened.unwrap().read_at(0, BLOCK_BYTES).await.unwrap();
            assert!(read.iter().all(|&b| b == 9));
            assert_eq!(fs.list_dir(dir).await.unwrap(), vec!["1.log".to_owned()]);
            let parent = Path::new("/data/shard-0");
            assert_eq!(fs.list_dir(parent).await.unwrap(), vec!["t-0".to_owned()]);
            assert_eq!(fs.bytes_under(parent), CHUNK_BYTES as u64);
            fs.remove_tree(dir);
            assert_eq!(fs.bytes_under(parent), 0);
            assert!(fs.list_dir(dir).await.is_err());
        });
    }
}
