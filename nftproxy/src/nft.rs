//! Running `nft`: each script is one `nft -f -` transaction (all or nothing), as
//! kube-proxy's knftables does.

use crate::ProxyError;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// The `nft` program (Debian package `nftables`).
#[derive(Debug, Clone)]
pub struct Nft {
    program: PathBuf,
}

/// At most this much of nft's error output goes into an error (it echoes the failing line).
const MAX_ERROR: usize = 2000;

impl Nft {
    /// Finds `nft` on PATH or in the sbin directories.
    pub fn find() -> Result<Nft, ProxyError> {
        let path_var = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path_var)
            .chain(["/usr/sbin", "/sbin"].iter().map(PathBuf::from))
            .map(|d| d.join("nft"))
            .find(|p| p.is_file())
            .map(|program| Nft { program })
            .ok_or(ProxyError::Missing)
    }

    /// Uses this program.
    pub fn at(program: &Path) -> Nft {
        Nft { program: program.to_path_buf() }
    }

    /// Runs `script` as one transaction.
    pub async fn run(&self, script: &str) -> Result<(), ProxyError> {
        let mut child = Command::new(&self.program)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| ProxyError::Nft(format!("cannot run {}: {e}", self.program.display())))?;
        if let Some(mut stdin) = child.stdin.take() {
            // nft reads the whole script before it acts, so writing it all first cannot block
            // on its output.
            stdin
                .write_all(script.as_bytes())
                .await
                .map_err(|e| ProxyError::Nft(format!("cannot write to nft: {e}")))?;
        }
        let out = child.wait_with_output().await.map_err(|e| ProxyError::Nft(format!("nft: {e}")))?;
        if out.status.success() {
            return Ok(());
        }
        let mut msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if msg.len() > MAX_ERROR {
            let mut cut = MAX_ERROR;
            while !msg.is_char_boundary(cut) {
                cut -= 1;
            }
            msg.truncate(cut);
            msg.push_str(" …");
        }
        Err(ProxyError::Nft(format!("nft -f exited with {}: {msg}", out.status)))
    }

    /// `nft list table ip <table>`; `None` when there is no such table.
    pub async fn list_table(&self, table: &str) -> Result<Option<String>, ProxyError> {
        let out = Command::new(&self.program)
            .args(["list", "table", "ip", table])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| ProxyError::Nft(format!("cannot run {}: {e}", self.program.display())))?;
        if out.status.success() {
            return Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()));
        }
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No such file or directory") {
            Ok(None)
        } else {
            Err(ProxyError::Nft(format!("nft list table ip {table}: {}", err.trim())))
        }
    }

    /// Deletes the table if it exists.
    pub async fn delete_table(&self, table: &str) -> Result<(), ProxyError> {
        self.run(&format!("add table ip {table}\ndelete table ip {table}\n")).await
    }
}
