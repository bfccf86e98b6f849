//! Snapshots: an instance's root file system written as a container image
//! tarball that the image service accepts and the container driver boots.
//!
//! The tarball holds one layer, a tar of the instance's root as the
//! workload sees it (the overlay's merged view), so deletions need no
//! whiteouts: what was deleted is simply not there. It is laid out as
//! `docker save` does since Docker 25: an OCI image layout (`oci-layout`,
//! `index.json`, `blobs/sha256/...`) plus a `manifest.json` naming the same
//! blobs, so it is valid with container_format `docker` and `oci` alike.
//!
//! The image config carries the source image's Entrypoint, Cmd, Env,
//! WorkingDir and User, so the snapshot boots the way its source did.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::DriverError;
use crate::image::ImageConfig;

/// Paths (relative to the root) left out of a snapshot: the marker that
/// says this instance's user data already ran. A server booted from the
/// snapshot is a new instance and runs its own user data, as cloud-init's
/// per-instance semaphores make it on a VM.
const EXCLUDED: &[&str] = &["var/lib/cloud/instance/sem/stratus-user-data"];

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A writer that hashes and counts what passes through.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    len: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes a tar of everything under `root` to `out` (names relative to
/// `root`, owners, modes and times kept; hard links as links; sockets,
/// devices and fifos left out; other file systems mounted below `root` not
/// entered).
pub(crate) fn tar_tree<W: Write>(root: &Path, out: W) -> Result<W, DriverError> {
    let mut b = tar::Builder::new(out);
    b.mode(tar::HeaderMode::Complete);
    b.follow_symlinks(false);
    let dev = fs::symlink_metadata(root)?.dev();
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let mut names: Vec<_> = fs::read_dir(&dir)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        names.sort();
        // Pushed in reverse so they come off the stack in order.
        let mut subdirs = Vec::new();
        for name in names {
            let rel_path = rel.join(&name);
            if EXCLUDED.iter().any(|x| Path::new(x) == rel_path) {
                continue;
            }
            let path = root.join(&rel_path);
            let m = match fs::symlink_metadata(&path) {
                Ok(m) => m,
                // Gone since the listing (a running workload deleted it).
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            let ft = m.file_type();
            if ft.is_socket() || ft.is_block_device() || ft.is_char_device() || ft.is_fifo() {
                continue;
            }
            let mut h = tar::Header::new_gnu();
            h.set_metadata_in_mode(&m, tar::HeaderMode::Complete);
            if ft.is_dir() {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, &rel_path, io::empty())?;
                if m.dev() == dev {
                    subdirs.push(rel_path);
                }
            } else if ft.is_symlink() {
                let target = fs::read_link(&path)?;
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, &rel_path, &target)?;
            } else {
                if m.nlink() > 1 {
                    let key = (m.dev(), m.ino());
                    if let Some(first) = links.get(&key) {
                        h.set_entry_type(tar::EntryType::Link);
                        h.set_size(0);
                        b.append_link(&mut h, &rel_path, first)?;
                        continue;
                    }
                    links.insert(key, rel_path.clone());
                }
                let f = match File::open(&path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e.into()),
                };
                // The size in the header must be what we write, even if a
                // running workload changes the file meanwhile.
                let size = m.len();
                h.set_size(size);
                b.append_data(&mut h, &rel_path, Padded::new(f.take(size), size))?;
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(b.into_inner()?)
}

/// A reader that yields exactly `size` bytes: `inner`'s, then zeros if it
/// ends early (a file truncated while it was being read).
struct Padded<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Padded<R> {
    fn new(inner: R, size: u64) -> Self {
        Padded { inner, left: size }
    }
}

impl<R: Read> Read for Padded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.left as usize);
        let mut n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            buf[..want].fill(0);
            n = want;
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    }
}

/// Writes the image tarball `dest` from a layer already written (as an
/// uncompressed tar) to `layer`, with its sha256 and size.
fn write_image(
    dest: &Path,
    layer: &Path,
    layer_sha: &str,
    layer_size: u64,
    config: &ImageConfig,
) -> Result<(), DriverError> {
    let mut c = serde_json::Map::new();
    let strings = |v: &[String]| Value::from(v.to_vec());
    if !config.env.is_empty() {
        c.insert("Env".into(), strings(&config.env));
    }
    if !config.entrypoint.is_empty() {
        c.insert("Entrypoint".into(), strings(&config.entrypoint));
    }
    if !config.cmd.is_empty() {
        c.insert("Cmd".into(), strings(&config.cmd));
    }
    if !config.working_dir.is_empty() {
        c.insert("WorkingDir".into(), json!(config.working_dir));
    }
    if !config.user.is_empty() {
        c.insert("User".into(), json!(config.user));
    }
    let cfg = serde_json::to_vec(&json!({
        "architecture": arch(),
        "os": "linux",
        "config": c,
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_sha}")]},
        "history": [{"created_by": "stratus snapshot"}],
    }))
    .map_err(|e| DriverError::Runtime(e.to_string()))?;
    let cfg_sha = hex(&Sha256::digest(&cfg));
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": format!("sha256:{cfg_sha}"), "size": cfg.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": format!("sha256:{layer_sha}"), "size": layer_size}],
    }))
    .map_err(|e| DriverError::Runtime(e.to_string()))?;
    let man_sha = hex(&Sha256::digest(&manifest));
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": format!("sha256:{man_sha}"), "size": manifest.len(),
                       "platform": {"architecture": arch(), "os": "linux"}}],
    }))
    .map_err(|e| DriverError::Runtime(e.to_string()))?;
    let docker = serde_json::to_vec(&json!([{
        "Config": format!("blobs/sha256/{cfg_sha}"),
        "RepoTags": null,
        "Layers": [format!("blobs/sha256/{layer_sha}")],
    }]))
    .map_err(|e| DriverError::Runtime(e.to_string()))?;

    let mut b = tar::Builder::new(BufWriter::new(File::create(dest)?));
    let add = |b: &mut tar::Builder<_>, name: &str, data: &[u8]| -> io::Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, data)
    };
    for d in ["blobs", "blobs/sha256"] {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, d, io::empty())?;
    }
    add(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    add(&mut b, &format!("blobs/sha256/{cfg_sha}"), &cfg)?;
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o644);
    h.set_size(layer_size);
    b.append_data(
        &mut h,
        format!("blobs/sha256/{layer_sha}"),
        File::open(layer)?.take(layer_size),
    )?;
    add(&mut b, &format!("blobs/sha256/{man_sha}"), &manifest)?;
    add(&mut b, "index.json", &index)?;
    add(&mut b, "manifest.json", &docker)?;
    let mut w = b.into_inner()?;
    w.flush()?;
    w.into_inner()
        .map_err(|e| DriverError::Io(e.into_error()))?
        .sync_all()?;
    Ok(())
}

/// Writes a snapshot of the tree under `root` to `dest`, booting with
/// `config`. The layer is staged next to `dest` and removed afterwards.
pub(crate) fn write(root: &Path, config: &ImageConfig, dest: &Path) -> Result<(), DriverError> {
    let mut staged = dest.as_os_str().to_owned();
    staged.push(".layer");
    let staged = PathBuf::from(staged);
    let result = (|| {
        let w = Hashing {
            inner: BufWriter::new(File::create(&staged)?),
            hash: Sha256::new(),
            len: 0,
        };
        let mut w = tar_tree(root, w)?;
        w.flush()?;
        let sha = hex(&w.hash.finalize_reset());
        write_image(dest, &staged, &sha, w.len, config)
    })();
    let _ = fs::remove_file(&staged);
    if result.is_err() {
        let _ = fs::remove_file(dest);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "stratus-snap-{tag}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        fs::create_dir_all(&d).unwrap();
        d
    }

    /// A tree snapshotted and unpacked again (through the driver's own
    /// unpacker, in both formats) comes back the same.
    #[test]
    fn round_trip() {
        let base = tmpdir("rt");
        let root = base.join("root");
        fs::create_dir_all(root.join("etc/sub")).unwrap();
        fs::create_dir_all(root.join("var/lib/cloud/instance/sem")).unwrap();
        fs::write(root.join("etc/sub/file"), b"hello").unwrap();
        fs::set_permissions(
            root.join("etc/sub/file"),
            fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
        fs::write(
            root.join("var/lib/cloud/instance/sem/stratus-user-data"),
            b"",
        )
        .unwrap();
        fs::hard_link(root.join("etc/sub/file"), root.join("etc/link")).unwrap();
        std::os::unix::fs::symlink("/etc/sub/file", root.join("abs")).unwrap();
        let long = "d".repeat(120);
        fs::create_dir_all(root.join(&long).join(&long)).unwrap();
        fs::write(root.join(&long).join(&long).join("deep"), b"x").unwrap();
        let cfg = ImageConfig {
            entrypoint: vec![],
            cmd: vec!["/bin/sh".into()],
            env: vec!["PATH=/bin".into()],
            working_dir: "/etc".into(),
            user: String::new(),
        };
        let dest = base.join("snap.tar");
        write(&root, &cfg, &dest).unwrap();
        assert!(!base.join("snap.tar.layer").exists());
        for fmt in ["docker", "oci"] {
            let out = base.join(format!("out-{fmt}"));
            let got = crate::image::unpack(&dest, fmt, &out).unwrap();
            assert_eq!(got, cfg);
            let r = out.join("rootfs");
            assert_eq!(fs::read(r.join("etc/sub/file")).unwrap(), b"hello");
            let m = fs::metadata(r.join("etc/sub/file")).unwrap();
            assert_eq!(m.permissions().mode() & 0o7777, 0o4755);
            assert_eq!(
                m.ino(),
                fs::metadata(r.join("etc/link")).unwrap().ino(),
                "hard link kept"
            );
            assert_eq!(
                fs::read_link(r.join("abs")).unwrap(),
                Path::new("/etc/sub/file")
            );
            assert_eq!(
                fs::read(r.join(&long).join(&long).join("deep")).unwrap(),
                b"x"
            );
            assert!(r.join("var/lib/cloud/instance/sem").is_dir());
            assert!(
                !r.join("var/lib/cloud/instance/sem/stratus-user-data")
                    .exists()
            );
        }
        let _ = fs::remove_dir_all(&base);
    }

    #[test]
    fn padded_reader_keeps_its_size() {
        let mut out = Vec::new();
        Padded::new(&b"abc"[..], 5).read_to_end(&mut out).unwrap();
        assert_eq!(out, b"abc\0\0");
        out.clear();
        Padded::new((&b"abcdef"[..]).take(2), 2)
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"ab");
    }
}
