//! Network sync: fetches what this node must wire and has the dataplane
//! wire it, on every wake-up and every 30 s.

use anyhow::Context;

use super::*;

/// The address this machine reaches `url`'s host from (no packet is
/// sent: a UDP socket is only connected).
pub(super) fn source_address(url: &str) -> Option<std::net::IpAddr> {
    let rest = url.split("://").nth(1)?;
    let authority = rest.split('/').next()?;
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&authority)
        .ok()?
        .next()?;
    let bind = if addr.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    };
    let sock = std::net::UdpSocket::bind(bind).ok()?;
    sock.connect(addr).ok()?;
    sock.local_addr().ok().map(|a| a.ip())
}

pub(super) fn mark_network_dirty(sh: &Shared) {
    let (m, cv) = &sh.net_dirty;
    *m.lock().unwrap_or_else(|e| e.into_inner()) = true;
    cv.notify_one();
}

/// Keeps the node's wiring what the controller says: syncs whenever the
/// controller woke the agent, and every 30 s in any case.
pub(super) fn network_loop(sh: &Shared) {
    loop {
        // A wake-up wires what changed; every 30 s without one, all of
        // it is checked again (something outside may have touched it).
        let full = {
            let (m, cv) = &sh.net_dirty;
            let mut dirty = m.lock().unwrap_or_else(|e| e.into_inner());
            if !*dirty {
                dirty = cv
                    .wait_timeout(dirty, Duration::from_secs(30))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            let woken = *dirty;
            *dirty = false;
            !woken
        };
        if let Err(e) = sync_network(sh, full) {
            tracing::warn!(error = %format!("{e:#}"), "network sync failed; retrying");
            std::thread::sleep(Duration::from_secs(2));
            mark_network_dirty(sh);
        }
    }
}

/// Fetches what this node must wire and wires it (only when it changed,
/// unless `force`). Returns what is wired.
pub(super) fn sync_network(sh: &Shared, force: bool) -> anyhow::Result<HostNetwork> {
    // Fetch and apply under one lock: an answer fetched before another
    // one was applied must never be applied after it (it would sweep a
    // newer server's namespace).
    let mut wired = sh.wired.lock().unwrap_or_else(|e| e.into_inner());
    let url = format!(
        "{}/edge/v1/nodes/{}/network",
        sh.cfg.controller, sh.cfg.host
    );
    let net: HostNetwork = match call(sh, "GET", &url, None)? {
        (200, b) => serde_json::from_str(&b).context("the controller's network answer")?,
        (code, b) => anyhow::bail!("the controller answered {code} for the network: {b}"),
    };
    if force || wired.as_ref() != Some(&net) {
        let keep: std::collections::BTreeSet<String> =
            sh.driver.list().into_iter().map(|(id, _)| id).collect();
        // VMs the driver has (after a restart too) keep their taps.
        for id in keep.iter().filter(|id| sh.driver.is_vm(id)) {
            let _ = sh.net.mark_vm(id);
        }
        // NICs that go are unplugged before their taps do.
        if sh.net.missing().is_none()
            && let Some(before) = wired.as_ref()
        {
            for id in keep.iter().filter(|id| sh.net.is_vm(id)) {
                let after = sh.net.vm_nics(&net, id);
                let gone: Vec<_> = sh
                    .net
                    .vm_nics(before, id)
                    .into_iter()
                    .filter(|n| !after.contains(n))
                    .collect();
                if gone.is_empty() {
                    continue;
                }
                if let Err(e) = sh.driver.unplug_nics(id, &gone) {
                    tracing::warn!(server = %id, error = %e, "could not unplug the VM's NICs");
                }
            }
        }
        sh.net.apply(&net, &keep, force)?;
        *wired = Some(net.clone());
        // A port attached to or detached from a VM: hot-plugged.
        if sh.net.missing().is_none() {
            for id in keep.iter().filter(|id| sh.net.is_vm(id)) {
                if let Err(e) = sh.driver.set_nics(id, &sh.net.vm_nics(&net, id)) {
                    tracing::warn!(server = %id, error = %e, "could not change the VM's NICs");
                }
            }
        }
    }
    // A container is served in its own namespace; a VM has none, and is
    // served from its network's DHCP namespace, by its source address.
    let mut containers = net.clone();
    containers.ports.retain(|p| !sh.net.is_vm(&p.device_id));
    sh.metadata
        .sync(&containers, |id| sh.net.metadata_listener(id));
    // (Without a dataplane a VM has no NICs: nothing to serve.)
    let wired_here = sh.net.missing().is_none();
    sh.metadata.sync_vms(
        &net,
        |id| wired_here && sh.net.is_vm(id),
        |device| sh.net.netns_id(device),
        |device| sh.net.dhcp_metadata_listener(device),
    );
    Ok(net)
}
