//! Time in the formats OpenStack uses, without a date-time dependency.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Keystone's token time format: `2026-11-22T12:00:00.000000Z`.
pub fn iso_us(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let frac = us.rem_euclid(1_000_000);
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{frac:06}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// Keystone's format for stored timestamps (application credential
/// `expires_at`): no zone suffix, fraction only when non-zero.
pub fn iso_naive(us: i64) -> String {
    let s = iso_us(us);
    let s = s.trim_end_matches('Z');
    s.strip_suffix(".000000").unwrap_or(s).to_string()
}

/// Parses ISO 8601 timestamps as clients send them: `YYYY-MM-DDTHH:MM[:SS[.frac]]`
/// with an optional `Z` or `+HH:MM` offset (none means UTC).
pub fn parse_iso(s: &str) -> Option<i64> {
    let s = s.trim();
    let (date, time) = s.split_once(['T', ' '])?;
    let mut dp = date.split('-');
    let y: i64 = dp.next()?.parse().ok()?;
    let mo: u32 = dp.next()?.parse().ok()?;
    let d: u32 = dp.next()?.parse().ok()?;
    if dp.next().is_some() || !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    let (clock, offset_s) = if let Some(t) = time.strip_suffix('Z') {
        (t, 0i64)
    } else if let Some(pos) = time.rfind(['+', '-']) {
        let (t, off) = time.split_at(pos);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let off = &off[1..];
        let (oh, om) = off
            .split_once(':')
            .unwrap_or((off.get(..2)?, off.get(2..).unwrap_or("0")));
        let oh: i64 = oh.parse().ok()?;
        let om: i64 = if om.is_empty() { 0 } else { om.parse().ok()? };
        (t, sign * (oh * 3600 + om * 60))
    } else {
        (time, 0)
    };
    let mut cp = clock.split(':');
    let h: i64 = cp.next()?.parse().ok()?;
    let mi: i64 = cp.next()?.parse().ok()?;
    let (sec, frac_us) = match cp.next() {
        None => (0, 0),
        Some(sec) => {
            let (whole, frac) = sec.split_once('.').unwrap_or((sec, ""));
            let whole: i64 = whole.parse().ok()?;
            let mut digits: String = frac.chars().take(6).collect();
            if !digits.chars().all(|c| c.is_ascii_digit()) {
                return None;
            }
            while digits.len() < 6 {
                digits.push('0');
            }
            (whole, digits.parse::<i64>().ok()?)
        }
    };
    if h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    Some(((days * 86_400 + h * 3600 + mi * 60 + sec - offset_s) * 1_000_000) + frac_us)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_round_trip() {
        let us = 1_795_000_000_123_456;
        let s = iso_us(us);
        assert_eq!(s, "2026-11-18T11:06:40.123456Z");
        assert_eq!(parse_iso(&s), Some(us));
        assert_eq!(iso_us(0), "1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn parses_client_forms() {
        let base = parse_iso("2030-01-02T03:04:05Z").unwrap();
        assert_eq!(parse_iso("2030-01-02T03:04:05"), Some(base));
        assert_eq!(parse_iso("2030-01-02T04:04:05+01:00"), Some(base));
        assert_eq!(parse_iso("2030-01-02T03:04:05.5Z"), Some(base + 500_000));
        assert_eq!(parse_iso("2030-01-02T03:04"), Some(base - 5_000_000));
        assert_eq!(
            parse_iso("2020-02-29T00:00:00Z"),
            Some(1_582_934_400_000_000)
        );
        assert_eq!(parse_iso("not a date"), None);
        assert_eq!(parse_iso("2030-13-02T03:04:05Z"), None);
    }
}
