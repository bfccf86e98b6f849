//! Nova's input rules that several compute handlers share.
//!
//! Nova's `parameter_types.name` (servers, rebuild, snapshots and backups,
//! flavors, server groups, aggregates): a string of 1-255 characters, all
//! printable (no Unicode "other" characters such as controls, format
//! characters or unassigned code points, and no line or paragraph
//! separators), that neither starts nor ends with a space character.
//! Letters of every script pass; so do spaces inside the name.
//!
//! Nova's `verify_project_id`: where a request stores something for a
//! project (quota sets, flavor access), Nova asks Keystone whether the
//! project exists and answers 400 when it does not.

use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

use crate::identity::model::{Domain, Project};
use crate::{ApiError, AppState};

/// Printable throughout, and neither end a space (`Zs`) nor anything
/// non-printable (Nova's `valid_name_regex`). The length is checked apart.
static NAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[^\p{C}\p{Z}](?:[^\p{C}\p{Zl}\p{Zp}]*[^\p{C}\p{Z}])?$")
        .expect("the name pattern compiles")
});

/// Nova's reason for a name that fails the pattern.
const NAME_REASON: &str = "printable characters. Can not start or end with whitespace.";

/// Does `s` pass Nova's `name` schema?
pub fn valid_name(s: &str) -> bool {
    (1..=255).contains(&s.chars().count()) && NAME.is_match(s)
}

/// The 400 Nova answers for `v` in the name field `field`: a wrong type or
/// length names the field and value, a bad character gives Nova's
/// `InvalidName` text.
pub fn name_error(field: &str, v: &Value) -> ApiError {
    let why = match v {
        Value::String(s) if s.is_empty() => format!("{v} is too short"),
        Value::String(s) if s.chars().count() > 255 => format!("{v} is too long"),
        Value::String(_) => {
            return ApiError::bad_request(format!(
                "An invalid '{field}' value was provided. The name must be: {NAME_REASON}"
            ));
        }
        _ => format!("{v} is not of type 'string'"),
    };
    ApiError::bad_request(format!(
        "Invalid input for field/attribute {field}. Value: {v}. {why}"
    ))
}

/// The name in `v`, or Nova's 400 for it.
pub fn name(field: &str, v: &Value) -> Result<String, ApiError> {
    match v {
        Value::String(s) if valid_name(s) => Ok(s.clone()),
        _ => Err(name_error(field, v)),
    }
}

/// Nova's 400 unless `project` names a project. Identity lives in this
/// store, so the check always runs (Nova lets a request through when it
/// cannot reach Keystone). A domain counts: Keystone shows a domain as a
/// project too.
pub fn verify_project(state: &AppState, project: &str) -> Result<(), ApiError> {
    if state.store.get::<Project>(project)?.is_some()
        || state.store.get::<Domain>(project)?.is_some()
    {
        return Ok(());
    }
    Err(ApiError::bad_request(format!(
        "Project ID {project} is not a valid project."
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nova_names() {
        for ok in [
            "vm-1",
            "a",
            "two words",
            "Сервер ünïcødé 服务器",
            "emoji 🚀 inside",
            "e\u{301}", // a combining mark
            "x".repeat(255).as_str(),
            "ä".repeat(255).as_str(),
        ] {
            assert!(valid_name(ok), "{ok:?} should pass");
        }
        for bad in [
            "",
            " lead",
            "trail ",
            "\u{a0}nbsp",
            "nul\0inside",
            "tab\tinside",
            "new\nline",
            "del\u{7f}",
            "c1\u{85}",
            "zero\u{200b}width",
            "bom\u{feff}",
            "line\u{2028}sep",
            "private\u{e000}use",
            "unassigned\u{378}",
            "x".repeat(256).as_str(),
        ] {
            assert!(!valid_name(bad), "{bad:?} should fail");
        }
    }

    #[test]
    fn name_errors_name_the_field() {
        let e = name_error("name", &Value::String("a\0b".into()));
        assert!(e.message.contains("printable characters"), "{}", e.message);
        let e = name_error("name", &Value::Null);
        assert!(e.message.contains("field/attribute name"), "{}", e.message);
    }
}
