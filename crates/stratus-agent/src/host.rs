//! The node's real capacity, for the container driver's `host_resources`.

use std::path::Path;

/// Logical CPUs (`processor` lines of /proc/cpuinfo) and the CPU model name.
pub(crate) fn cpus() -> (u32, String) {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let count = info.lines().filter(|l| l.starts_with("processor")).count() as u32;
    let model = info
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let count = if count > 0 {
        count
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
    };
    (count, model)
}

/// MemTotal of /proc/meminfo, in MiB.
pub(crate) fn memory_mb() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

/// Size of the file system holding `path`, in GiB (rounded down).
pub(crate) fn disk_gb(path: &Path) -> u64 {
    fs_space(path).map_or(0, |(total, _)| total >> 30)
}

/// Size of the file system holding `path` and the space free on it for
/// unprivileged users, in bytes.
#[allow(unsafe_code)]
pub(crate) fn fs_space(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a NUL-terminated path that outlives the call and `st`
    // points to writable memory the size of `struct statvfs`, which is all
    // statvfs(3) writes to.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled the whole struct (and it was
    // zeroed before anyway).
    let st = unsafe { st.assume_init() };
    // The field types differ between targets; u64 on 64-bit Linux.
    #[allow(clippy::useless_conversion)]
    let (blocks, avail, frsize) = (
        u64::from(st.f_blocks),
        u64::from(st.f_bavail),
        u64::from(st.f_frsize),
    );
    Some((blocks.saturating_mul(frsize), avail.saturating_mul(frsize)))
}

/// Nova's version integer for "1.1.5" (major * 10^6 + minor * 10^3 + patch).
pub(crate) fn version_int(text: &str) -> u64 {
    let v = text
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .find(|w| w.contains('.'))
        .unwrap_or("");
    let mut parts = v.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    let (a, b, c) = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    a * 1_000_000 + b * 1_000 + c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures() {
        let (n, _) = cpus();
        assert!(n >= 1);
        assert!(memory_mb() > 0);
        assert!(disk_gb(Path::new("/")) > 0);
        assert_eq!(version_int("runc version 1.1.5+ds1\ncommit: x"), 1_001_005);
        assert_eq!(version_int("crun version 1.8.1"), 1_008_001);
        assert_eq!(version_int("nothing"), 0);
    }
}
