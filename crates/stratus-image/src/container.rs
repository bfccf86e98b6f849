//! Container images: a `docker save` tarball or an OCI image-layout
//! tarball. The outer tar is indexed once (names, offsets, sizes; small
//! JSON files kept), then every layer the manifest names is streamed:
//! hashed, gunzipped when compressed, and walked as a tar.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Component, Path};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::InspectError;

/// What a valid container image holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerInfo {
    pub layers: usize,
    pub config_digest: Option<String>,
    pub architecture: Option<String>,
    pub os: Option<String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub repo_tags: Vec<String>,
}

/// JSON members larger than this are not metadata.
const MAX_JSON: u64 = 4 << 20;

fn bad(msg: impl Into<String>) -> InspectError {
    InspectError::Container(msg.into())
}

struct Member {
    offset: u64,
    size: u64,
}

struct Index {
    members: HashMap<String, Member>,
    small: HashMap<String, Vec<u8>>,
}

fn normalize(name: &str) -> String {
    name.trim_start_matches("./").to_string()
}

/// Lists the outer tarball, refusing unsafe member names.
fn index(path: &Path) -> Result<Index, InspectError> {
    let mut ar = tar::Archive::new(File::open(path)?);
    let mut idx = Index {
        members: HashMap::new(),
        small: HashMap::new(),
    };
    let entries = ar
        .entries()
        .map_err(|e| bad(format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("not a tar archive: {e}")))?;
        let p = entry
            .path()
            .map_err(|e| bad(format!("bad member name: {e}")))?
            .into_owned();
        if p.components().any(|c| {
            matches!(
                c,
                Component::ParentDir | Component::RootDir | Component::Prefix(_)
            )
        }) {
            return Err(bad(format!("unsafe member name {}", p.display())));
        }
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = normalize(&p.to_string_lossy());
        let size = entry.size();
        let offset = entry.raw_file_position();
        if size <= MAX_JSON
            && (name.ends_with(".json")
                || name == "oci-layout"
                || name == "repositories"
                || name.starts_with("blobs/") && size <= 64 * 1024)
        {
            let mut buf = Vec::with_capacity(size as usize);
            entry.read_to_end(&mut buf)?;
            idx.small.insert(name.clone(), buf);
        }
        idx.members.insert(name, Member { offset, size });
    }
    if idx.members.is_empty() {
        return Err(bad("the archive is empty"));
    }
    Ok(idx)
}

/// Reads the whole of `r`, hashing it.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
    count: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// sha256 and size of a layer's stored bytes, and sha256 of its
/// uncompressed tar (its diff id); fails when it is not a tar.
struct LayerSums {
    stored: String,
    stored_size: u64,
    diff_id: String,
}

fn layer_sums(path: &Path, m: &Member, name: &str) -> Result<LayerSums, InspectError> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(m.offset))?;
    let mut outer = Hashing {
        inner: BufReader::new(f.take(m.size)),
        hash: Sha256::new(),
        count: 0,
    };
    let mut magic = [0u8; 2];
    let gz = {
        let mut peek = File::open(path)?;
        peek.seek(SeekFrom::Start(m.offset))?;
        peek.read(&mut magic)? == 2 && magic == [0x1f, 0x8b]
    };
    let diff_id = if gz {
        let inner = Hashing {
            inner: flate2::read::GzDecoder::new(&mut outer),
            hash: Sha256::new(),
            count: 0,
        };
        walk_tar(inner, name)?
    } else {
        let inner = Hashing {
            inner: &mut outer,
            hash: Sha256::new(),
            count: 0,
        };
        walk_tar(inner, name)?
    };
    io::copy(&mut outer, &mut io::sink())?;
    if outer.count != m.size {
        return Err(bad(format!("layer {name} is truncated")));
    }
    Ok(LayerSums {
        stored: hex(&outer.hash.finalize()),
        stored_size: outer.count,
        diff_id,
    })
}

/// Walks a layer as a tar to its end; returns the sha256 of its bytes.
fn walk_tar<R: Read>(r: Hashing<R>, name: &str) -> Result<String, InspectError> {
    let mut ar = tar::Archive::new(r);
    {
        let entries = ar
            .entries()
            .map_err(|e| bad(format!("layer {name} is not a tar: {e}")))?;
        for e in entries {
            let mut e = e.map_err(|e| bad(format!("layer {name} is not a valid tar: {e}")))?;
            io::copy(&mut e, &mut io::sink())
                .map_err(|e| bad(format!("layer {name} is not a valid tar: {e}")))?;
        }
    }
    let mut r = ar.into_inner();
    io::copy(&mut r, &mut io::sink())
        .map_err(|e| bad(format!("layer {name} could not be read: {e}")))?;
    Ok(hex(&r.hash.finalize()))
}

fn json(idx: &Index, name: &str) -> Result<Value, InspectError> {
    let raw = idx
        .small
        .get(name)
        .ok_or_else(|| bad(format!("{name} is missing")))?;
    serde_json::from_slice(raw).map_err(|e| bad(format!("{name} is not valid JSON: {e}")))
}

fn strings(v: Option<&Value>) -> Option<Vec<String>> {
    v?.as_array().map(|a| {
        a.iter()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect()
    })
}

fn fill_config(info: &mut ContainerInfo, cfg: &Value) {
    info.architecture = cfg
        .get("architecture")
        .and_then(Value::as_str)
        .map(str::to_string);
    info.os = cfg.get("os").and_then(Value::as_str).map(str::to_string);
    info.entrypoint = strings(cfg.pointer("/config/Entrypoint"));
    info.cmd = strings(cfg.pointer("/config/Cmd"));
}

/// Validates a container image tarball (`docker` or `oci`); `bare` has
/// nothing to check.
pub fn check_container(path: &Path, container_format: &str) -> Result<ContainerInfo, InspectError> {
    match container_format {
        "bare" => Ok(ContainerInfo::default()),
        "docker" => docker(path),
        "oci" => oci(path),
        other => Err(bad(format!("unknown container format {other}"))),
    }
}

fn docker(path: &Path) -> Result<ContainerInfo, InspectError> {
    let idx = index(path)?;
    let manifest = json(&idx, "manifest.json")?;
    let entries = manifest
        .as_array()
        .ok_or_else(|| bad("manifest.json must be a list"))?;
    let first = entries
        .first()
        .ok_or_else(|| bad("manifest.json lists no image"))?;
    let mut info = ContainerInfo::default();
    for entry in entries {
        let config_name = entry
            .get("Config")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("manifest entry has no Config"))?;
        let config = json(&idx, &normalize(config_name))?;
        let diff_ids = strings(config.pointer("/rootfs/diff_ids"))
            .ok_or_else(|| bad("config has no rootfs.diff_ids"))?;
        let layers =
            strings(entry.get("Layers")).ok_or_else(|| bad("manifest entry has no Layers"))?;
        if layers.len() != diff_ids.len() {
            return Err(bad(format!(
                "{} layers but {} diff_ids in the config",
                layers.len(),
                diff_ids.len()
            )));
        }
        for (layer, diff) in layers.iter().zip(&diff_ids) {
            let name = normalize(layer);
            let m = idx
                .members
                .get(&name)
                .ok_or_else(|| bad(format!("layer {name} is missing")))?;
            let sums = layer_sums(path, m, &name)?;
            if diff.strip_prefix("sha256:") != Some(sums.diff_id.as_str()) {
                return Err(bad(format!(
                    "layer {name} does not match its diff_id {diff}"
                )));
            }
        }
        if std::ptr::eq(entry, first) {
            fill_config(&mut info, &config);
            info.layers = layers.len();
            info.config_digest = Some(format!(
                "sha256:{}",
                hex(&Sha256::digest(&idx.small[&normalize(config_name)]))
            ));
            info.repo_tags = strings(entry.get("RepoTags")).unwrap_or_default();
        }
    }
    Ok(info)
}

fn blob_name(digest: &str) -> Result<String, InspectError> {
    let hexpart = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| bad(format!("unsupported digest {digest}")))?;
    Ok(format!("blobs/sha256/{hexpart}"))
}

/// Checks a small blob's digest and size, and parses it.
fn small_blob(idx: &Index, desc: &Value) -> Result<Value, InspectError> {
    let digest = desc
        .get("digest")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("descriptor without digest"))?;
    let name = blob_name(digest)?;
    let raw = idx
        .small
        .get(&name)
        .ok_or_else(|| bad(format!("blob {digest} is missing")))?;
    if format!("sha256:{}", hex(&Sha256::digest(raw))) != digest {
        return Err(bad(format!("blob {digest} does not match its digest")));
    }
    if desc.get("size").and_then(Value::as_u64) != Some(raw.len() as u64) {
        return Err(bad(format!(
            "blob {digest} size differs from its descriptor"
        )));
    }
    serde_json::from_slice(raw).map_err(|e| bad(format!("blob {digest} is not JSON: {e}")))
}

fn oci(path: &Path) -> Result<ContainerInfo, InspectError> {
    let idx = index(path)?;
    let layout = json(&idx, "oci-layout")?;
    if layout
        .get("imageLayoutVersion")
        .and_then(Value::as_str)
        .is_none()
    {
        return Err(bad("oci-layout has no imageLayoutVersion"));
    }
    let index_doc = json(&idx, "index.json")?;
    let mut desc = index_doc
        .get("manifests")
        .and_then(Value::as_array)
        .and_then(|m| m.first())
        .cloned()
        .ok_or_else(|| bad("index.json lists no manifest"))?;
    // An index of indexes: go down to an image manifest (prefer linux/amd64).
    let mut manifest = small_blob(&idx, &desc)?;
    for _ in 0..4 {
        let Some(list) = manifest.get("manifests").and_then(Value::as_array) else {
            break;
        };
        desc = list
            .iter()
            .find(|d| d.pointer("/platform/architecture").and_then(Value::as_str) == Some("amd64"))
            .or(list.first())
            .cloned()
            .ok_or_else(|| bad("image index lists no manifest"))?;
        manifest = small_blob(&idx, &desc)?;
    }
    let config_desc = manifest
        .get("config")
        .ok_or_else(|| bad("manifest has no config"))?;
    let config = small_blob(&idx, config_desc)?;
    let layers = manifest
        .get("layers")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("manifest has no layers"))?;
    let diff_ids = strings(config.pointer("/rootfs/diff_ids")).unwrap_or_default();
    for (i, layer) in layers.iter().enumerate() {
        let digest = layer
            .get("digest")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("layer without digest"))?;
        let name = blob_name(digest)?;
        let m = idx
            .members
            .get(&name)
            .ok_or_else(|| bad(format!("layer {digest} is missing")))?;
        let sums = layer_sums(path, m, digest)?;
        if format!("sha256:{}", sums.stored) != digest {
            return Err(bad(format!("layer {digest} does not match its digest")));
        }
        if layer.get("size").and_then(Value::as_u64) != Some(sums.stored_size) {
            return Err(bad(format!(
                "layer {digest} size differs from its descriptor"
            )));
        }
        if let Some(d) = diff_ids.get(i)
            && d.strip_prefix("sha256:") != Some(sums.diff_id.as_str())
        {
            return Err(bad(format!("layer {digest} does not match diff_id {d}")));
        }
    }
    let mut info = ContainerInfo::default();
    fill_config(&mut info, &config);
    info.layers = layers.len();
    info.config_digest = config_desc
        .get("digest")
        .and_then(Value::as_str)
        .map(str::to_string);
    if let Some(tag) = desc
        .pointer("/annotations/org.opencontainers.image.ref.name")
        .and_then(Value::as_str)
    {
        info.repo_tags.push(tag.to_string());
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tar_of(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, &data[..]).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn sha(b: &[u8]) -> String {
        hex(&Sha256::digest(b))
    }

    fn write(name: &str, data: &[u8]) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("stratus-ctr-{}-{name}", std::process::id()));
        std::fs::write(&p, data).unwrap();
        p
    }

    fn docker_tar(layer: &[u8], diff: &str, extra: Option<(&str, Vec<u8>)>) -> Vec<u8> {
        let config =
            serde_json::json!({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff}")]}})
            .to_string()
            .into_bytes();
        let cname = format!("{}.json", sha(&config));
        let manifest = serde_json::json!([{"Config": cname, "RepoTags": ["t:latest"], "Layers": ["abc/layer.tar"]}]).to_string().into_bytes();
        let mut files = vec![
            ("abc/layer.tar", layer.to_vec()),
            (cname.as_str(), config.clone()),
            ("manifest.json", manifest),
        ];
        if let Some((n, d)) = &extra {
            files.push((n, d.clone()));
        }
        tar_of(&files)
    }

    #[test]
    fn docker_save_tarballs() {
        let layer = tar_of(&[("bin/busybox", vec![1, 2, 3])]);
        let good = write("good.tar", &docker_tar(&layer, &sha(&layer), None));
        let info = check_container(&good, "docker").unwrap();
        assert_eq!(info.layers, 1);
        assert_eq!(info.cmd, Some(vec!["sh".to_string()]));
        assert_eq!(info.repo_tags, vec!["t:latest"]);
        let wrong = write("wrong.tar", &docker_tar(&layer, &"0".repeat(64), None));
        assert!(
            check_container(&wrong, "docker")
                .unwrap_err()
                .to_string()
                .contains("diff_id")
        );
        let notar = write("notar.tar", &docker_tar(b"hello", &sha(b"hello"), None));
        assert!(check_container(&notar, "docker").is_err());
        let junk = write("junk.tar", b"certainly not a tar file at all");
        assert!(check_container(&junk, "docker").is_err());
        let empty = write("empty.tar", &tar_of(&[("manifest.json", b"[]".to_vec())]));
        assert!(
            check_container(&empty, "docker")
                .unwrap_err()
                .to_string()
                .contains("no image")
        );
        let missing = write(
            "missing.tar",
            &tar_of(&[
                (
                    "manifest.json",
                    br#"[{"Config":"c.json","Layers":["l.tar"]}]"#.to_vec(),
                ),
                (
                    "c.json",
                    br#"{"rootfs":{"diff_ids":["sha256:00"]}}"#.to_vec(),
                ),
            ]),
        );
        assert!(
            check_container(&missing, "docker")
                .unwrap_err()
                .to_string()
                .contains("missing")
        );
        // A member escaping with `..` (written raw: the builder refuses it).
        let mut evil = docker_tar(&layer, &sha(&layer), None);
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..10].copy_from_slice(b"../evil.sh");
        h.set_size(0);
        h.set_cksum();
        evil.truncate(evil.len() - 1024);
        evil.extend_from_slice(h.as_bytes());
        evil.extend_from_slice(&[0u8; 1024]);
        let evil = write("evil.tar", &evil);
        assert!(
            check_container(&evil, "docker")
                .unwrap_err()
                .to_string()
                .contains("unsafe")
        );
        for p in [good, wrong, notar, junk, empty, missing, evil] {
            let _ = std::fs::remove_file(p);
        }
    }

    #[test]
    fn oci_layouts() {
        let layer = tar_of(&[("bin/sh", vec![9; 100])]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&layer).unwrap();
        let gz = gz.finish().unwrap();
        let config = serde_json::json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha(&layer))]}}).to_string().into_bytes();
        let build = |layer_digest: &str| {
            let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{}", sha(&config)), "size": config.len()},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": gz.len()}]}).to_string().into_bytes();
            let index = serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": format!("sha256:{}", sha(&manifest)), "size": manifest.len(), "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}).to_string().into_bytes();
            tar_of(&[
                ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
                ("index.json", index),
                (
                    &format!("blobs/sha256/{}", sha(&manifest)),
                    manifest.clone(),
                ),
                (&format!("blobs/sha256/{}", sha(&config)), config.clone()),
                (&format!("blobs/sha256/{}", sha(&gz)), gz.clone()),
            ])
        };
        let good = write("oci.tar", &build(&format!("sha256:{}", sha(&gz))));
        let info = check_container(&good, "oci").unwrap();
        assert_eq!((info.layers, info.os.as_deref()), (1, Some("linux")));
        assert_eq!(info.repo_tags, vec!["latest"]);
        assert!(
            check_container(&good, "docker").is_err(),
            "an OCI layout has no manifest.json"
        );
        let bad = write("oci-bad.tar", &build(&format!("sha256:{}", "1".repeat(64))));
        assert!(
            check_container(&bad, "oci")
                .unwrap_err()
                .to_string()
                .contains("missing")
        );
        let _ = std::fs::remove_file(good);
        let _ = std::fs::remove_file(bad);
    }
}
