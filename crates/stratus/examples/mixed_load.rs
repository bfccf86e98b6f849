//! A mixed read/write load against a running controller, for
//! `scripts/bench-mixed` (a benchmark, not a test).
//!
//! CLIENTS threads each keep one connection and loop for DURATION seconds: with
//! probability WRITE_PERCENT a write (a server create, or a delete of one
//! it made once it holds a few), otherwise a read (a token validation or a
//! flavor list, alternately). Prints p50/p99/max per operation and the
//! total rate.
//!
//! Environment: URL, ADMIN_TOKEN (validates tokens), USER_TOKEN (reads and
//! writes), IMAGE (image id to boot), CLIENTS (50), DURATION (seconds, 20),
//! WRITE_PERCENT (30), LABEL (printed with each line).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Op {
    Validate,
    Flavors,
    Create,
    Delete,
}

struct Sample {
    op: Op,
    took: Duration,
    ok: bool,
}

fn main() {
    let url = env("URL", "http://127.0.0.1:8080");
    let admin = env("ADMIN_TOKEN", "");
    let user = env("USER_TOKEN", "");
    let image = env("IMAGE", "");
    let clients: usize = env("CLIENTS", "50").parse().unwrap_or(50);
    let seconds: u64 = env("DURATION", "20").parse().unwrap_or(20);
    let write_pct: u64 = env("WRITE_PERCENT", "30").parse().unwrap_or(30);
    let label = env("LABEL", "");
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let samples: Vec<Sample> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|t| {
                let (url, admin, user, image) = (&url, &admin, &user, &image);
                s.spawn(move || client(t as u64, url, admin, user, image, write_pct, deadline))
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let wall = started.elapsed().as_secs_f64();
    let mut by_op: BTreeMap<Op, Vec<Duration>> = BTreeMap::new();
    let mut errors = 0;
    for s in &samples {
        if s.ok {
            by_op.entry(s.op).or_default().push(s.took);
        } else {
            errors += 1;
        }
    }
    let mut reads = Vec::new();
    let mut writes = Vec::new();
    for (op, mut v) in by_op {
        v.sort();
        let line = figures(&v);
        println!("{label:>8} {:<9} {line}", format!("{op:?}").to_lowercase());
        match op {
            Op::Validate | Op::Flavors => reads.extend(v),
            Op::Create | Op::Delete => writes.extend(v),
        }
    }
    for (name, mut v) in [("reads", reads), ("writes", writes)] {
        if !v.is_empty() {
            v.sort();
            println!("{label:>8} {name:<9} {}", figures(&v));
        }
    }
    println!(
        "{label:>8} total     {} requests in {wall:.1} s = {:.0} req/s, {errors} errors",
        samples.len(),
        samples.len() as f64 / wall
    );
}

fn figures(v: &[Duration]) -> String {
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "n={:<6} p50={:>7.1} ms  p99={:>7.1} ms  max={:>7.1} ms",
        v.len(),
        ms(at(0.50)),
        ms(at(0.99)),
        ms(v[v.len() - 1])
    )
}

fn client(
    seed: u64,
    url: &str,
    admin: &str,
    user: &str,
    image: &str,
    write_pct: u64,
    deadline: Instant,
) -> Vec<Sample> {
    let http = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .new_agent();
    let mut rng = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut mine: Vec<String> = Vec::new();
    let mut out = Vec::new();
    let mut i = 0u64;
    while Instant::now() < deadline {
        i += 1;
        let write = next() % 100 < write_pct;
        let t0 = Instant::now();
        let (op, ok) = if write && mine.len() >= 3 {
            let id = mine.remove(0);
            let r = http
                .delete(format!("{url}/compute/v2.1/servers/{id}"))
                .header("X-Auth-Token", user)
                .call();
            (Op::Delete, r.is_ok_and(|r| r.status() == 204))
        } else if write {
            let body = serde_json::json!({"server": {"name": format!("load-{seed}-{i}"),
                "imageRef": image, "flavorRef": "42", "networks": "none"}});
            let r = http
                .post(format!("{url}/compute/v2.1/servers"))
                .header("X-Auth-Token", user)
                .header("OpenStack-API-Version", "compute 2.38")
                .send_json(&body);
            let id = r.ok().filter(|r| r.status() == 202).and_then(|mut r| {
                let v: serde_json::Value = r.body_mut().read_json().ok()?;
                v["server"]["id"].as_str().map(str::to_string)
            });
            let ok = id.is_some();
            mine.extend(id);
            (Op::Create, ok)
        } else if i.is_multiple_of(2) {
            let r = http
                .get(format!("{url}/identity/v3/auth/tokens"))
                .header("X-Auth-Token", admin)
                .header("X-Subject-Token", user)
                .call();
            (
                Op::Validate,
                r.is_ok_and(|mut r| r.status() == 200 && r.body_mut().read_to_vec().is_ok()),
            )
        } else {
            let r = http
                .get(format!("{url}/compute/v2.1/flavors/detail"))
                .header("X-Auth-Token", user)
                .call();
            (
                Op::Flavors,
                r.is_ok_and(|mut r| r.status() == 200 && r.body_mut().read_to_vec().is_ok()),
            )
        };
        out.push(Sample {
            op,
            took: t0.elapsed(),
            ok,
        });
    }
    // Leave nothing behind.
    for id in mine {
        let _ = http
            .delete(format!("{url}/compute/v2.1/servers/{id}"))
            .header("X-Auth-Token", user)
            .call();
    }
    out
}
