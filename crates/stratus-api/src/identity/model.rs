//! Identity records as stored. Rendering to the API's JSON is done by each
//! resource module; secrets (password and secret hashes) never leave here
//! except through explicit fields that the renderers do not emit.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use stratus_store::Record;

/// The id of the domain `stratus up` creates, as Keystone names it.
pub const DEFAULT_DOMAIN_ID: &str = "default";
/// The target id of the one system scope Keystone knows.
pub const SYSTEM_ALL: &str = "all";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Domain {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub enabled: bool,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub options: Map<String, Value>,
}
record!(
    Domain,
    "domain",
    name = |d| Some(&d.name),
    unique = |d| Some(d.name.to_lowercase())
);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Project {
    pub id: String,
    pub name: String,
    pub domain_id: String,
    #[serde(default)]
    pub description: String,
    pub enabled: bool,
    /// The parent project, or `None` for a top-level project (rendered as
    /// the domain id, as Keystone does).
    pub parent_id: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub options: Map<String, Value>,
    #[serde(default)]
    pub extra: Map<String, Value>,
}
record!(
    Project,
    "project",
    owner = |p| Some(&p.domain_id),
    parent = |p| p.parent_id.as_deref(),
    name = |p| Some(&p.name),
    unique = |p| Some(format!("{}/{}", p.domain_id, p.name))
);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    pub name: String,
    pub domain_id: String,
    pub enabled: bool,
    /// PHC string of the password hash; `None` when no password is set.
    pub password_hash: Option<String>,
    pub default_project_id: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// When the password was last set, microseconds since the epoch.
    #[serde(default)]
    pub password_set_at_us: Option<i64>,
    #[serde(default)]
    pub options: Map<String, Value>,
    /// Attributes Keystone keeps without interpreting (e.g. `email`).
    #[serde(default)]
    pub extra: Map<String, Value>,
}
record!(
    User,
    "user",
    owner = |u| Some(&u.domain_id),
    name = |u| Some(&u.name),
    unique = |u| Some(format!("{}/{}", u.domain_id, u.name))
);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Group {
    pub id: String,
    pub name: String,
    pub domain_id: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub extra: Map<String, Value>,
}
record!(
    Group,
    "group",
    owner = |g| Some(&g.domain_id),
    name = |g| Some(&g.name),
    unique = |g| Some(format!("{}/{}", g.domain_id, g.name))
);

/// A user's membership in a group; id `group_id:user_id`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Membership {
    pub id: String,
    pub group_id: String,
    pub user_id: String,
}
record!(
    Membership,
    "group_membership",
    owner = |m| Some(&m.user_id),
    parent = |m| Some(&m.group_id)
);

impl Membership {
    pub fn new(group_id: &str, user_id: &str) -> Self {
        Membership {
            id: format!("{group_id}:{user_id}"),
            group_id: group_id.into(),
            user_id: user_id.into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Role {
    pub id: String,
    pub name: String,
    /// Domain-specific roles carry their domain; global roles `None`.
    pub domain_id: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub options: Map<String, Value>,
}
record!(
    Role,
    "role",
    owner = |r| r.domain_id.as_deref(),
    name = |r| Some(&r.name),
    unique = |r| Some(format!(
        "{}/{}",
        r.domain_id.as_deref().unwrap_or(""),
        r.name.to_lowercase()
    ))
);

/// `prior` implies `implied`; id `prior:implied`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Inference {
    pub id: String,
    pub prior_role_id: String,
    pub implied_role_id: String,
}
record!(
    Inference,
    "implied_role",
    owner = |i| Some(&i.implied_role_id),
    parent = |i| Some(&i.prior_role_id)
);

impl Inference {
    pub fn new(prior: &str, implied: &str) -> Self {
        Inference {
            id: format!("{prior}:{implied}"),
            prior_role_id: prior.into(),
            implied_role_id: implied.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActorKind {
    User,
    Group,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    Project,
    Domain,
    System,
}

/// A role granted to a user or group on a project, domain or the system.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Assignment {
    pub id: String,
    pub actor: ActorKind,
    pub actor_id: String,
    pub target: TargetKind,
    pub target_id: String,
    pub role_id: String,
    /// OS-INHERIT: applies to the target's sub-projects, not the target.
    #[serde(default)]
    pub inherited: bool,
}
record!(
    Assignment,
    "role_assignment",
    owner = |a| Some(&a.target_id),
    parent = |a| Some(&a.actor_id),
    name = |a| Some(&a.role_id)
);

impl Assignment {
    pub fn new(
        actor: ActorKind,
        actor_id: &str,
        target: TargetKind,
        target_id: &str,
        role_id: &str,
        inherited: bool,
    ) -> Self {
        let id = format!(
            "{actor:?}:{actor_id}:{target:?}:{target_id}:{role_id}:{}",
            inherited as u8
        )
        .to_lowercase();
        Assignment {
            id,
            actor,
            actor_id: actor_id.into(),
            target,
            target_id: target_id.into(),
            role_id: role_id.into(),
            inherited,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Region {
    pub id: String,
    #[serde(default)]
    pub description: String,
    pub parent_region_id: Option<String>,
}
record!(Region, "region", parent = |r| r.parent_region_id.as_deref());

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Service {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    pub enabled: bool,
}
record!(Service, "service");

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Endpoint {
    pub id: String,
    pub service_id: String,
    pub interface: String,
    pub region_id: Option<String>,
    pub url: String,
    pub enabled: bool,
}
record!(Endpoint, "endpoint", parent = |e| Some(&e.service_id));

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppCredential {
    pub id: String,
    pub name: String,
    pub user_id: String,
    pub project_id: String,
    #[serde(default)]
    pub description: Option<String>,
    /// PHC string of the secret's hash; the secret itself is shown once.
    pub secret_hash: String,
    pub expires_at_us: Option<i64>,
    pub role_ids: Vec<String>,
    pub unrestricted: bool,
    /// Copies of the user's [`AccessRule`]s this credential is limited to,
    /// as rendered (`{id, service, path, method}`). Rules never change
    /// after creation, so the copy stays exact; the id ties it to the
    /// shared record.
    #[serde(default)]
    pub access_rules: Vec<Value>,
}
record!(
    AppCredential,
    "application_credential",
    owner = |a| Some(&a.user_id),
    parent = |a| Some(&a.project_id),
    name = |a| Some(&a.name),
    unique = |a| Some(format!("{}/{}", a.user_id, a.name))
);

/// An application credential access rule (`/v3/users/{id}/access_rules`):
/// a service, a path pattern (`*` one segment, `**` any number) and a
/// method. A user's identical rules are one record, shared by every
/// credential that names them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessRule {
    pub id: String,
    pub user_id: String,
    pub service: String,
    pub path: String,
    pub method: String,
}
record!(
    AccessRule,
    "access_rule",
    owner = |r| Some(&r.user_id),
    unique = |r| Some(format!(
        "{}/{}/{}/{}",
        r.user_id, r.service, r.method, r.path
    ))
);

/// An OS-TRUST trust: the trustor delegates some of its roles on a project
/// to the trustee, who may then get tokens scoped to the trust.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Trust {
    pub id: String,
    pub trustor_user_id: String,
    pub trustee_user_id: String,
    /// Keystone allows trusts without a project; they delegate no roles.
    pub project_id: Option<String>,
    /// Tokens show the trustor as their user when true.
    pub impersonation: bool,
    pub role_ids: Vec<String>,
    pub expires_at_us: Option<i64>,
    /// Tokens that may still be issued; `None` is unlimited.
    pub remaining_uses: Option<i64>,
    /// Attributes Keystone keeps without interpreting.
    #[serde(default)]
    pub extra: Map<String, Value>,
}
record!(
    Trust,
    "trust",
    owner = |t| Some(&t.trustor_user_id),
    parent = |t| Some(&t.trustee_user_id),
    name = |t| t.project_id.as_deref(),
    // Keystone's duplicate_trust_constraint.
    unique = |t| Some(format!(
        "{}/{}/{}/{}/{}",
        t.trustor_user_id,
        t.trustee_user_id,
        t.project_id.as_deref().unwrap_or(""),
        t.impersonation,
        t.expires_at_us.map_or(String::new(), |e| e.to_string())
    ))
);

/// A revocation event: tokens matching every field that is set, and issued
/// at or before `issued_before_us`, are invalid. As in Keystone, `user_id`
/// also matches trust-scoped tokens whose trustor is that user.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Revocation {
    pub id: String,
    pub user_id: Option<String>,
    pub project_id: Option<String>,
    pub domain_id: Option<String>,
    pub audit_id: Option<String>,
    pub app_cred_id: Option<String>,
    /// Tokens scoped to this trust.
    #[serde(default)]
    pub trust_id: Option<String>,
    pub issued_before_us: i64,
    /// After this the event can match no live token and may be pruned.
    pub prune_after_us: i64,
}
record!(Revocation, "revocation_event");

/// A credential kept for another service (`/v3/credentials`), e.g. EC2
/// access/secret pairs. The blob is stored encrypted with the credential
/// key repository, as Keystone stores it (`encrypted_blob`, `key_hash`);
/// `identity::credentials` seals and opens it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Credential {
    pub id: String,
    pub user_id: String,
    pub project_id: Option<String>,
    #[serde(rename = "type")]
    pub kind: String,
    /// The blob as a Fernet token of the credential keys.
    #[serde(default)]
    pub encrypted_blob: String,
    /// SHA-256 of the credential key that encrypted it.
    #[serde(default)]
    pub key_hash: String,
    /// The blob in clear: only in rows written before blobs were
    /// encrypted, until `identity::credentials::migrate` encrypts them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<String>,
}
record!(Credential, "credential", owner = |c| Some(&c.user_id));

/// A default limit for a resource of a service (Keystone unified limits).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisteredLimit {
    pub id: String,
    pub service_id: String,
    pub region_id: Option<String>,
    pub resource_name: String,
    pub default_limit: i64,
    #[serde(default)]
    pub description: Option<String>,
}
record!(
    RegisteredLimit,
    "registered_limit",
    parent = |l| Some(&l.service_id),
    name = |l| Some(&l.resource_name),
    unique = |l| Some(format!(
        "{}/{}/{}",
        l.service_id,
        l.region_id.as_deref().unwrap_or(""),
        l.resource_name
    ))
);

/// A project's (or domain's) own limit, overriding the registered default.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Limit {
    pub id: String,
    pub service_id: String,
    pub region_id: Option<String>,
    pub project_id: Option<String>,
    pub domain_id: Option<String>,
    pub resource_name: String,
    pub resource_limit: i64,
    #[serde(default)]
    pub description: Option<String>,
}
record!(
    Limit,
    "limit",
    owner = |l| l.project_id.as_deref().or(l.domain_id.as_deref()),
    parent = |l| Some(&l.service_id),
    name = |l| Some(&l.resource_name),
    unique = |l| Some(format!(
        "{}/{}/{}/{}",
        l.service_id,
        l.region_id.as_deref().unwrap_or(""),
        l.project_id
            .as_deref()
            .or(l.domain_id.as_deref())
            .unwrap_or(""),
        l.resource_name
    ))
);

/// A policy blob kept for other services (`/v3/policies`). Keystone never
/// interprets it; neither do we.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Policy {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub blob: String,
    /// Other attributes (e.g. `project_id`), kept as given.
    #[serde(default)]
    pub extra: Map<String, Value>,
}
record!(Policy, "policy");

/// An OAuth1 consumer (`/v3/OS-OAUTH1/consumers`). The secret is kept as
/// is, as Keystone keeps it: OAuth1 signatures need it in the clear. It is
/// shown only in the answer to the create.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Consumer {
    pub id: String,
    pub description: Option<String>,
    pub secret: String,
    #[serde(default)]
    pub extra: Map<String, Value>,
}
record!(Consumer, "oauth1_consumer");

/// A named set of endpoints selected by `filters` (`service_id`,
/// `region_id`, `interface`), as in OS-EP-FILTER.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointGroup {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub filters: Map<String, Value>,
}
record!(EndpointGroup, "endpoint_group", name = |g| Some(&g.name));

/// An endpoint group associated with a project; id `group_id:project_id`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProjectEndpointGroup {
    pub id: String,
    pub endpoint_group_id: String,
    pub project_id: String,
}
record!(
    ProjectEndpointGroup,
    "project_endpoint_group",
    owner = |a| Some(&a.project_id),
    parent = |a| Some(&a.endpoint_group_id)
);

impl ProjectEndpointGroup {
    pub fn new(group_id: &str, project_id: &str) -> Self {
        ProjectEndpointGroup {
            id: format!("{group_id}:{project_id}"),
            endpoint_group_id: group_id.into(),
            project_id: project_id.into(),
        }
    }
}

/// An endpoint associated with a project; id `project_id:endpoint_id`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProjectEndpoint {
    pub id: String,
    pub project_id: String,
    pub endpoint_id: String,
}
record!(
    ProjectEndpoint,
    "project_endpoint",
    owner = |a| Some(&a.project_id),
    parent = |a| Some(&a.endpoint_id)
);

impl ProjectEndpoint {
    pub fn new(project_id: &str, endpoint_id: &str) -> Self {
        ProjectEndpoint {
            id: format!("{project_id}:{endpoint_id}"),
            project_id: project_id.into(),
            endpoint_id: endpoint_id.into(),
        }
    }
}

/// A domain's own identity configuration (`/v3/domains/{id}/config`);
/// id is the domain's. `groups` maps a group (`identity`, `ldap`) to its
/// options, sensitive ones (the LDAP password) included: the API never
/// shows those.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DomainConfig {
    pub id: String,
    pub groups: Map<String, Value>,
}
record!(DomainConfig, "domain_config");
