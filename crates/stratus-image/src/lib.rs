//! Image inspection: is the data what its owner says it is?
//!
//! An image service that takes a file labelled `raw` and hands it to a
//! hypervisor trusts the label. A qcow2 labelled `raw` then boots as raw
//! (harmless), but a qcow2 *declared* qcow2 whose header names a backing
//! file such as `/etc/shadow`, or an external data file, makes the
//! hypervisor read host files into the guest: a known attack on image
//! services (OSSA-2024-001). So every upload is checked here before the
//! image may become active:
//!
//! - [`check_disk`] reads the headers (never the whole file) to detect the
//!   real format, refuses content that does not match `disk_format`, and
//!   refuses qcow2 backing files, external data files, unknown qcow2
//!   features and VMDKs that point at other files;
//! - [`qemu_img_check`] asks `qemu-img info` (when installed, under CPU and
//!   memory limits) for a second opinion and the virtual size;
//! - [`check_container`] validates container images: a `docker save`
//!   tarball or an OCI image-layout tarball, with every layer present,
//!   a valid tar, and matching its digest.
//!
//! Error messages are shown to the API user, so they say what was wrong.

mod container;
mod disk;

pub use container::{ContainerInfo, check_container};
pub use disk::{DiskInfo, check_disk, detect, qemu_img_check};

/// Why an image was refused (or could not be read).
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("could not read the image data: {0}")]
    Io(#[from] std::io::Error),
    #[error("image content is {detected} but disk_format is {declared}")]
    FormatMismatch {
        detected: &'static str,
        declared: String,
    },
    #[error("unknown disk_format {0}")]
    UnknownFormat(String),
    #[error("{0}")]
    Unsafe(String),
    #[error("invalid {format} image: {reason}")]
    Invalid {
        format: &'static str,
        reason: String,
    },
    #[error("invalid container image: {0}")]
    Container(String),
}
