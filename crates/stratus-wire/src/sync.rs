//! The parent–site sync protocol, defined once for both ends.
//!
//! A site controller dials its parent's sync listener (`--sync-listen`,
//! TLS); the parent never dials a site, so sites behind NAT work.
//!
//! - `GET /sync/v1/ca` answers the parent's site CA certificate (PEM).
//!   A joining site trusts it only when its SHA-256 matches the hash in
//!   its join token, as kubeadm's discovery hash does.
//! - `POST /sync/v1/join` with a [`SiteJoinRequest`] redeems the one-time
//!   join token for a client certificate ([`SiteJoinReply`]). The site
//!   makes its own key pair; only the public key crosses the link.
//! - `POST /sync/v1/rotate` with a [`SiteRotateRequest`] swaps the site's
//!   certificate for a new one over its current link (before expiry, or
//!   when the parent asks in [`ExchangeReply::rotate`]).
//! - `POST /sync/v1/up` with an [`UpBatch`] brings the site's actual state
//!   of the parent's servers up (its own sequence numbers: revisions of
//!   the site's change log, acknowledged in an [`UpReply`]).
//! - `POST /sync/v1/answers` answers the operator requests (console
//!   output) an exchange carried down: the tunnel.
//! - `POST /sync/v1/exchange` (mutual TLS from then on) with an
//!   [`Exchange`] is the site's long poll, heartbeat and acknowledgement
//!   in one: the parent answers an [`ExchangeReply`] with the changes of
//!   its change log the site's subtree needs, after the revision the site
//!   acknowledged. Bodies may be gzip-compressed (`Content-Encoding`).
//!
//! **Versioning** as for agents: the site names [`SYNC_VERSION`]; the
//! parent accepts it and the one before, and every field added later is
//! `#[serde(default)]`.

use serde::{Deserialize, Serialize};

/// The sync protocol this build speaks.
pub const SYNC_VERSION: u32 = 1;

/// The oldest site protocol a parent still serves: one release behind.
pub const SYNC_OLDEST_SUPPORTED: u32 = 1;

/// Whether a parent serves a site speaking `version`; the error is the
/// message of the refusal.
pub fn check_sync_version(version: u32) -> Result<(), String> {
    if (SYNC_OLDEST_SUPPORTED..=SYNC_VERSION).contains(&version) {
        Ok(())
    } else {
        Err(format!(
            "Site sync protocol version {version} is not supported: this parent speaks versions {SYNC_OLDEST_SUPPORTED} to {SYNC_VERSION}"
        ))
    }
}

/// The name the parent's sync certificate is issued for. A site checks
/// the certificate against the parent's site CA, not against the address
/// it dialled (which NAT and renumbering may change).
pub const SYNC_SERVER_NAME: &str = "stratus-sync";

/// `POST /sync/v1/join`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SiteJoinRequest {
    pub token: String,
    /// The site's ECDSA P-256 public key (uncompressed point), base64.
    pub public_key: String,
    #[serde(default)]
    pub version: String,
}

/// The answer to a join, and to a certificate rotation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SiteJoinReply {
    pub site_id: String,
    pub name: String,
    /// The site's client certificate, PEM.
    pub certificate: String,
    /// The parent's site CA, PEM.
    pub ca: String,
    /// When the certificate expires (µs since the epoch).
    pub expires_at_us: i64,
}

/// `POST /sync/v1/exchange`: the site's side of one exchange.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Exchange {
    pub version: u32,
    /// The parent's revision the site has applied everything up to.
    pub acked: i64,
    /// The site's software version.
    #[serde(default)]
    pub software: String,
    /// How long the parent may hold the answer while nothing is new (s).
    #[serde(default)]
    pub wait_s: u64,
    /// The SHA-256 of the Fernet keys the site holds; the parent sends
    /// its keys when they differ.
    #[serde(default)]
    pub keys_hash: String,
    /// Round-trip time of the previous exchange, as the site measured it
    /// (ms).
    #[serde(default)]
    pub rtt_ms: u64,
    /// Bytes the site sent and received over the link since it started.
    #[serde(default)]
    pub bytes_up: u64,
    #[serde(default)]
    pub bytes_down: u64,
    /// The zones of the site's own sites and theirs: servers in them go
    /// down through this site too.
    #[serde(default)]
    pub zones: Vec<String>,
}

/// One compute node of a site, or of a site below it, as the site sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeSummary {
    pub name: String,
    /// The zone (site) the node serves.
    pub zone: String,
    /// `up` or `down` (its heartbeat, as Nova's hypervisor `state`).
    pub state: String,
    /// `enabled` or `disabled`.
    pub status: String,
    pub hypervisor_type: String,
    pub vcpus: u64,
    pub vcpus_used: u64,
    pub memory_mb: u64,
    pub memory_mb_used: u64,
    pub local_gb: u64,
    pub local_gb_used: u64,
    pub running_vms: u64,
}

/// One server's state as the site that runs it sees it: what the site
/// owns of the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerStatus {
    pub id: String,
    /// The site has no such server any more.
    #[serde(default)]
    pub deleted: bool,
    /// The parent's generation of the server the site had taken when this
    /// was its state: a parent whose own is newer (a request the site has
    /// not seen yet) keeps its own.
    #[serde(default)]
    pub parent_generation: u64,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub vm_state: String,
    #[serde(default)]
    pub task_state: Option<String>,
    #[serde(default)]
    pub power_state: u8,
    #[serde(default)]
    pub launched_us: Option<i64>,
    /// The fault of a server in ERROR, as the site recorded it.
    #[serde(default)]
    pub fault: Option<serde_json::Value>,
    /// The flavor the server has at the site (a resize there changes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flavor: Option<serde_json::Value>,
}

/// `POST /sync/v1/up`: the site's actual state, from its own change log.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UpBatch {
    /// The site's own revision this batch covers everything up to.
    pub up_to: i64,
    pub servers: Vec<ServerStatus>,
    /// The zones below the site, when they changed (as in
    /// [`Exchange::zones`]).
    #[serde(default)]
    pub zones: Option<Vec<String>>,
    /// Servers made at the site (by an operator there, perhaps while cut
    /// off) that its parent has not taken yet: whole server documents
    /// (JSON), for the parent to adopt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adopt: Vec<String>,
    /// The site's nodes and its own sites' (resources and health), when
    /// they changed since this connection last told them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<NodeSummary>>,
}

/// The answer to an [`UpBatch`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UpReply {
    /// The site's revision the parent has applied everything up to.
    pub acked: i64,
}

/// One change of the parent's log, as the site applies it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncChange {
    pub kind: String,
    pub id: String,
    /// The document after the change; `None` deletes it.
    #[serde(default)]
    pub body: Option<String>,
}

/// The parent's answer to an [`Exchange`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExchangeReply {
    /// The revision the site is at once it applied `changes`: changes the
    /// site does not need are passed over, so this moves on anyway.
    pub revision: i64,
    pub changes: Vec<SyncChange>,
    /// `changes` is a whole snapshot at `revision`: documents of the kinds
    /// in `snapshot_kinds` that it does not list are gone at the parent.
    #[serde(default)]
    pub snapshot: bool,
    #[serde(default)]
    pub snapshot_kinds: Vec<String>,
    /// More changes are waiting: exchange again at once.
    #[serde(default)]
    pub more: bool,
    /// The parent's Fernet keys, when the site's differ: index and key.
    #[serde(default)]
    pub fernet_keys: Option<Vec<(u64, String)>>,
    /// The site's name at the parent (its availability zone).
    #[serde(default)]
    pub site_name: String,
    /// The parent asks for a new certificate: the site sends a new public
    /// key to `POST /sync/v1/rotate` over its current link.
    #[serde(default)]
    pub rotate: bool,
    /// Operator requests for the site to run (the tunnel: the parent never
    /// dials a site); answered with `POST /sync/v1/answers`.
    #[serde(default)]
    pub requests: Vec<TunnelRequest>,
}

/// An operator request carried down the site's own link.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TunnelRequest {
    pub id: String,
    /// What to do: `console_output` (a server's console log), or
    /// `server_action` (a compute server action the site carries out).
    pub kind: String,
    pub server_id: String,
    /// For `console_output`: the last lines only.
    #[serde(default)]
    pub length: Option<u64>,
    /// For `server_action`: the action's body as the client sent it
    /// (`{"resize": {...}}`), at compute microversion 2.`microversion`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub microversion: Option<u16>,
    /// The caller's token (the site validates it: identity and its keys
    /// are replicated), so the site applies its own policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The request id the parent gave the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// A site's answer to a [`TunnelRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TunnelAnswer {
    pub id: String,
    /// The HTTP status the request had at the site.
    pub status: u16,
    /// The output, or the site's error message.
    pub body: String,
}

/// `POST /sync/v1/rotate`, over the link of the certificate it replaces.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SiteRotateRequest {
    /// The new ECDSA P-256 public key (uncompressed point), base64.
    pub public_key: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_one_release_back_are_served() {
        assert!(check_sync_version(SYNC_VERSION).is_ok());
        assert!(check_sync_version(SYNC_OLDEST_SUPPORTED).is_ok());
        assert!(check_sync_version(SYNC_VERSION + 1).is_err());
        assert!(check_sync_version(0).is_err());
    }

    #[test]
    fn an_older_reply_without_new_fields_parses() {
        let r: ExchangeReply =
            serde_json::from_str(r#"{"revision": 7, "changes": [{"kind": "flavor", "id": "1"}]}"#)
                .unwrap();
        assert_eq!(r.revision, 7);
        assert_eq!(r.changes[0].body, None);
        assert!(!r.snapshot && r.fernet_keys.is_none());
    }
}
