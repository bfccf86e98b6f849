//! How users and groups render, shared by the handlers that list one
//! beside the other (a group's members, a user's groups).

use serde_json::{Value, json};

use super::model::{Group, User};
use super::self_link;
use crate::AppState;

pub fn user(state: &AppState, u: &User) -> Value {
    let mut v = json!({
        "id": u.id,
        "name": u.name,
        "domain_id": u.domain_id,
        "enabled": u.enabled,
        "password_expires_at": null,
        "options": u.options,
        "links": self_link(state, &format!("users/{}", u.id)),
    });
    if let Some(p) = &u.default_project_id {
        v["default_project_id"] = json!(p);
    }
    if let Some(d) = &u.description {
        v["description"] = json!(d);
    }
    if let Some(obj) = v.as_object_mut() {
        for (k, x) in &u.extra {
            obj.entry(k.clone()).or_insert_with(|| x.clone());
        }
    }
    v
}

pub fn group(state: &AppState, g: &Group) -> Value {
    let mut v = json!({
        "id": g.id,
        "name": g.name,
        "domain_id": g.domain_id,
        "description": g.description,
        "links": self_link(state, &format!("groups/{}", g.id)),
    });
    if let Some(obj) = v.as_object_mut() {
        for (k, x) in &g.extra {
            obj.entry(k.clone()).or_insert_with(|| x.clone());
        }
    }
    v
}
