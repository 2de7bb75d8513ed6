//! The API service's request metrics, with upstream's names and labels:
//! `apiserver_request_total` and `apiserver_request_duration_seconds`. A watch or a stream
//! (logs, exec) is counted when its response starts, not when it ends.

use actix_web::HttpRequest;
use capstan_metrics::{HistogramVec, IntCounterVec};
use std::sync::LazyLock;
use std::time::Duration;

static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    capstan_metrics::counters(
        "apiserver_request_total",
        "Counter of apiserver requests broken out for each verb, dry run value, group, version, resource, scope, component, and HTTP response code.",
        &["verb", "dry_run", "group", "version", "resource", "subresource", "scope", "component", "code"],
    )
});

static DURATIONS: LazyLock<HistogramVec> = LazyLock::new(|| {
    capstan_metrics::histograms(
        "apiserver_request_duration_seconds",
        "Response latency distribution in seconds for each verb, dry run value, group, version, resource, subresource, scope and component.",
        &["verb", "dry_run", "group", "version", "resource", "subresource", "scope", "component"],
        capstan_metrics::REQUEST_BUCKETS,
    )
});

/// Labels of a request as upstream's metrics name them: the verb in upper case (`LIST`,
/// `WATCH`, `APPLY` for server-side apply), the scope `cluster`, `namespace` or `resource`.
fn labels(req: &HttpRequest) -> [String; 7] {
    let query = req.query_string();
    let flag = |k: &str| query.split('&').any(|kv| kv == format!("{k}=true") || kv == format!("{k}=1"));
    let watch = flag("watch");
    let dry_run =
        if query.split('&').any(|kv| kv.starts_with("dryRun=") && kv.len() > 7) { "All" } else { "" };
    let (object, verb) = crate::audit::object_ref(req.method().as_str(), req.path(), watch);
    let apply = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/apply-patch"));
    let verb = match verb.as_str() {
        "patch" if apply => "APPLY".to_string(),
        "create" => "POST".to_string(),
        "update" => "PUT".to_string(),
        v => v.to_ascii_uppercase(),
    };
    match object {
        Some(o) => {
            let scope = if !o.name.is_empty() {
                "resource"
            } else if !o.namespace.is_empty() {
                "namespace"
            } else {
                "cluster"
            };
            let connect = matches!(o.subresource.as_str(), "exec" | "attach" | "portforward" | "proxy");
            let verb = if connect { "CONNECT".to_string() } else { verb };
            [verb, dry_run.to_string(), o.group, o.version, o.resource, o.subresource, scope.to_string()]
        }
        None => [
            verb,
            dry_run.to_string(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ],
    }
}

/// Counts a finished request.
pub fn request(req: &HttpRequest, code: u16, took: Duration) {
    let [verb, dry_run, group, version, resource, subresource, scope] = labels(req);
    let code = code.to_string();
    let l = [&*verb, &*dry_run, &*group, &*version, &*resource, &*subresource, &*scope, "apiserver"];
    DURATIONS.with_label_values(&l).observe(took.as_secs_f64());
    REQUESTS.with_label_values(&[l[0], l[1], l[2], l[3], l[4], l[5], l[6], l[7], &code]).inc();
}
