//! `GET /v2.0/extensions`: exactly the API extensions this service
//! implements, so clients enable only what works.

use axum::Router;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use serde_json::{Value, json};

use super::{NetError, NetResult, reply, require_reader};
use crate::AppState;
use crate::identity::policy::Ctx;

/// (alias, name, description) of each implemented extension.
const EXTENSIONS: &[(&str, &str, &str)] = &[
    (
        "availability_zone",
        "Availability Zone",
        "The availability zone extension: the default zone and each edge site.",
    ),
    (
        "security-group",
        "security-group",
        "The security groups extension.",
    ),
    (
        "stateful-security-group",
        "Stateful security group",
        "Security groups may be stateful or stateless.",
    ),
    ("port-security", "Port Security", "Provides port security."),
    (
        "allowed-address-pairs",
        "Allowed Address Pairs",
        "Provides allowed address pairs.",
    ),
    (
        "quotas",
        "Quota management support",
        "Expose functions for quotas management per project.",
    ),
    (
        "quota_details",
        "Quota details management support",
        "Expose functions for quotas usage statistics per project.",
    ),
    (
        "standard-attr-description",
        "standard-attr-description",
        "Extension to add descriptions to standard attributes.",
    ),
    (
        "standard-attr-timestamp",
        "Resource timestamps",
        "Adds created_at and updated_at fields to all Neutron resources that have Neutron standard attributes.",
    ),
    (
        "standard-attr-revisions",
        "Resource revision numbers",
        "This extension will display the revision number of neutron resources.",
    ),
    (
        "project-id",
        "project_id field enabled",
        "Extension that indicates that project_id field is enabled.",
    ),
    (
        "external-net",
        "Neutron external network",
        "Adds external network attribute to network resource.",
    ),
    (
        "provider",
        "Provider Network",
        "Expose mapping of virtual networks to physical networks.",
    ),
    (
        "binding",
        "Port Binding",
        "Expose port bindings of a virtual port to external application.",
    ),
    (
        "net-mtu",
        "Network MTU",
        "Provides MTU attribute for a network resource.",
    ),
    (
        "network-ip-availability",
        "Network IP Availability",
        "Provides IP availability data for each network and subnet.",
    ),
    (
        "pagination",
        "Pagination support",
        "Extension that indicates that pagination is enabled.",
    ),
    (
        "sorting",
        "Sorting support",
        "Extension that indicates that sorting is enabled.",
    ),
    (
        "router",
        "Neutron L3 Router",
        "Router abstraction for basic L3 forwarding between L2 Neutron networks and access to external networks via a NAT gateway.",
    ),
    (
        "ext-gw-mode",
        "Neutron L3 Configurable external gateway mode",
        "Extension of the router abstraction for specifying whether SNAT should occur on the external gateway",
    ),
    (
        "extraroute",
        "Neutron Extra Route",
        "Extra routes configuration for L3 router",
    ),
    (
        "extraroute-atomic",
        "Atomically add/remove extra routes",
        "Edit extra routes of a router on server side by atomically adding/removing extra routes",
    ),
    (
        "standard-attr-tag",
        "Tag support for resources with standard attribute: subnet, trunk, network_segment_range, router, network, policy, subnetpool, port, security_group, floatingip",
        "Enables to set tag on resources with standard attribute.",
    ),
    ("tag", "Tag support", "Enables to set tag on resources."),
    (
        "tag-ext",
        "Tag support for resources: subnet, subnetpool, port, router",
        "Extends tag support to more L2 and L3 resources.",
    ),
    (
        "ip-substring-filtering",
        "IP address substring filtering",
        "Provides IP address substring filtering when listing ports",
    ),
    (
        "subnet-external-network",
        "Subnet External Network",
        "Informs if the subnet is associated to an external network.",
    ),
    (
        "subnet_allocation",
        "Subnet Allocation",
        "Enables allocation of subnets from a subnet pool",
    ),
    (
        "default-subnetpools",
        "Default Subnetpools",
        "Provides ability to mark and use a subnetpool as the default.",
    ),
    (
        "address-scope",
        "Address scope",
        "Address scopes extension.",
    ),
    (
        "rbac-policies",
        "RBAC Policies",
        "Allows creation and modification of policies that control tenant access to resources.",
    ),
    (
        "auto-allocated-topology",
        "Auto Allocated Topology Services",
        "Auto Allocated Topology Services.",
    ),
];

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/extensions", get(list))
        .route("/extensions/{alias}", get(show))
}

fn render(e: &(&str, &str, &str)) -> Value {
    json!({"alias": e.0, "name": e.1, "description": e.2,
           "updated": "2026-12-01T00:00:00-00:00", "links": []})
}

async fn list(ctx: Ctx) -> NetResult<Response> {
    require_reader(&ctx, "get_extension")?;
    let all: Vec<Value> = EXTENSIONS.iter().map(render).collect();
    Ok(reply(StatusCode::OK, json!({ "extensions": all })))
}

async fn show(ctx: Ctx, Path(alias): Path<String>) -> NetResult<Response> {
    require_reader(&ctx, "get_extension")?;
    let e = EXTENSIONS.iter().find(|e| e.0 == alias).ok_or_else(|| {
        NetError::not_found(
            "HTTPNotFound",
            format!("Extension with alias {alias} does not exist"),
        )
    })?;
    Ok(reply(StatusCode::OK, json!({ "extension": render(e) })))
}
