//! Disk images: format detection from headers, and the safety checks.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::InspectError;

/// What the data turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskInfo {
    /// Detected format: raw, qcow2, vmdk, vhd, vhdx, vdi, iso or ploop.
    pub format: &'static str,
    /// Size of the virtual disk in bytes, when the header says.
    pub virtual_size: Option<u64>,
}

const QCOW2_MAGIC: &[u8] = b"QFI\xfb";
/// qcow2 incompatible feature bits: dirty, corrupt, external data file,
/// compression type, extended L2 entries.
const QCOW2_CORRUPT: u64 = 1 << 1;
const QCOW2_EXTERNAL_DATA: u64 = 1 << 2;
const QCOW2_KNOWN_INCOMPAT: u64 = 0b1_1111;
const QCOW2_EXT_DATA_FILE: u32 = 0x4441_5441;
/// VMDK kinds that keep everything in the one file (as Glance allows).
const VMDK_ALLOWED: &[&str] = &["monolithicSparse", "streamOptimized"];

fn read_at(f: &mut File, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
    f.seek(SeekFrom::Start(offset))?;
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Detects the format of `path` from its headers, checking the formats
/// that can point outside the file (qcow2, vmdk) for doing so.
pub fn detect(path: &Path) -> Result<DiskInfo, InspectError> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let mut head = vec![0u8; 512];
    let n = read_at(&mut f, 0, &mut head)?;
    head.truncate(n);
    if head.starts_with(QCOW2_MAGIC) {
        return qcow2(&mut f, &head);
    }
    if head.starts_with(b"KDMV") {
        return vmdk_sparse(&mut f, &head);
    }
    if head.starts_with(b"# Disk DescriptorFile") {
        return Err(InspectError::Unsafe(
            "vmdk descriptor file refused: it names extent files elsewhere on the host".into(),
        ));
    }
    if head.starts_with(b"vhdxfile") {
        return Ok(DiskInfo {
            format: "vhdx",
            virtual_size: None,
        });
    }
    if head.len() >= 0x178 && le32(&head, 0x40) == 0xbeda_107f {
        return Ok(DiskInfo {
            format: "vdi",
            virtual_size: Some(le64(&head, 0x170)),
        });
    }
    if head.starts_with(b"WithoutFreeSpace") || head.starts_with(b"WithouFreSpacExt") {
        return Ok(DiskInfo {
            format: "ploop",
            virtual_size: None,
        });
    }
    for at in [0x8001u64, 0x8801, 0x9001] {
        let mut sig = [0u8; 5];
        if read_at(&mut f, at, &mut sig)? == 5 && &sig == b"CD001" {
            return Ok(DiskInfo {
                format: "iso",
                virtual_size: Some(len),
            });
        }
    }
    if len >= 512 {
        let mut footer = [0u8; 512];
        read_at(&mut f, len - 512, &mut footer)?;
        let start = head.starts_with(b"conectix").then_some(&head[..]);
        if let Some(ft) = start.or(footer.starts_with(b"conectix").then_some(&footer[..]))
            && ft.len() >= 56
        {
            return Ok(DiskInfo {
                format: "vhd",
                virtual_size: Some(be64(ft, 48)),
            });
        }
    }
    Ok(DiskInfo {
        format: "raw",
        virtual_size: Some(len),
    })
}

fn qcow2(f: &mut File, head: &[u8]) -> Result<DiskInfo, InspectError> {
    let invalid = |reason: &str| InspectError::Invalid {
        format: "qcow2",
        reason: reason.into(),
    };
    if head.len() < 72 {
        return Err(invalid("header is truncated"));
    }
    let version = be32(head, 4);
    if !(2..=3).contains(&version) {
        return Err(invalid(&format!("unsupported version {version}")));
    }
    if be64(head, 8) != 0 {
        return Err(InspectError::Unsafe(
            "qcow2 image has a backing file (refused: a backing file makes the hypervisor read files on the host)".into(),
        ));
    }
    let size = be64(head, 24);
    let mut ext_start = 72u64;
    if version == 3 {
        if head.len() < 104 {
            return Err(invalid("version 3 header is truncated"));
        }
        let incompat = be64(head, 72);
        if incompat & QCOW2_EXTERNAL_DATA != 0 {
            return Err(InspectError::Unsafe(
                "qcow2 image uses an external data file (refused: it makes the hypervisor read a file on the host)".into(),
            ));
        }
        if incompat & QCOW2_CORRUPT != 0 {
            return Err(invalid("the image is marked corrupt"));
        }
        if incompat & !QCOW2_KNOWN_INCOMPAT != 0 {
            return Err(invalid(&format!(
                "unknown incompatible features {incompat:#x}"
            )));
        }
        ext_start = be32(head, 100) as u64;
    }
    // Header extensions: (type u32, length u32, data padded to 8), up to
    // type 0; they live in the first cluster.
    let cluster_bits = be32(head, 20);
    if !(9..=21).contains(&cluster_bits) {
        return Err(invalid(&format!("bad cluster size 2^{cluster_bits}")));
    }
    let cluster = 1u64 << cluster_bits;
    let mut at = ext_start;
    while at + 8 <= cluster {
        let mut h = [0u8; 8];
        if read_at(f, at, &mut h)? < 8 {
            break;
        }
        let (kind, len) = (be32(&h, 0), be32(&h, 4) as u64);
        if kind == 0 {
            break;
        }
        if kind == QCOW2_EXT_DATA_FILE {
            return Err(InspectError::Unsafe(
                "qcow2 image names an external data file (refused: it makes the hypervisor read a file on the host)".into(),
            ));
        }
        at += 8 + len.div_ceil(8) * 8;
    }
    Ok(DiskInfo {
        format: "qcow2",
        virtual_size: Some(size),
    })
}

fn vmdk_sparse(f: &mut File, head: &[u8]) -> Result<DiskInfo, InspectError> {
    if head.len() < 44 {
        return Err(InspectError::Invalid {
            format: "vmdk",
            reason: "header is truncated".into(),
        });
    }
    let capacity = le64(head, 12);
    let (desc_off, desc_len) = (le64(head, 28), le64(head, 36));
    if desc_off == 0 || desc_len == 0 || desc_len > 2048 {
        return Err(InspectError::Invalid {
            format: "vmdk",
            reason: "no embedded descriptor".into(),
        });
    }
    let mut desc = vec![0u8; (desc_len * 512) as usize];
    let n = read_at(f, desc_off * 512, &mut desc)?;
    let text = String::from_utf8_lossy(&desc[..n]);
    let create_type = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("createType="))
        .map(|v| v.trim().trim_matches('"').to_string())
        .unwrap_or_default();
    if !VMDK_ALLOWED.contains(&create_type.as_str()) {
        return Err(InspectError::Unsafe(format!(
            "vmdk createType {create_type:?} refused: only monolithicSparse and streamOptimized keep all data in one file"
        )));
    }
    Ok(DiskInfo {
        format: "vmdk",
        virtual_size: Some(capacity.saturating_mul(512)),
    })
}

/// Detects the format and checks it against the declared `disk_format`.
pub fn check_disk(path: &Path, declared: &str) -> Result<DiskInfo, InspectError> {
    let info = detect(path)?;
    let ok = match declared {
        // Raw-ish: anything that is not a structured format. An ISO is raw
        // sectors too.
        "raw" | "ami" | "ari" | "aki" => matches!(info.format, "raw" | "iso"),
        "iso" => info.format == "iso",
        "qcow2" | "vmdk" | "vhd" | "vhdx" | "vdi" | "ploop" => info.format == declared,
        other => return Err(InspectError::UnknownFormat(other.into())),
    };
    if !ok {
        return Err(InspectError::FormatMismatch {
            detected: info.format,
            declared: declared.into(),
        });
    }
    Ok(info)
}

/// qemu-img's name for a format.
fn qemu_name(format: &str) -> &str {
    match format {
        "vhd" => "vpc",
        "ploop" => "parallels",
        "iso" | "ami" | "ari" | "aki" => "raw",
        f => f,
    }
}

/// A second opinion from `qemu-img info`, run under limits (30 s of CPU,
/// 1 GiB of address space, as Glance does). `Ok(None)` when qemu-img is
/// not installed.
pub fn qemu_img_check(path: &Path, format: &str) -> Result<Option<DiskInfo>, InspectError> {
    let fmt = qemu_name(format);
    let has = |bin: &str| {
        Command::new(bin)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !has("qemu-img") {
        return Ok(None);
    }
    let mut cmd = if has("prlimit") {
        let mut c = Command::new("prlimit");
        c.args(["--cpu=30", "--as=1073741824", "qemu-img"]);
        c
    } else {
        Command::new("qemu-img")
    };
    cmd.args(["info", "--output=json", "-f", fmt]).arg(path);
    let out = run_with_timeout(cmd, Duration::from_secs(60))?;
    if !out.status.success() {
        return Err(InspectError::Invalid {
            format: static_name(format),
            reason: format!(
                "qemu-img cannot read it as {fmt}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| InspectError::Invalid {
            format: static_name(format),
            reason: format!("unreadable qemu-img output: {e}"),
        })?;
    if v.get("backing-filename").is_some() || v.get("full-backing-filename").is_some() {
        return Err(InspectError::Unsafe(
            "image has a backing file (refused: a backing file makes the hypervisor read files on the host)".into(),
        ));
    }
    let data = v.pointer("/format-specific/data");
    if data.and_then(|d| d.get("data-file")).is_some() {
        return Err(InspectError::Unsafe(
            "image uses an external data file (refused: it makes the hypervisor read a file on the host)".into(),
        ));
    }
    if let Some(extents) = data
        .and_then(|d| d.get("extents"))
        .and_then(|e| e.as_array())
    {
        let me = path.to_string_lossy();
        if extents.iter().any(|e| {
            e.get("filename")
                .and_then(|f| f.as_str())
                .is_some_and(|f| f != me)
        }) {
            return Err(InspectError::Unsafe(
                "vmdk image names extents in other files (refused)".into(),
            ));
        }
    }
    Ok(Some(DiskInfo {
        format: static_name(format),
        virtual_size: v.get("virtual-size").and_then(|s| s.as_u64()),
    }))
}

fn static_name(format: &str) -> &'static str {
    match format {
        "qcow2" => "qcow2",
        "vmdk" => "vmdk",
        "vhd" => "vhd",
        "vhdx" => "vhdx",
        "vdi" => "vdi",
        "iso" => "iso",
        "ploop" => "ploop",
        _ => "raw",
    }
}

fn run_with_timeout(
    mut cmd: Command,
    limit: Duration,
) -> Result<std::process::Output, InspectError> {
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let started = std::time::Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            return Ok(child.wait_with_output()?);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(InspectError::Unsafe(
                "qemu-img took too long inspecting the image".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "stratus-image-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn qemu_img(args: &[&str]) -> bool {
        match Command::new("qemu-img").args(args).output() {
            Ok(o) => {
                assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
                true
            }
            Err(_) => {
                eprintln!("qemu-img not installed: skipping");
                false
            }
        }
    }

    /// A hand-made qcow2 v3 header.
    fn qcow2_header(backing_offset: u64, incompat: u64) -> Vec<u8> {
        let mut h = vec![0u8; 1024];
        h[..4].copy_from_slice(QCOW2_MAGIC);
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[8..16].copy_from_slice(&backing_offset.to_be_bytes());
        h[20..24].copy_from_slice(&16u32.to_be_bytes());
        h[24..32].copy_from_slice(&(1u64 << 30).to_be_bytes());
        h[72..80].copy_from_slice(&incompat.to_be_bytes());
        h[100..104].copy_from_slice(&104u32.to_be_bytes());
        h
    }

    #[test]
    fn hand_made_qcow2_headers() {
        let d = dir();
        let p = d.join("h.qcow2");
        std::fs::write(&p, qcow2_header(0, 0)).unwrap();
        assert_eq!(check_disk(&p, "qcow2").unwrap().virtual_size, Some(1 << 30));
        assert!(matches!(
            check_disk(&p, "raw"),
            Err(InspectError::FormatMismatch { .. })
        ));
        std::fs::write(&p, qcow2_header(512, 0)).unwrap();
        let e = check_disk(&p, "qcow2").unwrap_err().to_string();
        assert!(e.contains("backing file"), "{e}");
        // Declared raw: still refused (it is not raw).
        assert!(check_disk(&p, "raw").is_err());
        std::fs::write(&p, qcow2_header(0, QCOW2_EXTERNAL_DATA)).unwrap();
        assert!(
            check_disk(&p, "qcow2")
                .unwrap_err()
                .to_string()
                .contains("external data file")
        );
        std::fs::write(&p, qcow2_header(0, 1 << 40)).unwrap();
        assert!(check_disk(&p, "qcow2").is_err());
        let mut h = qcow2_header(0, 0);
        h[104..108].copy_from_slice(&QCOW2_EXT_DATA_FILE.to_be_bytes());
        h[108..112].copy_from_slice(&8u32.to_be_bytes());
        std::fs::write(&p, h).unwrap();
        assert!(check_disk(&p, "qcow2").is_err());
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn raw_and_unknown() {
        let d = dir().join("raw");
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("r.img");
        std::fs::write(&p, vec![7u8; 4096]).unwrap();
        assert_eq!(
            check_disk(&p, "raw").unwrap(),
            DiskInfo {
                format: "raw",
                virtual_size: Some(4096)
            }
        );
        assert!(matches!(
            check_disk(&p, "qcow2"),
            Err(InspectError::FormatMismatch {
                detected: "raw",
                ..
            })
        ));
        assert!(matches!(
            check_disk(&p, "tarball"),
            Err(InspectError::UnknownFormat(_))
        ));
        let mut iso = vec![0u8; 0x9000];
        iso[0x8001..0x8006].copy_from_slice(b"CD001");
        std::fs::write(&p, iso).unwrap();
        assert_eq!(check_disk(&p, "iso").unwrap().format, "iso");
        std::fs::write(
            &p,
            b"# Disk DescriptorFile\ncreateType=\"monolithicFlat\"\n",
        )
        .unwrap();
        assert!(matches!(
            check_disk(&p, "vmdk"),
            Err(InspectError::Unsafe(_))
        ));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn real_images_from_qemu_img() {
        let d = dir().join("real");
        std::fs::create_dir_all(&d).unwrap();
        let p = |n: &str| d.join(n).to_string_lossy().into_owned();
        if !qemu_img(&["create", "-f", "qcow2", &p("a.qcow2"), "64M"]) {
            return;
        }
        let a = Path::new(&p("a.qcow2")).to_path_buf();
        assert_eq!(
            check_disk(&a, "qcow2").unwrap().virtual_size,
            Some(64 << 20)
        );
        assert_eq!(
            qemu_img_check(&a, "qcow2").unwrap().unwrap().virtual_size,
            Some(64 << 20)
        );
        // qcow2 read as raw by qemu-img is fine for qemu, but check_disk refuses it.
        assert!(check_disk(&a, "raw").is_err());
        for (fmt, name, ours) in [
            ("vmdk", "d.vmdk", "vmdk"),
            ("vpc", "d.vhd", "vhd"),
            ("vhdx", "d.vhdx", "vhdx"),
            ("vdi", "d.vdi", "vdi"),
        ] {
            qemu_img(&["create", "-f", fmt, &p(name), "16M"]);
            let path = Path::new(&p(name)).to_path_buf();
            let info = check_disk(&path, ours).unwrap_or_else(|e| panic!("{fmt}: {e}"));
            assert_eq!(info.format, ours);
            let deep = qemu_img_check(&path, ours).unwrap().unwrap();
            assert!(deep.virtual_size.unwrap() >= 16 << 20, "{fmt}: {deep:?}");
            assert!(check_disk(&path, "qcow2").is_err(), "{fmt} as qcow2");
        }
        qemu_img(&[
            "create",
            "-f",
            "qcow2",
            "-b",
            &p("a.qcow2"),
            "-F",
            "qcow2",
            &p("top.qcow2"),
        ]);
        assert!(matches!(
            check_disk(Path::new(&p("top.qcow2")), "qcow2"),
            Err(InspectError::Unsafe(_))
        ));
        qemu_img(&[
            "create",
            "-f",
            "qcow2",
            "-o",
            &format!("data_file={},data_file_raw=on", p("ext.raw")),
            &p("ext.qcow2"),
            "16M",
        ]);
        assert!(matches!(
            check_disk(Path::new(&p("ext.qcow2")), "qcow2"),
            Err(InspectError::Unsafe(_))
        ));
        qemu_img(&[
            "create",
            "-f",
            "vmdk",
            "-o",
            "subformat=monolithicFlat",
            &p("flat.vmdk"),
            "16M",
        ]);
        assert!(matches!(
            check_disk(Path::new(&p("flat.vmdk")), "vmdk"),
            Err(InspectError::Unsafe(_))
        ));
        qemu_img(&[
            "create",
            "-f",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
            &p("so.vmdk"),
            "16M",
        ]);
        assert_eq!(
            check_disk(Path::new(&p("so.vmdk")), "vmdk").unwrap().format,
            "vmdk"
        );
        std::fs::remove_dir_all(d).unwrap();
    }
}
