//! Watching the benchmark's pods: where to start and how to (re)open the stream.

use crate::client::{Client, Stream};

/// The pods list's current resourceVersion (a watch from it sees only what follows).
pub async fn pods_revision(client: &Client) -> anyhow::Result<String> {
    let mut conn = client.open().await?;
    let r = conn
        .request("GET", "/api/v1/namespaces/default/pods?limit=1", &[("Accept", "application/json")], b"")
        .await?;
    if r.status != 200 {
        anyhow::bail!("list pods: {} {}", r.status, r.text());
    }
    Ok(r.json()?["metadata"]["resourceVersion"].as_str().unwrap_or("0").to_string())
}

/// Opens a watch on the pods labelled `app=<app>` after resourceVersion `rv`.
pub async fn watch_pods(client: &Client, app: &str, rv: &str) -> anyhow::Result<Stream> {
    let path = format!(
        "/api/v1/namespaces/default/pods?watch=true&labelSelector=app%3D{app}&resourceVersion={rv}&timeoutSeconds=3600"
    );
    let s = client.open().await?.stream("GET", &path, &[], b"").await?;
    if s.status != 200 {
        anyhow::bail!("watch failed with {}", s.status);
    }
    Ok(s)
}
