//! The external network a fresh cloud starts with, as devstack makes it:
//! `public`, external and the default for auto-allocated topologies, with
//! one IPv4 subnet whose gateway address the node running the routers
//! takes on its side of the network's bridge (so the host reaches
//! floating IPs, and servers reach the host through their router's SNAT).

use serde_json::{Map, json};
use stratus_store::Store;

use super::model::Network;
use super::{NetError, NetResult, networks, subnets};

/// Where a store records that the public network was made once (an
/// operator who deletes it does not get it back on the next start).
const MADE: &str = "network.public_made";

/// Makes `public` with subnet `cidr` in `project` (the admin project),
/// once per store. Returns the network id when it made it.
pub fn ensure_public(store: &Store, project: &str, cidr: &str) -> NetResult<Option<String>> {
    if store.meta_get(MADE)?.is_some() {
        return Ok(None);
    }
    let parsed = subnets::parse_cidr(cidr)?;
    let id = store.write(|tx| {
        if tx
            .list::<Network>(&stratus_store::Query::all())?
            .iter()
            .any(|n| n.external)
        {
            tx.meta_set(MADE, "1")?;
            return Ok::<_, NetError>(None);
        }
        let mut net = networks::create_in(tx, project, "public")?;
        net.external = true;
        net.is_default = true;
        tx.update(&net)?;
        let mut m = Map::new();
        m.insert("name".into(), json!("public-subnet"));
        m.insert("ip_version".into(), json!(4));
        let sub = subnets::build(&m, project, &net.id, parsed)?;
        tx.insert(&sub)?;
        tx.meta_set(MADE, "1")?;
        Ok(Some(net.id))
    })?;
    Ok(id)
}
