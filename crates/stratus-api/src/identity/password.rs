//! Password and secret hashing: Argon2id with OWASP's recommended cost,
//! stored as PHC strings (so the cost can be raised later and old hashes
//! still verify). Hashing is deliberately slow, so it runs on the blocking
//! pool, at most one per CPU at a time, never on the async workers.
//!
//! Verified-login cache: every `openstack` command logs in again with the
//! same password, so after a successful check we remember
//! `HMAC-SHA256(process key, stored hash, password)` for that credential for
//! a few minutes. A repeat login with the same password is then checked
//! against the tag instead of re-running Argon2. Only correct passwords are
//! remembered, so every wrong guess still costs a full Argon2 run; the tag
//! covers the stored hash, so a password change invalidates it; the key
//! lives only in this process's memory (anyone who can read that memory can
//! read passwords as they arrive anyway).

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::ApiError;

/// Argon2id parameters: 19 MiB, 2 passes, 1 lane (OWASP's first choice).
fn hasher() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).expect("valid Argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes a password into a PHC string. Slow: call from the blocking pool.
pub fn hash(password: &str) -> String {
    let mut salt = [0u8; 16];
    super::fernet::fill_random(&mut salt);
    hasher()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .expect("hashing with valid parameters cannot fail")
        .to_string()
}

/// Checks a password against a PHC string. Slow: call from the blocking pool.
pub fn verify(password: &str, phc: &str) -> bool {
    hasher().verify_password(password.as_bytes(), phc).is_ok()
}

const VERIFIED_MAX: usize = 10_000;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Limits concurrent hashing to the number of CPUs and keeps it off the
/// async workers.
pub struct Hashing {
    slots: tokio::sync::Semaphore,
    /// A hash of a random secret, checked when the user does not exist so an
    /// unknown user costs as much as a wrong password.
    decoy: String,
    cache_key: [u8; 32],
    /// How long a verified login is remembered; zero turns the cache off.
    ttl: std::time::Duration,
    verified: std::sync::Mutex<std::collections::HashMap<String, ([u8; 32], std::time::Instant)>>,
}

impl Hashing {
    pub fn new(verified_ttl: std::time::Duration) -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let mut secret = [0u8; 16];
        super::fernet::fill_random(&mut secret);
        let mut cache_key = [0u8; 32];
        super::fernet::fill_random(&mut cache_key);
        Hashing {
            slots: tokio::sync::Semaphore::new(cpus),
            decoy: hash(&format!("{secret:?}")),
            cache_key,
            ttl: verified_ttl,
            verified: Default::default(),
        }
    }

    fn tag(&self, phc: &str, password: &str) -> [u8; 32] {
        use hmac::{KeyInit, Mac};
        let mut mac =
            <HmacSha256 as KeyInit>::new_from_slice(&self.cache_key).expect("any key length");
        mac.update(phc.as_bytes());
        mac.update(&[0]);
        mac.update(password.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Verifies the password of credential `who` (a user or application
    /// credential id) against its stored hash `phc`; with `None` (no such
    /// credential) it checks the decoy and fails. Uses the verified-login
    /// cache described above.
    pub async fn verify_credential(
        &self,
        who: &str,
        password: String,
        phc: Option<String>,
    ) -> Result<bool, ApiError> {
        let Some(stored) = phc else {
            return self.verify(password, None).await;
        };
        if self.ttl.is_zero() {
            return self.verify(password, Some(stored)).await;
        }
        let tag = self.tag(&stored, &password);
        {
            let cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((t, at)) = cache.get(who)
                && at.elapsed() < self.ttl
                && constant_time_eq(t, &tag)
            {
                return Ok(true);
            }
        }
        let ok = self.verify(password, Some(stored)).await?;
        if ok {
            let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() >= VERIFIED_MAX {
                cache.retain(|_, (_, at)| at.elapsed() < self.ttl);
                if cache.len() >= VERIFIED_MAX {
                    cache.clear();
                }
            }
            cache.insert(who.to_string(), (tag, std::time::Instant::now()));
        }
        Ok(ok)
    }

    /// Verifies `password` against `phc`, or against the decoy when `None`,
    /// always with a full Argon2 run.
    pub async fn verify(&self, password: String, phc: Option<String>) -> Result<bool, ApiError> {
        let real = phc.is_some();
        let phc = phc.unwrap_or_else(|| self.decoy.clone());
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| ApiError::internal("shutting down"))?;
        let ok = tokio::task::spawn_blocking(move || verify(&password, &phc))
            .await
            .map_err(|_| ApiError::internal("password check failed"))?;
        Ok(real && ok)
    }

    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| ApiError::internal("shutting down"))?;
        tokio::task::spawn_blocking(move || hash(&password))
            .await
            .map_err(|_| ApiError::internal("password hashing failed"))
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn verified_cache_only_remembers_correct_passwords_for_the_same_hash() {
        let h = super::Hashing::new(std::time::Duration::from_secs(60));
        let phc = super::hash("right");
        assert!(
            !h.verify_credential("u", "wrong".into(), Some(phc.clone()))
                .await
                .unwrap()
        );
        assert!(
            h.verify_credential("u", "right".into(), Some(phc.clone()))
                .await
                .unwrap()
        );
        // Cached now: the right password passes, a wrong one still fails.
        assert!(
            h.verify_credential("u", "right".into(), Some(phc.clone()))
                .await
                .unwrap()
        );
        assert!(
            !h.verify_credential("u", "wrong".into(), Some(phc.clone()))
                .await
                .unwrap()
        );
        // A new stored hash (password changed) no longer matches the old password.
        let changed = super::hash("new");
        assert!(
            !h.verify_credential("u", "right".into(), Some(changed.clone()))
                .await
                .unwrap()
        );
        assert!(
            h.verify_credential("u", "new".into(), Some(changed))
                .await
                .unwrap()
        );
        assert!(
            !h.verify_credential("ghost", "right".into(), None)
                .await
                .unwrap()
        );
    }

    #[test]
    fn hash_verifies_only_the_right_password() {
        let h = super::hash("s3cret");
        assert!(h.starts_with("$argon2id$"));
        assert!(super::verify("s3cret", &h));
        assert!(!super::verify("s3cret ", &h));
        assert!(!super::verify("s3cret", "not a phc string"));
        assert_ne!(super::hash("s3cret"), h, "salted");
    }
}
