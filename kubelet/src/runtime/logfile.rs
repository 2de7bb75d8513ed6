//! The CRI log file the shim writes, rotated by size as upstream's kubelet rotates it
//! (`containerLogMaxSize`, `containerLogMaxFiles`, `pkg/kubelet/logs/container_log_manager.go`).
//!
//! Before a record would take the file past the maximum size (and the file is not empty), the
//! file is renamed to `<name>.<YYYYMMDD-HHMMSS.nnnnnnnnn>` (upstream's timestamp, with
//! nanoseconds added so that several rotations within one second keep distinct names that sort
//! in time order) and a new file is opened at `<name>`. A record is never split across files,
//! so the current file is below the limit unless one record alone exceeds it. Of the rotated
//! files, the oldest beyond `max_files - 1` are removed at once (the current file counts as
//! one), and every rotated file but the newest is compressed to `<rotated>.gz` by a background
//! thread (as upstream, which keeps the newest rotated file plain for readers that were
//! following it). Writers never wait for compression.
//!
//! Unlike upstream, which checks the sizes every 10 s from the kubelet, the shim rotates at
//! write time, so the limit holds at every moment.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

/// Rotation limits; `max_size` 0 means never rotate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rotation {
    /// The size in bytes at which the file is rotated (upstream default 10Mi).
    pub max_size: u64,
    /// Files kept, the current one included (upstream default 5, at least 2).
    pub max_files: u32,
}

/// Upstream's `containerLogMaxSize` default, 10Mi.
pub const DEFAULT_MAX_SIZE: u64 = 10 << 20;
/// Upstream's `containerLogMaxFiles` default.
pub const DEFAULT_MAX_FILES: u32 = 5;

impl Rotation {
    /// Upstream's defaults.
    pub fn upstream() -> Rotation {
        Rotation { max_size: DEFAULT_MAX_SIZE, max_files: DEFAULT_MAX_FILES }
    }
}

/// A log file that rotates itself (see the module docs). Shared by the shim's reader threads.
pub struct RotatingLog {
    path: PathBuf,
    rotation: Rotation,
    current: Mutex<Current>,
    /// Held while rotated files are removed or a compressed file replaces its source.
    files: Arc<Mutex<()>>,
    compressor: Mutex<Option<(mpsc::Sender<()>, JoinHandle<()>)>>,
}

struct Current {
    file: File,
    size: u64,
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().append(true).create(true).mode(0o640).open(path)
}

impl RotatingLog {
    /// Opens (creating it and its directory if needed) the log at `path`.
    pub fn open(path: &Path, rotation: Rotation) -> io::Result<RotatingLog> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingLog {
            path: path.to_path_buf(),
            rotation,
            current: Mutex::new(Current { file, size }),
            files: Arc::new(Mutex::new(())),
            compressor: Mutex::new(None),
        })
    }

    /// Appends one whole record, rotating first when it would not fit.
    pub fn write_record(&self, record: &[u8]) {
        let Ok(mut current) = self.current.lock() else { return };
        let len = record.len() as u64;
        if self.rotation.max_size > 0 && current.size > 0 && current.size + len > self.rotation.max_size {
            if let Err(e) = self.rotate(&mut current) {
                eprintln!("shim: rotating {}: {e}", self.path.display());
            }
        }
        if current.file.write_all(record).is_ok() {
            current.size += len;
        }
    }

    fn rotate(&self, current: &mut Current) -> io::Result<()> {
        let rotated = rotated_name(&self.path, jiff::Timestamp::now());
        fs::rename(&self.path, &rotated)?;
        *current = Current { file: open_append(&self.path)?, size: 0 };
        {
            let _files = self.files.lock().unwrap_or_else(|e| e.into_inner());
            let entries = rotated_entries(&self.path);
            let keep = self.rotation.max_files.saturating_sub(1).max(1) as usize;
            for old in entries.iter().take(entries.len().saturating_sub(keep)) {
                remove_entry(old);
            }
        }
        self.wake_compressor();
        Ok(())
    }

    fn wake_compressor(&self) {
        let Ok(mut slot) = self.compressor.lock() else { return };
        if let Some((tx, _)) = slot.as_ref() {
            if tx.send(()).is_ok() {
                return;
            }
        }
        let (tx, rx) = mpsc::channel::<()>();
        let (path, files) = (self.path.clone(), self.files.clone());
        let handle = std::thread::spawn(move || {
            while rx.recv().is_ok() {
                while rx.try_recv().is_ok() {}
                compress_rotated(&path, &files);
            }
        });
        let _ = tx.send(());
        *slot = Some((tx, handle));
    }

    /// Waits for the background compression to finish (the shim calls this before it exits).
    pub fn finish(&self) {
        let taken = self.compressor.lock().ok().and_then(|mut s| s.take());
        if let Some((tx, handle)) = taken {
            drop(tx);
            let _ = handle.join();
        }
    }
}

/// `<path>.<YYYYMMDD-HHMMSS.nnnnnnnnn>` (UTC).
pub fn rotated_name(path: &Path, now: jiff::Timestamp) -> PathBuf {
    let dt = now.to_zoned(jiff::tz::TimeZone::UTC).datetime();
    let suffix = format!(
        "{:04}{:02}{:02}-{:02}{:02}{:02}.{:09}",
        dt.year(),
        dt.month(),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        dt.subsec_nanosecond()
    );
    let mut name = path.as_os_str().to_owned();
    name.push(".");
    name.push(suffix);
    PathBuf::from(name)
}

/// The rotated files of the log at `path`, oldest first, each without its `.gz` (an entry
/// may exist plain, compressed, or both while being compressed).
pub fn rotated_entries(path: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else { return Vec::new() };
    let prefix = format!("{}.", name.to_string_lossy());
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            let rest = n.strip_prefix(&prefix)?;
            let stem = rest.strip_suffix(".gz.tmp").or_else(|| rest.strip_suffix(".gz")).unwrap_or(rest);
            // Only `<timestamp>` suffixes: `0.log.x` must not catch `0.log.1.log` style names.
            (stem.len() == 25 && stem.as_bytes()[8] == b'-').then(|| dir.join(format!("{prefix}{stem}")))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn remove_entry(entry: &Path) {
    for p in [entry.to_path_buf(), with_suffix(entry, ".gz")] {
        let _ = fs::remove_file(p);
    }
}

/// Removes every file of the log at `path`: the current one and the rotated ones.
pub fn remove_all(path: &Path) {
    for e in rotated_entries(path) {
        remove_entry(&e);
        let _ = fs::remove_file(with_suffix(&e, ".gz.tmp"));
    }
    let _ = fs::remove_file(path);
}

/// Compresses every plain rotated file but the newest.
fn compress_rotated(path: &Path, files: &Mutex<()>) {
    let entries = rotated_entries(path);
    for entry in entries.iter().take(entries.len().saturating_sub(1)) {
        let gz = with_suffix(entry, ".gz");
        if gz.exists() || !entry.exists() {
            continue;
        }
        let tmp = with_suffix(entry, ".gz.tmp");
        let compressed = (|| -> io::Result<()> {
            let mut src = File::open(entry)?;
            let out = OpenOptions::new().write(true).create(true).truncate(true).mode(0o640).open(&tmp)?;
            let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::default());
            io::copy(&mut src, &mut enc)?;
            enc.finish()?.sync_all()
        })();
        let _files = files.lock().unwrap_or_else(|e| e.into_inner());
        match compressed {
            // Removed meanwhile (pruned): the compressed copy must not bring it back.
            Ok(()) if entry.exists() => {
                if fs::rename(&tmp, &gz).is_ok() {
                    let _ = fs::remove_file(entry);
                }
            }
            Ok(()) => {
                let _ = fs::remove_file(&tmp);
            }
            Err(e) => {
                eprintln!("shim: compressing {}: {e}", entry.display());
                let _ = fs::remove_file(&tmp);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn rotates_keeps_max_files_and_compresses_older() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c").join("0.log");
        let log = RotatingLog::open(&path, Rotation { max_size: 100, max_files: 3 }).unwrap();
        let mut all = Vec::new();
        for i in 0..40 {
            let rec = format!("2024-01-01T00:00:00Z stdout F line-{i:03}\n");
            all.extend_from_slice(rec.as_bytes());
            log.write_record(rec.as_bytes());
        }
        log.finish();
        let files = names(path.parent().unwrap());
        assert_eq!(files.len(), 3, "{files:?}");
        assert_eq!(files[0], "0.log");
        assert!(files[1].ends_with(".gz"), "older rotated files are compressed: {files:?}");
        assert!(!files[2].ends_with(".gz"), "the newest rotated file is not: {files:?}");
        assert!(fs::metadata(&path).unwrap().len() <= 100);
        // The files, oldest first, are a suffix of everything written, whole records each.
        let mut joined = Vec::new();
        for e in rotated_entries(&path) {
            let gz = with_suffix(&e, ".gz");
            if gz.exists() {
                flate2::read::GzDecoder::new(File::open(gz).unwrap()).read_to_end(&mut joined).unwrap();
            } else {
                joined.extend(fs::read(&e).unwrap());
            }
        }
        joined.extend(fs::read(&path).unwrap());
        assert!(all.ends_with(&joined), "{}", String::from_utf8_lossy(&joined));
        assert!(String::from_utf8_lossy(&joined).ends_with("line-039\n"));
        remove_all(&path);
        assert!(names(path.parent().unwrap()).is_empty());
    }

    #[test]
    fn no_rotation_without_a_limit_and_a_big_record_still_goes_in() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let log = RotatingLog::open(&path, Rotation::default()).unwrap();
        for _ in 0..10 {
            log.write_record(&[b'x'; 100]);
        }
        assert_eq!(names(dir.path()), ["0.log"]);
        let log = RotatingLog::open(&path, Rotation { max_size: 50, max_files: 2 }).unwrap();
        log.write_record(&[b'y'; 80]);
        log.write_record(&[b'z'; 80]);
        log.finish();
        assert_eq!(fs::read(&path).unwrap(), [b'z'; 80]);
        assert_eq!(names(dir.path()).len(), 2);
    }

    #[test]
    fn rotated_names_sort_in_time_order() {
        let p = Path::new("/x/0.log");
        let a = rotated_name(p, "2024-01-02T03:04:05.000000009Z".parse().unwrap());
        let b = rotated_name(p, "2024-01-02T03:04:05.1Z".parse().unwrap());
        assert_eq!(a, Path::new("/x/0.log.20240102-030405.000000009"));
        assert!(a < b);
    }
}
