//! The harness: a running `stratus up` and a small HTTP client for it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub struct Server {
    child: Option<Child>,
    /// Extra arguments for `stratus up`.
    pub extra: Vec<String>,
    /// The PostgreSQL database (a schema of its own) the store is in, when
    /// the suite runs on PostgreSQL (`STRATUS_TEST_DATABASE`).
    pub database: Option<String>,
    pub url: String,
    pub port: u16,
    pub dir: PathBuf,
    pub admin_password: String,
    /// The network namespace the whole cloud runs in (its bridges, rules
    /// and servers' namespaces stay out of this machine's own), when
    /// started with [`Server::start_in_netns`].
    pub netns: Option<TestNetns>,
}

/// A network namespace a test made, linked to another namespace (this
/// machine's own, or another test namespace) by a veth pair on a /30 of
/// 198.18.0.0/15, the range reserved for testing network devices.
/// Removed, with its links, when dropped.
pub struct TestNetns {
    pub name: String,
    /// This namespace's address on the link.
    pub addr: String,
}

impl TestNetns {
    /// A namespace linked to this machine's namespace (`outer` None) or to
    /// the test namespace `outer`, with a default route through it.
    pub fn new(outer: Option<&TestNetns>) -> TestNetns {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let k = (std::process::id() * 8 + N.fetch_add(1, Ordering::Relaxed)) % 32768;
        let base = (198u32 << 24) | (18 << 16) | (k * 4);
        let ip = |n: u32| std::net::Ipv4Addr::from(n).to_string();
        let name = format!("stt-{}-{k}", std::process::id());
        let run = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("ip");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let _ = Command::new("ip").args(["netns", "delete", &name]).output();
        run(&["netns", "add", &name]);
        run(&["-n", &name, "link", "set", "lo", "up"]);
        let outer_if = format!("stto{k}");
        match outer {
            None => {
                let _ = Command::new("ip")
                    .args(["link", "delete", &outer_if])
                    .output();
                run(&[
                    "link", "add", &outer_if, "type", "veth", "peer", "name", "uplink", "netns",
                    &name,
                ]);
                run(&[
                    "addr",
                    "add",
                    &format!("{}/30", ip(base + 1)),
                    "dev",
                    &outer_if,
                ]);
                run(&["link", "set", &outer_if, "up"]);
            }
            Some(o) => {
                run(&[
                    "-n", &o.name, "link", "add", &outer_if, "type", "veth", "peer", "name",
                    "uplink", "netns", &name,
                ]);
                run(&[
                    "-n",
                    &o.name,
                    "addr",
                    "add",
                    &format!("{}/30", ip(base + 1)),
                    "dev",
                    &outer_if,
                ]);
                run(&["-n", &o.name, "link", "set", &outer_if, "up"]);
            }
        }
        run(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{}/30", ip(base + 2)),
            "dev",
            "uplink",
        ]);
        run(&["-n", &name, "link", "set", "uplink", "up"]);
        if outer.is_some() {
            run(&["-n", &name, "route", "add", "default", "via", &ip(base + 1)]);
        }
        TestNetns {
            name,
            addr: ip(base + 2),
        }
    }

    /// `cmd` run inside this namespace (network only: mounts and /sys stay
    /// this machine's, which runc needs).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.name))
            .arg(program);
        c
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        // The veth's other end goes with the namespace.
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
    }
}

/// Runs `args` in the network namespace of server `id` (its container's);
/// stdout, or the error output when it failed.
pub fn in_server_netns(id: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(["netns", "exec", &format!("stratus-{id}")])
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The PostgreSQL database the suite runs on, if any: with
/// `STRATUS_TEST_DATABASE=postgres://...` every test cloud keeps its store
/// in a schema of its own there instead of a SQLite file.
pub fn test_database() -> Option<String> {
    std::env::var("STRATUS_TEST_DATABASE")
        .ok()
        .filter(|u| !u.is_empty())
}

/// Whether the suite runs on PostgreSQL (tests of the SQLite file itself
/// skip then).
pub fn on_postgres() -> bool {
    test_database().is_some()
}

/// A new schema in the test database; the URL whose connections use it.
fn fresh_schema(url: &str, port: u16) -> String {
    let schema = format!("it_{}_{port}", std::process::id());
    let mut c = postgres::Client::connect(url, postgres::NoTls).expect("test database");
    c.batch_execute(&format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
    ))
    .expect("create schema");
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-c%20search_path%3D{schema}")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn unique_dir() -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "stratus-it-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    d
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_stratus")
}

impl Server {
    pub fn start() -> Server {
        Self::start_with(&[])
    }

    /// Starts `stratus up` with extra arguments (e.g. `--driver fake`).
    pub fn start_with(extra: &[&str]) -> Server {
        let dir = unique_dir();
        let port = free_port();
        let database = test_database().map(|u| fresh_schema(&u, port));
        let mut s = Server {
            extra: extra.iter().map(|a| a.to_string()).collect(),
            database,
            child: None,
            url: format!("http://127.0.0.1:{port}"),
            port,
            dir,
            admin_password: String::new(),
            netns: None,
        };
        // A log left by an earlier cloud on the same port is not this one's.
        let _ = std::fs::remove_file(s.log_path());
        s.spawn();
        let clouds =
            std::fs::read_to_string(s.dir.join("clouds.yaml")).expect("clouds.yaml written");
        s.admin_password = clouds
            .lines()
            .find_map(|l| l.trim().strip_prefix("password: "))
            .expect("password in clouds.yaml")
            .trim_matches('"')
            .to_string();
        s
    }

    /// Starts `stratus up` inside a network namespace of its own (see
    /// [`TestNetns`]), listening on the namespace's address.
    pub fn start_in_netns(extra: &[&str]) -> Server {
        let ns = TestNetns::new(None);
        let dir = unique_dir();
        let port = free_port();
        let database = test_database().map(|u| fresh_schema(&u, port));
        let mut s = Server {
            extra: extra.iter().map(|a| a.to_string()).collect(),
            database,
            child: None,
            url: format!("http://{}:{port}", ns.addr),
            port,
            dir,
            admin_password: String::new(),
            netns: Some(ns),
        };
        let _ = std::fs::remove_file(s.log_path());
        s.spawn();
        let clouds =
            std::fs::read_to_string(s.dir.join("clouds.yaml")).expect("clouds.yaml written");
        s.admin_password = clouds
            .lines()
            .find_map(|l| l.trim().strip_prefix("password: "))
            .expect("password in clouds.yaml")
            .trim_matches('"')
            .to_string();
        s
    }

    /// Where `stratus up` writes its log.
    pub fn log_path(&self) -> PathBuf {
        std::env::temp_dir().join(format!("stratus-it-{}.log", self.port))
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let (mut cmd, host) = match &self.netns {
            Some(ns) => (ns.command(bin()), ns.addr.clone()),
            None => (Command::new(bin()), "127.0.0.1".to_string()),
        };
        // Outside a namespace of its own, a test cloud makes no external
        // network: its routers would be wired in this machine's namespace.
        let mut extra = self.extra.clone();
        if self.netns.is_none() && !extra.iter().any(|a| a == "--public-network") {
            extra.extend(["--public-network".to_string(), "none".to_string()]);
        }
        let child = cmd
            .args([
                "up",
                "--listen",
                &format!("{host}:{}", self.port),
                "--data-dir",
            ])
            .arg(&self.dir)
            .args(
                self.database
                    .iter()
                    .flat_map(|d| ["--database", d.as_str()]),
            )
            .args(&extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start stratus");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = agent().get(&format!("{}/identity/v3", self.url)).call()
                && r.status() == 200
            {
                return;
            }
            assert!(Instant::now() < deadline, "stratus did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop(&mut self, signal: &str) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        child.wait().unwrap()
    }

    pub fn restart(&mut self) {
        self.stop("-TERM");
        self.spawn();
    }

    /// Starts the server again after [`Server::stop`].
    pub fn restart_after_stop(&mut self) {
        self.spawn();
    }

    pub fn client(&self) -> Client {
        Client {
            base: format!("{}/identity/v3", self.url),
        }
    }

    /// A client for the image API (`/image/v2`).
    pub fn image_client(&self) -> Client {
        Client {
            base: format!("{}/image/v2", self.url),
        }
    }

    /// A client for the compute API (`/compute/v2.1`).
    pub fn compute_client(&self) -> Client {
        Client {
            base: format!("{}/compute/v2.1", self.url),
        }
    }

    /// A client for any prefix of the listener (e.g. `/edge/v1`).
    pub fn client_at(&self, prefix: &str) -> Client {
        Client {
            base: format!("{}{prefix}", self.url),
        }
    }

    /// The PID of the running `stratus up`.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    /// Everything the store holds, as bytes to search: the SQLite file
    /// and its write-ahead log, or every table's text on PostgreSQL.
    pub fn stored_bytes(&self) -> Vec<(String, Vec<u8>)> {
        match &self.database {
            None => ["stratus.db", "stratus.db-wal"]
                .iter()
                .map(|f| {
                    let bytes = std::fs::read(self.dir.join(f)).unwrap_or_default();
                    (f.to_string(), bytes)
                })
                .collect(),
            Some(url) => {
                let mut c = postgres::Client::connect(url, postgres::NoTls).expect("database");
                ["changes", "resources", "meta", "liveness"]
                    .iter()
                    .map(|t| {
                        let row = c
                            .query_one(
                                &format!(
                                    "SELECT COALESCE(string_agg(t::text, E'\\n'), '') FROM {t} t"
                                ),
                                &[],
                            )
                            .expect("dump table");
                        (t.to_string(), row.get::<_, String>(0).into_bytes())
                    })
                    .collect()
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        reap_containers(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A further node: `stratus agent` joined to a running `stratus up` as
/// `name`, its state under `DATA/name/agent`, its log in `DATA/name.log`.
/// Killed, and its containers reaped, when dropped.
pub struct Agent {
    child: Child,
    dir: PathBuf,
    pub log: PathBuf,
}

impl Agent {
    /// Starts it with `extra` arguments (e.g. `--driver fake`), joined
    /// with a join token from `stratus admin node-token` (given through
    /// the environment, so no secret is on its command line).
    pub fn start(s: &Server, name: &str, extra: &[&str]) -> Agent {
        let token = node_token(s, &["--node-name", name]);
        Self::start_with_env(s, name, extra, &[("STRATUS_JOIN_TOKEN", &token)])
    }

    /// Starts it with `extra` arguments and environment variables (and
    /// no other `STRATUS_*` or `OS_*` ones but `STRATUS_LOG`).
    pub fn start_with_env(s: &Server, name: &str, extra: &[&str], env: &[(&str, &str)]) -> Agent {
        Self::start_full(s, name, extra, env, None)
    }

    /// Starts it inside the test namespace `ns` (a second node of a cloud
    /// started with [`Server::start_in_netns`]).
    pub fn start_in_netns(s: &Server, name: &str, extra: &[&str], ns: &TestNetns) -> Agent {
        let token = node_token(s, &["--node-name", name]);
        Self::start_full(s, name, extra, &[("STRATUS_JOIN_TOKEN", &token)], Some(ns))
    }

    fn start_full(
        s: &Server,
        name: &str,
        extra: &[&str],
        env: &[(&str, &str)],
        ns: Option<&TestNetns>,
    ) -> Agent {
        let dir = s.data_dir().join(name);
        let log = s.data_dir().join(format!("{name}.log"));
        let mut cmd = match ns {
            Some(ns) => ns.command(bin()),
            None => Command::new(bin()),
        };
        cmd.args(["agent", "--controller", &s.url, "--node-name", name])
            .args(extra)
            .arg("--data-dir")
            .arg(dir.join("agent"));
        for (k, _) in std::env::vars() {
            if (k.starts_with("STRATUS_") || k.starts_with("OS_")) && k != "STRATUS_LOG" {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .expect("agent log"),
            )
            .spawn()
            .expect("start stratus agent");
        Agent { child, dir, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("agent status").is_none()
    }

    /// Waits for it to exit (at most `limit`); its exit status.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(st) = self.child.try_wait().expect("agent status") {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }
}

/// A join token from `stratus admin node-token` with `args` (e.g.
/// `--node-name n2`, `--expires 1`) on the server's data dir.
pub fn node_token(s: &Server, args: &[&str]) -> String {
    let out = Command::new(bin())
        .args(["admin", "node-token", "--data-dir"])
        .arg(s.data_dir())
        .args(s.database.iter().flat_map(|d| ["--database", d.as_str()]))
        .args(args)
        .output()
        .expect("stratus admin node-token");
    assert!(
        out.status.success(),
        "node-token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        reap_containers(&self.dir);
    }
}

/// Removes what the in-process agent's drivers left under a data dir: its
/// runc containers (and their cgroups), QEMU VMs, and overlay mounts.
pub fn reap_containers(dir: &Path) {
    let root = dir.join("agent/runc");
    if root.exists() {
        let runtime = if Command::new("runc").arg("--version").output().is_ok() {
            "runc"
        } else {
            "crun"
        };
        if let Ok(out) = Command::new(runtime)
            .arg("--root")
            .arg(&root)
            .args(["list", "-q"])
            .output()
        {
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = Command::new(runtime)
                    .arg("--root")
                    .arg(&root)
                    .args(["delete", "-f", id.trim()])
                    .output();
                // The server's network namespace, when it had ports.
                let _ = Command::new("ip")
                    .args(["netns", "delete", &format!("stratus-{}", id.trim())])
                    .output();
            }
        }
    }
    // The VMs (QEMU runs daemonised, outliving its agent) and their
    // cgroups.
    if let Ok(vms) = std::fs::read_dir(dir.join("agent/vms")) {
        for e in vms.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = std::fs::read_to_string(e.path().join("qemu.pid"))
                .ok()
                .and_then(|p| p.trim().parse::<u32>().ok())
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&format!("guest={id}")))
            {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).output();
                for _ in 0..50 {
                    if !Path::new(&format!("/proc/{pid}")).exists() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            for cg in [
                "/sys/fs/cgroup/stratus-vms",
                "/sys/fs/cgroup/memory/stratus-vms",
                "/sys/fs/cgroup/cpu/stratus-vms",
            ] {
                let _ = std::fs::remove_dir(Path::new(cg).join(&id));
            }
        }
    }
    // The namespaces the agent made (routers, DHCP servers; servers'
    // went above) and the DHCP servers in them.
    if let Ok(made) = std::fs::read_dir(dir.join("agent/netns")) {
        for e in made.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(device) = name.strip_prefix("stratus-") else {
                continue;
            };
            let run = Path::new("/run/stratus-dhcp").join(device);
            if let Some(pid) = std::fs::read_to_string(run.join("pid"))
                .ok()
                .and_then(|p| p.trim().parse::<u32>().ok())
            {
                let _ = Command::new("kill").arg(pid.to_string()).output();
            }
            let _ = std::fs::remove_dir_all(run);
            let _ = Command::new("ip").args(["netns", "delete", &name]).output();
        }
    }
    let prefix = dir.to_string_lossy().to_string();
    reap_volume_exports(&prefix);
    if let Ok(mounts) = std::fs::read_to_string("/proc/mounts") {
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for m in points {
            let _ = Command::new("umount").args(["-l", m]).output();
        }
    }
}

/// Containers' volumes under `prefix` (see the agent's
/// `container_volumes.rs`): their file systems unmounted, their loop
/// devices detached, their `qemu-storage-daemon`s stopped, so no mount,
/// loop device or process outlives the test's directory.
fn reap_volume_exports(prefix: &str) {
    if let Ok(mounts) = std::fs::read_to_string("/proc/mounts") {
        for m in mounts.lines().filter_map(|l| l.split_whitespace().nth(1)) {
            if m.starts_with(prefix) && m.contains("/volumes/") {
                let _ = Command::new("umount").args(["-l", m]).output();
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir("/sys/block") {
        for e in rd.flatten() {
            if std::fs::read_to_string(e.path().join("loop/backing_file"))
                .is_ok_and(|b| b.starts_with(prefix))
            {
                let dev = format!("/dev/{}", e.file_name().to_string_lossy());
                let _ = Command::new("losetup").args(["-d", &dev]).output();
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let cmd = String::from_utf8_lossy(&cmd);
            if cmd.starts_with("qemu-storage-daemon") && cmd.contains(prefix) {
                let pid = e.file_name().to_string_lossy().into_owned();
                let _ = Command::new("kill").args(["-9", &pid]).output();
            }
        }
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// A response: status, headers, JSON body (Null when empty).
pub struct Resp {
    pub status: u16,
    pub headers: ureq::http::HeaderMap,
    pub body: Value,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// Asserts the Keystone error shape and returns the message.
    pub fn error_message(&self) -> &str {
        let e = &self.body["error"];
        assert_eq!(e["code"], self.status, "error body: {}", self.body);
        assert!(e["title"].is_string(), "error body: {}", self.body);
        e["message"].as_str().expect("error message")
    }
}

pub struct Client {
    pub base: String,
}

impl Client {
    /// Sends a request; `body` may be JSON or raw text.
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> Resp {
        let url = format!("{}{}", self.base, path);
        let mut req = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(t) = token {
            req = req.header("X-Auth-Token", t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let has_body = body.is_some();
        if has_body
            && !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            req = req.header("Content-Type", "application/json");
        }
        let a = agent();
        let resp = if has_body {
            a.run(req.body(body.unwrap_or_default()).unwrap())
        } else {
            a.run(req.body(()).unwrap())
        };
        let mut resp = resp.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let body = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Resp {
            status,
            headers,
            body,
        }
    }

    /// Sends raw bytes (e.g. image data); returns status, headers and the
    /// raw response body.
    pub fn bytes(
        &self,
        method: &str,
        path: &str,
        token: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> (u16, ureq::http::HeaderMap, Vec<u8>) {
        let url = format!("{}{}", self.base, path);
        let mut req = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header("X-Auth-Token", token);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let a = agent();
        let resp = match body {
            Some(b) => a.run(req.body(b).unwrap()),
            None => a.run(req.body(()).unwrap()),
        };
        let mut resp = resp.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let data = resp
            .body_mut()
            .with_config()
            .limit(u64::MAX)
            .read_to_vec()
            .unwrap_or_default();
        (status, headers, data)
    }

    pub fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> Resp {
        self.raw(method, path, token, &[], body.map(|b| b.to_string()))
    }

    pub fn get(&self, path: &str, token: &str) -> Resp {
        self.call("GET", path, Some(token), None)
    }
    pub fn post(&self, path: &str, token: &str, body: Value) -> Resp {
        self.call("POST", path, Some(token), Some(body))
    }
    pub fn patch(&self, path: &str, token: &str, body: Value) -> Resp {
        self.call("PATCH", path, Some(token), Some(body))
    }
    pub fn put(&self, path: &str, token: &str) -> Resp {
        self.call("PUT", path, Some(token), None)
    }
    pub fn delete(&self, path: &str, token: &str) -> Resp {
        self.call("DELETE", path, Some(token), None)
    }

    /// Password auth by user and project names in the default domain.
    pub fn login(&self, user: &str, password: &str, project: Option<&str>) -> Resp {
        let mut auth = json!({"identity": {"methods": ["password"], "password": {"user": {
            "name": user, "domain": {"id": "default"}, "password": password}}}});
        if let Some(p) = project {
            auth["scope"] = json!({"project": {"name": p, "domain": {"id": "default"}}});
        }
        self.call("POST", "/auth/tokens", None, Some(json!({"auth": auth})))
    }

    pub fn token(&self, user: &str, password: &str, project: Option<&str>) -> String {
        let r = self.login(user, password, project);
        assert_eq!(r.status, 201, "login {user}: {}", r.body);
        r.header("x-subject-token")
            .expect("X-Subject-Token")
            .to_string()
    }

    /// Validates `subject` with `caller`'s token; returns the status.
    pub fn validate(&self, caller: &str, subject: &str) -> Resp {
        self.raw(
            "GET",
            "/auth/tokens",
            Some(caller),
            &[("X-Subject-Token", subject)],
            None,
        )
    }

    pub fn create(&self, token: &str, path: &str, key: &str, body: Value) -> Value {
        let r = self.post(path, token, json!({ key: body }));
        assert_eq!(r.status, 201, "create {path}: {}", r.body);
        r.body[key].clone()
    }

    /// Creates a user with a password, granting `role` on `project` if given.
    pub fn user(
        &self,
        admin: &str,
        name: &str,
        password: &str,
        grant: Option<(&str, &str)>,
    ) -> String {
        let u = self.create(
            admin,
            "/users",
            "user",
            json!({"name": name, "password": password, "domain_id": "default"}),
        );
        let uid = u["id"].as_str().unwrap().to_string();
        if let Some((project_id, role)) = grant {
            let rid = self.role_id(admin, role);
            let r = self.put(
                &format!("/projects/{project_id}/users/{uid}/roles/{rid}"),
                admin,
            );
            assert_eq!(r.status, 204, "grant: {}", r.body);
        }
        uid
    }

    pub fn role_id(&self, admin: &str, name: &str) -> String {
        let r = self.get(&format!("/roles?name={name}"), admin);
        r.body["roles"][0]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("role {name}: {}", r.body))
            .to_string()
    }
}
