//! Password and secret hashing: Argon2id with OWASP's recommended cost,
//! stored as PHC strings (so the cost can be raised later and old hashes
//! still verify). Hashing is deliberately slow, so it runs on the blocking
//! pool, at most one per CPU at a time, never on the async workers.

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

/// Limits concurrent hashing to the number of CPUs and keeps it off the
/// async workers.
pub struct Hashing {
    slots: tokio::sync::Semaphore,
    /// A hash of a random secret, checked when the user does not exist so an
    /// unknown user costs as much as a wrong password.
    decoy: String,
}

impl Hashing {
    pub fn new() -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let mut secret = [0u8; 16];
        super::fernet::fill_random(&mut secret);
        Hashing {
            slots: tokio::sync::Semaphore::new(cpus),
            decoy: hash(&format!("{secret:?}")),
        }
    }

    /// Verifies `password` against `phc`, or against the decoy when `None`.
    pub async fn verify(&self, password: String, phc: Option<String>) -> Result<bool, ApiError> {
        let real = phc.is_some();
        let phc = phc.unwrap_or_else(|| self.decoy.clone());
        let _slot = self.slots.acquire().await.map_err(|_| ApiError::internal("shutting down"))?;
        let ok = tokio::task::spawn_blocking(move || verify(&password, &phc))
            .await
            .map_err(|_| ApiError::internal("password check failed"))?;
        Ok(real && ok)
    }

    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        let _slot = self.slots.acquire().await.map_err(|_| ApiError::internal("shutting down"))?;
        tokio::task::spawn_blocking(move || hash(&password))
            .await
            .map_err(|_| ApiError::internal("password hashing failed"))
    }
}

impl Default for Hashing {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
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
