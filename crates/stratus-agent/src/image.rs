//! Container images: unpack a `docker save` or OCI image-layout tarball
//! into a root file system, once per node.
//!
//! Layout under the cache directory (`state_dir/images`):
//!
//! ```text
//! <image_id>/rootfs        the unpacked layers (shared by every instance,
//!                          read-only by convention: overlay lower dir)
//! <image_id>/config.json   the parts of the image config we run with
//! <image_id>/complete      written last: the entry is whole
//! .tmp-<image_id>-<pid>-<n>/  work in progress, renamed into place
//! ```
//!
//! Unpacking happens in a temporary directory that is renamed into place
//! when done, so a crash never leaves a half rootfs where a reader could
//! find it.
//!
//! Layers are untrusted input extracted as root. Entry names with `..` or a
//! leading `/` are refused; symlinks already in the rootfs are resolved as
//! if the rootfs were `/` (an absolute link stays inside) and one that would
//! climb out of it is refused; the last component of a name is never
//! followed (an existing entry is replaced, files are created with
//! `O_EXCL`). Device nodes are skipped (the runtime provides `/dev`).

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::DriverError;

/// The parts of an image's config that decide how it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

fn bad(msg: impl Into<String>) -> DriverError {
    DriverError::InvalidImage(msg.into())
}

/// Where the member files of the outer tarball are.
struct Outer {
    path: PathBuf,
    members: std::collections::HashMap<String, (u64, u64)>,
}

fn normalize(name: &[u8]) -> String {
    let s = String::from_utf8_lossy(name);
    let mut s = s.trim_start_matches("./").to_string();
    while s.ends_with('/') {
        s.pop();
    }
    s
}

impl Outer {
    fn open(path: &Path) -> Result<Outer, DriverError> {
        let f = File::open(path)
            .map_err(|e| bad(format!("cannot open image file {}: {e}", path.display())))?;
        let mut ar = tar::Archive::new(BufReader::new(f));
        let mut members = std::collections::HashMap::new();
        let entries = ar
            .entries()
            .map_err(|e| bad(format!("image file is not a tar archive: {e}")))?;
        for e in entries {
            let e = e.map_err(|e| bad(format!("image file is not a valid tar archive: {e}")))?;
            if e.header().entry_type().is_file() {
                let name = normalize(&e.path_bytes());
                members.insert(name, (e.raw_file_position(), e.size()));
            }
        }
        Ok(Outer {
            path: path.to_path_buf(),
            members,
        })
    }

    fn reader(&self, name: &str) -> Result<io::Take<File>, DriverError> {
        let &(off, size) = self
            .members
            .get(name)
            .ok_or_else(|| bad(format!("{name} is missing from the image tarball")))?;
        let mut f = File::open(&self.path)?;
        f.seek(SeekFrom::Start(off))?;
        Ok(f.take(size))
    }

    fn json(&self, name: &str) -> Result<Value, DriverError> {
        let mut buf = Vec::new();
        self.reader(name)?.take(16 << 20).read_to_end(&mut buf)?;
        serde_json::from_slice(&buf).map_err(|e| bad(format!("{name} is not valid JSON: {e}")))
    }
}

fn blob_name(desc: &Value) -> Result<String, DriverError> {
    let digest = desc["digest"]
        .as_str()
        .ok_or_else(|| bad("descriptor without a digest"))?;
    let (alg, hex) = digest
        .split_once(':')
        .ok_or_else(|| bad(format!("malformed digest {digest:?}")))?;
    if alg.is_empty()
        || hex.is_empty()
        || !alg.bytes().all(|b| b.is_ascii_alphanumeric())
        || !hex.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(bad(format!("malformed digest {digest:?}")));
    }
    Ok(format!("blobs/{alg}/{hex}"))
}

/// The config and the layer member names, for either format.
fn manifest(outer: &Outer, container_format: &str) -> Result<(Value, Vec<String>), DriverError> {
    let oci = outer.members.contains_key("index.json");
    let docker = outer.members.contains_key("manifest.json");
    match container_format {
        "docker" if docker => {
            let m = outer.json("manifest.json")?;
            let m = m
                .as_array()
                .and_then(|a| a.first())
                .ok_or_else(|| bad("manifest.json lists no image"))?;
            let cfg = m["Config"]
                .as_str()
                .ok_or_else(|| bad("manifest.json has no Config"))?;
            let layers = m["Layers"]
                .as_array()
                .ok_or_else(|| bad("manifest.json has no Layers"))?
                .iter()
                .map(|l| l.as_str().map(|s| normalize(s.as_bytes())))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad("manifest.json: Layers must be strings"))?;
            Ok((outer.json(&normalize(cfg.as_bytes()))?, layers))
        }
        "oci" | "docker" if oci => {
            let mut desc = outer
                .json("index.json")?
                .get("manifests")
                .and_then(|m| pick_manifest(m.as_array()?))
                .ok_or_else(|| bad("index.json lists no manifest"))?;
            // Nested indexes (multi-platform images): follow to a manifest.
            for _ in 0..4 {
                let m = outer.json(&blob_name(&desc)?)?;
                if let Some(list) = m.get("manifests").and_then(|v| v.as_array()) {
                    desc = pick_manifest(list).ok_or_else(|| bad("empty image index"))?;
                    continue;
                }
                let cfg = outer.json(&blob_name(&m["config"])?)?;
                let layers = m["layers"]
                    .as_array()
                    .ok_or_else(|| bad("manifest has no layers"))?
                    .iter()
                    .map(blob_name)
                    .collect::<Result<Vec<_>, _>>()?;
                return Ok((cfg, layers));
            }
            Err(bad("image indexes nested too deep"))
        }
        "docker" | "oci" => Err(bad(format!(
            "not a {container_format} image: the tarball has neither manifest.json nor index.json"
        ))),
        other => Err(bad(format!(
            "container_format {other:?} cannot be run by the container driver (docker or oci)"
        ))),
    }
}

/// The linux/<this arch> manifest of an index, or the first one.
fn pick_manifest(list: &[Value]) -> Option<Value> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    };
    list.iter()
        .find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == arch)
        .or_else(|| list.first())
        .cloned()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn image_config(cfg: &Value) -> ImageConfig {
    let c = &cfg["config"];
    ImageConfig {
        entrypoint: strings(&c["Entrypoint"]),
        cmd: strings(&c["Cmd"]),
        env: strings(&c["Env"]),
        working_dir: c["WorkingDir"].as_str().unwrap_or("").to_string(),
        user: c["User"].as_str().unwrap_or("").to_string(),
    }
}

/// Unpack `file` into `dest` (which must not exist yet): the rootfs and the
/// image config, in a temporary directory renamed into place at the end.
pub(crate) fn unpack(
    file: &Path,
    container_format: &str,
    dest: &Path,
) -> Result<ImageConfig, DriverError> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let parent = dest
        .parent()
        .ok_or_else(|| bad("cache entry has no parent"))?;
    let tmp = parent.join(format!(
        ".tmp-{}-{}-{}",
        dest.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = unpack_into(file, container_format, &tmp).and_then(|cfg| {
        match fs::rename(&tmp, dest) {
            Ok(()) => Ok(cfg),
            // Someone else finished first: theirs is as good as ours.
            Err(_) if dest.join("complete").exists() => {
                let _ = fs::remove_dir_all(&tmp);
                Ok(cfg)
            }
            Err(e) => Err(e.into()),
        }
    });
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

fn unpack_into(
    file: &Path,
    container_format: &str,
    tmp: &Path,
) -> Result<ImageConfig, DriverError> {
    let outer = Outer::open(file)?;
    let (cfg, layers) = manifest(&outer, container_format)?;
    let config = image_config(&cfg);
    let rootfs = tmp.join("rootfs");
    fs::create_dir_all(&rootfs)?;
    fs::set_permissions(&rootfs, fs::Permissions::from_mode(0o755))?;
    for (i, layer) in layers.iter().enumerate() {
        apply_layer(&rootfs, outer.reader(layer)?).map_err(|e| match e {
            DriverError::InvalidImage(m) => bad(format!("layer {} ({layer}): {m}", i + 1)),
            DriverError::Io(e) => bad(format!("layer {} ({layer}) cannot be unpacked: {e}", i + 1)),
            e => e,
        })?;
    }
    fs::write(
        tmp.join("config.json"),
        serde_json::to_vec_pretty(&config).unwrap_or_default(),
    )?;
    File::create(tmp.join("complete"))?.sync_all()?;
    Ok(config)
}

/// Read a cached entry's config.
pub(crate) fn cached_config(dir: &Path) -> Option<ImageConfig> {
    if !dir.join("complete").exists() {
        return None;
    }
    serde_json::from_slice(&fs::read(dir.join("config.json")).ok()?).ok()
}

/// A layer stream, decompressed as its first bytes say.
fn decompress<'a, R: Read + 'a>(r: R) -> Result<Box<dyn Read + 'a>, DriverError> {
    let mut r = BufReader::with_capacity(256 << 10, r);
    let head = r.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(r)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Err(bad("zstd-compressed layers are not supported yet"))
    } else {
        Ok(Box::new(r))
    }
}

/// The components of an entry name, refusing absolute names and `..`.
fn components(raw: &[u8]) -> Result<Vec<OsString>, DriverError> {
    let shown = String::from_utf8_lossy(raw);
    if raw.starts_with(b"/") {
        return Err(bad(format!("absolute path {shown:?} in layer")));
    }
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(bad(format!("path traversal {shown:?} in layer"))),
            c => out.push(OsStr::from_bytes(c).to_os_string()),
        }
    }
    Ok(out)
}

/// Resolve `comps` (directories) below `root`, following symlinks already
/// in the rootfs as if it were `/`, creating missing directories. Returns
/// the real directory path. A link climbing above the root is refused.
fn resolve_dir(
    root: &Path,
    comps: &[OsString],
    written: &mut HashSet<PathBuf>,
) -> Result<PathBuf, DriverError> {
    let mut cur = PathBuf::new();
    let mut todo: std::collections::VecDeque<OsString> = comps.iter().cloned().collect();
    let mut hops = 0;
    while let Some(c) = todo.pop_front() {
        if c == ".." {
            if !cur.pop() {
                return Err(bad(format!(
                    "a symlink on the way to {:?} points outside the image root",
                    comps
                        .iter()
                        .map(|c| c.to_string_lossy())
                        .collect::<Vec<_>>()
                        .join("/")
                )));
            }
            continue;
        }
        if c.is_empty() || c == "." {
            continue;
        }
        let p = root.join(&cur).join(&c);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    return Err(bad(format!(
                        "too many symlinks at {}",
                        cur.join(&c).display()
                    )));
                }
                let target = fs::read_link(&p)?;
                let tb = target.as_os_str().as_bytes();
                if tb.starts_with(b"/") {
                    cur = PathBuf::new();
                }
                for t in tb.split(|&b| b == b'/').rev() {
                    todo.push_front(OsStr::from_bytes(t).to_os_string());
                }
            }
            Ok(m) if m.is_dir() => cur.push(&c),
            Ok(_) => {
                return Err(bad(format!(
                    "{} is not a directory",
                    cur.join(&c).display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&p)?;
                fs::set_permissions(&p, fs::Permissions::from_mode(0o755))?;
                cur.push(&c);
                written.insert(cur.clone());
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(root.join(cur))
}

/// Remove whatever is at `p` without following a symlink there.
fn remove_any(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Apply one layer (tar, possibly compressed) on top of `root`, with
/// whiteouts.
pub(crate) fn apply_layer(root: &Path, r: impl Read) -> Result<(), DriverError> {
    let mut ar = tar::Archive::new(decompress(r)?);
    // Paths (relative to root, resolved) this layer wrote: an opaque
    // whiteout removes only what lower layers had.
    let mut written: HashSet<PathBuf> = HashSet::new();
    let entries = ar
        .entries()
        .map_err(|e| bad(format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut e = entry.map_err(|e| bad(format!("corrupt tar entry: {e}")))?;
        let comps = components(&e.path_bytes())?;
        let Some((name, parents)) = comps.split_last() else {
            continue; // the root itself
        };
        let dir = resolve_dir(root, parents, &mut written)?;
        let rel_dir = dir
            .strip_prefix(root)
            .unwrap_or(Path::new(""))
            .to_path_buf();
        let name_b = name.as_bytes();
        if name_b == b".wh..wh..opq" {
            for child in fs::read_dir(&dir)? {
                let child = child?;
                if !written.contains(&rel_dir.join(child.file_name())) {
                    remove_any(&child.path())?;
                }
            }
            continue;
        }
        if let Some(victim) = name_b.strip_prefix(b".wh.") {
            remove_any(&dir.join(OsStr::from_bytes(victim)))?;
            continue;
        }
        let target = dir.join(name);
        written.insert(rel_dir.join(name));
        let h = e.header();
        let kind = h.entry_type();
        let mode = h.mode().unwrap_or(0o644) & 0o7777;
        let (uid, gid) = (h.uid().unwrap_or(0), h.gid().unwrap_or(0));
        let mtime = h.mtime().unwrap_or(0);
        let existing = fs::symlink_metadata(&target).ok();
        if kind.is_dir() {
            if !existing.as_ref().is_some_and(|m| m.is_dir()) {
                remove_any(&target)?;
                fs::create_dir(&target)?;
            }
        } else {
            remove_any(&target)?;
        }
        match kind {
            k if k.is_dir() => {}
            k if k.is_file() => {
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&target)?;
                io::copy(&mut e, &mut f)?;
                let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime);
                let _ = f.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t));
            }
            k if k.is_symlink() => {
                let link = e
                    .link_name_bytes()
                    .ok_or_else(|| bad(format!("symlink {} has no target", target.display())))?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&link), &target)?;
                let _ = std::os::unix::fs::lchown(&target, Some(uid as u32), Some(gid as u32));
                continue;
            }
            k if k.is_hard_link() => {
                let link = e
                    .link_name_bytes()
                    .ok_or_else(|| bad(format!("hard link {} has no target", target.display())))?;
                let lc = components(&link)?;
                let Some((lname, lparents)) = lc.split_last() else {
                    return Err(bad("hard link to the root"));
                };
                let src = resolve_dir(root, lparents, &mut written)?.join(lname);
                if fs::symlink_metadata(&src)
                    .map(|m| m.is_dir())
                    .unwrap_or(true)
                {
                    return Err(bad(format!(
                        "hard link {} points at a missing file or a directory",
                        target.display()
                    )));
                }
                fs::hard_link(&src, &target)?;
                continue;
            }
            k if k.is_character_special() || k.is_block_special() || k.is_fifo() => {
                tracing::debug!(path = %target.display(), "skipping device node or fifo in layer");
                continue;
            }
            _ => {
                tracing::debug!(path = %target.display(), ?kind, "skipping unsupported tar entry");
                continue;
            }
        }
        // Owner first: chown clears set-uid bits, the mode puts them back.
        std::os::unix::fs::lchown(&target, Some(uid as u32), Some(gid as u32))?;
        fs::set_permissions(&target, fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        static N: AtomicU64 = AtomicU64::new(0);
        let d = std::env::temp_dir().join(format!(
            "stratus-agent-image-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    enum E<'a> {
        File(&'a str, &'a [u8]),
        Dir(&'a str),
        Link(&'a str, &'a str),
        Hard(&'a str, &'a str),
    }

    /// A tar built header by header, so names the tar crate refuses to
    /// write (`..`, absolute) can be tested too.
    fn layer(entries: &[E]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            let mut h = tar::Header::new_gnu();
            let (name, kind, data, link): (&str, tar::EntryType, &[u8], Option<&str>) = match e {
                E::File(n, d) => (n, tar::EntryType::Regular, d, None),
                E::Dir(n) => (n, tar::EntryType::Directory, b"", None),
                E::Link(n, t) => (n, tar::EntryType::Symlink, b"", Some(t)),
                E::Hard(n, t) => (n, tar::EntryType::Link, b"", Some(t)),
            };
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(t) = link {
                h.as_old_mut().linkname[..t.len()].copy_from_slice(t.as_bytes());
            }
            h.set_entry_type(kind);
            h.set_size(data.len() as u64);
            h.set_mode(if kind == tar::EntryType::Directory {
                0o755
            } else {
                0o644
            });
            h.set_cksum();
            b.append(&h, data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn whiteouts_and_links() {
        let root = tmpdir("wh");
        apply_layer(
            &root,
            &layer(&[
                E::Dir("etc/"),
                E::File("etc/a", b"a"),
                E::File("etc/b", b"b"),
                E::Dir("var/"),
                E::File("var/old", b"o"),
                E::Dir("usr/lib/"),
                E::Link("lib", "/usr/lib"),
                E::File("./keep", b"k"),
            ])[..],
        )
        .unwrap();
        apply_layer(
            &root,
            &layer(&[
                E::File("etc/.wh.a", b""),
                E::File("var/new", b"n"),
                E::File("var/.wh..wh..opq", b""),
                E::File("lib/libx.so", b"x"),
                E::Hard("keep2", "keep"),
            ])[..],
        )
        .unwrap();
        assert!(!root.join("etc/a").exists());
        assert!(root.join("etc/b").exists());
        assert!(!root.join("var/old").exists());
        assert_eq!(fs::read(root.join("var/new")).unwrap(), b"n");
        // Through the absolute symlink, but inside the root.
        assert_eq!(fs::read(root.join("usr/lib/libx.so")).unwrap(), b"x");
        assert_eq!(fs::read(root.join("keep2")).unwrap(), b"k");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn traversal_refused() {
        let root = tmpdir("trav");
        let outside = root.join("outside");
        fs::create_dir(&outside).unwrap();
        let inner = root.join("r");
        fs::create_dir(&inner).unwrap();
        let cases: Vec<Vec<u8>> = vec![
            layer(&[E::File("../outside/x", b"evil")]),
            layer(&[E::File("/etc/evil", b"evil")]),
            layer(&[E::Link("up", "../outside"), E::File("up/x", b"evil")]),
            layer(&[E::Hard("h", "../outside/y")]),
        ];
        for (i, l) in cases.iter().enumerate() {
            match apply_layer(&inner, &l[..]) {
                Err(DriverError::InvalidImage(m)) => eprintln!("case {i}: {m}"),
                other => panic!("case {i}: {other:?}"),
            }
        }
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
        // An existing symlink named like a new file is replaced, not followed.
        let inner2 = root.join("r2");
        fs::create_dir(&inner2).unwrap();
        apply_layer(&inner2, &layer(&[E::Link("f", "/../../outside/z")])[..]).unwrap();
        apply_layer(&inner2, &layer(&[E::File("f", b"ok")])[..]).unwrap();
        assert_eq!(fs::read(inner2.join("f")).unwrap(), b"ok");
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
        fs::remove_dir_all(&root).unwrap();
    }
}
