//! Image records as stored. Rendering to Glance's JSON lives in
//! `images.rs`; the blob key and staging details never leave the server.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use stratus_store::Record;

pub const DISK_FORMATS: &[&str] = &[
    "ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi", "iso", "ploop",
];
/// Glance's container formats, plus `oci` (an OCI image-layout tarball).
pub const CONTAINER_FORMATS: &[&str] = &[
    "ami",
    "ari",
    "aki",
    "bare",
    "ovf",
    "ova",
    "docker",
    "compressed",
    "oci",
];
pub const VISIBILITIES: &[&str] = &["public", "private", "shared", "community"];

/// Image statuses, as Glance names them.
pub mod status {
    pub const QUEUED: &str = "queued";
    pub const SAVING: &str = "saving";
    pub const ACTIVE: &str = "active";
    pub const KILLED: &str = "killed";
    pub const UPLOADING: &str = "uploading";
    pub const IMAGE_IMPORTING: &str = "importing";
    pub const DEACTIVATED: &str = "deactivated";
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Image {
    pub id: String,
    pub name: Option<String>,
    /// The owning project; `None` only for images made without a project
    /// scope (by a system-scoped admin).
    pub owner: Option<String>,
    pub status: String,
    pub visibility: String,
    pub disk_format: Option<String>,
    pub container_format: Option<String>,
    pub size: Option<u64>,
    pub virtual_size: Option<u64>,
    /// md5 of the data (Glance's legacy `checksum`).
    pub checksum: Option<String>,
    pub os_hash_algo: Option<String>,
    pub os_hash_value: Option<String>,
    pub protected: bool,
    pub min_ram: u64,
    pub min_disk: u64,
    pub os_hidden: bool,
    pub tags: Vec<String>,
    /// Custom properties: string keys to string values.
    pub properties: Map<String, Value>,
    pub created_at: i64,
    pub updated_at: i64,
    /// Key of the data in the blob store (its sha512), once active.
    pub blob: Option<String>,
    /// Data staged by `PUT /stage`, waiting for `POST /import`.
    #[serde(default)]
    pub staged: Option<Staged>,
    /// The image's import tasks (`GET /v2/images/{id}/tasks`, Glance 2.12),
    /// in Glance's task shape; they go with the image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Staged {
    pub size: u64,
    pub md5: String,
    pub sha512: String,
}

record!(
    Image,
    "image",
    owner = |i| i.owner.as_deref(),
    name = |i| i.name.as_deref()
);

impl Image {
    /// Whether the image boots a virtual machine (a disk: any
    /// `container_format` but `docker` and `oci`) rather than a container.
    pub fn boots_vm(&self) -> bool {
        !matches!(self.container_format.as_deref(), Some("docker" | "oci"))
    }

    pub fn is_owned_by(&self, project: Option<&str>) -> bool {
        project.is_some() && self.owner.as_deref() == project
    }
}

/// A project an image is shared with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Member {
    /// `<image_id>/<member_id>`.
    pub id: String,
    pub image_id: String,
    pub member_id: String,
    /// pending, accepted or rejected.
    pub status: String,
    pub created_at: i64,
    pub updated_at: i64,
}

record!(
    Member,
    "image_member",
    owner = |m| Some(&m.member_id),
    parent = |m| Some(&m.image_id)
);

impl Member {
    pub fn key(image_id: &str, member_id: &str) -> String {
        format!("{image_id}/{member_id}")
    }
}

/// `2026-11-22T14:39:32Z`: Glance's timestamp format.
pub fn glance_time(us: i64) -> String {
    let s = crate::timeutil::iso_us(us);
    format!("{}Z", &s[..19])
}

// ---- metadata definitions (metadefs) ----------------------------------------

/// A metadata definition namespace. Keyed by a uuid so that a rename
/// (`PUT` with a new `namespace`) keeps its children; the name is the
/// unique key, so two namespaces cannot share one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetadefNamespace {
    pub id: String,
    pub namespace: String,
    pub display_name: Option<String>,
    pub description: Option<String>,
    /// `public` or `private`.
    pub visibility: String,
    pub protected: bool,
    pub owner: Option<String>,
    /// Resource types this namespace applies to, in the order associated.
    #[serde(default)]
    pub resource_types: Vec<MetadefAssociation>,
    pub created_at: i64,
    pub updated_at: i64,
}

record!(
    MetadefNamespace,
    "metadef_namespace",
    owner = |n| n.owner.as_deref(),
    name = |n| Some(&n.namespace),
    unique = |n| Some(n.namespace.clone())
);

/// A namespace's association with a resource type.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetadefAssociation {
    pub name: String,
    pub prefix: Option<String>,
    pub properties_target: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A resource type namespaces can be associated with. The builtin ones
/// are written at start-up; associating an unknown name creates one, as
/// Glance does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetadefResourceType {
    /// The name (`OS::Glance::Image`).
    pub id: String,
    pub protected: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

record!(MetadefResourceType, "metadef_resource_type");

/// An object, a property or a tag of a namespace: they share this shape.
/// `body` holds the kind's own fields (an object's `description`,
/// `required` and `properties`; a property's JSON-schema keywords; nothing
/// for a tag). Unique per namespace by name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetadefItem {
    pub id: String,
    /// The namespace record's id.
    pub namespace_id: String,
    pub name: String,
    #[serde(default)]
    pub body: Map<String, Value>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl MetadefItem {
    pub fn unique(namespace_id: &str, name: &str) -> String {
        format!("{namespace_id}/{name}")
    }
}

/// Newtypes so that objects, properties and tags are separate kinds.
macro_rules! metadef_item {
    ($t:ident, $kind:literal) => {
        #[derive(Debug, Clone, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $t(pub MetadefItem);

        impl Record for $t {
            const KIND: &'static str = $kind;
            fn id(&self) -> &str {
                &self.0.id
            }
            fn parent(&self) -> Option<&str> {
                Some(&self.0.namespace_id)
            }
            fn name(&self) -> Option<&str> {
                Some(&self.0.name)
            }
            fn unique_key(&self) -> Option<String> {
                Some(MetadefItem::unique(&self.0.namespace_id, &self.0.name))
            }
        }
    };
}

metadef_item!(MetadefObject, "metadef_object");
metadef_item!(MetadefProperty, "metadef_property");
metadef_item!(MetadefTag, "metadef_tag");
