//! Image data on disk: a content-addressed blob store with streaming,
//! durable writes.
//!
//! Layout under `DATA/images/`:
//! - `blobs/<xx>/<sha512>`: image data, named by its sha512, so identical
//!   uploads are stored once;
//! - `staging/<image id>`: data staged by the import flow;
//! - `tmp/`: uploads in flight, emptied at start (a crash mid-upload leaves
//!   nothing behind once the server is back).
//!
//! An upload streams the request body through three workers running side
//! by side: one writes the file, one computes md5, one sha512. Memory is
//! bounded by the channel depth, never by the image size. The file is
//! fsynced, renamed into `blobs/` and the directory fsynced before the
//! image is marked active, so an image reported active survives a crash.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use http_body::{Body as _, Frame, SizeHint};
use md5::Md5;
use sha2::{Digest, Sha512};
use tokio::sync::mpsc;

/// Size of the buffers passed between the receiving task and the workers.
/// Below glibc's mmap threshold (set to 1 MiB at start) so buffers come
/// from, and go back to, the heap instead of fresh mappings.
const CHUNK: usize = 512 * 1024;
/// Buffers queued per worker: bounds memory per transfer to a few MiB.
const DEPTH: usize = 8;
/// How often (in bytes written) an upload re-checks free disk space.
const SPACE_CHECK_EVERY: u64 = 256 * 1024 * 1024;
/// Space left free for everything else on the disk.
pub const DISK_RESERVE: u64 = 256 * 1024 * 1024;

pub struct BlobStore {
    root: PathBuf,
    /// Serialises linking a blob to an image against unlinking an
    /// unreferenced one, so a dedup hit never races a delete.
    lock: Mutex<()>,
}

/// The result of a completed, synced upload.
#[derive(Debug)]
pub struct Written {
    pub path: PathBuf,
    pub size: u64,
    pub md5: String,
    pub sha512: String,
}

#[derive(Debug)]
pub enum ReceiveError {
    /// The client went away or sent a broken body.
    Body(String),
    /// More data than `limit` allows.
    TooLarge(u64),
    /// The disk is (nearly) full.
    NoSpace,
    Io(io::Error),
}

impl From<io::Error> for ReceiveError {
    fn from(e: io::Error) -> Self {
        ReceiveError::Io(e)
    }
}

impl BlobStore {
    /// Opens (creating) the store and empties `tmp/`.
    pub fn open(root: &Path) -> io::Result<Self> {
        for dir in ["blobs", "staging", "tmp"] {
            private_dir(&root.join(dir))?;
        }
        for entry in fs::read_dir(root.join("tmp"))? {
            let _ = fs::remove_file(entry?.path());
        }
        Ok(BlobStore {
            root: root.to_path_buf(),
            lock: Mutex::new(()),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn blob_path(&self, key: &str) -> PathBuf {
        let fan = key.get(..2).unwrap_or("00");
        self.root.join("blobs").join(fan).join(key)
    }

    pub fn staging_path(&self, image_id: &str) -> PathBuf {
        self.root.join("staging").join(image_id)
    }

    pub fn tmp_path(&self) -> PathBuf {
        self.root.join("tmp").join(uuid::Uuid::new_v4().to_string())
    }

    /// Bytes available to us on the store's filesystem.
    pub fn free_bytes(&self) -> io::Result<u64> {
        free_bytes(&self.root)
    }

    /// Moves a synced file into the store under `key` (its sha512). When
    /// the blob is already there the file is dropped: same bytes, stored
    /// once. Call with [`BlobStore::lock`] held.
    pub fn commit(&self, file: &Path, key: &str) -> io::Result<()> {
        let dest = self.blob_path(key);
        if dest.exists() {
            fs::remove_file(file)?;
            return Ok(());
        }
        let dir = dest.parent().expect("blob path has a parent");
        if !dir.exists() {
            private_dir(dir)?;
            sync_dir(&self.root.join("blobs"))?;
        }
        fs::rename(file, &dest)?;
        sync_dir(dir)?;
        if let Some(from) = file.parent() {
            sync_dir(from)?;
        }
        Ok(())
    }

    /// Moves a synced file to the staging area for `image_id`.
    pub fn stage(&self, file: &Path, image_id: &str) -> io::Result<()> {
        let dest = self.staging_path(image_id);
        fs::rename(file, &dest)?;
        sync_dir(&self.root.join("staging"))
    }

    pub fn remove_blob(&self, key: &str) {
        let path = self.blob_path(key);
        if let Err(e) = fs::remove_file(&path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "could not remove image data");
        }
    }

    pub fn remove_staged(&self, image_id: &str) {
        let _ = fs::remove_file(self.staging_path(image_id));
    }

    /// Every blob key present on disk.
    pub fn keys(&self) -> io::Result<Vec<String>> {
        let mut keys = Vec::new();
        for fan in fs::read_dir(self.root.join("blobs"))? {
            let fan = fan?;
            if !fan.file_type()?.is_dir() {
                continue;
            }
            for blob in fs::read_dir(fan.path())? {
                if let Some(name) = blob?.file_name().to_str() {
                    keys.push(name.to_string());
                }
            }
        }
        Ok(keys)
    }

    /// Image ids with staged data on disk.
    pub fn staged_ids(&self) -> io::Result<Vec<String>> {
        let mut ids = Vec::new();
        for e in fs::read_dir(self.root.join("staging"))? {
            if let Some(name) = e?.file_name().to_str() {
                ids.push(name.to_string());
            }
        }
        Ok(ids)
    }
}

#[allow(unsafe_code)]
fn free_bytes(path: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path has a NUL byte"))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a valid NUL-terminated path and `st` points to
    // writable memory of the right type; statvfs only writes into it.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled the struct.
    let st = unsafe { st.assume_init() };
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Streams `body` into a new file at `path` while hashing it, refusing more
/// than `limit` bytes, then syncs the file. On any error the file is
/// removed.
pub async fn receive(
    body: Body,
    path: PathBuf,
    limit: u64,
    store_root: &BlobStore,
) -> Result<Written, ReceiveError> {
    let result = receive_inner(body, &path, limit, store_root).await;
    if result.is_err() {
        let _ = fs::remove_file(&path);
    }
    result
}

async fn receive_inner(
    mut body: Body,
    path: &Path,
    limit: u64,
    blobs: &BlobStore,
) -> Result<Written, ReceiveError> {
    let file = create_private(path)?;
    let (wtx, mut wrx) = mpsc::channel::<Bytes>(DEPTH);
    let (mtx, mut mrx) = mpsc::channel::<Bytes>(DEPTH);
    let (stx, mut srx) = mpsc::channel::<Bytes>(DEPTH);
    let writer = tokio::task::spawn_blocking(move || -> io::Result<()> {
        let mut file = file;
        while let Some(b) = wrx.blocking_recv() {
            file.write_all(&b)?;
        }
        file.sync_all()
    });
    let md5 = tokio::task::spawn_blocking(move || {
        let mut h = Md5::new();
        while let Some(b) = mrx.blocking_recv() {
            h.update(&b);
        }
        hex(&h.finalize())
    });
    let sha = tokio::task::spawn_blocking(move || {
        let mut h = Sha512::new();
        while let Some(b) = srx.blocking_recv() {
            h.update(&b);
        }
        hex(&h.finalize())
    });

    let mut total: u64 = 0;
    let mut next_space_check = 0u64;
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK);
    let fed = async {
        loop {
            let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
            let data = match frame {
                None => break,
                Some(Err(e)) => return Err(ReceiveError::Body(e.to_string())),
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) => d,
                    Err(_) => continue, // trailers
                },
            };
            total += data.len() as u64;
            if total > limit {
                return Err(ReceiveError::TooLarge(limit));
            }
            if total >= next_space_check {
                if blobs.free_bytes()? < DISK_RESERVE + SPACE_CHECK_EVERY.min(limit) {
                    return Err(ReceiveError::NoSpace);
                }
                next_space_check = total + SPACE_CHECK_EVERY;
            }
            let mut rest = &data[..];
            while !rest.is_empty() {
                let take = rest.len().min(CHUNK - buf.len());
                buf.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if buf.len() == CHUNK {
                    let full = Bytes::from(std::mem::replace(&mut buf, Vec::with_capacity(CHUNK)));
                    fan_out(&wtx, &mtx, &stx, full).await?;
                }
            }
        }
        if !buf.is_empty() {
            fan_out(&wtx, &mtx, &stx, Bytes::from(std::mem::take(&mut buf))).await?;
        }
        Ok(())
    }
    .await;
    drop((wtx, mtx, stx));
    let written = writer.await.map_err(|e| io::Error::other(e.to_string()));
    let md5 = md5.await.map_err(|e| io::Error::other(e.to_string()))?;
    let sha512 = sha.await.map_err(|e| io::Error::other(e.to_string()))?;
    fed?;
    written??;
    Ok(Written {
        path: path.to_path_buf(),
        size: total,
        md5,
        sha512,
    })
}

async fn fan_out(
    w: &mpsc::Sender<Bytes>,
    m: &mpsc::Sender<Bytes>,
    s: &mpsc::Sender<Bytes>,
    b: Bytes,
) -> Result<(), ReceiveError> {
    let gone = || ReceiveError::Io(io::Error::other("image writer stopped"));
    m.send(b.clone()).await.map_err(|_| gone())?;
    s.send(b.clone()).await.map_err(|_| gone())?;
    w.send(b).await.map_err(|_| gone())
}

/// A response body streamed from a file range by a blocking reader, a
/// few buffers ahead of the socket.
pub struct FileBody {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    remaining: u64,
}

impl FileBody {
    /// Streams `len` bytes of `path` starting at `start`.
    pub fn open(path: &Path, start: u64, len: u64) -> io::Result<FileBody> {
        let mut file = File::open(path)?;
        if start > 0 {
            file.seek(SeekFrom::Start(start))?;
        }
        let (tx, rx) = mpsc::channel(DEPTH / 2);
        tokio::task::spawn_blocking(move || {
            let mut left = len;
            while left > 0 {
                let want = (CHUNK as u64).min(left) as usize;
                let mut buf = vec![0u8; want];
                let mut got = 0;
                while got < want {
                    match file.read(&mut buf[got..]) {
                        Ok(0) => break,
                        Ok(n) => got += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            let _ = tx.blocking_send(Err(e));
                            return;
                        }
                    }
                }
                if got == 0 {
                    let _ = tx.blocking_send(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "image data shorter than recorded",
                    )));
                    return;
                }
                buf.truncate(got);
                left -= got as u64;
                if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                    return; // client went away
                }
            }
        });
        Ok(FileBody { rx, remaining: len })
    }

    pub fn into_body(self) -> Body {
        Body::new(self)
    }
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(b))) => {
                self.remaining = self.remaining.saturating_sub(b.len() as u64);
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "image reader stopped",
            )))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// Creates `dir` (and its parents) readable by the owner only: image
/// data is the tenants'.
fn private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Creates a new file readable by its owner only.
pub(crate) fn create_private(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("stratus-blobs-{}", uuid::Uuid::new_v4()));
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[tokio::test]
    async fn receive_hashes_and_dedups() {
        let root = tempdir();
        let store = BlobStore::open(&root).unwrap();
        let data: Vec<u8> = (0..(3 * CHUNK + 17)).map(|i| (i % 251) as u8).collect();
        let want_sha = hex(&Sha512::digest(&data));
        let want_md5 = hex(&Md5::digest(&data));
        for _ in 0..2 {
            let tmp = store.tmp_path();
            let w = receive(Body::from(data.clone()), tmp.clone(), u64::MAX, &store)
                .await
                .unwrap();
            assert_eq!(w.size, data.len() as u64);
            assert_eq!(w.sha512, want_sha);
            assert_eq!(w.md5, want_md5);
            let _g = store.lock();
            store.commit(&tmp, &w.sha512).unwrap();
            assert!(!tmp.exists());
        }
        assert_eq!(store.keys().unwrap(), vec![want_sha.clone()]);
        assert_eq!(fs::read(store.blob_path(&want_sha)).unwrap(), data);
        fs::remove_dir_all(root).unwrap();
    }

    #[tokio::test]
    async fn receive_over_limit_leaves_nothing() {
        let root = tempdir();
        let store = BlobStore::open(&root).unwrap();
        let tmp = store.tmp_path();
        let err = receive(Body::from(vec![1u8; 1000]), tmp.clone(), 999, &store)
            .await
            .unwrap_err();
        assert!(matches!(err, ReceiveError::TooLarge(999)));
        assert!(!tmp.exists());
        fs::remove_dir_all(root).unwrap();
    }

    #[tokio::test]
    async fn file_body_streams_a_range() {
        let root = tempdir();
        let path = root.join("f");
        let data: Vec<u8> = (0..(2 * CHUNK + 5)).map(|i| (i % 13) as u8).collect();
        fs::write(&path, &data).unwrap();
        let body = FileBody::open(&path, 7, data.len() as u64 - 10)
            .unwrap()
            .into_body();
        let got = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        assert_eq!(&got[..], &data[7..data.len() - 3]);
        fs::remove_dir_all(root).unwrap();
    }
}
