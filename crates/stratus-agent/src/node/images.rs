//! Image data in and out of the node: downloads into the node's cache
//! (checked against their sha512) and snapshot uploads.

use anyhow::Context;

use super::*;
use crate::node::client::token;

pub(super) fn upload(sh: &Shared, image_id: &str, file: &Path) -> anyhow::Result<()> {
    let url = format!("{}/image/v2/images/{image_id}/file", sh.cfg.controller);
    for attempt in 0..2 {
        let token = token(sh)?;
        let f = std::fs::File::open(file)?;
        let mut resp = sh
            .http
            .put(&url)
            .config()
            .timeout_global(Some(Duration::from_secs(3600)))
            .build()
            .header("x-auth-token", &token)
            .header("content-type", "application/octet-stream")
            .send(f)
            .context("uploading the snapshot")?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        match status {
            204 => return Ok(()),
            401 if attempt == 0 => {
                *sh.token.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
            _ => anyhow::bail!("the image service refused the snapshot ({status}): {text}"),
        }
    }
    anyhow::bail!("not authorised by the image service")
}

/// Downloads an image's data into the node's cache (`images/<id>.data`),
/// checking its sha512; concurrent spawns of one image wait for one
/// download.
pub(super) fn fetch_image(
    sh: &Shared,
    image_id: &str,
    sha512: Option<&str>,
) -> anyhow::Result<PathBuf> {
    static LOCKS: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let dir = sh.cfg.state_dir.join("image-cache");
    private_dir(&dir)?;
    let path = dir.join(format!("{image_id}.data"));
    loop {
        if path.exists() {
            return Ok(path);
        }
        {
            let mut l = LOCKS.lock().unwrap_or_else(|e| e.into_inner());
            if !l.iter().any(|x| x == image_id) {
                l.push(image_id.to_string());
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let result = download(sh, image_id, sha512, &dir, &path);
    LOCKS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|x| x != image_id);
    result.map(|_| path)
}

pub(super) fn download(
    sh: &Shared,
    image_id: &str,
    sha512: Option<&str>,
    dir: &Path,
    path: &Path,
) -> anyhow::Result<()> {
    use sha2::Digest;
    use std::io::Write;
    let url = format!("{}/image/v2/images/{image_id}/file", sh.cfg.controller);
    let token = token(sh)?;
    let mut resp = sh
        .http
        .get(&url)
        .header("x-auth-token", &token)
        .call()
        .context("downloading the image")?;
    if resp.status().as_u16() != 200 {
        anyhow::bail!("image {image_id} download answered {}", resp.status());
    }
    let tmp = dir.join(format!("{image_id}.part"));
    let mut f = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?
    };
    let mut hasher = sha2::Sha512::new();
    let mut reader = resp.body_mut().with_config().limit(u64::MAX).reader();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        f.write_all(&buf[..n])?;
    }
    f.sync_all()?;
    let got: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if let Some(want) = sha512
        && want != got
    {
        let _ = std::fs::remove_file(&tmp);
        anyhow::bail!("image {image_id} arrived damaged (sha512 mismatch)");
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}
