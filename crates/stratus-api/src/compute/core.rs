//! The compute core: runs the commands of `commands.rs` (server create and
//! every server action) against the store, with the caller's context. It
//! takes an [`AppState`] and a [`Ctx`] and nothing from HTTP (no axum
//! extractors, no JSON bodies, no microversions), so any transport can
//! call it; handlers (`servers.rs`, `actions.rs`) parse, authorise, call
//! [`create`] or [`act`], and render. The core uses the model, the shared
//! helpers and the other core modules (`service`, `scheduler`, `resize`,
//! `shelve`, `rescue`, `snapshots`), never a handler module.

use axum::http::StatusCode;

use super::commands::{CreateServer, Created, Outcome, Rebuild, ResetTo, ServerAction};
use super::common::{check_locked, fetch, fetch_tx, instance_not_found, record_action};
use super::model::{ComputeNode, FlavorCopy, Keypair, Server, ServerGroup};
use super::nics::nova_error;
use super::quotas::{self, Resource};
use super::states::{self, task, vm, wrong_state};
use crate::identity::policy::Ctx;
use crate::image::model::{Image, status as image_status};
use crate::network::nova;
use crate::timeutil::now_us;
use crate::{ApiError, AppState};

fn hostname_of(name: &str) -> String {
    let mut h: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    h = h.trim_matches('-').to_string();
    h.truncate(63);
    if h.is_empty() { "server".into() } else { h }
}

/// The image a server boots from: it must exist, be visible to the
/// caller and be active.
fn boot_image(state: &AppState, ctx: &Ctx, id: &str) -> Result<Image, ApiError> {
    let img = match state.store.get::<Image>(id)? {
        Some(i) if crate::image::visible(state, ctx, &i)? => i,
        _ => {
            return Err(ApiError::bad_request(format!(
                "Image {id} could not be found."
            )));
        }
    };
    if img.status != image_status::ACTIVE {
        return Err(ApiError::bad_request(format!("Image {id} is not active.")));
    }
    Ok(img)
}

/// What an image property (`img_hv_type`, or the older `hypervisor_type`)
/// or a flavor extra spec (`capabilities:hypervisor_type`, plain or
/// `s== X`) asks the server to run as: a virtual machine (`qemu`, `kvm`)
/// or a container (`runc`, `crun`, `lxc`, `docker`, `container`). The
/// image's formats say what it can run as; a request it cannot honour is
/// a 400 now rather than a server in ERROR. Other values are left to the
/// scheduler's hypervisor-type filter.
fn check_driver(
    img: &Image,
    specs: &std::collections::BTreeMap<String, String>,
) -> Result<(), ApiError> {
    let prop = |k: &str| img.properties.get(k).and_then(|v| v.as_str());
    let asked = [
        ("img_hv_type", prop("img_hv_type")),
        ("hypervisor_type", prop("hypervisor_type")),
        (
            "capabilities:hypervisor_type",
            specs
                .get("capabilities:hypervisor_type")
                .map(String::as_str),
        ),
    ];
    for (key, value) in asked {
        let Some(value) = value else { continue };
        let v = value.trim();
        let v = v
            .strip_prefix("s==")
            .unwrap_or(v)
            .trim()
            .to_ascii_lowercase();
        let wants_vm = match v.as_str() {
            "qemu" | "kvm" => true,
            "runc" | "crun" | "lxc" | "docker" | "container" => false,
            _ => continue,
        };
        if wants_vm != img.boots_vm() {
            let format = img.container_format.as_deref().unwrap_or("none");
            return Err(ApiError::bad_request(format!(
                "Image {} cannot run as {}, which {key}={value} asks for: its container_format {format} makes it {}.",
                img.id,
                if wants_vm {
                    "a virtual machine"
                } else {
                    "a container"
                },
                if img.boots_vm() {
                    "a virtual machine's disk"
                } else {
                    "a container image"
                }
            )));
        }
    }
    Ok(())
}

/// Moves a server into `task` if its vm_state is one of `from` and no task
/// is running; records the action.
fn begin(
    state: &AppState,
    ctx: &Ctx,
    id: &str,
    action: &str,
    from: &[&str],
    task_state: &str,
    req_id: &str,
) -> Result<Server, ApiError> {
    let s = state.store.write(|tx| {
        let mut s = fetch_tx(tx, ctx, id)?;
        check_locked(ctx, &s)?;
        if s.task_state.is_some() || !from.contains(&s.vm_state.as_str()) {
            return Err(wrong_state(action, &s));
        }
        if s.host.is_none() {
            return Err(wrong_state(action, &s));
        }
        s.task_state = Some(task_state.into());
        s.generation += 1;
        s.updated_us = now_us();
        tx.update(&s)?;
        record_action(tx, &s, action, ctx, req_id)?;
        Ok(s)
    })?;
    state.compute.notify(s.host.as_deref());
    Ok(s)
}

/// `addSecurityGroup` / `removeSecurityGroup`: the group goes on (or off)
/// every port of the server.
fn change_group(
    state: &AppState,
    ctx: &Ctx,
    id: &str,
    name: &str,
    add: bool,
) -> Result<(), ApiError> {
    let s = state.store.write(|tx| {
        let mut s = fetch_tx(tx, ctx, id)?;
        check_locked(ctx, &s)?;
        if s.nics.is_empty() {
            return Err(ApiError::bad_request(format!(
                "Instance {id} has no network interface to put a security group on"
            )));
        }
        s.nics =
            nova::change_group(tx, &s.project_id, &s.nics, name, add).map_err(|e| {
                match e.kind {
                    "SecurityGroupNotFound" => ApiError::new(StatusCode::NOT_FOUND, e.message),
                    "SecurityGroupNotInUse" | "SecurityGroupExistsForInstance" => {
                        ApiError::bad_request(e.message)
                    }
                    _ => nova_error(e),
                }
            })?;
        s.updated_us = now_us();
        tx.update(&s)?;
        Ok::<_, ApiError>(s)
    })?;
    state.compute.notify(s.host.as_deref());
    Ok(())
}

/// `addFloatingIp` / `removeFloatingIp` (before 2.44): the network
/// service's floating IP `address` mapped to (or from) the server.
fn floating(
    state: &AppState,
    ctx: &Ctx,
    id: &str,
    address: &str,
    fixed: Option<String>,
    add: bool,
) -> Result<(), ApiError> {
    state.store.write(|tx| {
        let s = fetch_tx(tx, ctx, id)?;
        check_locked(ctx, &s)?;
        let r = if add {
            nova::add_floating(tx, ctx, &s.project_id, &s.nics, address, fixed.clone())
        } else {
            nova::remove_floating(tx, ctx, &s.project_id, &s.nics, address)
        };
        r.map_err(|e| match e.kind {
            "FloatingIPNotFound" => ApiError::new(StatusCode::NOT_FOUND, e.message),
            // Nova answers a fixed address that already has one with 400.
            "FloatingIPPortAlreadyAssociated" => ApiError::bad_request(e.message),
            _ => nova_error(e),
        })
    })?;
    Ok(())
}

/// The caller's key pair named `name`: (name, public key), or (None,
/// None) for none.
fn key_pair(
    state: &AppState,
    ctx: &Ctx,
    name: Option<&str>,
) -> Result<(Option<String>, Option<String>), ApiError> {
    let Some(k) = name else {
        return Ok((None, None));
    };
    let kp = state
        .store
        .get::<Keypair>(&Keypair::key(ctx.user_id(), k))?
        .ok_or_else(|| ApiError::bad_request("Invalid key_name provided."))?;
    Ok((Some(kp.name), Some(kp.public_key)))
}

/// Creates `min_count` to `max_count` servers (as many as the quota
/// allows) in BUILD/scheduling and hands them to the scheduler.
pub fn create(
    state: &AppState,
    ctx: &Ctx,
    req_id: &str,
    c: &CreateServer,
) -> Result<Created, ApiError> {
    let project = ctx
        .project_id()
        .ok_or_else(|| super::policy_denied("os_compute_api:servers:create"))?
        .to_string();
    // An image snapshotted from a volume-backed server boots as its
    // mappings say: new volumes from its snapshots.
    let expanded;
    let c = if !c.image_ref.is_empty() && !c.volumes.iter().any(|v| v.boot_index == Some(0)) {
        let img = boot_image(state, ctx, &c.image_ref)?;
        match super::boot_volumes::image_mappings(&img, c)? {
            Some(x) => {
                expanded = x;
                &expanded
            }
            None => c,
        }
    } else {
        c
    };
    let flavor = super::common::fetch_flavor(state, ctx, &c.flavor_ref).map_err(|_| {
        ApiError::bad_request(format!("Flavor {} could not be found.", c.flavor_ref))
    })?;
    if flavor.disabled {
        return Err(ApiError::bad_request("Flavor is disabled."));
    }
    // A volume-backed server's root disk is its volume: the image checks
    // are those of the image it is made from, if any, and the flavor's
    // disk does not hold it.
    let volume_backed = c.volumes.iter().any(|v| v.boot_index == Some(0));
    let image = match super::boot_volumes::root_image(c) {
        Some(id) => Some(boot_image(state, ctx, id)?),
        None if volume_backed => None,
        None => Some(boot_image(state, ctx, &c.image_ref)?),
    };
    let prepared = super::boot_volumes::prepare(state, ctx, c)?;
    if let Some(image) = &image {
        check_driver(image, &flavor.extra_specs)?;
        if image.min_ram > flavor.ram {
            return Err(ApiError::bad_request(
                "Flavor's memory is too small for requested image.",
            ));
        }
        if flavor.disk > 0 && !volume_backed {
            if image.min_disk > flavor.disk {
                return Err(ApiError::bad_request(
                    "Flavor's disk is too small for requested image.",
                ));
            }
            let size = image.size.unwrap_or(0).max(image.virtual_size.unwrap_or(0));
            if size > flavor.disk * 1024 * 1024 * 1024 {
                return Err(ApiError::bad_request(format!(
                    "Flavor's disk is too small for requested image. Flavor disk is {} bytes, image is {size} bytes.",
                    flavor.disk * 1024 * 1024 * 1024
                )));
            }
        }
    }
    let (key_name, key_data) = key_pair(state, ctx, c.key_name.as_deref())?;
    if let Some(h) = &c.host
        && state.store.get::<ComputeNode>(h)?.is_none()
    {
        return Err(ApiError::bad_request(format!(
            "Compute host {h} could not be found."
        )));
    }
    if let Some(n) = &c.hypervisor_hostname
        && (state.store.get::<ComputeNode>(n)?.is_none() || c.host.as_ref().is_some_and(|h| h != n))
    {
        return Err(ApiError::bad_request(format!(
            "Compute host node {n} could not be found."
        )));
    }
    let forced_host = c
        .forced_host
        .clone()
        .or_else(|| c.host.clone().or_else(|| c.hypervisor_hostname.clone()));
    if let Some(z) = &c.availability_zone
        && let Some(why) = state.sites.refuses_servers(&state.store, z)?
    {
        return Err(ApiError::bad_request(why));
    }
    if let Some(z) = &c.availability_zone
        && c.host.is_some()
        && state.sites.is_site_zone(&state.store, z)?
    {
        return Err(ApiError::bad_request(format!(
            "The availability zone {z} is an edge site: its own scheduler picks the host, so a host cannot be forced from here"
        )));
    }
    // A server an edge site runs: this controller hands out its
    // addresses, DHCP's included (the site makes none of its own).
    let at_site = match &c.availability_zone {
        Some(z) => state.sites.is_site_zone(&state.store, z)?,
        None => false,
    };
    if let Some(z) = &c.availability_zone
        && !super::zones::zone_exists(state, z)?
    {
        return Err(ApiError::bad_request(format!(
            "The requested availability zone is not available: {z}"
        )));
    }
    let group = match c.hints.get("group").and_then(|g| g.as_str()) {
        None => None,
        Some(g) => {
            let grp = state
                .store
                .get::<ServerGroup>(g)?
                .filter(|grp| ctx.is_admin() || grp.project_id == project)
                .ok_or_else(|| {
                    ApiError::bad_request(format!("Invalid server group {g}: it does not exist"))
                })?;
            Some(grp.id)
        }
    };
    let mut hints = c.hints.clone();
    if let Some(h) = forced_host {
        hints["_forced_host"] = serde_json::json!(h);
    }
    let (name, image_ref, metadata) = (&c.name, &c.image_ref, &c.metadata);
    let (min_count, max_count) = (c.min_count, c.max_count);
    let (requested_az, nic_request) = (&c.availability_zone, &c.networks);
    let (user_data, description, tags) = (&c.user_data, &c.description, &c.tags);
    let (access_ipv4, access_ipv6) = (&c.access_ipv4, &c.access_ipv6);
    let security_groups = &c.security_groups;

    // Quota and records in one transaction.
    let now = now_us();
    let rid = format!("r-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let copy = FlavorCopy::of(&flavor);
    let user = ctx.user_id().to_string();
    let made: Result<Vec<Server>, ApiError> = state.store.write(|tx| {
        let limits = quotas::limits_tx(tx, &project, Some(&user))?;
        let used = quotas::usage_tx(tx, &project, None, &user)?;
        let meta_limit = limits.get("metadata_items").copied().unwrap_or(-1);
        if meta_limit >= 0 && metadata.len() as i64 > meta_limit {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("Quota exceeded for metadata_items: Requested {}, but already used 0 of {meta_limit} metadata_items", metadata.len()),
            ));
        }
        // As many as the quota allows, between min_count and max_count.
        // A tree model (strict two-level, hierarchical) asks the engine
        // how much room the project has (its pool's, borrowing included).
        let per_server = [
            (Resource::Instances, 1i64),
            (Resource::Cores, copy.vcpus as i64),
            (Resource::Ram, copy.ram as i64),
        ];
        let tree = quotas::tree_model(tx)?;
        // What the project's leases to edge sites hold back here.
        let own_zone = state.sites.own_zone();
        let held = super::leases::reserved(tx, own_zone.as_deref(), &project)?;
        let mut rooms = std::collections::HashMap::new();
        if tree {
            for (r, _) in per_server {
                if let Some(m) = quotas::meter(r) {
                    let f = crate::identity::quota::figures(tx, m, &project)?;
                    let room = crate::identity::quota::room(tx, m, &project)?;
                    rooms.insert(r.key(), (room, f.in_use, f.limit));
                }
            }
        }
        let fits = |n: i64| -> Vec<(&'static str, i64, i64, i64)> {
            let mut over = Vec::new();
            for (r, per) in per_server {
                // (The engine's room already holds back the leases of
                // every project in the pool.)
                if let Some((room, u, lim)) = rooms.get(r.key()) {
                    if room.is_some_and(|room| per * n > room) {
                        over.push((r.key(), per * n, *u, *lim));
                    }
                    continue;
                }
                let held = held.get(r.key()).copied().unwrap_or(0);
                let lim = limits.get(r.key()).copied().unwrap_or(-1);
                let u = used.get(r.key()) + held;
                if lim >= 0 && u + per * n > lim {
                    over.push((r.key(), per * n, u, lim));
                }
            }
            over
        };
        let mut n = max_count as i64;
        while n > min_count as i64 && !fits(n).is_empty() {
            n -= 1;
        }
        let over = fits(n);
        if !over.is_empty() {
            return Err(quotas::exceeded(&over));
        }
        // A server made at an edge site spends the site's lease.
        if let Some(zone) = &own_zone {
            let per = [1, copy.vcpus as i64, copy.ram as i64];
            super::leases::check_here(tx, zone, &project, per, n)?;
        }
        if tree {
            let deltas: Vec<(Resource, i64)> = per_server.iter().map(|(r, per)| (*r, per * n)).collect();
            quotas::take(tx, &project, &deltas)?;
        }
        if let Some(g) = &group {
            let grp = tx.fetch::<ServerGroup>(g)?;
            let lim = quotas::limit_tx(tx, &project, Some(&user), Resource::ServerGroupMembers)?;
            if lim >= 0 && grp.members.len() as i64 + n > lim {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "Quota exceeded, too many servers in group",
                ));
            }
        }
        let mut out = Vec::new();
        for i in 0..n {
            let id = uuid::Uuid::new_v4().to_string();
            let sname = if n > 1 {
                format!("{name}-{}", i + 1)
            } else {
                name.to_string()
            };
            let s = Server {
                id: id.clone(),
                hostname: hostname_of(&sname),
                name: sname,
                project_id: project.clone(),
                user_id: user.clone(),
                image_ref: image_ref.clone(),
                flavor: copy.clone(),
                key_name: key_name.clone(),
                key_data: key_data.clone(),
                user_data: user_data.clone(),
                metadata: metadata.clone(),
                requested_az: requested_az.clone(),
                availability_zone: requested_az.clone(),
                host: None,
                node: None,
                vm_state: vm::BUILDING.into(),
                task_state: Some(task::SCHEDULING.into()),
                power_state: states::power::NOSTATE,
                locked_by: None,
                locked_reason: None,
                description: description.clone(),
                tags: tags.clone(),
                access_ipv4: access_ipv4.clone(),
                access_ipv6: access_ipv6.clone(),
                reservation_id: rid.clone(),
                launch_index: i as u32,
                config_drive: String::new(),
                created_us: now,
                updated_us: now,
                launched_us: None,
                fault: None,
                hints: hints.clone(),
                server_group: group.clone(),
                tried_hosts: vec![],
                generation: 1,
                snapshot: None,
                rescue_image: None,
                resize: None,
                shelved_image: None,
                settled: None,
                nics: Vec::new(),
                parent_generation: 0,
                volumes: Vec::new(),
            };
            let mut s = s;
            s.nics = crate::network::nova::plug(
                tx,
                ctx,
                &project,
                &id,
                requested_az.as_deref().unwrap_or(super::zones::DEFAULT_ZONE),
                nic_request,
                security_groups.as_deref(),
            )
            .map_err(super::nics::nova_error)?;
            if at_site {
                crate::network::nova::ensure_dhcp_ports(tx, &s.nics)
                    .map_err(super::nics::nova_error)?;
            }
            let forced = hints.get("_forced_host").and_then(|h| h.as_str());
            super::boot_volumes::attach_new(state, tx, ctx, &project, c, &prepared, &mut s, forced)?;
            tx.insert(&s)?;
            quotas::account(tx, &project, &user, copy.vcpus, copy.ram, 1)?;
            record_action(tx, &s, "create", ctx, req_id)?;
            if let Some(g) = &group {
                let mut grp = tx.fetch::<ServerGroup>(g)?;
                grp.members.push(id.clone());
                tx.update(&grp)?;
            }
            out.push(s);
        }
        Ok(out)
    });
    let made = made.inspect_err(|e| {
        if e.status == StatusCode::FORBIDDEN && e.message.starts_with("Quota exceeded") {
            let asks = [
                (&quotas::SERVERS, min_count as i64),
                (&quotas::VCPU, copy.vcpus as i64 * min_count as i64),
                (&quotas::MEMORY_MB, copy.ram as i64 * min_count as i64),
            ];
            crate::identity::quota::note_refused(&state.store, &project, &asks);
        }
    })?;
    // Those waiting for their volumes go to the scheduler when the
    // volumes are made (`boot_volumes::volume_ready`).
    let ids: Vec<String> = made
        .iter()
        .filter(|s| s.task_state.as_deref() == Some(task::SCHEDULING))
        .map(|s| s.id.clone())
        .collect();
    super::scheduler::submit(state, ids);
    Ok(Created {
        reservation_id: rid,
        servers: made,
    })
}

/// Runs `action` on server `id` for `ctx`; `req_id` names the request in
/// the server's action records.
pub fn act(
    state: &AppState,
    ctx: &Ctx,
    id: &str,
    req_id: &str,
    action: ServerAction,
) -> Result<Outcome, ApiError> {
    let s = fetch(state, ctx, id)?;
    // While a volume is being swapped the workload stays as it is: the
    // node is copying its running disk.
    if matches!(
        action,
        ServerAction::Start
            | ServerAction::Stop
            | ServerAction::Reboot { .. }
            | ServerAction::Suspend
            | ServerAction::Resume
            | ServerAction::Rebuild(_)
            | ServerAction::Resize { .. }
            | ServerAction::Migrate { .. }
            | ServerAction::LiveMigrate { .. }
            | ServerAction::Evacuate { .. }
            | ServerAction::Shelve
            | ServerAction::ShelveOffload
            | ServerAction::Unshelve { .. }
            | ServerAction::Rescue { .. }
            | ServerAction::Unrescue
            | ServerAction::CreateImage(_)
            | ServerAction::CreateBackup(_)
    ) {
        super::states::no_swap(&s, "action")?;
    }
    let rid = req_id;
    let begin = |name: &str, from: &[&str], task_state: &str| {
        begin(state, ctx, id, name, from, task_state, rid).map(|_| Outcome::Accepted)
    };
    match action {
        ServerAction::Stop => begin("stop", &[vm::ACTIVE, vm::ERROR], task::POWERING_OFF),
        ServerAction::Start => begin("start", &[vm::STOPPED], task::POWERING_ON),
        ServerAction::Reboot { hard: false } => begin("reboot", &[vm::ACTIVE], task::REBOOTING),
        ServerAction::Reboot { hard: true } => begin(
            "reboot",
            &[
                vm::ACTIVE,
                vm::STOPPED,
                vm::PAUSED,
                vm::SUSPENDED,
                vm::ERROR,
            ],
            task::REBOOTING_HARD,
        ),
        ServerAction::Pause => begin("pause", &[vm::ACTIVE], task::PAUSING),
        ServerAction::Unpause => begin("unpause", &[vm::PAUSED], task::UNPAUSING),
        ServerAction::Suspend => begin("suspend", &[vm::ACTIVE], task::SUSPENDING),
        ServerAction::Resume => begin("resume", &[vm::SUSPENDED], task::RESUMING),
        ServerAction::Lock { reason } => lock(state, ctx, id, reason, rid),
        ServerAction::Unlock => unlock(state, ctx, id, rid),
        ServerAction::ResetState(to) => reset_state(state, ctx, id, to, rid),
        ServerAction::Rebuild(r) => rebuild(state, ctx, &s, &r, rid),
        ServerAction::AddFloatingIp {
            address,
            fixed_address,
        } => floating(state, ctx, id, &address, fixed_address, true).map(|_| Outcome::Accepted),
        ServerAction::RemoveFloatingIp { address } => {
            floating(state, ctx, id, &address, None, false).map(|_| Outcome::Accepted)
        }
        ServerAction::AddSecurityGroup { name } => {
            change_group(state, ctx, id, &name, true).map(|_| Outcome::Accepted)
        }
        ServerAction::RemoveSecurityGroup { name } => {
            change_group(state, ctx, id, &name, false).map(|_| Outcome::Accepted)
        }
        ServerAction::Resize { flavor_ref } => {
            super::resize::resize(state, ctx, &s, &flavor_ref, rid).map(|_| Outcome::Accepted)
        }
        ServerAction::ConfirmResize => {
            super::resize::confirm(state, ctx, &s, rid).map(|_| Outcome::Accepted)
        }
        ServerAction::RevertResize => {
            super::resize::revert(state, ctx, &s, rid).map(|_| Outcome::Accepted)
        }
        ServerAction::Migrate { host } => {
            super::resize::migrate(state, ctx, &s, host, rid).map(|_| Outcome::Accepted)
        }
        ServerAction::LiveMigrate { host } => {
            super::live::live_migrate(state, ctx, &s, host, rid).map(|_| Outcome::Accepted)
        }
        ServerAction::Evacuate { host, admin_pass } => {
            super::ha::evacuate(state, ctx, &s, host, rid)?;
            Ok(Outcome::Evacuated {
                admin_pass: admin_pass
                    .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()[..12].to_string()),
            })
        }
        ServerAction::Shelve => {
            super::shelve::shelve(state, ctx, &s, rid).map(|_| Outcome::Accepted)
        }
        ServerAction::ShelveOffload => {
            super::shelve::shelve_offload(ctx, &s).map(|_| Outcome::Accepted)
        }
        ServerAction::Unshelve { availability_zone } => {
            super::shelve::unshelve(state, ctx, &s, availability_zone, rid)
                .map(|_| Outcome::Accepted)
        }
        ServerAction::Rescue {
            admin_pass,
            image_ref,
        } => super::rescue::rescue(state, ctx, &s, admin_pass, image_ref, rid)
            .map(|admin_pass| Outcome::Rescued { admin_pass }),
        ServerAction::Unrescue => {
            super::rescue::unrescue(state, ctx, &s, rid).map(|_| Outcome::Accepted)
        }
        ServerAction::CreateImage(req) => super::snapshots::create_image(state, ctx, id, req, rid)
            .map(|(image_id, kept)| Outcome::Image { image_id, kept }),
        ServerAction::CreateBackup(req) => {
            super::snapshots::create_backup(state, ctx, id, req, rid)
                .map(|(image_id, kept)| Outcome::Image { image_id, kept })
        }
        ServerAction::Delete => {
            check_locked(ctx, &s)?;
            super::service::request_delete(state, ctx, &s.id, rid).map(|_| Outcome::Accepted)
        }
    }
}

/// `lock`: by the owner, or by an admin of another project (then only
/// admins unlock).
fn lock(
    state: &AppState,
    ctx: &Ctx,
    id: &str,
    reason: Option<String>,
    rid: &str,
) -> Result<Outcome, ApiError> {
    state.store.write(|tx| {
        let mut s = tx.fetch::<Server>(id)?;
        s.locked_reason = reason.clone();
        s.locked_by = Some(
            if ctx.is_admin() && ctx.project_id() != Some(s.project_id.as_str()) {
                "admin".into()
            } else {
                "owner".into()
            },
        );
        s.updated_us = now_us();
        tx.update(&s)?;
        record_action(tx, &s, "lock", ctx, rid)?;
        Ok::<_, ApiError>(())
    })?;
    Ok(Outcome::Accepted)
}

fn unlock(state: &AppState, ctx: &Ctx, id: &str, rid: &str) -> Result<Outcome, ApiError> {
    state.store.write(|tx| {
        let mut s = tx.fetch::<Server>(id)?;
        if s.locked_by.as_deref() == Some("admin") && !ctx.is_admin() {
            return Err(super::policy_denied(
                "os_compute_api:os-lock-server:unlock:unlock_override",
            ));
        }
        s.locked_by = None;
        s.locked_reason = None;
        s.updated_us = now_us();
        tx.update(&s)?;
        record_action(tx, &s, "unlock", ctx, rid)?;
        Ok(())
    })?;
    Ok(Outcome::Accepted)
}

/// `os-resetState`: sets the vm_state, ends any task; a snapshot or resize
/// in flight is abandoned.
fn reset_state(
    state: &AppState,
    ctx: &Ctx,
    id: &str,
    to: ResetTo,
    rid: &str,
) -> Result<Outcome, ApiError> {
    let to = match to {
        ResetTo::Active => vm::ACTIVE,
        ResetTo::Error => vm::ERROR,
    };
    let job = state.store.write(|tx| {
        let mut s = tx.fetch::<Server>(id)?;
        s.vm_state = to.into();
        s.task_state = None;
        // Reports from a task that was in flight no longer apply.
        s.generation += 1;
        s.updated_us = now_us();
        let job = s.snapshot.take();
        let resize = super::resize::reset(tx, &mut s)?;
        tx.update(&s)?;
        record_action(tx, &s, "resetState", ctx, rid)?;
        Ok::<_, ApiError>((job, resize))
    })?;
    // A snapshot in flight will not be reported: its image goes.
    if let Some(job) = job.0 {
        super::snapshots::finish(state, id, &job, false);
    }
    if let Some(resize) = job.1 {
        super::resize::after_reset(state, id, &resize);
    }
    Ok(Outcome::Accepted)
}

/// `rebuild`: the server boots `r.image_ref` again, with what else `r`
/// changes.
fn rebuild(
    state: &AppState,
    ctx: &Ctx,
    s: &Server,
    r: &Rebuild,
    rid: &str,
) -> Result<Outcome, ApiError> {
    let image = &r.image_ref;
    if s.boot_volume().is_some() {
        // Nova before 2.93: the root disk is a volume, not an image's.
        return Err(ApiError::bad_request(format!(
            "Instance {} is volume-backed: rebuilding it with an image is not supported",
            s.id
        )));
    }
    let img = boot_image(state, ctx, image)?;
    check_driver(&img, &s.flavor.extra_specs)?;
    if img.min_ram > s.flavor.ram {
        return Err(ApiError::bad_request(
            "Flavor's memory is too small for requested image.",
        ));
    }
    if s.flavor.disk > 0 && img.min_disk > s.flavor.disk {
        return Err(ApiError::bad_request(
            "Flavor's disk is too small for requested image.",
        ));
    }
    let key = match &r.key_name {
        None => None,
        Some(k) => Some(key_pair(state, ctx, k.as_deref())?),
    };
    let s = state.store.write(|tx| {
        let mut s = tx
            .get::<Server>(&s.id)?
            .ok_or_else(|| instance_not_found(&s.id))?;
        check_locked(ctx, &s)?;
        if s.task_state.is_some()
            || ![vm::ACTIVE, vm::STOPPED, vm::ERROR].contains(&s.vm_state.as_str())
            || s.host.is_none()
        {
            return Err(wrong_state("rebuild", &s));
        }
        s.image_ref = image.clone();
        if let Some(n) = &r.name {
            s.name = n.clone();
        }
        if let Some(m) = &r.metadata {
            s.metadata = m.clone();
        }
        if let Some(d) = &r.description {
            s.description = d.clone();
        }
        if let Some((name, data)) = &key {
            s.key_name = name.clone();
            s.key_data = data.clone();
        }
        if let Some(u) = &r.user_data {
            s.user_data = u.clone();
        }
        s.task_state = Some(task::REBUILDING.into());
        s.generation += 1;
        s.updated_us = now_us();
        tx.update(&s)?;
        record_action(tx, &s, "rebuild", ctx, rid)?;
        Ok(s)
    })?;
    state.compute.notify(s.host.as_deref());
    Ok(Outcome::Rebuilt(Box::new(s)))
}

#[cfg(test)]
mod tests {
    //! The core runs commands with nothing but the state and a caller's
    //! context, as a transport other than HTTP would.

    use std::sync::Arc;

    use stratus_store::Store;

    use super::*;
    use crate::identity::bootstrap::{BootstrapOptions, bootstrap};
    use crate::identity::service::{issue, validate};
    use crate::identity::token::{Scope, TokenData};
    use crate::{ApiConfig, listener::HttpLimits};

    /// Removes the state's data directory (Fernet keys, images) at the end.
    struct Dir(std::path::PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn state_and_admin() -> (AppState, Ctx, String, Dir) {
        let store = Arc::new(Store::open_in_memory().unwrap());
        let boot = bootstrap(
            &store,
            &BootstrapOptions {
                admin_password: Some("pw".into()),
                region: "RegionOne".into(),
                public_url: "http://127.0.0.1:1".into(),
            },
        )
        .unwrap();
        let dir = std::env::temp_dir().join(format!(
            "stratus-core-test-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let config = ApiConfig {
            public_url: "http://127.0.0.1:1".into(),
            data_dir: dir.clone(),
            token_expiration_s: 3600,
            region: "RegionOne".into(),
            login_cache_s: 0,
            image_size_cap: 1 << 30,
            compute: Default::default(),
            http: HttpLimits::default(),
            site_down_time_s: 90,
        };
        let state = AppState::new(config, store).unwrap();
        let now = now_us();
        let token = issue(
            &state,
            &TokenData {
                methods: 1,
                user_id: boot.admin_user_id.clone(),
                scope: Scope::Project(boot.admin_project_id.clone()),
                issued_us: now,
                expires_us: now + 3_600_000_000,
                audit_ids: vec![[7; 16]],
                app_cred_id: None,
                trust_id: None,
            },
        );
        let ctx = Ctx(validate(&state, &token, false).unwrap());
        (state, ctx, boot.admin_project_id, Dir(dir))
    }

    /// A server as create leaves it, already placed on `host`.
    fn server(state: &AppState, ctx: &Ctx, project: &str, host: Option<&str>) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        let now = now_us();
        let s = Server {
            id: id.clone(),
            hostname: "s".into(),
            name: "s".into(),
            project_id: project.into(),
            user_id: ctx.user_id().into(),
            image_ref: uuid::Uuid::new_v4().to_string(),
            flavor: FlavorCopy {
                id: "1".into(),
                name: "m1.tiny".into(),
                vcpus: 1,
                ram: 512,
                disk: 1,
                ephemeral: 0,
                swap: 0,
                extra_specs: Default::default(),
            },
            key_name: None,
            key_data: None,
            user_data: None,
            metadata: Default::default(),
            requested_az: None,
            availability_zone: None,
            host: host.map(str::to_string),
            node: host.map(str::to_string),
            vm_state: vm::ACTIVE.into(),
            task_state: None,
            power_state: states::power::RUNNING,
            locked_by: None,
            locked_reason: None,
            description: None,
            tags: vec![],
            access_ipv4: String::new(),
            access_ipv6: String::new(),
            reservation_id: "r-1".into(),
            launch_index: 0,
            config_drive: String::new(),
            created_us: now,
            updated_us: now,
            launched_us: Some(now),
            fault: None,
            hints: serde_json::json!({}),
            server_group: None,
            tried_hosts: vec![],
            generation: 1,
            snapshot: None,
            rescue_image: None,
            resize: None,
            shelved_image: None,
            settled: None,
            nics: Vec::new(),
            parent_generation: 0,
            volumes: Vec::new(),
        };
        state.store.write(|tx| tx.insert(&s)).unwrap();
        id
    }

    #[test]
    fn actions_run_with_the_state_and_a_context() {
        let (state, ctx, project, _dir) = state_and_admin();
        let id = server(&state, &ctx, &project, Some("n1"));

        let out = act(
            &state,
            &ctx,
            &id,
            "req-lock",
            ServerAction::Lock {
                reason: Some("maintenance".into()),
            },
        )
        .unwrap();
        assert!(matches!(out, Outcome::Accepted));
        let s = state.store.fetch::<Server>(&id).unwrap();
        assert_eq!(s.locked_by.as_deref(), Some("owner"));
        assert_eq!(s.locked_reason.as_deref(), Some("maintenance"));
        let actions = state
            .store
            .list::<super::super::model::InstanceAction>(&stratus_store::Query::parent(&id))
            .unwrap();
        assert_eq!(actions.len(), 1);
        assert_eq!(actions[0].action, "lock");
        assert_eq!(actions[0].request_id, "req-lock");

        act(&state, &ctx, &id, "req-stop", ServerAction::Stop).unwrap();
        let s = state.store.fetch::<Server>(&id).unwrap();
        assert_eq!(s.task_state.as_deref(), Some(task::POWERING_OFF));
        assert_eq!(s.generation, 2);
        // A task is running: another start is Nova's 409.
        let e = act(&state, &ctx, &id, "req-x", ServerAction::Pause).unwrap_err();
        assert_eq!(e.status, StatusCode::CONFLICT);

        act(
            &state,
            &ctx,
            &id,
            "req-reset",
            ServerAction::ResetState(ResetTo::Error),
        )
        .unwrap();
        let s = state.store.fetch::<Server>(&id).unwrap();
        assert_eq!((s.vm_state.as_str(), s.task_state), (vm::ERROR, None));
    }

    #[test]
    fn delete_of_a_server_on_no_node_is_at_once_and_unknown_ids_are_404() {
        let (state, ctx, project, _dir) = state_and_admin();
        let id = server(&state, &ctx, &project, None);
        act(&state, &ctx, &id, "req-del", ServerAction::Delete).unwrap();
        assert!(state.store.get::<Server>(&id).unwrap().is_none());
        let e = act(&state, &ctx, &id, "req-again", ServerAction::Delete).unwrap_err();
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert_eq!(e.message, format!("Instance {id} could not be found."));
    }
}
