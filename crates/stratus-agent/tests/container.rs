//! The container driver against the real runc, with the busybox test images
//! of `scripts/build-test-images`. Needs root and runc; fails (never skips)
//! without them, saying how to get them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stratus_agent::{ContainerDriver, Driver, DriverError, InstanceSpec, PowerState, find_runtime};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn test_image(name: &str) -> PathBuf {
    let p = workspace().join("target/test-images").join(name);
    assert!(
        p.exists(),
        "{} is missing: build the test images first with scripts/build-test-images",
        p.display()
    );
    p
}

fn runtime() -> PathBuf {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(String::from));
    assert_eq!(
        uid.as_deref(),
        Some("0"),
        "the container driver tests need root (they mount overlays and run runc)"
    );
    find_runtime().expect("no OCI runtime in PATH: install one with `apt-get install runc`")
}

/// A driver on a fresh state dir; destroys its instances and removes the
/// dir when dropped, even when the test fails.
struct Fixture {
    driver: Arc<ContainerDriver>,
    dir: PathBuf,
    uuids: std::sync::Mutex<Vec<String>>,
}

impl Fixture {
    fn new(tag: &str) -> Fixture {
        let rt = runtime();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("agent-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let driver = Arc::new(ContainerDriver::new(&dir, rt).expect("driver"));
        Fixture {
            driver,
            dir,
            uuids: Default::default(),
        }
    }

    fn spec(&self, file: &str, format: &str, user_data: Option<&str>) -> InstanceSpec {
        let uuid = uuid::Uuid::new_v4().to_string();
        self.uuids.lock().unwrap().push(uuid.clone());
        InstanceSpec {
            uuid: uuid.clone(),
            hostname: "test-server".into(),
            image_id: format!("img-{format}"),
            image_file: test_image(file),
            container_format: format.into(),
            disk_format: "raw".into(),
            vcpus: 1,
            memory_mb: 96,
            disk_gb: 1,
            user_data: user_data.map(|s| s.as_bytes().to_vec()),
            meta_data_json: format!(r#"{{"uuid": "{uuid}", "hostname": "test-server"}}"#)
                .into_bytes(),
            netns: None,
            dns: Vec::new(),
            vm_nics: Vec::new(),
            root_disk: None,
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for u in self.uuids.lock().unwrap().iter() {
            if let Err(e) = self.driver.destroy(u) {
                eprintln!("cleanup: destroy {u}: {e}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Wait until the console shows `needle` `times` times.
fn wait_console(d: &dyn Driver, uuid: &str, needle: &str, times: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = d.console_output(uuid, None).unwrap();
        if out.matches(needle).count() >= times {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "console never showed {needle:?} {times} time(s); it has:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

const SCRIPT: &str = r#"#!/bin/sh
echo "USERDATA ran as uid $(id -u) on $(hostname)"
echo "META $(cat /openstack/latest/meta_data.json)"
echo "MEMLIMIT $(cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max)"
echo kept > /root/marker
"#;

fn cgroup_dirs(uuid: &str) -> Vec<PathBuf> {
    ["memory/stratus", "pids/stratus", "cpu/stratus", "stratus"]
        .iter()
        .map(|d| Path::new("/sys/fs/cgroup").join(d).join(uuid))
        .collect()
}

#[test]
fn docker_image_lifecycle() {
    let fx = Fixture::new("lifecycle");
    let d = &*fx.driver;
    assert_eq!(d.name(), "container");
    let hr = d.host_resources();
    assert!(
        hr.vcpus >= 1 && hr.memory_mb > 0 && hr.disk_gb > 0,
        "{hr:?}"
    );
    let spec = fx.spec("busybox-docker.tar", "docker", Some(SCRIPT));
    let uuid = spec.uuid.clone();

    let t = Instant::now();
    d.spawn(&spec).unwrap();
    let cold = t.elapsed();
    assert_eq!(d.power_state(&uuid), PowerState::Running);
    let out = wait_console(d, &uuid, "STRATUS-TEST-IMAGE OK", 1);
    assert!(
        out.contains("USERDATA ran as uid 0 on test-server"),
        "{out}"
    );
    assert!(
        out.contains(&format!(r#"META {{"uuid": "{uuid}""#)),
        "{out}"
    );
    assert!(out.contains(&format!("MEMLIMIT {}", 96u64 << 20)), "{out}");
    // The user-data script runs before the image's command.
    assert!(out.find("USERDATA").unwrap() < out.find("STRATUS-TEST-IMAGE OK").unwrap());

    // Spawning again is harmless.
    d.spawn(&spec).unwrap();
    assert_eq!(d.power_state(&uuid), PowerState::Running);

    // A second instance of the same image: warm cache.
    let spec2 = fx.spec("busybox-docker.tar", "docker", None);
    let t = Instant::now();
    d.spawn(&spec2).unwrap();
    let warm = t.elapsed();
    eprintln!("spawn docker busybox: cold image cache {cold:?}, warm {warm:?}");
    wait_console(d, &spec2.uuid, "STRATUS-TEST-IMAGE OK", 1);
    d.destroy(&spec2.uuid).unwrap();

    d.pause(&uuid).unwrap();
    assert_eq!(d.power_state(&uuid), PowerState::Paused);
    d.pause(&uuid).unwrap();
    d.unpause(&uuid).unwrap();
    assert_eq!(d.power_state(&uuid), PowerState::Running);

    // The image's command exits on SIGTERM: well within the timeout.
    let t = Instant::now();
    d.stop(&uuid, Duration::from_secs(10)).unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "stop took {:?}",
        t.elapsed()
    );
    assert_eq!(d.power_state(&uuid), PowerState::Shutdown);
    d.stop(&uuid, Duration::from_secs(10)).unwrap();
    assert!(d.pause(&uuid).is_err());

    d.start(&uuid).unwrap();
    assert_eq!(d.power_state(&uuid), PowerState::Running);
    let out = wait_console(d, &uuid, "STRATUS-TEST-IMAGE OK", 2);
    // The disk survived: the script's file is there, and the script ran
    // once per instance (its marker on the instance's disk held too).
    let root = fx.dir.join("instances").join(&uuid).join("rootfs");
    assert_eq!(
        std::fs::read_to_string(root.join("root/marker")).unwrap(),
        "kept\n"
    );
    assert_eq!(out.matches("USERDATA ran").count(), 1, "{out}");

    d.reboot(&uuid, false).unwrap();
    assert_eq!(d.power_state(&uuid), PowerState::Running);
    wait_console(d, &uuid, "STRATUS-TEST-IMAGE OK", 3);
    d.pause(&uuid).unwrap();
    d.reboot(&uuid, true).unwrap();
    assert_eq!(d.power_state(&uuid), PowerState::Running);
    wait_console(d, &uuid, "ready\n", 4);
    // Nova's tail counts newline-separated pieces: the last two are the
    // image's final line and the empty piece after it.
    let tail = d.console_output(&uuid, Some(2)).unwrap();
    assert_eq!(tail, "ready\n");

    // An agent restart: a new driver on the same state dir adopts it.
    let again = ContainerDriver::new(&fx.dir, runtime()).unwrap();
    assert_eq!(again.list(), vec![(uuid.clone(), PowerState::Running)]);
    assert_eq!(again.power_state(&uuid), PowerState::Running);
    again.stop(&uuid, Duration::from_secs(10)).unwrap();
    assert_eq!(d.list(), vec![(uuid.clone(), PowerState::Shutdown)]);
    d.start(&uuid).unwrap();

    let inst = fx.dir.join("instances").join(&uuid);
    let overlayfs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if overlayfs.contains("\toverlay") {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = format!("{} ", inst.join("rootfs").display());
        assert!(
            mounts
                .lines()
                .any(|l| l.contains(&root) && l.contains(" - overlay ")),
            "the instance root is not an overlay mount"
        );
    }
    assert!(
        cgroup_dirs(&uuid).iter().any(|p| p.exists()),
        "no cgroup for the container"
    );
    d.destroy(&uuid).unwrap();
    assert_eq!(d.power_state(&uuid), PowerState::NoState);
    assert!(d.list().is_empty());
    assert!(!inst.exists(), "instance files left behind");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&uuid), "still mounted");
    for p in cgroup_dirs(&uuid) {
        assert!(!p.exists(), "cgroup {} left behind", p.display());
    }
    assert!(matches!(
        d.console_output(&uuid, None),
        Err(DriverError::NotFound(_))
    ));
    assert!(matches!(d.start(&uuid), Err(DriverError::NotFound(_))));
    d.destroy(&uuid).unwrap();
}

#[test]
fn oci_image_boots() {
    let fx = Fixture::new("oci");
    let d = &*fx.driver;
    // Not a script: only written to the config drive.
    let spec = fx.spec("busybox-oci.tar", "oci", Some("plain user data"));
    let t = Instant::now();
    d.spawn(&spec).unwrap();
    eprintln!("spawn OCI busybox (cold image cache): {:?}", t.elapsed());
    assert_eq!(d.power_state(&spec.uuid), PowerState::Running);
    let out = wait_console(d, &spec.uuid, "STRATUS-TEST-IMAGE OK", 1);
    assert!(!out.contains("plain user data"), "{out}");
    d.destroy(&spec.uuid).unwrap();
    assert_eq!(d.power_state(&spec.uuid), PowerState::NoState);
}

#[test]
fn over_the_memory_limit_is_oom_killed() {
    let fx = Fixture::new("oom");
    let d = &*fx.driver;
    // busybox tail keeps the whole newline-free input in memory.
    let script =
        "#!/bin/sh\nhead -c 200m /dev/zero | tail -n 1 > /dev/null\necho \"ALLOC rc=$?\"\n";
    let mut spec = fx.spec("busybox-docker.tar", "docker", Some(script));
    spec.memory_mb = 48;
    d.spawn(&spec).unwrap();
    let out = wait_console(d, &spec.uuid, "STRATUS-TEST-IMAGE OK", 1);
    assert!(
        out.contains("ALLOC rc=137"),
        "not OOM-killed (SIGKILL): {out}"
    );
    assert_eq!(d.power_state(&spec.uuid), PowerState::Running);
}

#[test]
fn stop_kills_what_ignores_sigterm() {
    let fx = Fixture::new("sigkill");
    let d = &*fx.driver;
    // The user-data script blocks; PID 1 (the shell waiting for it) has no
    // SIGTERM handler, so SIGTERM does nothing and SIGKILL has to follow.
    let spec = fx.spec(
        "busybox-docker.tar",
        "docker",
        Some("#!/bin/sh\necho BLOCKING\nsleep 1000\n"),
    );
    d.spawn(&spec).unwrap();
    wait_console(d, &spec.uuid, "BLOCKING", 1);
    let t = Instant::now();
    d.stop(&spec.uuid, Duration::from_secs(1)).unwrap();
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(1),
        "stopped before the timeout: {took:?}"
    );
    assert_eq!(d.power_state(&spec.uuid), PowerState::Shutdown);
}

/// A `docker save` tarball whose one layer holds `../evil`.
fn traversal_image(dir: &Path) -> PathBuf {
    let mut layer = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    let name = b"../stratus-escaped";
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(4);
    h.set_mode(0o644);
    h.set_cksum();
    layer.append(&h, &b"evil"[..]).unwrap();
    let layer = layer.into_inner().unwrap();
    let config = br#"{"config":{"Cmd":["sh"]},"rootfs":{"type":"layers"}}"#;
    let manifest = br#"[{"Config":"config.json","Layers":["l/layer.tar"]}]"#;
    let mut outer = tar::Builder::new(Vec::new());
    for (n, data) in [
        ("config.json", &config[..]),
        ("l/layer.tar", &layer[..]),
        ("manifest.json", &manifest[..]),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        outer.append_data(&mut h, n, data).unwrap();
    }
    let p = dir.join("evil.tar");
    std::fs::write(&p, outer.into_inner().unwrap()).unwrap();
    p
}

#[test]
fn path_traversal_layer_is_refused() {
    let fx = Fixture::new("traversal");
    let d = &*fx.driver;
    let mut spec = fx.spec("busybox-docker.tar", "docker", None);
    spec.image_id = "evil".into();
    spec.image_file = traversal_image(&fx.dir);
    match d.spawn(&spec) {
        Err(DriverError::InvalidImage(m)) => assert!(m.contains("traversal"), "{m}"),
        other => panic!("expected InvalidImage, got {other:?}"),
    }
    assert!(!fx.dir.join("images/stratus-escaped").exists());
    assert!(!fx.dir.join("stratus-escaped").exists());
    assert!(d.list().is_empty());
    assert_eq!(d.power_state(&spec.uuid), PowerState::NoState);
    // Neither a half-unpacked image nor a half-built instance is left.
    let leftovers: Vec<_> = std::fs::read_dir(fx.dir.join("images"))
        .unwrap()
        .chain(std::fs::read_dir(fx.dir.join("instances")).unwrap())
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
