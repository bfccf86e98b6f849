//! The storage node's side of backups, restores and uploads to images.
//!
//! - **Backup**: the volume (or snapshot) is converted to a raw temporary
//!   file, cut into `CHUNK_SIZE` chunks named by their sha256 (chunks of
//!   zeros are not sent), the controller is asked which it lacks, those
//!   are sent, and the manifest (the chunk names in order) is recorded.
//!   Sending only what the controller lacks makes an incremental backup
//!   cost its changed chunks, and makes a re-run after a crash cheap.
//! - **Restore**: the manifest and its chunks are fetched (each checked
//!   against its name) into a raw temporary file, converted to qcow2 as
//!   `.part` and renamed over the volume's file when whole.
//! - **Upload**: the volume is converted to the image's format and sent
//!   through the image API.
//!
//! Every step is idempotent, so the task run again after a crash ends the
//! same way; temporary files are removed at the end and at the start.

use std::os::unix::fs::FileExt;

use anyhow::Context;
use stratus_wire::volume::{
    BackupManifest, CHUNK_SIZE, ChunkList, VolumeSource, VolumeTask, VolumeWork,
};

use super::client::token;
use super::volume_files::{
    qemu_img, read_quiesced, safe_id, snapshot_path, virtual_size, volume_path,
};
use super::*;

/// Chunks moved at once.
const PARALLEL: usize = 4;

/// Runs a backup, restore or upload task.
pub(super) fn run(sh: &Shared, dir: &Path, w: &VolumeWork) -> anyhow::Result<()> {
    match w.task {
        VolumeTask::Backup => backup(sh, dir, w),
        VolumeTask::Restore => restore(sh, dir, w),
        VolumeTask::Upload => upload(sh, dir, w),
        _ => anyhow::bail!("not a backup task"),
    }
}

/// Removes a temporary file when dropped.
struct Temp(PathBuf);

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Reads chunk `i` of `f` (shorter at the end of the file).
fn read_chunk(f: &std::fs::File, size: u64, i: usize, buf: &mut Vec<u8>) -> anyhow::Result<()> {
    let off = i as u64 * CHUNK_SIZE;
    let len = CHUNK_SIZE.min(size - off) as usize;
    buf.resize(len, 0);
    f.read_exact_at(buf, off)?;
    Ok(())
}

/// Sends bytes (`PUT`), logging in again once on a 401.
fn put_bytes(sh: &Shared, url: &str, data: &[u8]) -> anyhow::Result<(u16, String)> {
    for attempt in 0..2 {
        let token = token(sh)?;
        let mut resp = sh
            .http
            .put(url)
            .header("x-auth-token", &token)
            .header("content-type", "application/octet-stream")
            .send(data)?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        if status == 401 && attempt == 0 {
            *sh.token.lock().unwrap_or_else(|e| e.into_inner()) = None;
            continue;
        }
        return Ok((status, text));
    }
    anyhow::bail!("not authorised by the controller")
}

/// Fetches bytes (`GET`), logging in again once on a 401.
fn get_bytes(sh: &Shared, url: &str) -> anyhow::Result<Vec<u8>> {
    for attempt in 0..2 {
        let token = token(sh)?;
        let mut resp = sh.http.get(url).header("x-auth-token", &token).call()?;
        let status = resp.status().as_u16();
        if status == 401 && attempt == 0 {
            *sh.token.lock().unwrap_or_else(|e| e.into_inner()) = None;
            continue;
        }
        let body = resp
            .body_mut()
            .with_config()
            .limit(2 * CHUNK_SIZE)
            .read_to_vec()?;
        anyhow::ensure!(
            status == 200,
            "GET {url} answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
        return Ok(body);
    }
    anyhow::bail!("not authorised by the controller")
}

/// Runs `f` on every item, `PARALLEL` at a time; the first error wins.
fn parallel<T: Sync>(
    items: &[T],
    f: impl Fn(&T, &mut Vec<u8>) -> anyhow::Result<()> + Sync,
) -> anyhow::Result<()> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..PARALLEL.min(items.len()) {
            s.spawn(|| {
                let mut buf = Vec::with_capacity(CHUNK_SIZE as usize);
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(item) = items.get(i) else { return };
                    if failed.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
                        return;
                    }
                    if let Err(e) = f(item, &mut buf) {
                        failed
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(e);
                        return;
                    }
                }
            });
        }
    });
    match failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn backup(sh: &Shared, dir: &Path, w: &VolumeWork) -> anyhow::Result<()> {
    let id = safe_id(&w.id)?;
    let src = match (&w.source, &w.volume_id) {
        (Some(VolumeSource::Snapshot { id: s }), _) => snapshot_path(dir, safe_id(s)?),
        (_, Some(v)) => volume_path(dir, safe_id(v)?),
        _ => anyhow::bail!("a backup task without its volume"),
    };
    anyhow::ensure!(src.exists(), "the file {} is missing", src.display());
    let raw = Temp(dir.join(format!("backup-{id}.raw.tmp")));
    let _ = std::fs::remove_file(&raw.0);
    let src_s = src.to_string_lossy().to_string();
    // An in-use volume is read while its holder is quiesced (a VM
    // paused, a container's file system frozen): one point in time, as
    // Cinder's backup of an in-use volume with `force`.
    read_quiesced(sh, &src, || {
        qemu_img(
            &["convert", "-q", "-U", "-f", "qcow2", "-O", "raw", &src_s],
            &raw.0,
            &[],
        )
    })?;
    let f = std::fs::File::open(&raw.0)?;
    let size = f.metadata()?.len();
    let n = size.div_ceil(CHUNK_SIZE) as usize;
    let base = format!("{}/edge/v1/backups/{id}", sh.cfg.controller);
    // The chunk at which each name was first seen (identical chunks are
    // sent once).
    let mut first: HashMap<String, usize> = HashMap::new();
    let send = |todo: &[(usize, String)]| -> anyhow::Result<()> {
        parallel(todo, |(i, c), buf| {
            // The controller checks the bytes against the name.
            read_chunk(&f, size, *i, buf)?;
            match put_bytes(sh, &format!("{base}/chunks/{c}"), buf)? {
                (204, _) => Ok(()),
                (code, b) => anyhow::bail!("the controller refused chunk {c} ({code}): {b}"),
            }
        })
    };
    // One thread names the chunks (zeros are not stored) while this one
    // asks which the controller lacks and sends those, a batch at a time.
    type Batch = anyhow::Result<Vec<(usize, Option<String>)>>;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Batch>(4);
    let mut chunks: Vec<Option<String>> = Vec::with_capacity(n);
    let mut sent = 0usize;
    std::thread::scope(|s| -> anyhow::Result<()> {
        let f = &f;
        s.spawn(move || {
            let zeros = vec![0u8; CHUNK_SIZE as usize];
            let mut buf = Vec::with_capacity(CHUNK_SIZE as usize);
            let mut batch = Vec::new();
            for i in 0..n {
                if let Err(e) = read_chunk(f, size, i, &mut buf) {
                    let _ = tx.send(Err(e));
                    return;
                }
                let name = (buf[..] != zeros[..buf.len()]).then(|| sha256_hex(&buf));
                batch.push((i, name));
                if (batch.len() == 64 || i + 1 == n)
                    && tx.send(Ok(std::mem::take(&mut batch))).is_err()
                {
                    return;
                }
            }
        });
        for batch in rx {
            let mut fresh = Vec::new();
            for (i, c) in batch? {
                if let Some(c) = &c
                    && !first.contains_key(c)
                {
                    first.insert(c.clone(), i);
                    fresh.push(c.clone());
                }
                chunks.push(c);
            }
            if fresh.is_empty() {
                continue;
            }
            let body = serde_json::to_string(&ChunkList { chunks: fresh })?;
            let lacking = match call(sh, "POST", &format!("{base}/missing"), Some(body))? {
                (200, b) => serde_json::from_str::<ChunkList>(&b)?.chunks,
                (code, b) => anyhow::bail!("the controller refused the chunk list ({code}): {b}"),
            };
            let todo: Vec<(usize, String)> = lacking
                .into_iter()
                .filter_map(|c| first.get(&c).map(|i| (*i, c)))
                .collect();
            send(&todo)?;
            sent += todo.len();
        }
        Ok(())
    })?;
    anyhow::ensure!(chunks.len() == n, "the volume was not read whole");
    tracing::info!(backup = %id, chunks = n, sent, "backup read");
    let manifest = serde_json::to_string(&BackupManifest {
        generation: w.generation,
        size_bytes: size,
        chunk_size: CHUNK_SIZE,
        chunks,
    })?;
    for _ in 0..3 {
        match call(
            sh,
            "PUT",
            &format!("{base}/manifest"),
            Some(manifest.clone()),
        )? {
            (204, _) => return Ok(()),
            // Chunks collected meanwhile (another backup's delete): again.
            (409, b) => {
                let todo: Vec<(usize, String)> = serde_json::from_str::<ChunkList>(&b)?
                    .chunks
                    .into_iter()
                    .filter_map(|c| first.get(&c).map(|i| (*i, c)))
                    .collect();
                send(&todo)?;
            }
            (code, b) => anyhow::bail!("the controller refused the manifest ({code}): {b}"),
        }
    }
    anyhow::bail!("the controller kept missing chunks of the backup")
}

fn restore(sh: &Shared, dir: &Path, w: &VolumeWork) -> anyhow::Result<()> {
    let id = safe_id(&w.id)?;
    let vol = safe_id(
        w.volume_id
            .as_deref()
            .context("a restore without its volume")?,
    )?;
    let base = format!("{}/edge/v1/backups/{id}", sh.cfg.controller);
    let m: BackupManifest = serde_json::from_slice(&get_bytes(sh, &format!("{base}/manifest"))?)
        .context("the backup's manifest")?;
    anyhow::ensure!(
        m.chunk_size == CHUNK_SIZE && m.chunks.len() as u64 == m.size_bytes.div_ceil(CHUNK_SIZE),
        "the backup's manifest is not whole"
    );
    let raw = Temp(dir.join(format!("restore-{vol}.raw.tmp")));
    let f = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&raw.0)?
    };
    f.set_len(m.size_bytes)?;
    let todo: Vec<(usize, &String)> = m
        .chunks
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.as_ref().map(|c| (i, c)))
        .collect();
    parallel(&todo, |(i, c), _| {
        let data = get_bytes(sh, &format!("{base}/chunks/{c}"))?;
        anyhow::ensure!(sha256_hex(&data) == **c, "chunk {c} arrived damaged");
        let off = *i as u64 * CHUNK_SIZE;
        anyhow::ensure!(
            data.len() as u64 == CHUNK_SIZE.min(m.size_bytes - off),
            "chunk {c} has the wrong length"
        );
        f.write_all_at(&data, off)?;
        Ok(())
    })?;
    f.sync_all()?;
    let target = volume_path(dir, vol);
    let part = target.with_extension("qcow2.part");
    let _ = std::fs::remove_file(&part);
    let r = (|| {
        let raw_s = raw.0.to_string_lossy().to_string();
        qemu_img(
            &["convert", "-q", "-f", "raw", "-O", "qcow2", &raw_s],
            &part,
            &[],
        )?;
        if virtual_size(&part)? < w.size_gb << 30 {
            qemu_img(
                &["resize", "-q", "-f", "qcow2"],
                &part,
                &[&format!("{}G", w.size_gb)],
            )?;
        }
        std::fs::File::open(&part)?.sync_all()?;
        std::fs::rename(&part, &target)?;
        Ok(())
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    tracing::info!(backup = %id, volume = %vol, chunks = todo.len(), "backup restored");
    r
}

fn upload(sh: &Shared, dir: &Path, w: &VolumeWork) -> anyhow::Result<()> {
    let u = w.upload.as_ref().context("an upload without its image")?;
    let vol = safe_id(
        w.volume_id
            .as_deref()
            .context("an upload without its volume")?,
    )?;
    let image = safe_id(&u.image_id)?;
    let fmt = match u.disk_format.as_str() {
        "raw" => "raw",
        "qcow2" => "qcow2",
        other => anyhow::bail!("cannot upload a volume as {other}"),
    };
    let src = volume_path(dir, vol);
    anyhow::ensure!(
        src.exists(),
        "the volume's file {} is missing",
        src.display()
    );
    let tmp = Temp(dir.join(format!("upload-{}.{fmt}.tmp", safe_id(&w.id)?)));
    let src_s = src.to_string_lossy().to_string();
    read_quiesced(sh, &src, || {
        qemu_img(
            &["convert", "-q", "-U", "-f", "qcow2", "-O", fmt, &src_s],
            &tmp.0,
            &[],
        )
    })?;
    super::images::upload(sh, image, &tmp.0)
}
