//! Calling CNI plugins directly, as the CNI specification describes: the network configuration on
//! stdin, the parameters in `CNI_*` environment variables, a JSON result (or a JSON error) on stdout.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::NetworkError;

/// The CNI specification version of the configurations we write (CNI plugins 1.1.1 support 0.1.0
/// up to 1.0.0).
pub(crate) const CNI_VERSION: &str = "1.0.0";

/// How long one plugin invocation may take before we give up on it.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// The CNI operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CniCommand {
    Add,
    Del,
}

impl CniCommand {
    fn as_str(self) -> &'static str {
        match self {
            CniCommand::Add => "ADD",
            CniCommand::Del => "DEL",
        }
    }
}

/// One plugin invocation.
pub(crate) struct Invocation<'a> {
    pub bin_dir: &'a Path,
    pub command: CniCommand,
    pub container_id: &'a str,
    /// Empty on DEL when the namespace is already gone (the specification allows it).
    pub netns: &'a str,
    pub ifname: &'a str,
    pub config: &'a Value,
}

/// Runs the plugin named by `config.type` and returns its parsed result (`Value::Null` when it
/// printed nothing, as DEL does).
pub(crate) async fn invoke(inv: &Invocation<'_>) -> Result<Value, NetworkError> {
    let plugin = inv.config.get("type").and_then(Value::as_str).unwrap_or_default().to_string();
    let fail =
        |msg: String| NetworkError::Plugin { plugin: plugin.clone(), command: inv.command.as_str(), msg };
    if plugin.is_empty() || plugin.contains('/') {
        return Err(fail("the network configuration has no valid \"type\"".into()));
    }
    let stdin_data = serde_json::to_vec(inv.config).map_err(|e| fail(e.to_string()))?;
    let path: PathBuf = inv.bin_dir.join(&plugin);
    let mut child = Command::new(&path)
        .env("CNI_COMMAND", inv.command.as_str())
        .env("CNI_CONTAINERID", inv.container_id)
        .env("CNI_NETNS", inv.netns)
        .env("CNI_IFNAME", inv.ifname)
        .env("CNI_PATH", inv.bin_dir)
        .env_remove("CNI_ARGS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("cannot run {}: {e}", path.display())))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A plugin that exits without reading its stdin makes this fail; its exit status and
        // output then say more than the broken pipe would.
        let _ = stdin.write_all(&stdin_data).await;
        drop(stdin);
    }
    let output = match tokio::time::timeout(PLUGIN_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => return Err(fail(format!("waiting for {}: {e}", path.display()))),
        Err(_) => return Err(fail(format!("no answer within {}s", PLUGIN_TIMEOUT.as_secs()))),
    };
    if !output.status.success() {
        return Err(fail(error_message(&output.stdout, &output.stderr, output.status)));
    }
    if output.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&output.stdout).map_err(|e| {
        fail(format!("unreadable result ({e}): {}", String::from_utf8_lossy(&output.stdout).trim()))
    })
}

/// The message of a failed plugin: `msg` (and `details`) of its JSON error, else whatever it
/// printed.
fn error_message(stdout: &[u8], stderr: &[u8], status: std::process::ExitStatus) -> String {
    if let Ok(err) = serde_json::from_slice::<Value>(stdout) {
        if let Some(msg) = err.get("msg").and_then(Value::as_str) {
            let code = err.get("code").and_then(Value::as_u64);
            let mut text = msg.to_string();
            if let Some(details) = err.get("details").and_then(Value::as_str).filter(|d| !d.is_empty()) {
                text.push_str(": ");
                text.push_str(details);
            }
            if let Some(code) = code {
                text.push_str(&format!(" (CNI error code {code})"));
            }
            return text;
        }
    }
    let out = String::from_utf8_lossy(stdout);
    let err = String::from_utf8_lossy(stderr);
    let printed = [out.trim(), err.trim()].iter().filter(|s| !s.is_empty()).cloned().collect::<Vec<_>>();
    if printed.is_empty() {
        format!("exited with {status}")
    } else {
        format!("exited with {status}: {}", printed.join("; "))
    }
}

/// The address assigned to the interface inside the sandbox (`eth0`), preferring IPv4, from a CNI
/// 1.0.0 result.
pub(crate) fn result_ip(result: &Value, ifname: &str) -> Option<IpAddr> {
    let interfaces = result.get("interfaces").and_then(Value::as_array);
    let ips = result.get("ips").and_then(Value::as_array)?;
    let mut best: Option<(u8, IpAddr)> = None;
    for ip in ips {
        let Some(addr) = ip.get("address").and_then(Value::as_str) else { continue };
        let Some(Ok(addr)) = addr.split('/').next().map(str::parse::<IpAddr>) else { continue };
        // An address on another interface (the host side) only when nothing better is there.
        let on_other_if = ip
            .get("interface")
            .and_then(Value::as_u64)
            .and_then(|i| interfaces?.get(usize::try_from(i).ok()?))
            .is_some_and(|i| {
                i.get("name").and_then(Value::as_str) != Some(ifname) || i.get("sandbox").is_none()
            });
        let rank = u8::from(!on_other_if) * 2 + u8::from(addr.is_ipv4());
        if best.is_none_or(|(r, _)| rank > r) {
            best = Some((rank, addr));
        }
    }
    best.map(|(_, a)| a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn picks_the_sandbox_ipv4_address() {
        let result = json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa"},
                {"name": "veth1", "mac": "bb"},
                {"name": "eth0", "mac": "cc", "sandbox": "/run/netns/x"}
            ],
            "ips": [
                {"interface": 2, "address": "fd00::5/64"},
                {"interface": 2, "address": "10.88.0.5/16", "gateway": "10.88.0.1"}
            ]
        });
        assert_eq!(result_ip(&result, "eth0"), Some("10.88.0.5".parse().unwrap()));
        assert_eq!(result_ip(&json!({"ips": []}), "eth0"), None);
        assert_eq!(result_ip(&json!({"ips": [{"address": "junk"}]}), "eth0"), None);
        assert_eq!(result_ip(&json!({}), "eth0"), None);
    }

    #[test]
    fn error_messages_come_from_the_json_error() {
        let status = std::process::ExitStatus::default();
        let msg =
            error_message(br#"{"code":11,"msg":"failed to allocate","details":"range full"}"#, b"", status);
        assert_eq!(msg, "failed to allocate: range full (CNI error code 11)");
        let msg = error_message(b"", b"boom\n", status);
        assert!(msg.ends_with("boom"), "{msg}");
    }
}
