//! The fake driver: instances are entries in a map, every call is instant.
//!
//! For simulating thousands of nodes from one process (scheduler and
//! controller scale tests). It runs nothing, so it is never the default: the
//! caller has to ask for it by name.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use crate::{Driver, DriverError, HostResources, InstanceSpec, PowerState};

/// In-memory driver for scale simulation. Runs nothing.
pub struct FakeDriver {
    resources: HostResources,
    instances: Mutex<HashMap<String, PowerState>>,
}

impl FakeDriver {
    /// A fake node offering `resources`.
    pub fn new(resources: HostResources) -> Self {
        FakeDriver {
            resources,
            instances: Mutex::new(HashMap::new()),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, PowerState>> {
        // A panic while holding the lock cannot leave the map half-updated.
        self.instances.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Move an existing instance to `to`, when it is in one of `from`.
    fn set(&self, uuid: &str, from: &[PowerState], to: PowerState) -> Result<(), DriverError> {
        let mut map = self.map();
        let state = map
            .get_mut(uuid)
            .ok_or_else(|| DriverError::NotFound(uuid.to_string()))?;
        if *state == to {
            return Ok(());
        }
        if !from.contains(state) {
            return Err(DriverError::Runtime(format!(
                "fake instance {uuid} is {state:?}, cannot go to {to:?}"
            )));
        }
        *state = to;
        Ok(())
    }
}

impl Driver for FakeDriver {
    fn name(&self) -> &'static str {
        "fake"
    }

    /// A fake VM takes any volume (nothing is plugged anywhere).
    fn set_volumes(&self, uuid: &str, disks: &[crate::VmDisk]) -> Result<(), DriverError> {
        let _ = (uuid, disks);
        Ok(())
    }

    fn host_resources(&self) -> HostResources {
        self.resources.clone()
    }

    fn spawn(&self, spec: &InstanceSpec) -> Result<(), DriverError> {
        if !crate::valid_id(&spec.uuid) {
            return Err(DriverError::NotFound(spec.uuid.clone()));
        }
        self.map()
            .entry(spec.uuid.clone())
            .or_insert(PowerState::Running);
        Ok(())
    }

    fn start(&self, uuid: &str) -> Result<(), DriverError> {
        use PowerState::*;
        self.set(
            uuid,
            &[Shutdown, Crashed, NoState, Paused, Suspended],
            Running,
        )
    }

    fn stop(&self, uuid: &str, _timeout: Duration) -> Result<(), DriverError> {
        use PowerState::*;
        self.set(
            uuid,
            &[Running, Paused, Crashed, NoState, Suspended],
            Shutdown,
        )
    }

    fn reboot(&self, uuid: &str, _hard: bool) -> Result<(), DriverError> {
        use PowerState::*;
        self.set(
            uuid,
            &[Running, Paused, Shutdown, Crashed, NoState, Suspended],
            Running,
        )
    }

    /// Rescue and unrescue only make sure the instance runs.
    fn rescue(&self, rescue: &InstanceSpec) -> Result<(), DriverError> {
        self.reboot(&rescue.uuid, true)
    }

    fn unrescue(&self, uuid: &str) -> Result<(), DriverError> {
        self.reboot(uuid, true)
    }

    /// Simulated: the instance must exist; its power state is kept.
    fn resize(
        &self,
        uuid: &str,
        _vcpus: u32,
        _memory_mb: u64,
        _disk_gb: u64,
    ) -> Result<(), DriverError> {
        if self.map().contains_key(uuid) {
            Ok(())
        } else {
            Err(DriverError::NotFound(uuid.to_string()))
        }
    }

    fn pause(&self, uuid: &str) -> Result<(), DriverError> {
        self.set(uuid, &[PowerState::Running], PowerState::Paused)
    }

    fn unpause(&self, uuid: &str) -> Result<(), DriverError> {
        self.set(uuid, &[PowerState::Paused], PowerState::Running)
    }

    fn destroy(&self, uuid: &str) -> Result<(), DriverError> {
        self.map().remove(uuid);
        Ok(())
    }

    fn power_state(&self, uuid: &str) -> PowerState {
        self.map().get(uuid).copied().unwrap_or(PowerState::NoState)
    }

    fn list(&self) -> Vec<(String, PowerState)> {
        let mut v: Vec<_> = self.map().iter().map(|(k, s)| (k.clone(), *s)).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// A tiny valid image: one empty layer, `Cmd ["/bin/sh"]` (the fake
    /// has no files and no image config to copy).
    fn snapshot(&self, uuid: &str, dest: &Path) -> Result<(), DriverError> {
        if !self.map().contains_key(uuid) {
            return Err(DriverError::NotFound(uuid.to_string()));
        }
        let mut empty = dest.as_os_str().to_owned();
        empty.push(".empty");
        let empty = std::path::PathBuf::from(empty);
        std::fs::create_dir_all(&empty)?;
        let config = crate::ImageConfig {
            cmd: vec!["/bin/sh".into()],
            ..Default::default()
        };
        let r = crate::snapshot::write(&empty, &config, dest);
        let _ = std::fs::remove_dir_all(&empty);
        r
    }

    fn console_output(&self, uuid: &str, _tail: Option<usize>) -> Result<String, DriverError> {
        if self.map().contains_key(uuid) {
            Ok(format!(
                "fake driver: instance {uuid} runs nothing (scale simulation)\n"
            ))
        } else {
            Err(DriverError::NotFound(uuid.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(uuid: &str) -> InstanceSpec {
        InstanceSpec {
            uuid: uuid.into(),
            hostname: "h".into(),
            image_id: "img".into(),
            image_file: "/nonexistent".into(),
            container_format: "docker".into(),
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
        }
    }

    #[test]
    fn lifecycle() {
        let res = HostResources {
            vcpus: 64,
            memory_mb: 262144,
            disk_gb: 1000,
            arch: "x86_64".into(),
            hypervisor_type: "fake".into(),
            hypervisor_version: 1,
            cpu_model: "fake".into(),
        };
        let d = FakeDriver::new(res.clone());
        assert_eq!(d.name(), "fake");
        assert_eq!(d.host_resources(), res);
        d.spawn(&spec("a")).unwrap();
        d.spawn(&spec("a")).unwrap();
        assert_eq!(d.power_state("a"), PowerState::Running);
        d.pause("a").unwrap();
        assert_eq!(d.power_state("a"), PowerState::Paused);
        assert!(d.pause("nope").is_err());
        d.unpause("a").unwrap();
        d.stop("a", Duration::ZERO).unwrap();
        assert_eq!(d.power_state("a"), PowerState::Shutdown);
        assert!(d.pause("a").is_err());
        d.start("a").unwrap();
        d.reboot("a", true).unwrap();
        assert!(d.console_output("a", None).unwrap().contains("fake"));
        assert_eq!(d.list(), vec![("a".to_string(), PowerState::Running)]);
        let dir = std::env::temp_dir().join(format!("stratus-fake-snap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        d.snapshot("a", &dir.join("s.tar")).unwrap();
        assert!(std::fs::metadata(dir.join("s.tar")).unwrap().len() > 0);
        assert!(d.snapshot("nope", &dir.join("t.tar")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
        d.destroy("a").unwrap();
        d.destroy("a").unwrap();
        assert_eq!(d.power_state("a"), PowerState::NoState);
        assert!(d.list().is_empty());
    }
}
