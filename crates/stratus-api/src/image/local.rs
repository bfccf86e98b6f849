//! Importing image files from the local disk, for operators: `stratus up
//! --import-images DIR` loads the test images built by
//! `scripts/build-test-images` so a new cloud has something to boot.
//! The same checks as an upload apply (format truth, sync before active).

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use md5::Md5;
use serde_json::Map;
use sha2::{Digest, Sha512};
use stratus_store::Query;

use super::model::{Image, status};
use crate::timeutil::now_us;
use crate::{ApiError, AppState};

/// One image to import.
pub struct LocalImage<'a> {
    pub name: &'a str,
    pub file: &'a Path,
    pub disk_format: &'a str,
    pub container_format: &'a str,
    pub description: Option<&'a str>,
}

/// Imports `img` as a public image owned by `owner`, unless an image of
/// that name already exists (then returns `Ok(None)`).
pub fn import(state: &AppState, owner: &str, img: &LocalImage) -> Result<Option<Image>, ApiError> {
    if !state
        .store
        .list::<Image>(&Query::name(img.name))?
        .is_empty()
    {
        return Ok(None);
    }
    let err =
        |e: std::io::Error| ApiError::internal(format!("importing {}: {e}", img.file.display()));
    let blobs = &state.image.blobs;
    let tmp = blobs.tmp_path();
    let (size, md5, sha512) = (|| -> std::io::Result<(u64, String, String)> {
        let mut src = File::open(img.file)?;
        let mut dst = super::blobs::create_private(&tmp)?;
        let (mut m, mut s) = (Md5::new(), Sha512::new());
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = src.read(&mut buf)?;
            if n == 0 {
                break;
            }
            m.update(&buf[..n]);
            s.update(&buf[..n]);
            dst.write_all(&buf[..n])?;
            size += n as u64;
        }
        dst.sync_all()?;
        Ok((size, hex(&m.finalize()), hex(&s.finalize())))
    })()
    .map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })?;
    let virtual_size = match super::data::inspect_blocking(
        &tmp,
        Some(img.disk_format),
        Some(img.container_format),
    ) {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let now = now_us();
    let mut properties = Map::new();
    if let Some(d) = img.description {
        properties.insert("description".into(), d.into());
    }
    let record = Image {
        id: uuid::Uuid::new_v4().to_string(),
        name: Some(img.name.to_string()),
        owner: Some(owner.to_string()),
        status: status::ACTIVE.into(),
        visibility: "public".into(),
        disk_format: Some(img.disk_format.into()),
        container_format: Some(img.container_format.into()),
        size: Some(size),
        virtual_size,
        checksum: Some(md5),
        os_hash_algo: Some("sha512".into()),
        os_hash_value: Some(sha512.clone()),
        protected: false,
        min_ram: 0,
        min_disk: 0,
        os_hidden: false,
        tags: Vec::new(),
        properties,
        created_at: now,
        updated_at: now,
        blob: Some(sha512.clone()),
        staged: None,
        tasks: Vec::new(),
    };
    let _guard = blobs.lock();
    blobs.commit(&tmp, &sha512).map_err(err)?;
    state.store.write(|tx| tx.insert(&record))?;
    Ok(Some(record))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
