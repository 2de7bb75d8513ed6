//! `paths` of one group-version document: the operations each served resource supports.

use serde_json::{json, Map, Value};

use super::schemas::{gvk_object, Components, Gvk, DELETE_OPTIONS, PATCH, REF_PREFIX, STATUS};
use crate::registry::ResourceInfo;

/// What an operation is about: the kind it answers with and how to name it.
struct Target<'a> {
    /// GVK the operation answers with (`autoscaling/v1 Scale` for `deployments/scale`).
    gvk: Gvk,
    /// `components.schemas` key of that kind, if it has a schema.
    schema: Option<&'a str>,
    /// Suffix of the operation ids, e.g. `CoreV1NamespacedPodStatus`.
    id: String,
    /// Tag, e.g. `core_v1`.
    tag: &'a str,
}

/// `RbacAuthorization` for `rbac.authorization.k8s.io`, `Core` for the core group.
fn group_camel(group: &str) -> String {
    if group.is_empty() {
        return "Core".to_string();
    }
    let trimmed = group.strip_suffix(".k8s.io").unwrap_or(group);
    trimmed.split('.').map(upper_first).collect()
}

fn upper_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn lower_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// A query parameter.
fn query(name: &str, ty: &str, description: &str) -> Value {
    json!({
        "name": name,
        "in": "query",
        "description": description,
        "schema": {"type": ty, "uniqueItems": true},
    })
}

/// A required path parameter.
fn path_param(name: &str, description: &str) -> Value {
    json!({
        "name": name,
        "in": "path",
        "description": description,
        "required": true,
        "schema": {"type": "string", "uniqueItems": true},
    })
}

fn pretty() -> Value {
    query(
        "pretty",
        "string",
        "If 'true', then the output is pretty printed. Defaults to 'false' unless the user-agent indicates a browser or command-line HTTP tool (curl and wget).",
    )
}

fn dry_run() -> Value {
    query(
        "dryRun",
        "string",
        "When present, indicates that modifications should not be persisted. An invalid or unrecognized dryRun directive will result in an error response and no further processing of the request. Valid values are: - All: all dry run stages will be processed",
    )
}

fn field_manager() -> Value {
    query(
        "fieldManager",
        "string",
        "fieldManager is a name associated with the actor or entity that is making these changes. The value must be less than or 128 characters long, and only contain printable characters, as defined by https://golang.org/pkg/unicode/#IsPrint. This field is required for apply requests (application/apply-patch) but optional for non-apply patch types (JsonPatch, MergePatch).",
    )
}

fn field_validation() -> Value {
    query(
        "fieldValidation",
        "string",
        "fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) containing unknown or duplicate fields. Valid values are: - Ignore: This will ignore any unknown fields that are silently dropped from the object, and will ignore all but the last duplicate field that the decoder encounters. - Warn: This will send a warning via the standard warning response header for each unknown field that is dropped from the object, and for each duplicate field that is encountered. The request will still succeed if there are no other errors, and will only persist the last of any duplicate fields. - Strict: This will fail the request with a BadRequest error if any unknown fields would be dropped from the object, or if any duplicate fields are present. The error returned from the server will contain all unknown and duplicate fields encountered.",
    )
}

fn force() -> Value {
    query(
        "force",
        "boolean",
        "Force is going to \"force\" Apply requests. It means user will re-acquire conflicting fields owned by other people. Force flag must be unset for non-apply patch requests.",
    )
}

/// Parameters of every write (POST, PUT, PATCH).
fn write_params() -> Vec<Value> {
    vec![dry_run(), field_manager(), field_validation()]
}

/// Parameters that select objects of a collection (list, watch, deletecollection).
fn selection_params() -> Vec<Value> {
    vec![
        query(
            "continue",
            "string",
            "The continue option should be set when retrieving more results from the server. Since this value is server defined, clients may only use the continue value from a previous query result with identical query parameters (except for the value of continue).",
        ),
        query(
            "fieldSelector",
            "string",
            "A selector to restrict the list of returned objects by their fields. Defaults to everything.",
        ),
        query(
            "labelSelector",
            "string",
            "A selector to restrict the list of returned objects by their labels. Defaults to everything.",
        ),
        query(
            "limit",
            "integer",
            "limit is a maximum number of responses to return for a list call. If more items exist, the server will set the `continue` field on the list metadata to a value that can be used with the same initial query to retrieve the next set of results.",
        ),
        query(
            "resourceVersion",
            "string",
            "resourceVersion sets a constraint on what resource versions a request may be served from. See https://kubernetes.io/docs/reference/using-api/api-concepts/#resource-versions for details. Defaults to unset",
        ),
        query(
            "resourceVersionMatch",
            "string",
            "resourceVersionMatch determines how resourceVersion is applied to list calls. See https://kubernetes.io/docs/reference/using-api/api-concepts/#resource-versions for details. Defaults to unset",
        ),
        query(
            "sendInitialEvents",
            "boolean",
            "`sendInitialEvents=true` may be set together with `watch=true`. In that case, the watch stream will begin with synthetic events to produce the current state of objects in the collection.",
        ),
        query(
            "timeoutSeconds",
            "integer",
            "Timeout for the list/watch call. This limits the duration of the call, regardless of any activity or inactivity.",
        ),
    ]
}

/// Parameters of a delete (single object or collection).
fn delete_params() -> Vec<Value> {
    vec![
        dry_run(),
        query(
            "gracePeriodSeconds",
            "integer",
            "The duration in seconds before the object should be deleted. Value must be non-negative integer. The value zero indicates delete immediately. If this value is nil, the default grace period for the specified type will be used. Defaults to a per object value if not specified. zero means delete immediately.",
        ),
        query(
            "ignoreStoreReadErrorWithClusterBreakingPotential",
            "boolean",
            "if set to true, it will trigger an unsafe deletion of the resource in case the normal deletion flow fails with a corrupt object error.",
        ),
        query(
            "orphanDependents",
            "boolean",
            "Deprecated: please use the PropagationPolicy, this field will be deprecated in 1.7. Should the dependent objects be orphaned. If true/false, the \"orphan\" finalizer will be added to/removed from the object's finalizers list. Either this field or PropagationPolicy may be set, but not both.",
        ),
        query(
            "propagationPolicy",
            "string",
            "Whether and how garbage collection will be performed. Either this field or OrphanDependents may be set, but not both. Acceptable values are: 'Orphan' - orphan the dependents; 'Background' - allow the garbage collector to delete the dependents in the background; 'Foreground' - a cascading policy that deletes all dependents in the foreground.",
        ),
    ]
}

/// `{"$ref": "#/components/schemas/<name>"}`.
fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("{REF_PREFIX}{name}")})
}

/// Responses: each of `codes` answers with `schema` (when known), plus a 401.
fn responses(codes: &[(&str, &str)], schema: Option<&str>) -> Value {
    let mut out = Map::new();
    for (code, description) in codes {
        let mut response = json!({"description": description});
        if let (Some(name), Value::Object(obj)) = (schema, &mut response) {
            obj.insert("content".to_string(), json!({"application/json": {"schema": schema_ref(name)}}));
        }
        out.insert((*code).to_string(), response);
    }
    out.insert("401".to_string(), json!({"description": "Unauthorized"}));
    Value::Object(out)
}

/// A JSON request body of kind `schema` (or any object when unknown).
fn json_body(schema: Option<&str>, required: bool) -> Value {
    let schema = schema.map_or_else(|| json!({"type": "object"}), schema_ref);
    json!({"content": {"application/json": {"schema": schema}}, "required": required})
}

/// The PATCH request body. Strategic merge patch is deliberately not listed: advertising it
/// makes kubectl compute patches from these schemas, which lack the patch-merge-key
/// extensions; without it kubectl falls back to its compiled-in types.
fn patch_body() -> Value {
    let schema = schema_ref(PATCH);
    json!({
        "content": {
            "application/json-patch+json": {"schema": schema},
            "application/merge-patch+json": {"schema": schema},
            "application/apply-patch+yaml": {"schema": schema},
        },
        "required": true,
    })
}

/// One operation.
fn operation(
    t: &Target<'_>,
    action: &str,
    id_verb: &str,
    description: String,
    parameters: Vec<Value>,
    request_body: Option<Value>,
    responses: Value,
) -> Value {
    let mut op = Map::new();
    op.insert("operationId".to_string(), Value::String(format!("{id_verb}{}", t.id)));
    op.insert("description".to_string(), Value::String(description));
    op.insert("tags".to_string(), json!([t.tag]));
    if !parameters.is_empty() {
        op.insert("parameters".to_string(), Value::Array(parameters));
    }
    if let Some(body) = request_body {
        op.insert("requestBody".to_string(), body);
    }
    op.insert("responses".to_string(), responses);
    op.insert("x-kubernetes-action".to_string(), Value::String(action.to_string()));
    op.insert("x-kubernetes-group-version-kind".to_string(), gvk_object(t.gvk.0, t.gvk.1, t.gvk.2));
    Value::Object(op)
}

/// Adds `method` to the path item at `path`, creating it with `path_params` if needed.
fn add(paths: &mut Map<String, Value>, path: &str, path_params: &[Value], method: &str, op: Value) {
    let item = paths.entry(path.to_string()).or_insert_with(|| {
        let mut params = path_params.to_vec();
        params.push(pretty());
        json!({"parameters": params})
    });
    if let Value::Object(obj) = item {
        obj.insert(method.to_string(), op);
    }
}

/// Builds the `paths` of one group-version document.
pub(crate) fn paths(
    group: &str,
    version: &str,
    resources: &[&ResourceInfo],
    comps: &Components,
) -> Map<String, Value> {
    let prefix =
        if group.is_empty() { format!("/api/{version}") } else { format!("/apis/{group}/{version}") };
    let gv_id = format!("{}{}", group_camel(group), upper_first(version));
    let tag = format!("{}_{version}", lower_first(&group_camel(group)));

    let mut paths = Map::new();
    for r in resources {
        resource_paths(&mut paths, r, &prefix, &gv_id, &tag, comps);
    }
    paths
}

/// Adds the paths of one resource and its `status`/`scale` subresources.
fn resource_paths(
    paths: &mut Map<String, Value>,
    r: &ResourceInfo,
    prefix: &str,
    gv_id: &str,
    tag: &str,
    comps: &Components,
) {
    let gvk: Gvk = (r.group, r.version, r.kind);
    let kind = r.kind;
    let namespaced = r.namespaced();
    let scope_id = if namespaced { "Namespaced" } else { "" };
    let ns_param = path_param("namespace", "object name and auth scope, such as for teams and projects");
    let name_param = path_param("name", &format!("name of the {kind}"));

    let (collection, collection_params) = if namespaced {
        (format!("{prefix}/namespaces/{{namespace}}/{}", r.plural), vec![ns_param])
    } else {
        (format!("{prefix}/{}", r.plural), Vec::new())
    };
    let item = format!("{collection}/{{name}}");
    let mut item_params = vec![name_param];
    item_params.extend(collection_params.iter().cloned());

    let main = Target { gvk, schema: comps.kind(gvk), id: format!("{gv_id}{scope_id}{kind}"), tag };

    if r.has_verb("create") {
        let op = operation(
            &main,
            "post",
            "create",
            format!("create a {kind}"),
            write_params(),
            Some(json_body(main.schema, true)),
            responses(&[("200", "OK"), ("201", "Created"), ("202", "Accepted")], main.schema),
        );
        add(paths, &collection, &collection_params, "post", op);
    }
    // The review kinds only answer a create on the collection.
    if !r.stored {
        return;
    }

    let list_schema = comps.list(gvk);
    if r.has_verb("list") || r.has_verb("watch") {
        let mut params = selection_params();
        params.insert(
            0,
            query(
                "allowWatchBookmarks",
                "boolean",
                "allowWatchBookmarks requests watch events with type \"BOOKMARK\". Servers that do not implement bookmarks may ignore this flag and bookmarks are sent at the server's discretion.",
            ),
        );
        params.push(query(
            "watch",
            "boolean",
            "Watch for changes to the described resources and return them as a stream of add, update, and remove notifications. Specify resourceVersion.",
        ));
        let list_op = |t: &Target<'_>| {
            operation(
                t,
                "list",
                "list",
                format!("list or watch objects of kind {kind}"),
                params.clone(),
                None,
                responses(&[("200", "OK")], list_schema),
            )
        };
        add(paths, &collection, &collection_params, "get", list_op(&main));
        if namespaced {
            let all = Target { gvk, schema: main.schema, id: format!("{gv_id}{kind}ForAllNamespaces"), tag };
            add(paths, &format!("{prefix}/{}", r.plural), &[], "get", list_op(&all));
        }
    }
    if r.has_verb("deletecollection") {
        let mut params = delete_params();
        params.extend(selection_params());
        params.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        let op = operation(
            &main,
            "deletecollection",
            "deleteCollection",
            format!("delete collection of {kind}"),
            params,
            Some(json_body(Some(DELETE_OPTIONS), false)),
            responses(&[("200", "OK")], Some(STATUS)),
        );
        let op = rename_id(op, &format!("delete{gv_id}Collection{scope_id}{kind}"));
        add(paths, &collection, &collection_params, "delete", op);
    }

    let has_main = |v: &str| r.has_verb(v);
    let at = ObjectPath { path: &item, params: &item_params, kind, what: "", has: &has_main };
    object_ops(paths, &main, &at);

    for sub in r.subresources.iter().filter(|s| matches!(s.name, "status" | "scale")) {
        let sub_gvk: Gvk = (sub.group, sub.version, sub.kind);
        let target = Target {
            gvk: sub_gvk,
            schema: comps.kind(sub_gvk),
            id: format!("{gv_id}{scope_id}{kind}{}", upper_first(sub.name)),
            tag,
        };
        let path = format!("{item}/{}", sub.name);
        let what = format!("{} of ", sub.name);
        let has_sub = |v: &str| sub.verbs.contains(&v);
        let at = ObjectPath { path: &path, params: &item_params, kind, what: &what, has: &has_sub };
        object_ops(paths, &target, &at);
    }

    if r.has_verb("delete") {
        let op = operation(
            &main,
            "delete",
            "delete",
            format!("delete a {kind}"),
            delete_params(),
            Some(json_body(Some(DELETE_OPTIONS), false)),
            responses(&[("200", "OK"), ("202", "Accepted")], Some(STATUS)),
        );
        add(paths, &item, &item_params, "delete", op);
    }
}

/// Replaces an operation's `operationId`.
fn rename_id(mut op: Value, id: &str) -> Value {
    if let Value::Object(obj) = &mut op {
        obj.insert("operationId".to_string(), Value::String(id.to_string()));
    }
    op
}

/// Where object operations (GET, PUT, PATCH) go and which of them exist.
struct ObjectPath<'a> {
    /// The path, e.g. `/api/v1/namespaces/{namespace}/pods/{name}/status`.
    path: &'a str,
    /// Its path parameters.
    params: &'a [Value],
    /// Kind of the parent resource, for descriptions.
    kind: &'a str,
    /// `"status of "` for a subresource, `""` otherwise.
    what: &'a str,
    /// Whether a verb is supported.
    has: &'a dyn Fn(&str) -> bool,
}

/// GET, PUT and PATCH on an object (or subresource) path, per the verbs.
fn object_ops(paths: &mut Map<String, Value>, t: &Target<'_>, at: &ObjectPath<'_>) {
    let (kind, what) = (at.kind, at.what);
    if (at.has)("get") {
        let op = operation(
            t,
            "get",
            "read",
            format!("read {what}the specified {kind}"),
            Vec::new(),
            None,
            responses(&[("200", "OK")], t.schema),
        );
        add(paths, at.path, at.params, "get", op);
    }
    if (at.has)("update") {
        let op = operation(
            t,
            "put",
            "replace",
            format!("replace {what}the specified {kind}"),
            write_params(),
            Some(json_body(t.schema, true)),
            responses(&[("200", "OK"), ("201", "Created")], t.schema),
        );
        add(paths, at.path, at.params, "put", op);
    }
    if (at.has)("patch") {
        let mut params = write_params();
        params.push(force());
        let op = operation(
            t,
            "patch",
            "patch",
            format!("partially update {what}the specified {kind}"),
            params,
            Some(patch_body()),
            responses(&[("200", "OK"), ("201", "Created")], t.schema),
        );
        add(paths, at.path, at.params, "patch", op);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_id_parts() {
        assert_eq!(group_camel(""), "Core");
        assert_eq!(group_camel("apps"), "Apps");
        assert_eq!(group_camel("rbac.authorization.k8s.io"), "RbacAuthorization");
        assert_eq!(lower_first(&group_camel("rbac.authorization.k8s.io")), "rbacAuthorization");
    }
}
