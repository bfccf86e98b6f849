//! Copy-on-write volumes from images: a volume made from a `raw` or
//! `qcow2` image is a thin qcow2 overlay whose backing file is the image
//! itself, so making it copies nothing (Cinder's LVM thin and NFS
//! drivers clone from an image cache the same way).
//!
//! The backing file is a *base* in the volume directory,
//! `bases/image-<id>.<format>`: a hard link to the node's downloaded
//! copy of the image (`image-cache/<id>.data`), so the base costs no
//! space and outlives the image cache's pruning. Nothing writes a base;
//! every overlay names it by its absolute path. A base goes when no
//! volume file names it any more ([`prune`], after every task that
//! removes or rewrites a volume file). One lock orders the making of
//! overlays and the pruning, so a base is never removed under a volume
//! being made on it.
//!
//! An image that cannot be a base (another format, a qcow2 that names a
//! backing or data file of its own, a cache on another file system than
//! the volumes) is copied in full, as before.

use std::io::{Read, Seek, SeekFrom};
use std::process::Command;

use anyhow::Context;

use super::volume_files::qemu_img;
use super::*;

/// Orders the making of overlays against pruning.
static BASES: Mutex<()> = Mutex::new(());

fn bases_dir(dir: &Path) -> PathBuf {
    dir.join("bases")
}

/// Makes volume file `path` (`size` GiB) as an overlay on the image
/// `image_id` whose downloaded copy is `cached` (format `fmt`, qemu-img's
/// name): `Ok(true)` when the volume is there (made now, or by an earlier
/// run), `Ok(false)` when the image cannot be a base and the caller must
/// copy it.
pub(super) fn overlay_from_image(
    dir: &Path,
    path: &Path,
    image_id: &str,
    cached: &Path,
    fmt: &str,
    size: u64,
) -> anyhow::Result<bool> {
    if path.exists() {
        return Ok(true);
    }
    if fmt != "raw" && fmt != "qcow2" {
        return Ok(false);
    }
    let _g = BASES.lock().unwrap_or_else(|e| e.into_inner());
    let Some(base) = base_of(dir, image_id, cached, fmt)? else {
        return Ok(false);
    };
    let part = path.with_extension("qcow2.part");
    let _ = std::fs::remove_file(&part);
    let r = (|| {
        let base_s = base.to_string_lossy().to_string();
        qemu_img(
            &["create", "-q", "-f", "qcow2", "-b", &base_s, "-F", fmt],
            &part,
            &[&format!("{size}G")],
        )?;
        std::fs::File::open(&part)?.sync_all()?;
        std::fs::rename(&part, path)?;
        Ok(true)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    r
}

/// The base of image `image_id` in `dir`, made now as a hard link to its
/// downloaded copy when it is not there; `None` when the image cannot be
/// one. The caller holds [`BASES`].
fn base_of(
    dir: &Path,
    image_id: &str,
    cached: &Path,
    fmt: &str,
) -> anyhow::Result<Option<PathBuf>> {
    let bases = bases_dir(dir);
    private_dir(&bases)?;
    let base = bases.join(format!("image-{image_id}.{fmt}"));
    if base.exists() {
        return Ok(Some(base));
    }
    if check_image(cached, fmt).is_err() {
        return Ok(None);
    }
    let tmp = bases.join(format!(".image-{image_id}.{fmt}.part"));
    let _ = std::fs::remove_file(&tmp);
    if let Err(e) = std::fs::hard_link(cached, &tmp) {
        tracing::info!(image = %image_id, error = %e, "the image cache is not on the volumes' file system: volumes from the image are full copies");
        return Ok(None);
    }
    std::fs::rename(&tmp, &base)?;
    Ok(Some(base))
}

/// Refuses an image file that is not a self-contained image of format
/// `fmt`: one that names a backing file, an external data file, or (a
/// VMDK descriptor) extents in other files. `qemu-img` would open any
/// path such an image names, so a tenant's image could read the host's
/// files into a volume.
pub(super) fn check_image(file: &Path, fmt: &str) -> anyhow::Result<()> {
    if fmt == "raw" {
        return Ok(());
    }
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", "-U", "-f", fmt])
        .arg(file)
        .output()
        .context("running qemu-img info")?;
    anyhow::ensure!(
        out.status.success(),
        "the image is not a valid {fmt} file: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let info: Value = serde_json::from_slice(&out.stdout)?;
    anyhow::ensure!(
        info.get("backing-filename").is_none(),
        "the image names a backing file; upload it flattened"
    );
    anyhow::ensure!(
        info.pointer("/format-specific/data/data-file").is_none(),
        "the image names an external data file; upload it flattened"
    );
    if let Some(extents) = info
        .pointer("/format-specific/data/extents")
        .and_then(Value::as_array)
    {
        let own = file.to_string_lossy();
        anyhow::ensure!(
            extents
                .iter()
                .all(|e| e.get("filename").and_then(Value::as_str) == Some(own.as_ref())),
            "the image keeps its data in other files (extents); upload it as one file"
        );
    }
    Ok(())
}

/// The backing file a qcow2 file's header names, if any (read from the
/// header itself: offset 8 holds where the name is, offset 16 its
/// length).
pub(super) fn backing_of(file: &Path) -> Option<String> {
    let mut f = std::fs::File::open(file).ok()?;
    let mut head = [0u8; 20];
    f.read_exact(&mut head).ok()?;
    if &head[0..4] != b"QFI\xfb" {
        return None;
    }
    let offset = u64::from_be_bytes(head[8..16].try_into().ok()?);
    let len = u32::from_be_bytes(head[16..20].try_into().ok()?) as usize;
    if offset == 0 || len == 0 || len > 4096 {
        return None;
    }
    f.seek(SeekFrom::Start(offset)).ok()?;
    let mut name = vec![0u8; len];
    f.read_exact(&mut name).ok()?;
    String::from_utf8(name).ok()
}

/// Removes the bases no volume file in `dir` names any more.
pub(super) fn prune(dir: &Path) {
    let _g = BASES.lock().unwrap_or_else(|e| e.into_inner());
    let Ok(bases) = std::fs::read_dir(bases_dir(dir)) else {
        return;
    };
    let bases: Vec<PathBuf> = bases.flatten().map(|e| e.path()).collect();
    if bases.is_empty() {
        return;
    }
    let Ok(files) = std::fs::read_dir(dir) else {
        return;
    };
    let named: HashSet<String> = files
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("volume-"))
        .filter_map(|e| backing_of(&e.path()))
        .collect();
    for b in bases {
        if !named.contains(b.to_string_lossy().as_ref()) {
            match std::fs::remove_file(&b) {
                Ok(()) => {
                    tracing::info!(base = %b.display(), "removed an image base no volume uses")
                }
                Err(e) => {
                    tracing::warn!(base = %b.display(), error = %e, "could not remove an image base")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlays_name_their_base_and_unused_bases_go() {
        if Command::new("qemu-img").arg("--version").output().is_err() {
            return;
        }
        let dir = std::env::temp_dir().join(format!("stratus-bases-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cached = dir.join("img.data");
        std::fs::write(&cached, vec![7u8; 1 << 20]).unwrap();
        let vol = dir.join("volume-a.qcow2");
        assert!(overlay_from_image(&dir, &vol, "img", &cached, "raw", 1).unwrap());
        let base = dir.join("bases").join("image-img.raw");
        assert_eq!(backing_of(&vol).as_deref(), base.to_str());
        // A format that cannot be a base is left to a full copy.
        assert!(
            !overlay_from_image(&dir, &dir.join("volume-b.qcow2"), "img", &cached, "vmdk", 1)
                .unwrap()
        );
        prune(&dir);
        assert!(base.exists(), "a base in use stays");
        std::fs::remove_file(&vol).unwrap();
        prune(&dir);
        assert!(!base.exists(), "an unused base goes");
        assert!(cached.exists(), "the image cache keeps its copy");
        // An image naming a file of the host is refused, base or copy.
        let evil = dir.join("evil.qcow2");
        qemu_img(
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "raw",
                "-b",
                cached.to_str().unwrap(),
            ],
            &evil,
            &["1M"],
        )
        .unwrap();
        let e = check_image(&evil, "qcow2").unwrap_err().to_string();
        assert!(e.contains("backing file"), "{e}");
        assert!(
            !overlay_from_image(&dir, &dir.join("volume-c.qcow2"), "evil", &evil, "qcow2", 1)
                .unwrap()
        );
        check_image(&cached, "raw").unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
