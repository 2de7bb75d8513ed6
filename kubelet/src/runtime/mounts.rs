//! `/proc/self/mountinfo` parsing and the overlayfs root filesystem of a container.

use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};

/// The longest mount data string the kernel takes (one page).
const MAX_MOUNT_DATA: usize = 4095;

/// One line of `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// The root of the mount within its filesystem.
    pub root: String,
    /// Filesystem type (`overlay`, `cgroup`, `cgroup2`, ...).
    pub fs_type: String,
    /// The mount source.
    pub source: String,
    /// Per-superblock options (for cgroup v1: the controllers, e.g. `rw,cpu`).
    pub super_options: String,
}

/// Every mount of this process's mount namespace, in mount order.
pub fn mount_table() -> io::Result<Vec<MountEntry>> {
    Ok(parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// Parses mountinfo text; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let mut right = right.split(' ');
            Some(MountEntry {
                root: unescape(left.get(3)?),
                mount_point: PathBuf::from(unescape(left.get(4)?)),
                fs_type: right.next()?.to_string(),
                source: unescape(right.next()?),
                super_options: right.next().unwrap_or("").to_string(),
            })
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') as u32 * 64
                + (bytes[i + 2] - b'0') as u32 * 8
                + (bytes[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `path` is a mount point right now.
pub fn is_mounted(path: &Path) -> io::Result<bool> {
    Ok(mount_table()?.iter().any(|m| m.mount_point == path))
}

/// Mount points at or below `dir`, deepest (latest) first, for unmounting.
pub fn mounts_under(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> =
        mount_table()?.into_iter().map(|m| m.mount_point).filter(|p| p.starts_with(dir)).collect();
    found.reverse();
    Ok(found)
}

/// The overlay mount data for `layers` (bottom first; overlay wants the top layer first).
pub fn overlay_options(layers: &[PathBuf], upper: &Path, work: &Path) -> Result<String, String> {
    let check = |p: &Path| -> Result<String, String> {
        let s = p.to_str().ok_or_else(|| format!("path {} is not UTF-8", p.display()))?;
        if !p.is_absolute() || s.contains([',', ':', '\\']) || s.is_empty() {
            return Err(format!(
                "path {s:?} cannot be an overlay layer (must be absolute, without ',' ':' '\\')"
            ));
        }
        Ok(s.to_string())
    };
    let lower = layers.iter().rev().map(|l| check(l)).collect::<Result<Vec<_>, _>>()?.join(":");
    let data = format!("lowerdir={lower},upperdir={},workdir={}", check(upper)?, check(work)?);
    if data.len() > MAX_MOUNT_DATA {
        return Err(format!(
            "{} layers make overlay mount options of {} bytes; the kernel takes at most {MAX_MOUNT_DATA}",
            layers.len(),
            data.len()
        ));
    }
    Ok(data)
}

/// Mounts an overlay of `layers` (bottom first) with `upper`/`work` on `target`.
pub fn mount_overlay(layers: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Result<(), String> {
    let data = overlay_options(layers, upper, work)?;
    for layer in layers {
        if !layer.is_dir() {
            return Err(format!("image layer {} is not a directory", layer.display()));
        }
    }
    nix::mount::mount(Some("overlay"), target, Some("overlay"), MsFlags::empty(), Some(data.as_str()))
        .map_err(|e| format!("overlay on {}: {e}", target.display()))
}

/// Unmounts `target`; not being mounted is not an error. Falls back to a lazy unmount when
/// the mount is busy.
pub fn unmount(target: &Path) -> io::Result<()> {
    match nix::mount::umount2(target, MntFlags::empty()) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(()),
        Err(Errno::EBUSY) => match nix::mount::umount2(target, MntFlags::MNT_DETACH) {
            Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(e.into()),
        },
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo() {
        let text = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                    32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime shared:5 - cgroup cgroup rw,cpu\n\
                    40 31 0:50 / /a\\040b rw - overlay overlay rw,lowerdir=/x\n\
                    garbage\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].mount_point, PathBuf::from("/sys/fs/cgroup/cpu"));
        assert_eq!(m[1].fs_type, "cgroup");
        assert_eq!(m[1].super_options, "rw,cpu");
        assert_eq!(m[2].mount_point, PathBuf::from("/a b"));
    }

    #[test]
    fn overlay_data_orders_layers_top_first() {
        let layers = vec![PathBuf::from("/l/bottom"), PathBuf::from("/l/top")];
        let data = overlay_options(&layers, Path::new("/s/upper"), Path::new("/s/work")).unwrap();
        assert_eq!(data, "lowerdir=/l/top:/l/bottom,upperdir=/s/upper,workdir=/s/work");
        assert!(overlay_options(&[PathBuf::from("/a:b")], Path::new("/u"), Path::new("/w")).is_err());
        assert!(overlay_options(&[PathBuf::from("rel")], Path::new("/u"), Path::new("/w")).is_err());
        let many: Vec<PathBuf> =
            (0..100).map(|i| PathBuf::from(format!("/{}/{i}", "x".repeat(60)))).collect();
        assert!(overlay_options(&many, Path::new("/u"), Path::new("/w")).is_err());
    }
}
