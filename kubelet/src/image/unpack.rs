//! Unpacking a layer tarball into a directory usable as an overlayfs lower layer.
//!
//! Whiteouts become what overlayfs expects: `.wh.<name>` a character device 0:0 named
//! `<name>`, `.wh..wh..opq` the xattr `trusted.overlay.opaque=y` on its directory. Modes,
//! ownership (the agent runs as root), symlinks, hard links within the layer and device nodes
//! are preserved. Entry paths containing `..` are rejected; symlinks met on the way to an entry
//! are resolved inside the layer directory (as a chroot would), so nothing is ever written
//! outside it.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use tar::EntryType;

/// Why a layer could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The tarball is malformed or tries to escape its directory.
    #[error("invalid layer: {0}")]
    Invalid(String),
    /// The layer uses a format this node does not support (zstd compression).
    #[error("unsupported layer: {0}")]
    Unsupported(String),
    /// Writing the layer directory failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The failure.
        source: io::Error,
    },
}

fn io_err(context: impl FnOnce() -> String) -> impl FnOnce(io::Error) -> UnpackError {
    move |source| UnpackError::Io { context: context(), source }
}

/// How a layer blob is compressed, from its first bytes (registries and tools are not always
/// truthful about media types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

fn sniff(magic: &[u8]) -> Compression {
    if magic.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// Unpacks the layer blob at `blob` (a tar, gzip-compressed or not) into `dest` (created if
/// missing). zstd-compressed layers are refused as [`UnpackError::Unsupported`].
pub fn unpack_layer_blob(blob: &Path, media_type: &str, dest: &Path) -> Result<(), UnpackError> {
    let mut file = fs::File::open(blob).map_err(io_err(|| format!("opening {}", blob.display())))?;
    let mut magic = Vec::with_capacity(4);
    (&mut file).take(4).read_to_end(&mut magic).map_err(io_err(|| format!("reading {}", blob.display())))?;
    file.seek(SeekFrom::Start(0)).map_err(io_err(|| format!("reading {}", blob.display())))?;
    let compression = sniff(&magic);
    if compression == Compression::Zstd || media_type.ends_with("+zstd") {
        return Err(UnpackError::Unsupported(format!(
            "zstd-compressed layers are not supported ({media_type})"
        )));
    }
    let reader = BufReader::with_capacity(256 * 1024, file);
    match compression {
        Compression::Gzip => unpack_layer(flate2::read::MultiGzDecoder::new(reader), dest),
        _ => unpack_layer(reader, dest),
    }
}

/// Unpacks an uncompressed layer tarball read from `reader` into `dest` (created if missing).
pub fn unpack_layer(reader: impl Read, dest: &Path) -> Result<(), UnpackError> {
    fs::create_dir_all(dest).map_err(io_err(|| format!("creating {}", dest.display())))?;
    let root = dest.canonicalize().map_err(io_err(|| format!("resolving {}", dest.display())))?;
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    let entries = archive.entries().map_err(|e| UnpackError::Invalid(format!("reading the tar: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| UnpackError::Invalid(format!("reading the tar: {e}")))?;
        unpack_entry(&root, &mut entry)?;
    }
    Ok(())
}

/// The relative path of an entry: leading `/` and `.` components dropped; `..` rejected.
/// `None` for the root itself.
fn safe_relative(path: &Path) -> Result<Option<PathBuf>, UnpackError> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                return Err(UnpackError::Invalid(format!(
                    "path traversal: entry {:?} contains \"..\"",
                    path.display().to_string()
                )))
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// Resolves the directory `rel` inside `root` like a chroot would: symlinks are followed with
/// absolute targets taken relative to `root` and `..` clamped at `root`. Missing directories are
/// created (mode 0755) when `create`; a non-directory on the way is an error.
fn resolve_dir(root: &Path, rel: &Path, create: bool) -> Result<PathBuf, UnpackError> {
    let mut pending: VecDeque<OsString> = rel.iter().map(OsStr::to_os_string).collect();
    let mut resolved: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(part) = pending.pop_front() {
        if part == "." || part == "/" || part.is_empty() {
            continue;
        }
        if part == ".." {
            resolved.pop();
            continue;
        }
        let mut cur: PathBuf = root.to_path_buf();
        cur.extend(&resolved);
        cur.push(&part);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(UnpackError::Invalid(format!("too many levels of symlinks at {rel:?}")));
                }
                let target =
                    fs::read_link(&cur).map_err(io_err(|| format!("reading link {}", cur.display())))?;
                if target.is_absolute() {
                    resolved.clear();
                }
                for c in target.iter().rev() {
                    pending.push_front(c.to_os_string());
                }
            }
            Ok(m) if m.is_dir() => resolved.push(part),
            Ok(_) => {
                return Err(UnpackError::Invalid(format!("{rel:?}: {part:?} is not a directory")));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                fs::create_dir(&cur).map_err(io_err(|| format!("creating {}", cur.display())))?;
                fs::set_permissions(&cur, fs::Permissions::from_mode(0o755))
                    .map_err(io_err(|| format!("chmod {}", cur.display())))?;
                resolved.push(part);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(UnpackError::Invalid(format!("{rel:?}: {part:?} does not exist")));
            }
            Err(e) => return Err(io_err(|| format!("inspecting {}", cur.display()))(e)),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(&resolved);
    Ok(out)
}

/// Removes whatever is at `path` (not following a symlink there).
fn remove_existing(path: &Path) -> Result<(), UnpackError> {
    let res = match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
    };
    res.map_err(io_err(|| format!("replacing {}", path.display())))
}

fn make_node(path: &Path, kind: SFlag, mode: u32, dev: (u64, u64)) -> Result<(), UnpackError> {
    mknod(path, kind, Mode::from_bits_truncate(mode & 0o7777), makedev(dev.0, dev.1))
        .map_err(|e| io_err(|| format!("mknod {}", path.display()))(io::Error::from(e)))
}

fn unpack_entry<R: Read>(root: &Path, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
    let kind = entry.header().entry_type();
    if matches!(
        kind,
        EntryType::XGlobalHeader | EntryType::XHeader | EntryType::GNULongName | EntryType::GNULongLink
    ) {
        return Ok(());
    }
    let path = entry.path().map_err(|e| UnpackError::Invalid(format!("entry path: {e}")))?.into_owned();
    let Some(rel) = safe_relative(&path)? else {
        return Ok(()); // the layer root itself
    };
    let Some(name) = rel.file_name().map(OsStr::to_os_string) else {
        return Ok(());
    };
    let parent = resolve_dir(root, rel.parent().unwrap_or(Path::new("")), true)?;

    // Whiteouts, in the overlayfs format.
    if let Some(hidden) = name.as_bytes().strip_prefix(b".wh.") {
        if hidden == b".wh..opq" {
            return xattr::set(&parent, "trusted.overlay.opaque", b"y")
                .map_err(io_err(|| format!("marking {} opaque", parent.display())));
        }
        if hidden.starts_with(b".wh.") {
            return Ok(()); // other AUFS metadata (.wh..wh.plnk, ...): nothing to do
        }
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(UnpackError::Invalid(format!("bad whiteout {path:?}")));
        }
        let target = parent.join(OsStr::from_bytes(hidden));
        remove_existing(&target)?;
        return make_node(&target, SFlag::S_IFCHR, 0, (0, 0));
    }

    let target = parent.join(&name);
    let header = entry.header();
    let mode = header.mode().unwrap_or(0o644);
    let uid = header.uid().ok().and_then(|u| u32::try_from(u).ok()).unwrap_or(0);
    let gid = header.gid().ok().and_then(|g| u32::try_from(g).ok()).unwrap_or(0);
    let unpack_err = |e: io::Error| io_err(|| format!("unpacking {}", rel.display()))(e);
    match kind {
        EntryType::Directory => {
            if fs::symlink_metadata(&target).is_ok_and(|m| !m.is_dir()) {
                remove_existing(&target)?;
            }
            entry.unpack(&target).map_err(unpack_err)?;
        }
        EntryType::Link => {
            let link = entry
                .link_name()
                .map_err(|e| UnpackError::Invalid(format!("hard link {path:?}: {e}")))?
                .ok_or_else(|| UnpackError::Invalid(format!("hard link {path:?} has no target")))?
                .into_owned();
            let link_rel = safe_relative(&link)?
                .ok_or_else(|| UnpackError::Invalid(format!("hard link {path:?} to the layer root")))?;
            let link_parent = resolve_dir(root, link_rel.parent().unwrap_or(Path::new("")), false)?;
            let source = link_parent.join(link_rel.file_name().unwrap_or_default());
            match fs::symlink_metadata(&source) {
                Ok(m) if !m.is_dir() => {}
                _ => {
                    return Err(UnpackError::Invalid(format!(
                        "hard link {path:?} to {link:?}, which is not a file of the layer"
                    )))
                }
            }
            if source != target {
                remove_existing(&target)?;
                fs::hard_link(&source, &target).map_err(unpack_err)?;
            }
        }
        EntryType::Char | EntryType::Block | EntryType::Fifo => {
            let flag = match kind {
                EntryType::Char => SFlag::S_IFCHR,
                EntryType::Block => SFlag::S_IFBLK,
                _ => SFlag::S_IFIFO,
            };
            let major = header.device_major().ok().flatten().unwrap_or(0);
            let minor = header.device_minor().ok().flatten().unwrap_or(0);
            remove_existing(&target)?;
            make_node(&target, flag, mode, (major.into(), minor.into()))?;
            std::os::unix::fs::lchown(&target, Some(uid), Some(gid)).map_err(unpack_err)?;
            fs::set_permissions(&target, fs::Permissions::from_mode(mode & 0o7777)).map_err(unpack_err)?;
        }
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse | EntryType::Symlink => {
            remove_existing(&target)?;
            entry.unpack(&target).map_err(unpack_err)?;
        }
        other => {
            tracing::debug!(path = %rel.display(), kind = ?other, "skipping unsupported tar entry");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let p = std::env::temp_dir().join(format!(
                "capstan-unpack-{tag}-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4()
            ));
            fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// A tar builder that writes names verbatim (the `tar` crate's safe setters refuse `..`).
    struct Tar(tar::Builder<Vec<u8>>);
    impl Tar {
        fn new() -> Tar {
            Tar(tar::Builder::new(Vec::new()))
        }
        fn header(kind: EntryType, name: &str, mode: u32, size: u64) -> tar::Header {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            let bytes = name.as_bytes();
            h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
            h.set_mode(mode);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            h.set_size(size);
            h.set_cksum();
            h
        }
        fn dir(mut self, name: &str, mode: u32) -> Tar {
            let h = Self::header(EntryType::Directory, name, mode, 0);
            self.0.append(&h, io::empty()).unwrap();
            self
        }
        fn file(mut self, name: &str, data: &[u8], mode: u32) -> Tar {
            let h = Self::header(EntryType::Regular, name, mode, data.len() as u64);
            self.0.append(&h, data).unwrap();
            self
        }
        fn link(mut self, kind: EntryType, name: &str, target: &str) -> Tar {
            let mut h = Self::header(kind, name, 0o777, 0);
            let bytes = target.as_bytes();
            h.as_old_mut().linkname[..bytes.len()].copy_from_slice(bytes);
            h.set_cksum();
            self.0.append(&h, io::empty()).unwrap();
            self
        }
        fn owned_file(mut self, name: &str, uid: u64, gid: u64) -> Tar {
            let mut h = Self::header(EntryType::Regular, name, 0o4750, 1);
            h.set_uid(uid);
            h.set_gid(gid);
            h.set_cksum();
            self.0.append(&h, &b"x"[..]).unwrap();
            self
        }
        fn bytes(self) -> Vec<u8> {
            self.0.into_inner().unwrap()
        }
    }

    #[test]
    fn whiteouts_become_overlayfs_markers() {
        let t = TempDir::new("wh");
        let tar = Tar::new()
            .dir("etc/", 0o755)
            .file("etc/.wh.motd", b"", 0o644)
            .dir("var/cache/", 0o755)
            .file("var/cache/.wh..wh..opq", b"", 0o644)
            .file("var/cache/kept", b"k", 0o600)
            .file("./deep/new/.wh..wh..opq", b"", 0o644)
            .file(".wh.gone-at-root", b"", 0o644)
            .bytes();
        unpack_layer(&tar[..], &t.0).unwrap();
        for wh in ["etc/motd", "gone-at-root"] {
            let m = fs::symlink_metadata(t.0.join(wh)).unwrap();
            assert!(m.file_type().is_char_device(), "{wh}");
            assert_eq!(m.rdev(), 0, "{wh}");
        }
        assert!(!t.0.join("etc/.wh.motd").exists());
        for opq in ["var/cache", "deep/new"] {
            let v = xattr::get(t.0.join(opq), "trusted.overlay.opaque").unwrap();
            assert_eq!(v.as_deref(), Some(&b"y"[..]), "{opq}");
        }
        assert!(!t.0.join("var/cache/.wh..wh..opq").exists());
        let kept = fs::metadata(t.0.join("var/cache/kept")).unwrap();
        assert_eq!(kept.mode() & 0o7777, 0o600);
    }

    #[test]
    fn preserves_modes_links_and_ownership() {
        let t = TempDir::new("links");
        let tar = Tar::new()
            .dir("bin/", 0o755)
            .file("bin/tool", b"#!/bin/sh\n", 0o755)
            .link(EntryType::Symlink, "bin/sh", "tool")
            .link(EntryType::Symlink, "bin/abs", "/bin/tool")
            .link(EntryType::Link, "bin/hard", "bin/tool")
            .dir("tmp/", 0o1777)
            .owned_file("bin/suid", 1234, 5678)
            .file("bin/tool", b"replaced\n", 0o700)
            .bytes();
        unpack_layer(&tar[..], &t.0).unwrap();
        assert_eq!(fs::read_link(t.0.join("bin/sh")).unwrap(), Path::new("tool"));
        assert_eq!(fs::read_link(t.0.join("bin/abs")).unwrap(), Path::new("/bin/tool"));
        assert_eq!(fs::read(t.0.join("bin/hard")).unwrap(), b"#!/bin/sh\n");
        assert_eq!(fs::metadata(t.0.join("bin/hard")).unwrap().mode() & 0o777, 0o755);
        assert_eq!(fs::read(t.0.join("bin/tool")).unwrap(), b"replaced\n");
        assert_eq!(fs::metadata(t.0.join("tmp")).unwrap().mode() & 0o7777, 0o1777);
        let suid = fs::metadata(t.0.join("bin/suid")).unwrap();
        assert_eq!((suid.uid(), suid.gid(), suid.mode() & 0o7777), (1234, 5678, 0o4750));
    }

    #[test]
    fn path_traversal_is_rejected() {
        for name in ["../escape", "a/../../escape", "/../escape"] {
            let t = TempDir::new("trav");
            let dest = t.0.join("layer");
            let tar = Tar::new().file(name, b"bad", 0o644).bytes();
            let err = unpack_layer(&tar[..], &dest).unwrap_err();
            assert!(matches!(err, UnpackError::Invalid(_)), "{name}: {err}");
            assert!(!t.0.join("escape").exists(), "{name}");
        }
        // A hard link pointing outside.
        let t = TempDir::new("trav-link");
        let tar = Tar::new().link(EntryType::Link, "passwd", "../../etc/passwd").bytes();
        assert!(matches!(unpack_layer(&tar[..], &t.0.join("l")), Err(UnpackError::Invalid(_))));
        // An absolute path stays inside.
        let t = TempDir::new("abs");
        let tar = Tar::new().file("/etc/abs-file", b"in", 0o644).bytes();
        unpack_layer(&tar[..], &t.0).unwrap();
        assert_eq!(fs::read(t.0.join("etc/abs-file")).unwrap(), b"in");
    }

    #[test]
    fn symlinks_are_resolved_inside_the_layer() {
        let t = TempDir::new("symesc");
        let outside = TempDir::new("symesc-outside");
        let dest = t.0.join("layer");
        let out = outside.0.display().to_string();
        // A symlink to an absolute host directory, then a file through it: must land inside.
        let tar = Tar::new()
            .link(EntryType::Symlink, "evil", &out)
            .file("evil/pwned", b"x", 0o644)
            .link(EntryType::Symlink, "up", "../../../..")
            .file("up/also", b"y", 0o644)
            .bytes();
        unpack_layer(&tar[..], &dest).unwrap();
        assert!(!outside.0.join("pwned").exists());
        assert!(dest.join(out.trim_start_matches('/')).join("pwned").exists());
        assert!(dest.join("also").exists());
    }

    #[test]
    fn gzip_and_zstd_blobs() {
        use std::io::Write;
        let t = TempDir::new("gz");
        let tar = Tar::new().file("hello", b"world", 0o644).bytes();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let blob = t.0.join("blob");
        fs::write(&blob, gz.finish().unwrap()).unwrap();
        unpack_layer_blob(&blob, "application/vnd.oci.image.layer.v1.tar+gzip", &t.0.join("l")).unwrap();
        assert_eq!(fs::read(t.0.join("l/hello")).unwrap(), b"world");
        fs::write(&blob, &tar).unwrap();
        unpack_layer_blob(&blob, "application/vnd.oci.image.layer.v1.tar", &t.0.join("l2")).unwrap();
        assert_eq!(fs::read(t.0.join("l2/hello")).unwrap(), b"world");
        fs::write(&blob, [0x28, 0xb5, 0x2f, 0xfd, 0, 0]).unwrap();
        let err = unpack_layer_blob(&blob, "application/vnd.oci.image.layer.v1.tar", &t.0.join("l3"));
        assert!(matches!(err, Err(UnpackError::Unsupported(_))));
    }
}
