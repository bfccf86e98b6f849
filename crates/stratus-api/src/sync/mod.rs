//! Cloud-to-edge sync (see `docs/edge-sync.md`): a site controller dials
//! its parent, joins it once with a token for a client certificate, and
//! from then on exchanges over mutual TLS. Downward, the parent streams
//! the changes of its change log that the site needs; the site applies
//! each batch in one store transaction together with its cursor, so a
//! batch delivered twice is a no-op and a kill -9 loses nothing. Applied
//! changes land in the site's own change log, so its agents, scheduler and
//! identity caches react to them as to a local write.
//!
//! - [`pki`]: the site CA and certificates;
//! - [`parent`]: the parent's side (join, exchange, the sites API);
//! - [`listener`]: the parent's TLS sync listener;
//! - [`link`]: the site's side (join, the dial-out exchange loop).
//!
//! What goes down today: identity (except the parent's own node agents'
//! users and the catalog, which each controller keeps for itself, and
//! credential blobs), flavors, key pairs, compute quotas, image metadata
//! and members, and the Fernet keys. Servers going down and their status
//! coming back up are the next slice.

pub mod link;
pub mod listener;
pub mod parent;
pub mod pki;

use std::path::Path;

use serde_json::Value;
use stratus_store::{Record, StoreError, Tx};
use stratus_wire::sync::SyncChange;

use crate::compute::model::{Flavor, Keypair, QuotaSet};
use crate::identity::model as id;
use crate::identity::node_users::{NODE_ROLE, NODES_DOMAIN_ID, NODES_PROJECT_ID};
use crate::image::model::{Image, Member};

/// Calls `$f::<T>` for the record type of kind `$kind`, for every kind
/// that goes down; `$none` otherwise.
macro_rules! by_kind {
    ($kind:expr, $f:ident ( $($arg:expr),* ), $none:expr) => {
        match $kind {
            k if k == id::Domain::KIND => $f::<id::Domain>($($arg),*),
            k if k == id::Project::KIND => $f::<id::Project>($($arg),*),
            k if k == id::User::KIND => $f::<id::User>($($arg),*),
            k if k == id::Group::KIND => $f::<id::Group>($($arg),*),
            k if k == id::Membership::KIND => $f::<id::Membership>($($arg),*),
            k if k == id::Role::KIND => $f::<id::Role>($($arg),*),
            k if k == id::Inference::KIND => $f::<id::Inference>($($arg),*),
            k if k == id::Assignment::KIND => $f::<id::Assignment>($($arg),*),
            k if k == id::Revocation::KIND => $f::<id::Revocation>($($arg),*),
            k if k == id::AppCredential::KIND => $f::<id::AppCredential>($($arg),*),
            k if k == id::AccessRule::KIND => $f::<id::AccessRule>($($arg),*),
            k if k == id::Trust::KIND => $f::<id::Trust>($($arg),*),
            k if k == id::RegisteredLimit::KIND => $f::<id::RegisteredLimit>($($arg),*),
            k if k == id::Limit::KIND => $f::<id::Limit>($($arg),*),
            k if k == Flavor::KIND => $f::<Flavor>($($arg),*),
            k if k == Keypair::KIND => $f::<Keypair>($($arg),*),
            k if k == QuotaSet::KIND => $f::<QuotaSet>($($arg),*),
            k if k == Image::KIND => $f::<Image>($($arg),*),
            k if k == Member::KIND => $f::<Member>($($arg),*),
            _ => $none,
        }
    };
}

/// The kinds a site receives from its parent.
pub const KINDS: &[&str] = &[
    id::Domain::KIND,
    id::Project::KIND,
    id::User::KIND,
    id::Group::KIND,
    id::Membership::KIND,
    id::Role::KIND,
    id::Inference::KIND,
    id::Assignment::KIND,
    id::Revocation::KIND,
    id::AppCredential::KIND,
    id::AccessRule::KIND,
    id::Trust::KIND,
    id::RegisteredLimit::KIND,
    id::Limit::KIND,
    Flavor::KIND,
    Keypair::KIND,
    QuotaSet::KIND,
    Image::KIND,
    Member::KIND,
];

/// Whether a document of `kind` with `body` goes down to sites. Each
/// controller's node agents are its own: their domain, project, users,
/// role and role assignments never cross a link, so a site's own node
/// users and the parent's never collide. Those are also what a site
/// keeps for itself when a snapshot replaces what it has.
pub fn goes_down(kind: &str, body: &str) -> bool {
    if !KINDS.contains(&kind) {
        return false;
    }
    let field = |v: &Value, f: &str| v.get(f).and_then(Value::as_str).map(str::to_string);
    let local = |v: &Value| -> bool {
        match kind {
            k if k == id::Domain::KIND => field(v, "id").as_deref() == Some(NODES_DOMAIN_ID),
            k if k == id::Project::KIND => {
                field(v, "id").as_deref() == Some(NODES_PROJECT_ID)
                    || field(v, "domain_id").as_deref() == Some(NODES_DOMAIN_ID)
            }
            k if k == id::User::KIND || k == id::Group::KIND => {
                field(v, "domain_id").as_deref() == Some(NODES_DOMAIN_ID)
            }
            k if k == id::Role::KIND => {
                field(v, "name").as_deref() == Some(NODE_ROLE)
                    && v.get("domain_id").is_none_or(Value::is_null)
            }
            // The nodes project and domain share one id.
            k if k == id::Assignment::KIND => {
                let t = field(v, "target_id");
                t.as_deref() == Some(NODES_PROJECT_ID) || t.as_deref() == Some(NODES_DOMAIN_ID)
            }
            _ => false,
        }
    };
    match serde_json::from_str::<Value>(body) {
        Ok(v) => !local(&v),
        Err(_) => false,
    }
}

/// Applies one change from the parent. A document whose unique key a
/// local one holds replaces it: the parent's desired state wins.
pub fn apply(tx: &Tx, c: &SyncChange) -> Result<(), StoreError> {
    by_kind!(c.kind.as_str(), apply_one(tx, &c.id, c.body.as_deref()), {
        tracing::debug!(kind = %c.kind, "a change of a kind this site does not take");
        Ok(())
    })
}

fn apply_one<T: Record>(tx: &Tx, id: &str, body: Option<&str>) -> Result<(), StoreError> {
    let Some(body) = body else {
        tx.delete::<T>(id)?;
        return Ok(());
    };
    let rec: T = serde_json::from_str(body)?;
    if rec.id() != id {
        return Err(StoreError::Db(format!(
            "a synced {} names {} but is sent as {id}",
            T::KIND,
            rec.id()
        )));
    }
    if let Some(holder) = tx.unique_holder(&rec)? {
        tx.delete::<T>(&holder)?;
    }
    tx.upsert(&rec)?;
    Ok(())
}

/// After a snapshot: deletes the documents of `kind` that the snapshot
/// does not list, except those the site keeps for itself.
pub fn prune(
    tx: &Tx,
    kind: &str,
    keep: &std::collections::HashSet<&str>,
) -> Result<u64, StoreError> {
    by_kind!(kind, prune_kind(tx, keep), Ok(0))
}

fn prune_kind<T: Record>(
    tx: &Tx,
    keep: &std::collections::HashSet<&str>,
) -> Result<u64, StoreError> {
    let mut n = 0;
    for rec in tx.list::<T>(&stratus_store::Query::all())? {
        if keep.contains(rec.id()) {
            continue;
        }
        let body = serde_json::to_string(&rec)?;
        if goes_down(T::KIND, &body) {
            tx.delete::<T>(rec.id())?;
            n += 1;
        }
    }
    Ok(n)
}

/// Compresses an exchange body.
pub fn gzip(raw: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = e.write_all(raw);
    e.finish().unwrap_or_default()
}

/// The Fernet keys in a repository directory: (index, key), by index.
pub fn read_keys(dir: &Path) -> std::io::Result<Vec<(u64, String)>> {
    let mut keys = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let Some(i) = e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) else {
            continue;
        };
        keys.push((i, std::fs::read_to_string(e.path())?.trim().to_string()));
    }
    keys.sort();
    Ok(keys)
}

/// What names a key set without revealing it.
pub fn keys_hash(keys: &[(u64, String)]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for (i, k) in keys {
        h.update(format!("{i}:{k}\n").as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Makes a site's key repository hold exactly the parent's keys. New keys
/// are written first, then old ones removed, so a validation in between
/// still finds the key it needs.
pub fn write_keys(dir: &Path, keys: &[(u64, String)]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir)?;
    for (i, k) in keys {
        let tmp = dir.join(format!(".{i}.tmp"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(k.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(i.to_string()))?;
    }
    for (i, _) in read_keys(dir)? {
        if !keys.iter().any(|(j, _)| *j == i) {
            std::fs::remove_file(dir.join(i.to_string()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn node_agents_identity_stays_with_its_controller() {
        let user = |domain: &str| json!({"id": "u", "name": "n", "domain_id": domain}).to_string();
        assert!(goes_down("user", &user("default")));
        assert!(!goes_down("user", &user(NODES_DOMAIN_ID)));
        assert!(!goes_down(
            "role",
            &json!({"id": "r", "name": NODE_ROLE, "domain_id": null}).to_string()
        ));
        assert!(goes_down(
            "role",
            &json!({"id": "r", "name": "member", "domain_id": null}).to_string()
        ));
        assert!(!goes_down(
            "role_assignment",
            &json!({"id": "a", "target_id": NODES_PROJECT_ID}).to_string()
        ));
        // The catalog, credentials and sites stay too.
        assert!(!goes_down("endpoint", "{}"));
        assert!(!goes_down("credential", "{}"));
        assert!(!goes_down("site", "{}"));
        assert!(goes_down("flavor", r#"{"id": "1"}"#));
    }

    #[test]
    fn a_key_set_is_written_exactly() {
        let dir = std::env::temp_dir().join(format!("stratus-sync-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("0"), "old0").unwrap();
        std::fs::write(dir.join("1"), "old1").unwrap();
        let keys = vec![(0, "k0".to_string()), (2, "k2".to_string())];
        write_keys(&dir, &keys).unwrap();
        assert_eq!(read_keys(&dir).unwrap(), keys);
        assert_eq!(keys_hash(&keys), keys_hash(&read_keys(&dir).unwrap()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
