//! Spawn timings of the container driver on this machine: the first spawn
//! of an image (cold cache: unpack + overlay + runc run) against later ones
//! (warm: overlay + runc run), for both busybox test images.
//!
//!     scripts/build-test-images
//!     cargo run --release -p stratus-agent --example spawn_time [-- N]
//!
//! Needs root and runc. Everything it creates is destroyed at the end.

use std::path::Path;
use std::time::{Duration, Instant};

use stratus_agent::{ContainerDriver, Driver, InstanceSpec, find_runtime};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let state = ws.join("target/tmp/spawn-time");
    let _ = std::fs::remove_dir_all(&state);
    let rt = find_runtime().ok_or("no runc/crun in PATH: apt-get install runc")?;
    let d = ContainerDriver::new(&state, rt)?;
    let mut made = Vec::new();
    for (file, format) in [("busybox-docker.tar", "docker"), ("busybox-oci.tar", "oci")] {
        let image = ws.join("target/test-images").join(file);
        if !image.exists() {
            return Err(
                format!("{} missing: run scripts/build-test-images", image.display()).into(),
            );
        }
        let mut times: Vec<Duration> = Vec::new();
        for i in 0..=n {
            let uuid = format!("spawn-time-{format}-{i}");
            let spec = InstanceSpec {
                uuid: uuid.clone(),
                hostname: uuid.clone(),
                image_id: format!("bench-{format}"),
                image_file: image.clone(),
                container_format: format.into(),
                disk_format: "raw".into(),
                vcpus: 1,
                memory_mb: 64,
                disk_gb: 1,
                user_data: None,
                meta_data_json: b"{}".to_vec(),
                netns: None,
                dns: Vec::new(),
                vm_nics: Vec::new(),
                root_disk: None,
            };
            let t = Instant::now();
            d.spawn(&spec)?;
            times.push(t.elapsed());
            made.push(uuid);
        }
        let cold = times.remove(0);
        times.sort();
        println!(
            "{format:6} cold (unpack + mount + run): {:7.1} ms   warm (mount + run), {n} runs: min {:6.1} ms, median {:6.1} ms, max {:6.1} ms",
            ms(cold),
            ms(times[0]),
            ms(times[times.len() / 2]),
            ms(times[times.len() - 1]),
        );
    }
    let t = Instant::now();
    for u in &made {
        d.destroy(u)?;
    }
    println!(
        "destroy: {:.1} ms each",
        ms(t.elapsed()) / made.len() as f64
    );
    let _ = std::fs::remove_dir_all(&state);
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
