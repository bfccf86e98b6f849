//! Node identities: every node agent logs in as a user of its own, the
//! Keystone way for service accounts. Node users live in a dedicated
//! domain (`stratus_nodes`), named by their host, with the `node` role on
//! the domain's one project (`nodes`); that role grants nothing in the
//! public APIs, and the agent endpoints (`/edge/v1/nodes/{host}`) and the
//! image data of a node's own servers accept it for its own host only
//! ([`Ctx::node_host`]).
//!
//! A node joins with a join token an operator makes with
//! `stratus admin node-token`: single use, expiring, stored as its
//! SHA-256 only. Redeeming it (`POST /edge/v1/join`) makes the node's
//! user, or gives a token issued for that node name a fresh password for
//! it (a node that lost its data dir), and answers the credential once.

use serde::{Deserialize, Serialize};
use sha2::Digest;
use stratus_store::{Record, Store, Tx};

use super::model::*;
use super::policy::Ctx;
use crate::timeutil::now_us;
use crate::{ApiError, AppState};

/// The domain of node users.
pub const NODES_DOMAIN_ID: &str = "stratus_nodes";
/// The project node users are scoped to.
pub const NODES_PROJECT_ID: &str = "stratus_nodes";
/// The role that makes a user of [`NODES_DOMAIN_ID`] a node.
pub const NODE_ROLE: &str = "node";

/// A join token, by the SHA-256 of its text (the text is shown once).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinToken {
    pub id: String,
    /// The node name the token joins; `None` joins any name not taken.
    pub node_name: Option<String>,
    pub expires_at_us: i64,
    pub created_at_us: i64,
}
record!(JoinToken, "node_join_token");

/// What a node logs in with (defined once for both ends in
/// `stratus-wire`).
pub use stratus_wire::NodeCredential;

impl Ctx {
    /// The host this caller is the node agent of: a token of a node user
    /// scoped to the nodes project with the `node` role (not through an
    /// application credential or a trust).
    pub fn node_host(&self) -> Option<&str> {
        let node = self.user.domain_id == NODES_DOMAIN_ID
            && self.project_id() == Some(NODES_PROJECT_ID)
            && self.has_role(NODE_ROLE)
            && self.app_cred.is_none()
            && self.trust.is_none();
        node.then_some(self.user.name.as_str())
    }
}

/// Refuses host names the agent API refuses.
pub fn check_host(host: &str) -> Result<(), ApiError> {
    if host.is_empty() || host.len() > 255 || host.contains('/') || host.trim() != host {
        return Err(ApiError::bad_request(format!("Invalid host name {host:?}")));
    }
    Ok(())
}

fn token_id(token: &str) -> String {
    sha2::Sha256::digest(token.trim().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Makes a join token valid for `ttl_s` seconds, for `node_name` or for
/// any name not joined yet. Returns its text (shown once) and record.
/// Expired tokens are pruned on the way.
pub fn issue_join_token(
    store: &Store,
    node_name: Option<&str>,
    ttl_s: u64,
) -> Result<(String, JoinToken), ApiError> {
    if let Some(n) = node_name {
        check_host(n)?;
    }
    let text = super::bootstrap::random_secret(32);
    let now = now_us();
    let t = JoinToken {
        id: token_id(&text),
        node_name: node_name.map(str::to_string),
        expires_at_us: now.saturating_add((ttl_s as i64).saturating_mul(1_000_000)),
        created_at_us: now,
    };
    store.write(|tx| {
        for old in tx.list::<JoinToken>(&stratus_store::Query::all())? {
            if old.expires_at_us <= now {
                tx.delete::<JoinToken>(&old.id)?;
            }
        }
        tx.insert(&t)?;
        Ok::<_, ApiError>(())
    })?;
    Ok((text, t))
}

/// Redeems a join token for `host`: consumes it and answers the node's
/// credential. A node already joined under that name gets a new password
/// (and loses its tokens) only when the token was issued for its name.
pub fn redeem(state: &AppState, token: &str, host: &str) -> Result<NodeCredential, ApiError> {
    check_host(host)?;
    let id = token_id(token);
    let usable = |t: Option<JoinToken>| -> Result<JoinToken, ApiError> {
        let t = match t {
            Some(t) if t.expires_at_us > now_us() => t,
            _ => {
                return Err(ApiError::unauthorized_msg(
                    "The join token is not valid: unknown, already used or expired.",
                ));
            }
        };
        if let Some(n) = &t.node_name
            && n != host
        {
            return Err(ApiError::forbidden(&format!(
                "stratus:node-join (this join token is for node {n})"
            )));
        }
        Ok(t)
    };
    // Checked before the (deliberately slow) password hash, so requests
    // without a valid token cost nothing; checked again, and consumed,
    // in the transaction.
    usable(state.store.get::<JoinToken>(&id)?)?;
    let password = super::bootstrap::random_secret(32);
    let hash = super::password::hash(&password);
    let (user_id, existed) = state.identity_write(|tx| {
        let t = usable(tx.get::<JoinToken>(&id)?)?;
        tx.delete::<JoinToken>(&t.id)?;
        provision_in(tx, host, &hash, t.node_name.is_some())
    })?;
    if existed {
        super::users::revoke_user(state, &user_id)?;
    }
    tracing::info!(host, user = %user_id, "node joined");
    Ok(NodeCredential {
        host: host.to_string(),
        user_id,
        password,
        project_id: NODES_PROJECT_ID.into(),
    })
}

/// The credential of `host`'s node user, made or given a new password:
/// what `stratus up` hands its in-process agent.
pub fn provision(store: &Store, host: &str) -> Result<NodeCredential, ApiError> {
    check_host(host)?;
    let password = super::bootstrap::random_secret(32);
    let hash = super::password::hash(&password);
    let (user_id, _) = store.write(|tx| provision_in(tx, host, &hash, true))?;
    Ok(NodeCredential {
        host: host.to_string(),
        user_id,
        password,
        project_id: NODES_PROJECT_ID.into(),
    })
}

/// Makes the nodes domain, project and role if missing, and `host`'s
/// user with the `node` role there; an existing user gets `hash` as its
/// password when `reset` allows, else the name is refused as taken.
/// Returns the user id and whether it existed.
fn provision_in(tx: &Tx, host: &str, hash: &str, reset: bool) -> Result<(String, bool), ApiError> {
    if tx.get::<Domain>(NODES_DOMAIN_ID)?.is_none() {
        tx.insert(&Domain {
            id: NODES_DOMAIN_ID.into(),
            name: NODES_DOMAIN_ID.into(),
            description: "Node agents: one user per node (stratus admin node-token)".into(),
            enabled: true,
            tags: vec![],
            options: Default::default(),
        })
        .map_err(super::conflict_as("domain", NODES_DOMAIN_ID))?;
    }
    if tx.get::<Project>(NODES_PROJECT_ID)?.is_none() {
        tx.insert(&Project {
            id: NODES_PROJECT_ID.into(),
            name: "nodes".into(),
            domain_id: NODES_DOMAIN_ID.into(),
            description: "The project node agents are scoped to".into(),
            enabled: true,
            parent_id: None,
            tags: vec![],
            options: Default::default(),
            extra: Default::default(),
        })?;
    }
    let role = match global_role(tx, NODE_ROLE)? {
        Some(r) => r,
        None => {
            let r = Role {
                id: super::new_id(),
                name: NODE_ROLE.into(),
                domain_id: None,
                description: Some("A node agent: its own host's agent API only".into()),
                options: Default::default(),
            };
            tx.insert(&r)?;
            r
        }
    };
    let now = now_us();
    let (user_id, existed) = match tx
        .list::<User>(&stratus_store::Query::owner(NODES_DOMAIN_ID))?
        .into_iter()
        .find(|u| u.name == host)
    {
        Some(_) if !reset => {
            return Err(ApiError::conflict(format!(
                "Node {host} has joined already; to join it again, make a join token for it (stratus admin node-token --node-name {host})."
            )));
        }
        Some(mut u) => {
            u.password_hash = Some(hash.to_string());
            u.password_set_at_us = Some(now);
            u.enabled = true;
            tx.update(&u)?;
            (u.id, true)
        }
        None => {
            let u = User {
                id: super::new_id(),
                name: host.into(),
                domain_id: NODES_DOMAIN_ID.into(),
                enabled: true,
                password_hash: Some(hash.to_string()),
                default_project_id: Some(NODES_PROJECT_ID.into()),
                description: Some(format!("The node agent of {host}")),
                password_set_at_us: Some(now),
                options: Default::default(),
                extra: Default::default(),
            };
            tx.insert(&u)?;
            (u.id, false)
        }
    };
    tx.upsert(&Assignment::new(
        ActorKind::User,
        &user_id,
        TargetKind::Project,
        NODES_PROJECT_ID,
        &role.id,
        false,
    ))?;
    Ok((user_id, existed))
}

/// The global role named `name`.
fn global_role(tx: &Tx, name: &str) -> Result<Option<Role>, ApiError> {
    Ok(tx
        .list::<Role>(&stratus_store::Query::name(name))?
        .into_iter()
        .find(|r| r.domain_id.is_none()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_stored_hashed_and_join_once() {
        let store = Store::open_in_memory().unwrap();
        let (text, t) = issue_join_token(&store, Some("edge-1"), 60).unwrap();
        assert_ne!(t.id, text);
        assert!(store.get::<JoinToken>(&token_id(&text)).unwrap().is_some());
        let (first, existed) = store
            .write(|tx| provision_in(tx, "edge-1", "h1", false))
            .unwrap();
        assert!(!existed);
        let taken = store.write(|tx| provision_in(tx, "edge-1", "h2", false));
        assert_eq!(taken.unwrap_err().status.as_u16(), 409);
        let (again, existed) = store
            .write(|tx| provision_in(tx, "edge-1", "h3", true))
            .unwrap();
        assert!(existed);
        assert_eq!(first, again);
        let u = store.fetch::<User>(&first).unwrap();
        assert_eq!(u.password_hash.as_deref(), Some("h3"));
        assert_eq!(u.domain_id, NODES_DOMAIN_ID);
        assert!(check_host("a/b").is_err());
        assert!(check_host("").is_err());
    }
}
