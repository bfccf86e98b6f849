//! Fernet tokens and the key repository.
//!
//! The token format is the Fernet spec (version 0x80, timestamp, IV,
//! AES-128-CBC ciphertext, HMAC-SHA256), URL-safe base64 without padding,
//! as Keystone emits. The repository follows `keystone-manage fernet_setup`
//! and `fernet_rotate`: files named by integers in one directory; `0` is
//! the staged key, the highest number is the primary (it signs new tokens),
//! and every key in the directory is accepted for validation, so tokens
//! issued before a rotation stay valid until their key is rotated out.
//!
//! The same format and layout serve a second repository, the credential
//! keys (Keystone's `[credential] key_repository`), which encrypt the
//! blobs of `/v3/credentials` at rest; see [`Repository`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use aes::cipher::block_padding::Pkcs7;
use aes::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use base64::Engine;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use hmac::{KeyInit, Mac};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;
type Enc = cbc::Encryptor<aes::Aes128>;
type Dec = cbc::Decryptor<aes::Aes128>;

/// How many keys the repository keeps (Keystone's `max_active_keys`).
pub const MAX_ACTIVE_KEYS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("fernet key repository {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("fernet key {0} is not a valid key")]
    BadKey(PathBuf),
    #[error("fernet key repository {0} has no keys; run `stratus admin fernet-setup`")]
    Empty(PathBuf),
}

#[derive(Clone)]
pub struct Key {
    signing: [u8; 16],
    encryption: [u8; 16],
    /// SHA-256 of the key, hex: names the key without revealing it
    /// (Keystone's credential `key_hash`).
    hash: String,
}

impl Key {
    fn parse(text: &str) -> Option<Key> {
        use sha2::Digest;
        let raw = URL_SAFE.decode(text.trim()).ok()?;
        if raw.len() != 32 {
            return None;
        }
        let mut k = Key {
            signing: [0; 16],
            encryption: [0; 16],
            hash: sha2::Sha256::digest(&raw)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        };
        k.signing.copy_from_slice(&raw[..16]);
        k.encryption.copy_from_slice(&raw[16..]);
        Some(k)
    }

    fn generate() -> String {
        let mut raw = [0u8; 32];
        fill_random(&mut raw);
        URL_SAFE.encode(raw)
    }

    fn mac(&self) -> HmacSha256 {
        <HmacSha256 as KeyInit>::new_from_slice(&self.signing)
            .expect("any key length works for HMAC")
    }
}

/// The keys loaded from a repository, primary first.
#[derive(Clone)]
pub struct KeyRing {
    keys: Vec<Key>,
}

impl KeyRing {
    /// Loads every key in `dir`, primary (highest index) first.
    pub fn load(dir: &Path) -> Result<KeyRing, KeyError> {
        let mut indexed = read_indices(dir)?;
        indexed.sort_by(|a, b| b.cmp(a));
        let mut keys = Vec::new();
        for i in indexed {
            let p = dir.join(i.to_string());
            let text = std::fs::read_to_string(&p).map_err(|e| KeyError::Io(p.clone(), e))?;
            keys.push(Key::parse(&text).ok_or(KeyError::BadKey(p))?);
        }
        if keys.is_empty() {
            return Err(KeyError::Empty(dir.to_path_buf()));
        }
        Ok(KeyRing { keys })
    }

    /// Encrypts `payload` into a token with the primary key.
    pub fn encrypt(&self, payload: &[u8], now_s: u64) -> String {
        let key = &self.keys[0];
        let mut iv = [0u8; 16];
        fill_random(&mut iv);
        let ct = Enc::new(&key.encryption.into(), &iv.into()).encrypt_padded_vec::<Pkcs7>(payload);
        let mut out = Vec::with_capacity(1 + 8 + 16 + ct.len() + 32);
        out.push(0x80);
        out.extend_from_slice(&now_s.to_be_bytes());
        out.extend_from_slice(&iv);
        out.extend_from_slice(&ct);
        let mut mac = key.mac();
        mac.update(&out);
        out.extend_from_slice(&mac.finalize().into_bytes());
        URL_SAFE_NO_PAD.encode(out)
    }

    /// The hash of the primary key (see [`KeyRing::encrypt`]).
    pub fn primary_hash(&self) -> &str {
        &self.keys[0].hash
    }

    /// Whether a key with this hash is in the ring.
    pub fn has_key(&self, hash: &str) -> bool {
        self.keys.iter().any(|k| k.hash == hash)
    }

    /// Verifies and decrypts a token with any key in the ring. Returns the
    /// payload and the Fernet timestamp.
    pub fn decrypt(&self, token: &str) -> Option<(Vec<u8>, u64)> {
        self.open(token, 4096)
    }

    /// Decrypts a stored secret (a credential blob) of any size with any
    /// key in the ring.
    pub fn decrypt_blob(&self, sealed: &str) -> Option<Vec<u8>> {
        self.open(sealed, usize::MAX).map(|(pt, _)| pt)
    }

    fn open(&self, token: &str, max_len: usize) -> Option<(Vec<u8>, u64)> {
        let trimmed = token.trim_end_matches('=');
        if trimmed.len() > max_len {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(trimmed).ok()?;
        if raw.len() < 1 + 8 + 16 + 16 + 32 || raw[0] != 0x80 || (raw.len() - 57) % 16 != 0 {
            return None;
        }
        let (signed, tag) = raw.split_at(raw.len() - 32);
        let key = self.keys.iter().find(|k| {
            let mut mac = k.mac();
            mac.update(signed);
            mac.verify_slice(tag).is_ok()
        })?;
        let ts = u64::from_be_bytes(signed[1..9].try_into().ok()?);
        let iv: [u8; 16] = signed[9..25].try_into().ok()?;
        let pt = Dec::new(&key.encryption.into(), &iv.into())
            .decrypt_padded_vec::<Pkcs7>(&signed[25..])
            .ok()?;
        Some((pt, ts))
    }
}

fn read_indices(dir: &Path) -> Result<Vec<u64>, KeyError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(KeyError::Io(dir.to_path_buf(), e)),
    };
    Ok(rd
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()))
        .collect())
}

fn write_key(dir: &Path, index: u64) -> Result<(), KeyError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dir.join(format!(".{index}.tmp"));
    let fin = dir.join(index.to_string());
    let io = |e| KeyError::Io(fin.clone(), e);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(Key::generate().as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, &fin).map_err(io)?;
    Ok(())
}

/// Creates the repository with a staged and a primary key if it has none.
/// Returns whether keys were created.
pub fn setup(dir: &Path) -> Result<bool, KeyError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(|e| KeyError::Io(dir.to_path_buf(), e))?;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    if !read_indices(dir)?.is_empty() {
        return Ok(false);
    }
    write_key(dir, 0)?;
    rotate(dir)?;
    Ok(true)
}

/// Rotates: the staged key becomes the new primary, a new staged key is
/// made, and the oldest keys beyond [`MAX_ACTIVE_KEYS`] are removed.
/// Returns the new primary's index.
pub fn rotate(dir: &Path) -> Result<u64, KeyError> {
    let mut idx = read_indices(dir)?;
    if idx.is_empty() {
        return Err(KeyError::Empty(dir.to_path_buf()));
    }
    idx.sort();
    let new_primary = idx.last().copied().unwrap_or(0) + 1;
    let staged = dir.join("0");
    if staged.exists() {
        std::fs::rename(&staged, dir.join(new_primary.to_string()))
            .map_err(|e| KeyError::Io(staged.clone(), e))?;
    } else {
        write_key(dir, new_primary)?;
    }
    write_key(dir, 0)?;
    let mut idx = read_indices(dir)?;
    idx.sort();
    // Keep the staged key plus the newest MAX_ACTIVE_KEYS - 1 others.
    let others: Vec<u64> = idx.into_iter().filter(|i| *i != 0).collect();
    let excess = (others.len() + 1).saturating_sub(MAX_ACTIVE_KEYS);
    for i in others.iter().take(excess) {
        let p = dir.join(i.to_string());
        std::fs::remove_file(&p).map_err(|e| KeyError::Io(p, e))?;
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(new_primary)
}

/// A key repository held in memory and reloaded when its directory
/// changes on disk (a rotation by `stratus admin` while the server runs).
pub struct Repository {
    dir: PathBuf,
    ring: RwLock<Arc<KeyRing>>,
    seen: Mutex<Option<SystemTime>>,
}

impl Repository {
    /// Sets the repository up if it has no keys, and loads it.
    pub fn open(dir: &Path) -> Result<Repository, KeyError> {
        setup(dir)?;
        let seen = dir_mtime(dir);
        Ok(Repository {
            ring: RwLock::new(Arc::new(KeyRing::load(dir)?)),
            dir: dir.to_path_buf(),
            seen: Mutex::new(seen),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn ring(&self) -> Arc<KeyRing> {
        self.ring.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reloads the keys if the directory changed since they were loaded
    /// (one `stat`); with `force`, reloads in any case.
    pub fn refresh(&self, force: bool) -> Result<Arc<KeyRing>, KeyError> {
        let now = dir_mtime(&self.dir);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if !force && *seen == now {
            return Ok(self.ring());
        }
        let ring = Arc::new(KeyRing::load(&self.dir)?);
        *self.ring.write().unwrap_or_else(|p| p.into_inner()) = ring.clone();
        *seen = now;
        Ok(ring)
    }
}

fn dir_mtime(dir: &Path) -> Option<SystemTime> {
    std::fs::metadata(dir).and_then(|m| m.modified()).ok()
}

/// Fills `buf` from the OS random source.
pub fn fill_random(buf: &mut [u8]) {
    getrandom::fill(buf).expect("the OS random source is available");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("stratus-fernet-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn round_trip_and_tamper() {
        let d = tmpdir("rt");
        assert!(setup(&d).unwrap());
        assert!(!setup(&d).unwrap());
        let ring = KeyRing::load(&d).unwrap();
        let tok = ring.encrypt(b"hello payload", 1234);
        assert!(!tok.contains('='));
        assert_eq!(ring.decrypt(&tok), Some((b"hello payload".to_vec(), 1234)));
        let mut bad = tok.clone().into_bytes();
        let mid = bad.len() / 2;
        bad[mid] = if bad[mid] == b'A' { b'B' } else { b'A' };
        assert_eq!(ring.decrypt(std::str::from_utf8(&bad).unwrap()), None);
        assert_eq!(ring.decrypt("garbage"), None);
    }

    #[test]
    fn blobs_of_any_size_and_key_hashes() {
        let d = tmpdir("blob");
        setup(&d).unwrap();
        let ring = KeyRing::load(&d).unwrap();
        let big = vec![b'x'; 10_000];
        let sealed = ring.encrypt(&big, 1);
        assert_eq!(ring.decrypt(&sealed), None, "tokens stay short");
        assert_eq!(ring.decrypt_blob(&sealed), Some(big));
        let old = ring.primary_hash().to_string();
        assert_eq!(old.len(), 64);
        let repo = Repository::open(&d).unwrap();
        rotate(&d).unwrap();
        let ring = repo.refresh(true).unwrap();
        assert_ne!(ring.primary_hash(), old);
        assert!(ring.has_key(&old), "the previous primary stays for reading");
    }

    #[test]
    fn rotation_keeps_previous_key_until_rotated_out() {
        let d = tmpdir("rot");
        setup(&d).unwrap();
        let old = KeyRing::load(&d).unwrap().encrypt(b"x", 1);
        rotate(&d).unwrap();
        let ring = KeyRing::load(&d).unwrap();
        assert!(
            ring.decrypt(&old).is_some(),
            "previous primary still validates"
        );
        rotate(&d).unwrap();
        rotate(&d).unwrap();
        assert_eq!(read_indices(&d).unwrap().len(), MAX_ACTIVE_KEYS);
        assert!(
            KeyRing::load(&d).unwrap().decrypt(&old).is_none(),
            "rotated out"
        );
    }
}
