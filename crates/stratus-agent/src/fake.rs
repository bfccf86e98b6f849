//! The fake driver: workloads that exist only in memory. For scale
//! simulations (thousands of nodes from one process); never the default.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::{Driver, DriverError, HostResources, InstanceSpec, PowerState};

pub struct FakeDriver {
    resources: HostResources,
    workloads: Mutex<HashMap<String, PowerState>>,
}

impl FakeDriver {
    pub fn new(resources: HostResources) -> Self {
        FakeDriver {
            resources,
            workloads: Mutex::new(HashMap::new()),
        }
    }

    fn set(&self, uuid: &str, p: PowerState) -> Result<(), DriverError> {
        let mut w = self.workloads.lock().unwrap_or_else(|e| e.into_inner());
        match w.get_mut(uuid) {
            Some(s) => {
                *s = p;
                Ok(())
            }
            None => Err(DriverError::NotFound(uuid.to_string())),
        }
    }
}

impl Driver for FakeDriver {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn host_resources(&self) -> HostResources {
        self.resources.clone()
    }

    fn spawn(&self, spec: &InstanceSpec) -> Result<(), DriverError> {
        self.workloads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(spec.uuid.clone())
            .or_insert(PowerState::Running);
        Ok(())
    }

    fn start(&self, uuid: &str) -> Result<(), DriverError> {
        self.set(uuid, PowerState::Running)
    }

    fn stop(&self, uuid: &str, _timeout: Duration) -> Result<(), DriverError> {
        self.set(uuid, PowerState::Shutdown)
    }

    fn reboot(&self, uuid: &str, _hard: bool) -> Result<(), DriverError> {
        self.set(uuid, PowerState::Running)
    }

    fn pause(&self, uuid: &str) -> Result<(), DriverError> {
        self.set(uuid, PowerState::Paused)
    }

    fn unpause(&self, uuid: &str) -> Result<(), DriverError> {
        self.set(uuid, PowerState::Running)
    }

    fn destroy(&self, uuid: &str) -> Result<(), DriverError> {
        self.workloads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uuid);
        Ok(())
    }

    fn power_state(&self, uuid: &str) -> PowerState {
        self.workloads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(uuid)
            .copied()
            .unwrap_or(PowerState::NoState)
    }

    fn list(&self) -> Vec<(String, PowerState)> {
        self.workloads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    fn console_output(&self, uuid: &str, _tail: Option<usize>) -> Result<String, DriverError> {
        if self.power_state(uuid) == PowerState::NoState {
            return Err(DriverError::NotFound(uuid.to_string()));
        }
        Ok(format!(
            "fake driver: workload {uuid} is simulated; nothing runs\n"
        ))
    }
}
