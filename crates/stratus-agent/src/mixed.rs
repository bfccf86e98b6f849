//! Containers and VMs on one node: each instance goes to the driver its
//! image asks for ([`InstanceSpec::is_vm`]) and stays with it; every
//! later call goes to the driver that has the instance.

use std::path::Path;
use std::time::Duration;

use crate::qemu::QemuDriver;
use crate::{Driver, DriverError, HostResources, InstanceSpec, PowerState};

pub struct MixedDriver {
    containers: Box<dyn Driver>,
    vms: QemuDriver,
}

impl MixedDriver {
    pub fn new(containers: Box<dyn Driver>, vms: QemuDriver) -> Self {
        MixedDriver { containers, vms }
    }

    fn of(&self, uuid: &str) -> &dyn Driver {
        if self.vms.has(uuid) {
            &self.vms
        } else {
            self.containers.as_ref()
        }
    }
}

impl Driver for MixedDriver {
    fn name(&self) -> &'static str {
        "container+qemu"
    }

    fn runs_vms(&self) -> bool {
        true
    }

    fn is_vm(&self, uuid: &str) -> bool {
        self.vms.has(uuid)
    }

    /// The node's figures, with QEMU's hypervisor type and version (what
    /// Nova's libvirt driver reports).
    fn host_resources(&self) -> HostResources {
        let mut r = self.containers.host_resources();
        let v = self.vms.host_resources();
        r.hypervisor_type = v.hypervisor_type;
        r.hypervisor_version = v.hypervisor_version;
        r
    }

    fn spawn(&self, spec: &InstanceSpec) -> Result<(), DriverError> {
        if spec.is_vm() {
            self.vms.spawn(spec)
        } else {
            self.containers.spawn(spec)
        }
    }

    fn start(&self, uuid: &str) -> Result<(), DriverError> {
        self.of(uuid).start(uuid)
    }

    fn stop(&self, uuid: &str, timeout: Duration) -> Result<(), DriverError> {
        self.of(uuid).stop(uuid, timeout)
    }

    fn reboot(&self, uuid: &str, hard: bool) -> Result<(), DriverError> {
        self.of(uuid).reboot(uuid, hard)
    }

    fn pause(&self, uuid: &str) -> Result<(), DriverError> {
        self.of(uuid).pause(uuid)
    }

    fn unpause(&self, uuid: &str) -> Result<(), DriverError> {
        self.of(uuid).unpause(uuid)
    }

    fn suspend(&self, uuid: &str) -> Result<(), DriverError> {
        self.of(uuid).suspend(uuid)
    }

    fn resume(&self, uuid: &str) -> Result<(), DriverError> {
        self.of(uuid).resume(uuid)
    }

    fn destroy(&self, uuid: &str) -> Result<(), DriverError> {
        self.vms.destroy(uuid)?;
        self.containers.destroy(uuid)
    }

    fn power_state(&self, uuid: &str) -> PowerState {
        self.of(uuid).power_state(uuid)
    }

    fn list(&self) -> Vec<(String, PowerState)> {
        let mut all = self.containers.list();
        all.extend(self.vms.list());
        all
    }

    fn console_output(&self, uuid: &str, tail_lines: Option<usize>) -> Result<String, DriverError> {
        self.of(uuid).console_output(uuid, tail_lines)
    }

    fn snapshot(&self, uuid: &str, dest: &Path) -> Result<(), DriverError> {
        self.of(uuid).snapshot(uuid, dest)
    }

    fn rescue(&self, rescue: &InstanceSpec) -> Result<(), DriverError> {
        match (self.vms.has(&rescue.uuid), rescue.is_vm()) {
            (true, true) => self.vms.rescue(rescue),
            (false, false) => self.containers.rescue(rescue),
            (true, false) => Err(DriverError::InvalidImage(format!(
                "VM {} is rescued from a disk image (container_format bare), not from image {} ({})",
                rescue.uuid, rescue.image_id, rescue.container_format
            ))),
            (false, true) => Err(DriverError::InvalidImage(format!(
                "container {} is rescued from a container image (docker or oci), not from the VM disk {}",
                rescue.uuid, rescue.image_id
            ))),
        }
    }

    fn unrescue(&self, uuid: &str) -> Result<(), DriverError> {
        self.of(uuid).unrescue(uuid)
    }

    fn steer_migration(&self, uuid: &str, abort: bool) -> Result<(), DriverError> {
        self.of(uuid).steer_migration(uuid, abort)
    }

    fn set_nics(&self, uuid: &str, nics: &[crate::VmNic]) -> Result<(), DriverError> {
        self.of(uuid).set_nics(uuid, nics)
    }
    fn unplug_nics(&self, uuid: &str, gone: &[crate::VmNic]) -> Result<(), DriverError> {
        self.of(uuid).unplug_nics(uuid, gone)
    }
    fn set_volumes(&self, uuid: &str, disks: &[crate::VmDisk]) -> Result<(), DriverError> {
        self.of(uuid).set_volumes(uuid, disks)
    }

    fn quiesced(
        &self,
        path: &std::path::Path,
        read: &mut dyn FnMut() -> Result<(), DriverError>,
    ) -> Result<bool, DriverError> {
        Ok(self.vms.quiesced(path, read)? || self.containers.quiesced(path, read)?)
    }

    fn grow_volume(&self, path: &std::path::Path, bytes: u64) -> Result<bool, DriverError> {
        Ok(self.vms.grow_volume(path, bytes)? || self.containers.grow_volume(path, bytes)?)
    }

    fn serial_console(&self, uuid: &str) -> Result<std::path::PathBuf, DriverError> {
        self.of(uuid).serial_console(uuid)
    }

    fn prepare_incoming(&self, spec: &InstanceSpec) -> Result<u16, DriverError> {
        if spec.is_vm() {
            self.vms.prepare_incoming(spec)
        } else {
            self.containers.prepare_incoming(spec)
        }
    }

    fn migrate_out(
        &self,
        uuid: &str,
        uri: &str,
        progress: &dyn Fn(&crate::MigrationProgress),
    ) -> Result<(), DriverError> {
        self.of(uuid).migrate_out(uuid, uri, progress)
    }

    fn resize(
        &self,
        uuid: &str,
        vcpus: u32,
        memory_mb: u64,
        disk_gb: u64,
    ) -> Result<(), DriverError> {
        self.of(uuid).resize(uuid, vcpus, memory_mb, disk_gb)
    }

    fn images_in_use(&self) -> Option<Vec<String>> {
        let mut all = self.containers.images_in_use()?;
        all.extend(self.vms.images_in_use()?);
        Some(all)
    }

    fn unpacked_images(&self) -> Vec<String> {
        let mut all = self.containers.unpacked_images();
        all.extend(self.vms.unpacked_images());
        all
    }

    fn remove_image(&self, image_id: &str) -> Result<bool, DriverError> {
        let a = self.containers.remove_image(image_id)?;
        let b = self.vms.remove_image(image_id)?;
        Ok(a || b)
    }

    fn diagnostics(&self, uuid: &str) -> Result<Vec<(String, u64)>, DriverError> {
        self.of(uuid).diagnostics(uuid)
    }
}
