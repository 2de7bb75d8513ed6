//! CustomResourceDefinitions (`apiextensions.k8s.io/v1`): what a CRD makes the API serve.
//!
//! [`resources_of`] turns an accepted CRD into one [`ResourceInfo`] per served version, each
//! carrying a [`CustomResource`] (its structural schema, printer columns and scale paths);
//! the gateway installs them in the dynamic part of the [`registry`](crate::registry).
//! Custom objects are then pruned, defaulted and validated against their version's schema
//! ([`schema`]), shown with their `additionalPrinterColumns` ([`cells`]) and described in
//! OpenAPI v3 (see [`openapi`](crate::openapi)). [`validate_crd`] and [`default_crd`] are
//! the CRD kind's own validation and defaulting; [`name_conflicts`] decides
//! `NamesAccepted`.

pub mod cost;
pub mod rules;
pub mod schema;

use crate::registry::{self, ResourceInfo, Scope, Subresource, ALL_VERBS};
use crate::table::Column;
use crate::Cause;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::{LazyLock, Mutex};

/// The finalizer that makes a CRD's deletion remove its objects first.
pub const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

/// What one served version of a CRD adds to a [`ResourceInfo`].
#[derive(Debug)]
pub struct CustomResource {
    /// The CRD's name (`crontabs.stable.example.com`).
    pub crd: &'static str,
    /// The version objects are stored in (conversion `None`: only `apiVersion` differs).
    pub storage_version: &'static str,
    /// The version's `openAPIV3Schema` (`null` when none: everything is kept).
    pub schema: Value,
    /// `additionalPrinterColumns` (Name comes first and is not listed).
    pub columns: Vec<PrinterColumn>,
    /// The `scale` subresource's paths, if enabled.
    pub scale: Option<ScalePaths>,
    /// The conversion webhook (`spec.conversion.strategy: Webhook`); `None` for strategy
    /// `None`, where versions differ only in `apiVersion`.
    pub conversion: Option<ConversionWebhook>,
}

/// A CRD's conversion webhook (`spec.conversion.webhook`).
#[derive(Debug, Clone)]
pub struct ConversionWebhook {
    /// `clientConfig`: `url` or `service` (namespace, name, port, path), and `caBundle`.
    pub client_config: Value,
    /// The `ConversionReview` version to send (`v1` or `v1beta1`: the first of
    /// `conversionReviewVersions` this server speaks; their JSON is the same).
    pub review_version: &'static str,
}

impl ConversionWebhook {
    /// The webhook of a CRD whose conversion strategy is `Webhook`.
    pub fn of(crd: &Value) -> Option<ConversionWebhook> {
        let conv = &crd["spec"]["conversion"];
        if s(conv, "strategy") != "Webhook" {
            return None;
        }
        let review_version = review_version(&conv["webhook"]["conversionReviewVersions"])?;
        Some(ConversionWebhook { client_config: conv["webhook"]["clientConfig"].clone(), review_version })
    }
}

/// The first `ConversionReview` version of `versions` this server speaks.
fn review_version(versions: &Value) -> Option<&'static str> {
    versions.as_array().into_iter().flatten().find_map(|v| match v.as_str() {
        Some("v1") => Some("v1"),
        Some("v1beta1") => Some("v1beta1"),
        _ => None,
    })
}

/// One `additionalPrinterColumns` entry.
#[derive(Debug)]
pub struct PrinterColumn {
    /// The column definition.
    pub column: Column,
    /// Its JSONPath (`.spec.replicas`).
    pub json_path: String,
}

/// The `scale` subresource's paths (dotted, without the leading dot).
#[derive(Debug, Clone)]
pub struct ScalePaths {
    /// `specReplicasPath`.
    pub spec_replicas: String,
    /// `statusReplicasPath`.
    pub status_replicas: String,
    /// `labelSelectorPath`.
    pub label_selector: Option<String>,
}

/// Interned strings: names of served kinds live as long as the process (a CRD changed back
/// and forth reuses its strings).
fn intern(s: &str) -> &'static str {
    static STRINGS: LazyLock<Mutex<HashSet<&'static str>>> = LazyLock::new(|| Mutex::new(HashSet::new()));
    let mut set = STRINGS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(&found) = set.get(s) {
        return found;
    }
    let leaked: &'static str = Box::leak(s.to_string().into_boxed_str());
    set.insert(leaked);
    leaked
}

/// The round trip of custom objects: `metadata` through `ObjectMeta` (types checked,
/// unknown fields dropped); the rest is checked against the schema afterwards.
fn round_trip(mut v: Value) -> Result<Value, serde_json::Error> {
    if let Some(m) = v.get_mut("metadata") {
        let typed: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta =
            serde_json::from_value(m.take())?;
        *m = serde_json::to_value(typed)?;
    }
    Ok(v)
}

fn s<'a>(v: &'a Value, path: &str) -> &'a str {
    crate::meta::path(v, path).and_then(Value::as_str).unwrap_or("")
}

/// The served versions of a CRD as resources (none for a CRD that is not valid).
pub fn resources_of(crd: &Value) -> Vec<ResourceInfo> {
    let spec = &crd["spec"];
    let group = intern(s(spec, "group"));
    let names = &spec["names"];
    let kind = intern(s(names, "kind"));
    let plural = intern(s(names, "plural"));
    let singular = match s(names, "singular") {
        "" => intern(&kind.to_lowercase()),
        x => intern(x),
    };
    let list_kind = match s(names, "listKind") {
        "" => intern(&format!("{kind}List")),
        x => intern(x),
    };
    let strs = |v: &Value| -> &'static [&'static str] {
        let list: Vec<&'static str> =
            v.as_array().into_iter().flatten().filter_map(Value::as_str).map(intern).collect();
        Box::leak(list.into_boxed_slice())
    };
    let short_names = strs(&names["shortNames"]);
    let categories = strs(&names["categories"]);
    let scope = if s(spec, "scope") == "Cluster" { Scope::Cluster } else { Scope::Namespaced };
    let crd_name = intern(crate::meta::name(crd).unwrap_or(""));
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    let storage_version = versions
        .iter()
        .find(|v| v["storage"].as_bool() == Some(true))
        .map(|v| intern(s(v, "name")))
        .unwrap_or("");
    if group.is_empty() || kind.is_empty() || plural.is_empty() {
        return Vec::new();
    }
    let mut served: Vec<&Value> = versions.iter().filter(|v| v["served"].as_bool() != Some(false)).collect();
    served.sort_by_key(|v| version_priority(s(v, "name")));
    let conversion = ConversionWebhook::of(crd);
    let mut out = Vec::new();
    for v in served {
        let version = intern(s(v, "name"));
        let subres = &v["subresources"];
        let mut subs = Vec::new();
        if subres.get("status").is_some_and(Value::is_object) {
            subs.push(Subresource {
                name: "status",
                group,
                version,
                kind,
                verbs: &["get", "patch", "update"],
            });
        }
        let scale = subres.get("scale").filter(|s| s.is_object()).map(|sc| ScalePaths {
            spec_replicas: s(sc, "specReplicasPath").trim_start_matches('.').to_string(),
            status_replicas: s(sc, "statusReplicasPath").trim_start_matches('.').to_string(),
            label_selector: sc
                .get("labelSelectorPath")
                .and_then(Value::as_str)
                .map(|p| p.trim_start_matches('.').to_string()),
        });
        if scale.is_some() {
            subs.push(Subresource {
                name: "scale",
                group: "autoscaling",
                version: "v1",
                kind: "Scale",
                verbs: &["get", "patch", "update"],
            });
        }
        let columns = v["additionalPrinterColumns"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| PrinterColumn {
                column: Column {
                    name: intern(s(c, "name")),
                    type_: intern(s(c, "type")),
                    format: intern(s(c, "format")),
                    description: intern(s(c, "description")),
                    priority: c["priority"].as_i64().unwrap_or(0) as i32,
                },
                json_path: s(c, "jsonPath").to_string(),
            })
            .collect();
        let custom: &'static CustomResource = Box::leak(Box::new(CustomResource {
            crd: crd_name,
            storage_version,
            schema: v["schema"]["openAPIV3Schema"].clone(),
            columns,
            scale,
            conversion: conversion.clone(),
        }));
        out.push(ResourceInfo {
            group,
            version,
            kind,
            list_kind,
            plural,
            singular,
            short_names,
            categories,
            scope,
            verbs: ALL_VERBS,
            subresources: Box::leak(subs.into_boxed_slice()),
            stored: true,
            round_trip,
            custom: Some(custom),
        });
    }
    out
}

/// Upstream's version priority (`version.CompareKubeAwareVersionStrings`) as a sort key,
/// most preferred first: GA before beta before alpha, higher numbers first, then other
/// names alphabetically.
pub fn version_priority(v: &str) -> (u8, i64, i64, String) {
    let parse = || -> Option<(u8, i64, i64)> {
        let rest = v.strip_prefix('v')?;
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let major: i64 = rest[..digits].parse().ok()?;
        let tail = &rest[digits..];
        if tail.is_empty() {
            return Some((0, -major, 0));
        }
        let (rank, num) = if let Some(n) = tail.strip_prefix("beta") {
            (1, n)
        } else if let Some(n) = tail.strip_prefix("alpha") {
            (2, n)
        } else {
            return None;
        };
        let minor: i64 = num.parse().ok()?;
        Some((rank, -major, -minor))
    };
    match parse() {
        Some((rank, major, minor)) => (rank, major, minor, String::new()),
        None => (3, 0, 0, v.to_string()),
    }
}

/// What decides whether a CRD's served resources must be rebuilt: its spec.
pub fn fingerprint(crd: &Value) -> String {
    crd["spec"].to_string()
}

/// The CRD kind's defaulting (upstream's `SetDefaults_CustomResourceDefinition*`).
pub fn default_crd(obj: &mut Value) {
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else { return };
    if let Some(names) = spec.get_mut("names").and_then(Value::as_object_mut) {
        let kind = names.get("kind").and_then(Value::as_str).unwrap_or("").to_string();
        if names.get("singular").and_then(Value::as_str).is_none_or(str::is_empty) && !kind.is_empty() {
            names.insert("singular".into(), json!(kind.to_lowercase()));
        }
        if names.get("listKind").and_then(Value::as_str).is_none_or(str::is_empty) && !kind.is_empty() {
            names.insert("listKind".into(), json!(format!("{kind}List")));
        }
    }
    if spec.get("conversion").is_none_or(Value::is_null) {
        spec.insert("conversion".into(), json!({"strategy": "None"}));
    }
}

fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Validation of a CRD (upstream's `ValidateCustomResourceDefinition`, in part): names,
/// scope, versions with exactly one storage version, structural schemas, printer columns,
/// subresource paths.
pub fn validate_crd(obj: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    let spec = &obj["spec"];
    let group = s(spec, "group");
    let plural = s(spec, "names.plural");
    let name = crate::meta::name(obj).unwrap_or("");
    if group.is_empty() {
        out.push(Cause::required("spec.group"));
    } else if !group.contains('.') {
        out.push(Cause::invalid(
            "spec.group",
            format!("Invalid value: {group:?}: should be a domain with at least one dot"),
        ));
    }
    if plural.is_empty() {
        out.push(Cause::required("spec.names.plural"));
    } else if !dns_label(plural) {
        out.push(Cause::invalid(
            "spec.names.plural",
            format!("Invalid value: {plural:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"),
        ));
    }
    if !group.is_empty() && !plural.is_empty() && name != format!("{plural}.{group}") {
        out.push(Cause::invalid(
            "metadata.name",
            format!("Invalid value: {name:?}: must be spec.names.plural+\".\"+spec.group"),
        ));
    }
    let kind = s(spec, "names.kind");
    if kind.is_empty() {
        out.push(Cause::required("spec.names.kind"));
    }
    let singular = s(spec, "names.singular");
    if !singular.is_empty() && !dns_label(singular) {
        out.push(Cause::invalid("spec.names.singular", format!("Invalid value: {singular:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'")));
    }
    for (i, sn) in spec["names"]["shortNames"].as_array().into_iter().flatten().enumerate() {
        if !sn.as_str().is_some_and(dns_label) {
            out.push(Cause::invalid(
                format!("spec.names.shortNames[{i}]"),
                format!("Invalid value: {sn}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'"),
            ));
        }
    }
    match s(spec, "scope") {
        "Namespaced" | "Cluster" => {}
        "" => out.push(Cause::required("spec.scope")),
        other => out.push(Cause::not_supported(
            "spec.scope",
            format!("Unsupported value: {other:?}: supported values: \"Cluster\", \"Namespaced\""),
        )),
    }
    validate_conversion(&spec["conversion"], &mut out);
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    if versions.is_empty() {
        out.push(Cause::invalid(
            "spec.versions",
            "Invalid value: \"null\": must have exactly one version marked as storage version",
        ));
    } else {
        let storage = versions.iter().filter(|v| v["storage"].as_bool() == Some(true)).count();
        if storage != 1 {
            out.push(Cause::invalid(
                "spec.versions",
                format!(
                    "Invalid value: {}: must have exactly one version marked as storage version",
                    Value::Array(versions.clone())
                ),
            ));
        }
        if !versions.iter().any(|v| v["served"].as_bool() == Some(true)) {
            out.push(Cause::invalid(
                "spec.versions",
                "Invalid value: ...: must have at least one version marked as served",
            ));
        }
    }
    let mut seen = Vec::new();
    for (i, v) in versions.iter().enumerate() {
        let at = format!("spec.versions[{i}]");
        let vn = s(v, "name");
        if vn.is_empty() {
            out.push(Cause::required(format!("{at}.name")));
        } else if !dns_label(vn) {
            out.push(Cause::invalid(format!("{at}.name"), format!("Invalid value: {vn:?}: a DNS-1035 label must consist of lower case alphanumeric characters or '-'")));
        } else if seen.contains(&vn) {
            out.push(Cause {
                reason: "FieldValueDuplicate",
                field: format!("{at}.name"),
                message: format!("Duplicate value: {vn:?}"),
            });
        }
        seen.push(vn);
        match v.get("schema").and_then(|sc| sc.get("openAPIV3Schema")).filter(|x| !x.is_null()) {
            None => out.push(Cause {
                reason: "FieldValueRequired",
                field: format!("{at}.schema.openAPIV3Schema"),
                message: "Required value: schemas are required".into(),
            }),
            Some(sc) => schema::check_structural(sc, &format!("{at}.schema.openAPIV3Schema"), &mut out),
        }
        for (j, c) in v["additionalPrinterColumns"].as_array().into_iter().flatten().enumerate() {
            let cat = format!("{at}.additionalPrinterColumns[{j}]");
            if s(c, "name").is_empty() {
                out.push(Cause::required(format!("{cat}.name")));
            }
            match s(c, "type") {
                "integer" | "number" | "string" | "boolean" | "date" => {}
                "" => out.push(Cause::required(format!("{cat}.type"))),
                t => out.push(Cause::not_supported(
                    format!("{cat}.type"),
                    format!("Unsupported value: {t:?}: supported values: \"boolean\", \"date\", \"integer\", \"number\", \"string\""),
                )),
            }
            if s(c, "jsonPath").is_empty() {
                out.push(Cause::required(format!("{cat}.jsonPath")));
            }
        }
        if let Some(sc) = v["subresources"].get("scale").filter(|x| x.is_object()) {
            let sat = format!("{at}.subresources.scale");
            if !s(sc, "specReplicasPath").starts_with(".spec.") {
                out.push(Cause::invalid(
                    format!("{sat}.specReplicasPath"),
                    format!(
                        "Invalid value: {:?}: should be a json path under .spec",
                        s(sc, "specReplicasPath")
                    ),
                ));
            }
            if !s(sc, "statusReplicasPath").starts_with(".status.") {
                out.push(Cause::invalid(
                    format!("{sat}.statusReplicasPath"),
                    format!(
                        "Invalid value: {:?}: should be a json path under .status",
                        s(sc, "statusReplicasPath")
                    ),
                ));
            }
        }
    }
    out
}

/// `spec.conversion` (upstream's `validateCustomResourceConversion`): a `Webhook` strategy
/// needs `webhook.clientConfig` (an `https` URL or a Service, as admission webhooks) and a
/// `conversionReviewVersions` list naming `v1` or `v1beta1`; `None` takes no webhook.
fn validate_conversion(conv: &Value, out: &mut Vec<Cause>) {
    let webhook = conv.get("webhook").filter(|w| !w.is_null());
    match s(conv, "strategy") {
        "" | "None" => {
            if webhook.is_some() {
                out.push(Cause::forbidden(
                    "spec.conversion.webhook",
                    "Forbidden: should not be set when strategy is not set to Webhook",
                ));
            }
        }
        "Webhook" => {
            let Some(w) = webhook else {
                out.push(Cause {
                    reason: "FieldValueRequired",
                    field: "spec.conversion.webhook".into(),
                    message: "Required value: required when strategy is set to Webhook".into(),
                });
                return;
            };
            let mut errs = crate::validation::errs::Errs(Vec::new());
            let cc = w.get("clientConfig").filter(|c| !c.is_null());
            if cc.is_none() {
                errs.required(
                    "spec.conversion.webhook.clientConfig",
                    "required when strategy is set to Webhook",
                );
            } else {
                crate::validation::admission::client_config(&mut errs, cc, "spec.conversion.webhook");
                // Conversion webhooks are HTTPS only (the bus form is for admission).
                if let Some(u) = cc.and_then(|c| c["url"].as_str()).filter(|u| u.starts_with("bus:")) {
                    errs.invalid_str(
                        "spec.conversion.webhook.clientConfig.url",
                        u,
                        "'https' is the only allowed URL scheme",
                    );
                }
            }
            let versions = &w["conversionReviewVersions"];
            let field = "spec.conversion.webhook.conversionReviewVersions";
            if versions.as_array().is_none_or(Vec::is_empty) {
                errs.required(field, "must include at least one of v1, v1beta1");
            } else if review_version(versions).is_none() {
                errs.invalid(
                    field,
                    &crate::validation::errs::go_strings(Some(versions)),
                    "must include at least one of v1, v1beta1",
                );
            }
            out.extend(errs.0);
        }
        other => out.push(Cause::not_supported(
            "spec.conversion.strategy",
            format!("Unsupported value: {other:?}: supported values: \"None\", \"Webhook\""),
        )),
    }
}

/// Validation of a CRD update: `spec.group`, `spec.names.plural` and `spec.scope` stay.
pub fn validate_crd_update(old: &Value, new: &Value) -> Vec<Cause> {
    let mut out = validate_crd(new);
    for f in ["group", "scope"] {
        if old["spec"][f] != new["spec"][f] {
            out.push(Cause::invalid(
                format!("spec.{f}"),
                format!("Invalid value: {}: field is immutable", new["spec"][f]),
            ));
        }
    }
    out
}

/// Whether the names of `crd` clash with another CRD of the same group or a built-in kind:
/// `None` when accepted, else the condition's reason and message (as upstream's naming
/// controller: `"crontabs" is already in use`).
pub fn name_conflicts(crd: &Value, others: &[Value]) -> Option<(&'static str, String)> {
    let spec = &crd["spec"];
    let group = s(spec, "group");
    let n = &spec["names"];
    let plural = s(n, "plural");
    let singular = match s(n, "singular") {
        "" => s(n, "kind").to_lowercase(),
        x => x.to_string(),
    };
    let kind = s(n, "kind");
    let list_kind = match s(n, "listKind") {
        "" => format!("{kind}List"),
        x => x.to_string(),
    };
    let shorts: Vec<&str> =
        n["shortNames"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let mut used_resources: Vec<String> = Vec::new();
    let mut used_kinds: Vec<String> = Vec::new();
    for r in registry::RESOURCES.iter().filter(|r| r.group == group) {
        used_resources.push(r.plural.into());
        used_resources.push(r.singular.into());
        used_resources.extend(r.short_names.iter().map(|x| x.to_string()));
        used_kinds.push(r.kind.into());
        used_kinds.push(r.list_kind.into());
    }
    for o in others {
        let os = &o["spec"];
        if s(os, "group") != group || crate::meta::name(o) == crate::meta::name(crd) {
            continue;
        }
        // Only names another CRD has had accepted count (upstream: status.acceptedNames).
        let an = &o["status"]["acceptedNames"];
        if s(an, "plural").is_empty() {
            continue;
        }
        used_resources.push(s(an, "plural").into());
        used_resources.push(s(an, "singular").into());
        used_resources.extend(
            an["shortNames"].as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_string),
        );
        used_kinds.push(s(an, "kind").into());
        used_kinds.push(s(an, "listKind").into());
    }
    let used = |x: &str, list: &[String]| !x.is_empty() && list.iter().any(|u| u == x);
    if used(plural, &used_resources) {
        return Some(("PluralConflict", format!("{plural:?} is already in use")));
    }
    if used(&singular, &used_resources) {
        return Some(("SingularConflict", format!("{singular:?} is already in use")));
    }
    for sn in shorts {
        if used(sn, &used_resources) {
            return Some(("ShortNamesConflict", format!("{sn:?} is already in use")));
        }
    }
    if used(kind, &used_kinds) {
        return Some(("KindConflict", format!("{kind:?} is already in use")));
    }
    if used(&list_kind, &used_kinds) {
        return Some(("ListKindConflict", format!("{list_kind:?} is already in use")));
    }
    None
}

/// `status.acceptedNames` for an accepted CRD.
pub fn accepted_names(crd: &Value) -> Value {
    let mut n = crd["spec"]["names"].clone();
    let kind = s(&n, "kind").to_string();
    if s(&n, "singular").is_empty() {
        n["singular"] = json!(kind.to_lowercase());
    }
    if s(&n, "listKind").is_empty() {
        n["listKind"] = json!(format!("{kind}List"));
    }
    n
}

/// Evaluates the simple JSONPaths printer columns use: `.a.b`, `.a[0].b`, `.a['b.c']`.
/// A path that selects several values (`[*]`) yields them all.
pub fn json_path<'a>(obj: &'a Value, path: &str) -> Vec<&'a Value> {
    let path = path.trim().trim_start_matches('{').trim_end_matches('}').trim();
    let mut cur: Vec<&Value> = vec![obj];
    let mut rest = path.strip_prefix('$').unwrap_or(path);
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let key = &r[..end];
            rest = &r[end..];
            if key.is_empty() {
                continue;
            }
            cur = cur.into_iter().filter_map(|v| v.get(key)).collect();
        } else if let Some(r) = rest.strip_prefix('[') {
            let Some(end) = r.find(']') else { return Vec::new() };
            let inner = &r[..end];
            rest = &r[end + 1..];
            if inner == "*" {
                cur = cur
                    .into_iter()
                    .flat_map(|v| match v {
                        Value::Array(a) => a.iter().collect::<Vec<_>>(),
                        Value::Object(m) => m.values().collect(),
                        _ => Vec::new(),
                    })
                    .collect();
            } else if let Ok(i) = inner.parse::<i64>() {
                cur = cur
                    .into_iter()
                    .filter_map(|v| {
                        let a = v.as_array()?;
                        let idx = if i < 0 { a.len() as i64 + i } else { i };
                        a.get(usize::try_from(idx).ok()?)
                    })
                    .collect();
            } else {
                let key = inner.trim_matches(|c| c == '\'' || c == '"');
                cur = cur.into_iter().filter_map(|v| v.get(key)).collect();
            }
        } else {
            return Vec::new();
        }
    }
    cur
}

/// The cells of the printer columns of `res` for `obj` (after the name), as upstream's
/// table convertor: dates as ages, several values joined with commas, nothing as null.
pub fn cells(custom: &CustomResource, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
    custom
        .columns
        .iter()
        .map(|c| {
            let found = json_path(obj, &c.json_path);
            match found.as_slice() {
                [] => Value::Null,
                [one] if c.column.type_ == "date" => {
                    match one.as_str().and_then(|t| t.parse::<jiff::Timestamp>().ok()) {
                        Some(t) => json!(crate::table::human_duration((now - t).get_seconds())),
                        None => Value::Null,
                    }
                }
                [one] => match (c.column.type_, one) {
                    ("string", Value::String(_))
                    | ("integer" | "number", Value::Number(_))
                    | ("boolean", Value::Bool(_)) => (*one).clone(),
                    ("string", other) => json!(other.to_string()),
                    (_, other) => (*other).clone(),
                },
                many => json!(many
                    .iter()
                    .map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()))
                    .collect::<Vec<_>>()
                    .join(",")),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn crontab_crd() -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "crontabs.stable.example.com"},
            "spec": {
                "group": "stable.example.com",
                "scope": "Namespaced",
                "names": {"plural": "crontabs", "singular": "crontab", "kind": "CronTab", "shortNames": ["ct"]},
                "versions": [{
                    "name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                        "spec": {"type": "object", "properties": {
                            "cronSpec": {"type": "string"},
                            "replicas": {"type": "integer", "default": 1}}},
                        "status": {"type": "object", "properties": {"replicas": {"type": "integer"}}}}}},
                    "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}},
                    "additionalPrinterColumns": [
                        {"name": "Spec", "type": "string", "jsonPath": ".spec.cronSpec"},
                        {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}],
                }],
            },
        })
    }

    #[test]
    fn a_crd_becomes_resources() {
        let crd = crontab_crd();
        assert!(validate_crd(&crd).is_empty(), "{:?}", validate_crd(&crd));
        let rs = resources_of(&crd);
        assert_eq!(rs.len(), 1);
        let r = &rs[0];
        assert_eq!(
            (r.group, r.version, r.kind, r.plural, r.list_kind),
            ("stable.example.com", "v1", "CronTab", "crontabs", "CronTabList")
        );
        assert_eq!(r.short_names, &["ct"]);
        assert!(r.has_status());
        assert!(r.subresource("scale").is_some());
        let c = r.custom.unwrap();
        assert_eq!(c.storage_version, "v1");
        assert_eq!(c.scale.as_ref().unwrap().spec_replicas, "spec.replicas");
        let now: jiff::Timestamp = "2024-01-01T00:10:00Z".parse().unwrap();
        let obj = json!({"metadata": {"creationTimestamp": "2024-01-01T00:00:00Z"}, "spec": {"cronSpec": "* * * * */5", "replicas": 2}});
        assert_eq!(cells(c, &obj, now), vec![json!("* * * * */5"), json!(2), json!("10m")]);
    }

    #[test]
    fn invalid_crds_name_their_fields() {
        let mut crd = crontab_crd();
        crd["metadata"]["name"] = json!("wrong");
        crd["spec"]["versions"][0]["storage"] = json!(false);
        crd["spec"]["versions"][0]["schema"] = json!(null);
        let fields: Vec<String> = validate_crd(&crd).into_iter().map(|c| c.field).collect();
        assert_eq!(fields, vec!["metadata.name", "spec.versions", "spec.versions[0].schema.openAPIV3Schema"]);
    }

    #[test]
    fn conversion_webhooks_are_validated_as_upstream() {
        let mut crd = crontab_crd();
        crd["spec"]["conversion"] = json!({"strategy": "Webhook", "webhook": {
            "clientConfig": {"url": "https://conv.example.com/convert", "caBundle": "Cg=="},
            "conversionReviewVersions": ["v2", "v1"]}});
        assert!(validate_crd(&crd).is_empty(), "{:?}", validate_crd(&crd));
        let rs = resources_of(&crd);
        let hook = rs[0].custom.unwrap().conversion.as_ref().expect("a webhook");
        assert_eq!(hook.review_version, "v1");
        assert_eq!(hook.client_config["url"], "https://conv.example.com/convert");
        let causes = |crd: &Value| -> Vec<String> {
            validate_crd(crd).into_iter().map(|c| format!("{}: {}", c.field, c.message)).collect()
        };
        crd["spec"]["conversion"]["webhook"] =
            json!({"clientConfig": {"url": "http://x/"}, "conversionReviewVersions": ["v2"]});
        assert_eq!(
            causes(&crd),
            [
                "spec.conversion.webhook.clientConfig.url: Invalid value: \"http://x/\": 'https' is the only allowed URL scheme",
                "spec.conversion.webhook.conversionReviewVersions: Invalid value: []string{\"v2\"}: must include at least one of v1, v1beta1",
            ]
        );
        crd["spec"]["conversion"] = json!({"strategy": "Webhook"});
        assert_eq!(
            causes(&crd),
            ["spec.conversion.webhook: Required value: required when strategy is set to Webhook"]
        );
        crd["spec"]["conversion"] =
            json!({"strategy": "None", "webhook": {"conversionReviewVersions": ["v1"]}});
        assert_eq!(
            causes(&crd),
            ["spec.conversion.webhook: Forbidden: should not be set when strategy is not set to Webhook"]
        );
        crd["spec"]["conversion"] = json!({"strategy": "None"});
        assert!(resources_of(&crd)[0].custom.unwrap().conversion.is_none());
    }

    #[test]
    fn names_conflict_with_accepted_names_of_other_crds() {
        let crd = crontab_crd();
        let mut other = crontab_crd();
        other["metadata"]["name"] = json!("crontabs2.stable.example.com");
        assert!(name_conflicts(&crd, std::slice::from_ref(&other)).is_none(), "not yet accepted");
        other["status"]["acceptedNames"] = accepted_names(&crontab_crd());
        let (reason, msg) = name_conflicts(&crd, &[other]).unwrap();
        assert_eq!(reason, "PluralConflict");
        assert_eq!(msg, "\"crontabs\" is already in use");
    }

    #[test]
    fn versions_sort_as_upstream() {
        let mut v = vec!["v1alpha1", "foo", "v1beta1", "v2", "v1", "v2beta1", "v10"];
        v.sort_by_key(|x| version_priority(x));
        assert_eq!(v, ["v10", "v2", "v1", "v2beta1", "v1beta1", "v1alpha1", "foo"]);
    }

    #[test]
    fn json_paths() {
        let v = json!({"a": {"b": [{"c": 1}, {"c": 2}], "d.e": "x"}});
        assert_eq!(json_path(&v, ".a.b[1].c"), vec![&json!(2)]);
        assert_eq!(json_path(&v, ".a.b[*].c"), vec![&json!(1), &json!(2)]);
        assert_eq!(json_path(&v, ".a['d.e']"), vec![&json!("x")]);
        assert!(json_path(&v, ".a.zz").is_empty());
    }
}
