//! List filters that came with microversions: unknown filter keys
//! refused (3.31), `key~=part` (3.34, a "like" match) and `created_at` /
//! `updated_at` with an operator (3.60).

use std::collections::HashMap;

use crate::ApiError;

use super::Mv;
use super::resource_filters::FILTERS;

/// Query keys every list takes that are not filters: paging, sorting,
/// counting, and whose resources to list (Cinder takes the paging and
/// sorting keys out before it checks the filters, and lets
/// `all_tenants` through for cinderclient, which always sends it).
const NOT_FILTERS: &[&str] = &[
    "limit",
    "marker",
    "offset",
    "sort",
    "sort_key",
    "sort_dir",
    "with_count",
    "all_tenants",
    "all_projects",
    "project_id",
];

/// Cinder's `reject_invalid_filters`: from 3.31 a list refuses (400)
/// query keys that are not filters of `resource` (its row of
/// `GET /resource_filters`), nor [`NOT_FILTERS`], nor `also` (keys the
/// list reads that are not filters, such as `list_volume`). Admins may
/// filter by anything, as in Cinder. A `key~` like filter counts from
/// 3.34, where the row lists it; Cinder's rule that a listed `key~`
/// also lets `key` through holds too. Keys must be ASCII, also for
/// admins.
pub(crate) fn reject_invalid(
    is_admin: bool,
    mv: Mv,
    q: &HashMap<String, String>,
    resource: &str,
    also: &[&str],
) -> Result<(), ApiError> {
    if !mv.at_least(31) {
        return Ok(());
    }
    if !q.keys().all(|k| k.is_ascii()) {
        return Err(ApiError::bad_request(
            "Filter keys can only contain ASCII characters.",
        ));
    }
    if is_admin {
        return Ok(());
    }
    let row: &[&str] = FILTERS
        .iter()
        .find(|(r, _)| *r == resource)
        .map(|(_, f)| *f)
        .unwrap_or_default();
    let like = mv.at_least(34);
    let mut bad: Vec<&str> = q
        .keys()
        .map(String::as_str)
        .filter(|k| !NOT_FILTERS.contains(k) && !also.contains(k))
        .filter(|k| {
            let listed = row.contains(k) && (like || !k.ends_with('~'));
            let as_like = like && row.contains(&format!("{k}~").as_str());
            !(listed || as_like)
        })
        .collect();
    if bad.is_empty() {
        return Ok(());
    }
    bad.sort_unstable();
    Err(ApiError::bad_request(format!(
        "Invalid filters {} are found in query options.",
        bad.join(",")
    )))
}

/// Whether `value` passes the query's filter on `key`: equal to `key=`,
/// and from 3.34 containing `key~=` (Cinder's LIKE).
pub(crate) fn text_matches(
    q: &HashMap<String, String>,
    key: &str,
    value: Option<&str>,
    mv: Mv,
) -> bool {
    if let Some(want) = q.get(key)
        && value != Some(want.as_str())
    {
        return false;
    }
    if mv.at_least(34)
        && let Some(part) = q.get(&format!("{key}~"))
    {
        return value.is_some_and(|v| v.to_lowercase().contains(&part.to_lowercase()));
    }
    true
}

/// [`text_matches`] ignoring case (statuses).
pub(crate) fn text_matches_ci(q: &HashMap<String, String>, key: &str, value: &str, mv: Mv) -> bool {
    if let Some(want) = q.get(key)
        && !want.eq_ignore_ascii_case(value)
    {
        return false;
    }
    if mv.at_least(34)
        && let Some(part) = q.get(&format!("{key}~"))
    {
        return value.to_lowercase().contains(&part.to_lowercase());
    }
    true
}

/// One time filter: `created_at=gte:2026-12-01T00:00:00`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct TimeFilter {
    updated: bool,
    op: Op,
    at_us: i64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Gt,
    Gte,
    Lt,
    Lte,
    Eq,
    Neq,
}

impl TimeFilter {
    /// Whether a resource made at `created_us` and changed at
    /// `updated_us` passes.
    pub(crate) fn holds(&self, created_us: i64, updated_us: i64) -> bool {
        let t = if self.updated { updated_us } else { created_us };
        // Timestamps are shown to the microsecond; compare at that.
        match self.op {
            Op::Gt => t > self.at_us,
            Op::Gte => t >= self.at_us,
            Op::Lt => t < self.at_us,
            Op::Lte => t <= self.at_us,
            Op::Eq => t == self.at_us,
            Op::Neq => t != self.at_us,
        }
    }
}

/// The `created_at` and `updated_at` filters of a query (3.60): each a
/// comma-separated list of `op:time` (`gt`, `gte`, `lt`, `lte`, `eq`,
/// `neq`), a bare time meaning `eq`; a bad one is a 400.
pub(crate) fn time_filters(q: &HashMap<String, String>) -> Result<Vec<TimeFilter>, ApiError> {
    let mut out = Vec::new();
    for (key, updated) in [("created_at", false), ("updated_at", true)] {
        let Some(raw) = q.get(key) else { continue };
        for part in raw.split(',').filter(|p| !p.trim().is_empty()) {
            let part = part.trim();
            let (op, time) = match part.split_once(':') {
                Some((o, t)) if ["gt", "gte", "lt", "lte", "eq", "neq"].contains(&o) => (o, t),
                _ => ("eq", part),
            };
            let op = match op {
                "gt" => Op::Gt,
                "gte" => Op::Gte,
                "lt" => Op::Lt,
                "lte" => Op::Lte,
                "neq" => Op::Neq,
                _ => Op::Eq,
            };
            // A `+hh:mm` offset sent unencoded arrives as a space.
            let time = &match time.rsplit_once(' ') {
                Some((t, off)) if t.contains('T') && off.contains(':') => format!("{t}+{off}"),
                _ => time.to_string(),
            };
            let zoned = time.ends_with('Z')
                || time
                    .split_once(['T', ' '])
                    .is_some_and(|(_, clock)| clock.contains(['+', '-']));
            let iso = if zoned {
                time.to_string()
            } else {
                format!("{time}Z")
            };
            let at_us = crate::timeutil::parse_iso(&iso.replace(' ', "T")).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "Invalid input received: Invalid filter keys: {key}={raw} (a time is ISO 8601, optionally after gt:, gte:, lt:, lte:, eq: or neq:)."
                ))
            })?;
            out.push(TimeFilter { updated, op, at_us });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn members_may_use_only_the_resources_filters_from_3_31() {
        let ok = q(&[("name", "a"), ("limit", "1"), ("sort", "name:asc")]);
        assert!(reject_invalid(false, Mv(31), &ok, "volume", &[]).is_ok());
        let bad = q(&[("name", "a"), ("colour", "red"), ("bogus", "1")]);
        let e = reject_invalid(false, Mv(31), &bad, "volume", &[]).unwrap_err();
        assert_eq!(
            e.message,
            "Invalid filters bogus,colour are found in query options."
        );
        // Before 3.31, and for admins, nothing is refused.
        assert!(reject_invalid(false, Mv(30), &bad, "volume", &[]).is_ok());
        assert!(reject_invalid(true, Mv(70), &bad, "volume", &[]).is_ok());
        // Like filters count from 3.34, where the row lists them.
        let like = q(&[("name~", "a")]);
        assert!(reject_invalid(false, Mv(33), &like, "group", &[]).is_err());
        assert!(reject_invalid(false, Mv(34), &like, "group", &[]).is_ok());
        assert!(
            reject_invalid(false, Mv(34), &q(&[("volume_id~", "a")]), "snapshot", &[]).is_err()
        );
        // Keys the list reads that are not filters.
        let lv = q(&[("list_volume", "true")]);
        assert!(reject_invalid(false, Mv(40), &lv, "group", &["list_volume"]).is_ok());
        assert!(reject_invalid(true, Mv(40), &q(&[("nämé", "a")]), "volume", &[]).is_err());
    }

    #[test]
    fn like_filters_need_3_34() {
        let query = q(&[("name~", "ata")]);
        assert!(text_matches(&query, "name", Some("data-1"), Mv(34)));
        assert!(!text_matches(&query, "name", Some("logs"), Mv(34)));
        assert!(!text_matches(&query, "name", None, Mv(34)));
        // Before 3.34 the key is not a filter.
        assert!(text_matches(&query, "name", Some("logs"), Mv(33)));
        assert!(!text_matches(
            &q(&[("name", "a")]),
            "name",
            Some("b"),
            Mv(0)
        ));
        assert!(text_matches_ci(
            &q(&[("status", "AVAILABLE")]),
            "status",
            "available",
            Mv(0)
        ));
    }

    #[test]
    fn time_filters_compare_with_their_operator() {
        let base = crate::timeutil::parse_iso("2026-12-01T00:00:00Z").unwrap();
        let f = time_filters(&q(&[(
            "created_at",
            "gte:2026-12-01T00:00:00,lt:2026-12-02T00:00:00",
        )]))
        .unwrap();
        assert_eq!(f.len(), 2);
        assert!(f.iter().all(|t| t.holds(base, 0)));
        assert!(!f.iter().all(|t| t.holds(base - 1, 0)));
        assert!(!f.iter().all(|t| t.holds(base + 86_400_000_000, 0)));
        let u = time_filters(&q(&[("updated_at", "gt:2026-12-01T00:00:00")])).unwrap();
        assert!(u[0].holds(0, base + 1) && !u[0].holds(base + 1, base));
        assert!(time_filters(&q(&[("created_at", "gte:yesterday")])).is_err());
        // Offsets, also with the `+` decoded to a space.
        for t in [
            "gte:2026-12-01T01:00:00+01:00",
            "gte:2026-12-01T01:00:00 01:00",
            "gte:2026-11-30T19:00:00-05:00",
        ] {
            let f = time_filters(&q(&[("created_at", t)])).unwrap();
            assert!(f[0].holds(base, 0) && !f[0].holds(base - 1, 0), "{t}");
        }
    }
}
