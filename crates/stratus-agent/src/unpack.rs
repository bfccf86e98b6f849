//! Unpacking container images (`docker save` and OCI image-layout
//! tarballs) into a root file system, layer by layer, with whiteouts.
//!
//! Layers are untrusted: entries are extracted with `tar`'s `unpack_in`,
//! which refuses `..`, absolute names and parents that resolve outside the
//! root through symlinks; whiteouts are resolved the same way.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use crate::DriverError;

/// The process an image asks for.
#[derive(Debug, Clone, Default)]
pub struct ImageProcess {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

impl ImageProcess {
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "Entrypoint": self.entrypoint, "Cmd": self.cmd, "Env": self.env,
            "WorkingDir": self.working_dir, "User": self.user,
        })
    }

    /// From an image config's `config` object (docker and OCI alike).
    pub fn from_config(c: &Value) -> Self {
        let list = |k: &str| -> Vec<String> {
            c.get(k)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let s = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        ImageProcess {
            entrypoint: list("Entrypoint"),
            cmd: list("Cmd"),
            env: list("Env"),
            working_dir: s("WorkingDir"),
            user: s("User"),
        }
    }
}

fn bad(msg: impl Into<String>) -> DriverError {
    DriverError::InvalidImage(msg.into())
}

/// Offsets of every regular file in the outer tarball, by normalised name.
fn index(path: &Path) -> Result<HashMap<String, (u64, u64)>, DriverError> {
    let mut ar = tar::Archive::new(File::open(path)?);
    let mut out = HashMap::new();
    for e in ar
        .entries()
        .map_err(|e| bad(format!("not a tar archive: {e}")))?
    {
        let e = e.map_err(|e| bad(format!("damaged tar archive: {e}")))?;
        if e.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let name = e
            .path()
            .map_err(|e| bad(e.to_string()))?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        out.insert(name, (e.raw_file_position(), e.size()));
    }
    Ok(out)
}

fn read_member(
    path: &Path,
    idx: &HashMap<String, (u64, u64)>,
    name: &str,
) -> Result<Vec<u8>, DriverError> {
    let (off, size) = *idx
        .get(name.trim_start_matches("./"))
        .ok_or_else(|| bad(format!("the image has no {name}")))?;
    if size > 64 << 20 {
        return Err(bad(format!("{name} is too large for a manifest or config")));
    }
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(off))?;
    let mut buf = vec![0; size as usize];
    f.read_exact(&mut buf)?;
    Ok(buf)
}

fn json(bytes: &[u8], what: &str) -> Result<Value, DriverError> {
    serde_json::from_slice(bytes).map_err(|e| bad(format!("{what} is not valid JSON: {e}")))
}

/// Offsets and sizes of the outer tarball's members, by name.
type Members = HashMap<String, (u64, u64)>;

/// The layers (in order) and the process of an image tarball.
fn layout(path: &Path, format: &str) -> Result<(Vec<String>, ImageProcess, Members), DriverError> {
    let idx = index(path)?;
    let (layers, config) = if format == "oci"
        || idx.contains_key("index.json") && !idx.contains_key("manifest.json")
    {
        let index = json(&read_member(path, &idx, "index.json")?, "index.json")?;
        let blob = |digest: &str| -> Result<String, DriverError> {
            let hex = digest
                .strip_prefix("sha256:")
                .ok_or_else(|| bad(format!("unsupported digest {digest}")))?;
            if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad(format!("bad digest {digest}")));
            }
            Ok(format!("blobs/sha256/{hex}"))
        };
        let mut manifest_digest = index["manifests"][0]["digest"]
            .as_str()
            .ok_or_else(|| bad("index.json names no manifest"))?
            .to_string();
        let mut manifest = json(
            &read_member(path, &idx, &blob(&manifest_digest)?)?,
            "manifest",
        )?;
        // A nested index (multi-platform): take its first manifest.
        for _ in 0..4 {
            if manifest.get("manifests").is_none() {
                break;
            }
            manifest_digest = manifest["manifests"][0]["digest"]
                .as_str()
                .ok_or_else(|| bad("nested index names no manifest"))?
                .to_string();
            manifest = json(
                &read_member(path, &idx, &blob(&manifest_digest)?)?,
                "manifest",
            )?;
        }
        let config = json(
            &read_member(
                path,
                &idx,
                &blob(
                    manifest["config"]["digest"]
                        .as_str()
                        .ok_or_else(|| bad("manifest has no config"))?,
                )?,
            )?,
            "image config",
        )?;
        let layers = manifest["layers"]
            .as_array()
            .ok_or_else(|| bad("manifest has no layers"))?
            .iter()
            .map(|l| blob(l["digest"].as_str().unwrap_or("")))
            .collect::<Result<Vec<_>, _>>()?;
        (layers, config)
    } else {
        let manifest = json(&read_member(path, &idx, "manifest.json")?, "manifest.json")?;
        let m = &manifest[0];
        let config = json(
            &read_member(
                path,
                &idx,
                m["Config"]
                    .as_str()
                    .ok_or_else(|| bad("manifest.json has no Config"))?,
            )?,
            "image config",
        )?;
        let layers = m["Layers"]
            .as_array()
            .ok_or_else(|| bad("manifest.json has no Layers"))?
            .iter()
            .map(|l| {
                l.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad("bad layer name"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        (layers, config)
    };
    let process = ImageProcess::from_config(config.get("config").unwrap_or(&Value::Null));
    Ok((layers, process, idx))
}

/// A reader over one member of the outer tarball.
fn member_reader(
    path: &Path,
    idx: &HashMap<String, (u64, u64)>,
    name: &str,
) -> Result<Box<dyn Read>, DriverError> {
    let (off, size) = *idx
        .get(name.trim_start_matches("./"))
        .ok_or_else(|| bad(format!("the image has no layer {name}")))?;
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(off))?;
    let mut head = [0u8; 2];
    let n = f.read(&mut head)?;
    f.seek(SeekFrom::Start(off))?;
    let r = BufReader::new(f).take(size);
    if n == 2 && head == [0x1f, 0x8b] {
        Ok(Box::new(flate2::read::GzDecoder::new(r)))
    } else {
        Ok(Box::new(r))
    }
}

/// Whether `p` stays inside the root: relative, no `..`.
fn safe_relative(p: &Path) -> bool {
    p.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// `dir` resolved through symlinks, if it is inside `root`.
fn inside(root: &Path, rel_dir: &Path) -> Option<PathBuf> {
    let canon_root = fs::canonicalize(root).ok()?;
    let p = fs::canonicalize(root.join(rel_dir)).ok()?;
    p.starts_with(&canon_root).then_some(p)
}

fn remove_any(p: &Path) {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            let _ = fs::remove_dir_all(p);
        }
        Ok(_) => {
            let _ = fs::remove_file(p);
        }
        Err(_) => {}
    }
}

/// Applies one layer onto `root`.
fn apply_layer(root: &Path, reader: Box<dyn Read>) -> Result<(), DriverError> {
    let mut ar = tar::Archive::new(reader);
    ar.set_preserve_permissions(true);
    ar.set_preserve_ownerships(true);
    ar.set_unpack_xattrs(false);
    ar.set_overwrite(true);
    let mut made: HashSet<PathBuf> = HashSet::new();
    for e in ar
        .entries()
        .map_err(|e| bad(format!("a layer is not a tar archive: {e}")))?
    {
        let mut e = e.map_err(|e| bad(format!("damaged layer: {e}")))?;
        let path = e.path().map_err(|e| bad(e.to_string()))?.into_owned();
        if !safe_relative(&path) {
            return Err(bad(format!(
                "a layer entry escapes the root file system: {}",
                path.display()
            )));
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
        if name == ".wh..wh..opq" {
            // Opaque directory: hide what lower layers put there.
            if let Some(dir) = inside(root, &parent) {
                for child in fs::read_dir(&dir)?.flatten() {
                    let rel = parent.join(child.file_name());
                    if !made.contains(&rel) {
                        remove_any(&child.path());
                    }
                }
            }
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            if let Some(dir) = inside(root, &parent)
                && !hidden.is_empty()
                && !hidden.contains('/')
                && hidden != "."
                && hidden != ".."
            {
                remove_any(&dir.join(hidden));
            }
            continue;
        }
        // Device nodes are never needed from an image; /dev is a tmpfs.
        if matches!(
            e.header().entry_type(),
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo
        ) {
            continue;
        }
        // A file replacing a directory (or the reverse) of a lower layer.
        if let Some(dir) = inside(root, &parent) {
            let target = dir.join(&name);
            if let Ok(m) = fs::symlink_metadata(&target) {
                let is_dir_entry = e.header().entry_type() == tar::EntryType::Directory;
                if m.is_dir() != is_dir_entry || m.file_type().is_symlink() {
                    remove_any(&target);
                }
            }
        }
        let ok = e.unpack_in(root).map_err(|err| {
            let why = std::error::Error::source(&err)
                .map(|s| s.to_string())
                .unwrap_or_default();
            bad(format!("cannot extract {}: {err} {why}", path.display()))
        })?;
        if !ok {
            return Err(bad(format!(
                "a layer entry escapes the root file system: {}",
                path.display()
            )));
        }
        made.insert(path);
    }
    Ok(())
}

/// Unpacks an image tarball into `root` (which must exist and be empty)
/// and returns the process the image asks for.
pub fn unpack(image: &Path, format: &str, root: &Path) -> Result<ImageProcess, DriverError> {
    let (layers, process, idx) = layout(image, format)?;
    for l in &layers {
        apply_layer(root, member_reader(image, &idx, l)?)?;
    }
    Ok(process)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_entry_type(tar::EntryType::Regular);
            // Write the raw name so `..` survives into the archive.
            let raw = h.as_old_mut();
            raw.name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn docker_image(layers: &[Vec<u8>]) -> Vec<u8> {
        let mut names = Vec::new();
        let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
        for (i, l) in layers.iter().enumerate() {
            let n = format!("l{i}/layer.tar");
            names.push(n.clone());
            entries.push((n, l.clone()));
        }
        entries.push((
            "c.json".into(),
            br#"{"config":{"Cmd":["/bin/true"],"Env":["A=1"]}}"#.to_vec(),
        ));
        let manifest = serde_json::json!([{"Config": "c.json", "Layers": names}]).to_string();
        entries.push(("manifest.json".into(), manifest.into_bytes()));
        let refs: Vec<(&str, &[u8])> = entries
            .iter()
            .map(|(n, d)| (n.as_str(), d.as_slice()))
            .collect();
        tar_of(&refs)
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("stratus-unpack-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn layers_apply_in_order_with_whiteouts() {
        let d = tmp("order");
        let img = d.join("img.tar");
        let l1 = tar_of(&[("etc/a", b"one"), ("etc/b", b"two"), ("opt/x/old", b"o")]);
        let l2 = tar_of(&[
            ("etc/a", b"three"),
            ("etc/.wh.b", b""),
            ("opt/x/.wh..wh..opq", b""),
            ("opt/x/new", b"n"),
        ]);
        fs::write(&img, docker_image(&[l1, l2])).unwrap();
        let root = d.join("root");
        fs::create_dir_all(&root).unwrap();
        let p = unpack(&img, "docker", &root).unwrap();
        assert_eq!(p.cmd, vec!["/bin/true"]);
        assert_eq!(p.env, vec!["A=1"]);
        assert_eq!(fs::read(root.join("etc/a")).unwrap(), b"three");
        assert!(!root.join("etc/b").exists());
        assert!(!root.join("opt/x/old").exists());
        assert!(root.join("opt/x/new").exists());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn traversal_is_refused() {
        let d = tmp("evil");
        let img = d.join("img.tar");
        fs::write(&img, docker_image(&[tar_of(&[("../escaped", b"x")])])).unwrap();
        let root = d.join("root");
        fs::create_dir_all(&root).unwrap();
        let e = unpack(&img, "docker", &root).unwrap_err();
        assert!(matches!(e, DriverError::InvalidImage(_)), "{e}");
        assert!(!d.join("escaped").exists());
        let _ = fs::remove_dir_all(&d);
    }
}
