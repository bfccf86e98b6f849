//! The backup chunk store and the storage nodes' side of backups
//! (`/edge/v1/backups/{id}/...`).
//!
//! A backup's data are fixed chunks (`stratus_wire::volume::CHUNK_SIZE`)
//! named by their sha256 and held by the controller under
//! `<data dir>/backups/chunks/<first two hex digits>/<sha256>`, so a
//! backup outlives the storage node it was read on and restores onto any
//! node. A chunk is written to a temporary file, checked against its name
//! and renamed into place: a chunk file is always whole. Chunks are shared
//! by every backup that holds the same bytes (an incremental backup sends
//! only the chunks that changed since, and so does a full one); a chunk
//! goes when the last backup naming it is deleted (see
//! [`collect_garbage`]).
//!
//! Who may call: only the agent of the node running the backup's current
//! task (a backup reads and sends; a restore reads back), and admins may
//! read.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use sha2::Digest;
use stratus_store::{Query, Tx};
use stratus_wire::volume::{BackupManifest, CHUNK_SIZE, ChunkList, VolumeTask};

use super::backup_model::Backup;
use super::{blocking, not_found, policy_denied};
use crate::identity::policy::Ctx;
use crate::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/edge/v1/backups/{id}/missing", post(missing))
        .route(
            "/edge/v1/backups/{id}/chunks/{sha}",
            put(put_chunk).get(get_chunk),
        )
        .route(
            "/edge/v1/backups/{id}/manifest",
            put(put_manifest).get(get_manifest),
        )
}

/// The directory of the chunk files.
pub fn chunk_dir(state: &AppState) -> PathBuf {
    state.config.data_dir.join("backups").join("chunks")
}

/// Whether `s` names a chunk: 64 lower-case hex digits.
pub fn valid_name(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether the store holds chunk `sha` (a valid name).
pub fn has_chunk(state: &AppState, sha: &str) -> bool {
    valid_name(sha) && chunk_path(&chunk_dir(state), sha).is_file()
}

fn chunk_path(dir: &Path, sha: &str) -> PathBuf {
    dir.join(&sha[..2]).join(sha)
}

/// The sha256 of `data`, in hex.
pub fn sha256_hex(data: &[u8]) -> String {
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn io(e: std::io::Error) -> ApiError {
    ApiError::internal(format!("backup chunk store: {e}"))
}

/// Flushes the chunk store's file system (`syncfs`): every chunk written
/// before is on disk, renames included. One call before a manifest is
/// recorded instead of an fsync per chunk and per directory.
fn sync_chunks(dir: &Path) -> Result<(), ApiError> {
    use std::os::fd::AsRawFd;
    std::fs::create_dir_all(dir).map_err(io)?;
    let d = std::fs::File::open(dir).map_err(io)?;
    // SAFETY: `d` is an open file for the whole call, so its descriptor is
    // valid; syncfs only reads it.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::syncfs(d.as_raw_fd()) };
    if rc != 0 {
        return Err(io(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Stores a chunk (checked against its name) unless it is there already.
fn store_chunk(dir: &Path, sha: &str, data: &[u8]) -> Result<(), ApiError> {
    if sha256_hex(data) != sha {
        return Err(ApiError::bad_request(format!(
            "The chunk's data do not match its name {sha}."
        )));
    }
    let path = chunk_path(dir, sha);
    if path.exists() {
        return Ok(());
    }
    let sub = path.parent().unwrap_or(dir);
    std::fs::create_dir_all(sub).map_err(io)?;
    let tmp = sub.join(format!(".{sha}.{}.tmp", uuid::Uuid::new_v4()));
    // Not synced here: a manifest naming it flushes the file system
    // first (see `sync_chunks`).
    let r = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        std::fs::rename(&tmp, &path)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r.map_err(io)
}

/// The backup `id`, when the caller is the agent of the node running
/// its task `task` now (or, for reading, an admin).
fn authorise(state: &AppState, ctx: &Ctx, id: &str, task: VolumeTask) -> Result<Backup, ApiError> {
    let b = state
        .store
        .get::<Backup>(id)?
        .ok_or_else(|| not_found("Backup", id))?;
    let node_ok = ctx
        .node_host()
        .is_some_and(|h| b.host.as_deref() == Some(h) && b.task == Some(task));
    let admin_reads = task == VolumeTask::Restore && ctx.node_host().is_none() && ctx.is_admin();
    if node_ok || admin_reads {
        Ok(b)
    } else {
        Err(policy_denied(
            "stratus:node-agent (the node running the backup's task)",
        ))
    }
}

async fn missing(
    State(state): State<AppState>,
    ctx: Ctx,
    UrlPath((id,)): UrlPath<(String,)>,
    raw: Bytes,
) -> Result<axum::Json<ChunkList>, ApiError> {
    let list: ChunkList = crate::json::decode(&raw)?;
    if list.chunks.iter().any(|c| !valid_name(c)) {
        return Err(ApiError::bad_request(
            "A chunk name is not a sha256 in hex.",
        ));
    }
    blocking(move || {
        authorise(&state, &ctx, &id, VolumeTask::Backup)?;
        let dir = chunk_dir(&state);
        let chunks = list
            .chunks
            .into_iter()
            .filter(|c| !chunk_path(&dir, c).exists())
            .collect();
        Ok(axum::Json(ChunkList { chunks }))
    })
    .await
}

async fn put_chunk(
    State(state): State<AppState>,
    ctx: Ctx,
    UrlPath((id, sha)): UrlPath<(String, String)>,
    data: Bytes,
) -> Result<StatusCode, ApiError> {
    if !valid_name(&sha) {
        return Err(ApiError::bad_request(
            "The chunk name is not a sha256 in hex.",
        ));
    }
    if data.len() as u64 > CHUNK_SIZE {
        return Err(ApiError::bad_request(format!(
            "A chunk holds at most {CHUNK_SIZE} bytes."
        )));
    }
    blocking(move || {
        authorise(&state, &ctx, &id, VolumeTask::Backup)?;
        store_chunk(&chunk_dir(&state), &sha, &data)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

async fn get_chunk(
    State(state): State<AppState>,
    ctx: Ctx,
    UrlPath((id, sha)): UrlPath<(String, String)>,
) -> Result<Response, ApiError> {
    if !valid_name(&sha) {
        return Err(ApiError::bad_request(
            "The chunk name is not a sha256 in hex.",
        ));
    }
    blocking(move || {
        let b = authorise(&state, &ctx, &id, VolumeTask::Restore)?;
        if !b.chunks.iter().flatten().any(|c| *c == sha) {
            return Err(not_found("Chunk", &sha));
        }
        let data = std::fs::read(chunk_path(&chunk_dir(&state), &sha)).map_err(io)?;
        Ok((
            [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
            data,
        )
            .into_response())
    })
    .await
}

async fn get_manifest(
    State(state): State<AppState>,
    ctx: Ctx,
    UrlPath((id,)): UrlPath<(String,)>,
) -> Result<axum::Json<BackupManifest>, ApiError> {
    blocking(move || {
        let b = authorise(&state, &ctx, &id, VolumeTask::Restore)?;
        Ok(axum::Json(BackupManifest {
            generation: b.generation,
            size_bytes: b.size_bytes,
            chunk_size: CHUNK_SIZE,
            chunks: b.chunks,
        }))
    })
    .await
}

/// Records what a backup task read. Every chunk it names must be here
/// and on disk (the file system is flushed first; presence is checked
/// under the store's write lock, which garbage collection also holds): a
/// 409 lists those that are not, for the node to send again.
async fn put_manifest(
    State(state): State<AppState>,
    ctx: Ctx,
    UrlPath((id,)): UrlPath<(String,)>,
    raw: Bytes,
) -> Result<Response, ApiError> {
    let m: BackupManifest = crate::json::decode(&raw)?;
    if m.chunk_size != CHUNK_SIZE
        || m.chunks.len() as u64 != m.size_bytes.div_ceil(CHUNK_SIZE)
        || m.chunks.iter().flatten().any(|c| !valid_name(c))
    {
        return Err(ApiError::bad_request(
            "The manifest does not describe the volume in whole chunks.",
        ));
    }
    blocking(move || {
        let host = ctx.node_host().map(str::to_string);
        let dir = chunk_dir(&state);
        // Every chunk the manifest names is here by now (sent by this
        // backup, or there when it asked) or is found missing below:
        // flushed before the record says the backup is whole.
        authorise(&state, &ctx, &id, VolumeTask::Backup)?;
        sync_chunks(&dir)?;
        let lacking = state.store.write(|tx| {
            let Some(mut b) = tx.get::<Backup>(&id)? else {
                return Err(not_found("Backup", &id));
            };
            if host.is_none()
                || b.host != host
                || b.task != Some(VolumeTask::Backup)
                || b.generation != m.generation
            {
                return Err(policy_denied(
                    "stratus:node-agent (the node running the backup's task)",
                ));
            }
            let lacking: Vec<String> = m
                .chunks
                .iter()
                .flatten()
                .filter(|c| !chunk_path(&dir, c).exists())
                .cloned()
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            if lacking.is_empty() {
                b.size_bytes = m.size_bytes;
                b.chunks = m.chunks.clone();
                b.manifest_generation = m.generation;
                tx.update(&b)?;
            }
            Ok::<_, ApiError>(lacking)
        })?;
        if lacking.is_empty() {
            Ok(StatusCode::NO_CONTENT.into_response())
        } else {
            Ok((
                StatusCode::CONFLICT,
                axum::Json(ChunkList { chunks: lacking }),
            )
                .into_response())
        }
    })
    .await
}

/// Removes the chunk files no backup names any more: those of `gone`
/// (the chunks of backups just deleted in `tx`) that no other backup
/// holds, and, when no backup is being read now, any chunk file left by
/// a backup that never finished. Runs inside the write transaction that
/// deleted them, so a manifest recorded at the same time (which checks
/// its chunks under the same lock) either sees a chunk still there or is
/// told to send it again.
pub fn collect_garbage(state: &AppState, tx: &Tx, gone: &[String]) -> Result<u64, ApiError> {
    let backups = tx.list::<Backup>(&Query::all())?;
    let live: HashSet<&str> = backups
        .iter()
        .flat_map(|b| b.chunks.iter().flatten().map(String::as_str))
        .collect();
    let dir = chunk_dir(state);
    let mut removed = 0;
    for c in gone {
        if valid_name(c) && !live.contains(c.as_str()) {
            match std::fs::remove_file(chunk_path(&dir, c)) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(e)),
            }
        }
    }
    if backups.iter().any(|b| b.task == Some(VolumeTask::Backup)) {
        return Ok(removed);
    }
    let Ok(subs) = std::fs::read_dir(&dir) else {
        return Ok(removed);
    };
    for sub in subs.flatten() {
        let Ok(files) = std::fs::read_dir(sub.path()) else {
            continue;
        };
        for f in files.flatten() {
            let name = f.file_name().to_string_lossy().to_string();
            let orphan =
                (valid_name(&name) && !live.contains(name.as_str())) || name.ends_with(".tmp");
            if orphan && std::fs::remove_file(f.path()).is_ok() {
                removed += 1;
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many chunk files the store holds (for tests and operators).
    fn count(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .map(|subs| {
                subs.flatten()
                    .filter_map(|s| std::fs::read_dir(s.path()).ok())
                    .map(|f| {
                        f.flatten()
                            .filter(|x| valid_name(&x.file_name().to_string_lossy()))
                            .count()
                    })
                    .sum()
            })
            .unwrap_or(0)
    }

    #[test]
    fn chunks_are_checked_against_their_name_and_written_whole() {
        let dir = std::env::temp_dir().join(format!("chunks-{}", uuid::Uuid::new_v4()));
        let data = vec![7u8; 1000];
        let sha = sha256_hex(&data);
        assert!(valid_name(&sha));
        assert!(store_chunk(&dir, &sha, b"other bytes").is_err());
        assert_eq!(count(&dir), 0);
        store_chunk(&dir, &sha, &data).unwrap();
        store_chunk(&dir, &sha, &data).unwrap();
        assert_eq!(count(&dir), 1);
        assert_eq!(std::fs::read(chunk_path(&dir, &sha)).unwrap(), data);
        assert!(!valid_name("../etc/passwd"));
        assert!(!valid_name(&sha.to_uppercase()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
