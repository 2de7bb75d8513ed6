//! `/openapi/v2`: one Swagger 2.0 document for everything served, derived from the OpenAPI v3
//! documents (their `components.schemas` become `definitions`, their operations v2
//! operations), in JSON and in gnostic's protobuf form
//! (`application/com.github.proto-openapi.spec.v2@v1.0+protobuf`, the `openapi.v2.Document`
//! message of google/gnostic's `OpenAPIv2.proto`), which is what client-go's
//! `OpenAPISchema()` asks for (`kubectl explain --output=plaintext-openapiv2`, older
//! kubectl's validation and apply, Helm 3's validation).
//!
//! Schemas are narrowed to what kube-openapi's v2 model parser accepts: a `$ref` stands
//! alone (with its description), arrays have one item schema, `anyOf`/`oneOf`/`not` and
//! multi-member `allOf` are dropped (arbitrary values), `nullable` is dropped. As in the v3
//! documents, PATCH does not list strategic merge patch, so kubectl keeps using its
//! compiled-in patch metadata.

use serde_json::{json, Map, Value};

/// The protobuf media type of the v2 document.
pub const PROTOBUF_MEDIA_TYPE: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";

const V3_REF: &str = "#/components/schemas/";
const V2_REF: &str = "#/definitions/";
const PRIMITIVES: &[&str] = &["string", "integer", "number", "boolean"];
const METHODS: &[&str] = &["get", "put", "post", "delete", "options", "head", "patch"];

/// Builds the Swagger 2.0 document from the v3 documents given (as parsed JSON).
pub fn build(v3_docs: &[Value], version: &str) -> Value {
    let mut definitions = Map::new();
    let mut paths = Map::new();
    for doc in v3_docs {
        for (name, schema) in doc["components"]["schemas"].as_object().into_iter().flatten() {
            definitions.entry(name.clone()).or_insert_with(|| schema_v2(schema));
        }
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            paths.entry(path.clone()).or_insert_with(|| path_item(item));
        }
    }
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": version},
        "paths": paths,
        "definitions": definitions,
        "securityDefinitions": {"BearerToken": {"type": "apiKey", "name": "authorization", "in": "header",
            "description": "Bearer Token authentication"}},
        "security": [{"BearerToken": []}],
    })
}

/// A v3 schema as a v2 schema kube-openapi's parser accepts.
fn schema_v2(s: &Value) -> Value {
    let Some(o) = s.as_object() else { return json!({}) };
    let mut out = Map::new();
    // A lone reference (v3 wraps a reference with a description in a one-member allOf).
    let reference = o.get("$ref").and_then(Value::as_str).map(str::to_string).or_else(|| {
        match o.get("allOf").and_then(Value::as_array).map(Vec::as_slice) {
            Some([one]) => one.get("$ref").and_then(Value::as_str).map(str::to_string),
            _ => None,
        }
    });
    if let Some(r) = reference {
        out.insert("$ref".into(), json!(r.replacen(V3_REF, V2_REF, 1)));
        if let Some(d) = o.get("description") {
            out.insert("description".into(), d.clone());
        }
        return Value::Object(out);
    }
    for (k, v) in o {
        match k.as_str() {
            "description" | "format" | "title" | "required" | "enum" | "default" | "example" | "pattern"
            | "minimum" | "maximum" | "minLength" | "maxLength" | "minItems" | "maxItems" | "uniqueItems" => {
                out.insert(k.clone(), v.clone());
            }
            "type"
                if v.as_str().is_some_and(|t| t == "object" || t == "array" || PRIMITIVES.contains(&t)) =>
            {
                out.insert(k.clone(), v.clone());
            }
            "properties" => {
                let props: Map<String, Value> = v
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(name, p)| (name.clone(), schema_v2(p)))
                    .collect();
                out.insert(k.clone(), Value::Object(props));
            }
            "additionalProperties" => match v {
                Value::Object(_) => {
                    out.insert(k.clone(), schema_v2(v));
                }
                Value::Bool(true) => {
                    out.insert(k.clone(), json!(true));
                }
                _ => {}
            },
            "items" => {
                out.insert(k.clone(), schema_v2(v));
            }
            x if x.starts_with("x-") => {
                out.insert(k.clone(), v.clone());
            }
            _ => {}
        }
    }
    if out.get("type").and_then(Value::as_str) == Some("array") && !out.contains_key("items") {
        out.insert("items".into(), json!({}));
    }
    Value::Object(out)
}

/// A v3 parameter as a v2 one (`schema.type` moves up).
fn parameter(p: &Value) -> Value {
    let mut out = Map::new();
    for k in ["name", "in", "description", "required"] {
        if let Some(v) = p.get(k) {
            out.insert(k.into(), v.clone());
        }
    }
    let schema = &p["schema"];
    out.insert("type".into(), schema.get("type").cloned().unwrap_or(json!("string")));
    if let Some(u) = schema.get("uniqueItems").or_else(|| p.get("uniqueItems")) {
        out.insert("uniqueItems".into(), u.clone());
    }
    Value::Object(out)
}

fn path_item(item: &Value) -> Value {
    let mut out = Map::new();
    if let Some(ps) = item["parameters"].as_array() {
        out.insert("parameters".into(), Value::Array(ps.iter().map(parameter).collect()));
    }
    for m in METHODS {
        if let Some(op) = item.get(*m) {
            out.insert((*m).into(), operation(op));
        }
    }
    Value::Object(out)
}

fn operation(op: &Value) -> Value {
    let mut out = Map::new();
    for k in ["description", "operationId", "tags"] {
        if let Some(v) = op.get(k) {
            out.insert(k.into(), v.clone());
        }
    }
    let mut params: Vec<Value> = op["parameters"].as_array().into_iter().flatten().map(parameter).collect();
    if let Some(body) = op.get("requestBody") {
        let content = body["content"].as_object();
        let consumes: Vec<Value> = content.into_iter().flatten().map(|(k, _)| json!(k)).collect();
        let schema =
            content.and_then(|c| c.values().next()).map(|m| schema_v2(&m["schema"])).unwrap_or(json!({}));
        params.push(
            json!({"name": "body", "in": "body", "required": body["required"].as_bool().unwrap_or(false),
                           "schema": schema}),
        );
        out.insert("consumes".into(), Value::Array(consumes));
    } else {
        out.insert("consumes".into(), json!(["*/*"]));
    }
    out.insert(
        "produces".into(),
        json!(["application/json", "application/yaml", "application/vnd.kubernetes.protobuf"]),
    );
    out.insert("schemes".into(), json!(["https"]));
    if !params.is_empty() {
        out.insert("parameters".into(), Value::Array(params));
    }
    let mut responses = Map::new();
    for (code, r) in op["responses"].as_object().into_iter().flatten() {
        let mut resp = json!({"description": r["description"].as_str().unwrap_or("")});
        if let Some(schema) = r["content"].as_object().and_then(|c| c.values().next()).map(|m| &m["schema"]) {
            resp["schema"] = schema_v2(schema);
        }
        responses.insert(code.clone(), resp);
    }
    out.insert("responses".into(), Value::Object(responses));
    for (k, v) in op.as_object().into_iter().flatten() {
        if k.starts_with("x-") {
            out.insert(k.clone(), v.clone());
        }
    }
    Value::Object(out)
}

// ---- gnostic protobuf ----

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn bytes_field(out: &mut Vec<u8>, num: u32, b: &[u8]) {
    varint(out, u64::from(num) << 3 | 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn str_field(out: &mut Vec<u8>, num: u32, s: &str) {
    if !s.is_empty() {
        bytes_field(out, num, s.as_bytes());
    }
}

fn bool_field(out: &mut Vec<u8>, num: u32, b: bool) {
    if b {
        varint(out, u64::from(num) << 3);
        varint(out, 1);
    }
}

fn int_field(out: &mut Vec<u8>, num: u32, v: Option<i64>) {
    if let Some(v) = v.filter(|v| *v != 0) {
        varint(out, u64::from(num) << 3);
        varint(out, v as u64);
    }
}

fn double_field(out: &mut Vec<u8>, num: u32, v: Option<f64>) {
    if let Some(v) = v {
        varint(out, u64::from(num) << 3 | 1);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

/// `Any {yaml}`: JSON is YAML.
fn any(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    str_field(&mut out, 2, &v.to_string());
    out
}

/// `NamedAny`s of the `x-` keys of `v`, as field `num`.
fn vendor_extensions(out: &mut Vec<u8>, num: u32, v: &Value) {
    for (k, val) in v.as_object().into_iter().flatten().filter(|(k, _)| k.starts_with("x-")) {
        let mut named = Vec::new();
        str_field(&mut named, 1, k);
        bytes_field(&mut named, 2, &any(val));
        bytes_field(out, num, &named);
    }
}

fn schema_pb(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    str_field(&mut out, 1, s(v, "$ref"));
    str_field(&mut out, 2, s(v, "format"));
    str_field(&mut out, 3, s(v, "title"));
    str_field(&mut out, 4, s(v, "description"));
    if let Some(d) = v.get("default") {
        bytes_field(&mut out, 5, &any(d));
    }
    double_field(&mut out, 7, v.get("maximum").and_then(Value::as_f64));
    double_field(&mut out, 9, v.get("minimum").and_then(Value::as_f64));
    int_field(&mut out, 11, v.get("maxLength").and_then(Value::as_i64));
    int_field(&mut out, 12, v.get("minLength").and_then(Value::as_i64));
    str_field(&mut out, 13, s(v, "pattern"));
    int_field(&mut out, 14, v.get("maxItems").and_then(Value::as_i64));
    int_field(&mut out, 15, v.get("minItems").and_then(Value::as_i64));
    bool_field(&mut out, 16, v.get("uniqueItems").and_then(Value::as_bool) == Some(true));
    for r in v["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        str_field(&mut out, 19, r);
    }
    for e in v["enum"].as_array().into_iter().flatten() {
        bytes_field(&mut out, 20, &any(e));
    }
    match v.get("additionalProperties") {
        Some(Value::Bool(b)) => {
            let mut item = Vec::new();
            varint(&mut item, 2 << 3);
            varint(&mut item, u64::from(*b));
            bytes_field(&mut out, 21, &item);
        }
        Some(sub @ Value::Object(_)) => {
            let mut item = Vec::new();
            bytes_field(&mut item, 1, &schema_pb(sub));
            bytes_field(&mut out, 21, &item);
        }
        _ => {}
    }
    if let Some(t) = v.get("type").and_then(Value::as_str) {
        let mut item = Vec::new();
        str_field(&mut item, 1, t);
        bytes_field(&mut out, 22, &item);
    }
    if let Some(items) = v.get("items") {
        let mut item = Vec::new();
        bytes_field(&mut item, 1, &schema_pb(items));
        bytes_field(&mut out, 23, &item);
    }
    if let Some(props) = v.get("properties").and_then(Value::as_object) {
        let mut p = Vec::new();
        for (name, sub) in props {
            bytes_field(&mut p, 1, &named_schema(name, sub));
        }
        bytes_field(&mut out, 25, &p);
    }
    if let Some(e) = v.get("example") {
        bytes_field(&mut out, 30, &any(e));
    }
    vendor_extensions(&mut out, 31, v);
    out
}

fn named_schema(name: &str, v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    str_field(&mut out, 1, name);
    bytes_field(&mut out, 2, &schema_pb(v));
    out
}

fn parameter_pb(p: &Value) -> Vec<u8> {
    let mut parameter = Vec::new();
    if s(p, "in") == "body" {
        let mut body = Vec::new();
        str_field(&mut body, 1, s(p, "description"));
        str_field(&mut body, 2, s(p, "name"));
        str_field(&mut body, 3, "body");
        bool_field(&mut body, 4, p["required"].as_bool() == Some(true));
        bytes_field(&mut body, 5, &schema_pb(&p["schema"]));
        bytes_field(&mut parameter, 1, &body);
    } else {
        let mut sub = Vec::new();
        bool_field(&mut sub, 1, p["required"].as_bool() == Some(true));
        str_field(&mut sub, 2, s(p, "in"));
        str_field(&mut sub, 3, s(p, "description"));
        str_field(&mut sub, 4, s(p, "name"));
        // Query: type 6, uniqueItems 20; path: type 5, uniqueItems 19.
        let (which, ty, unique) = if s(p, "in") == "path" { (4, 5, 19) } else { (3, 6, 20) };
        str_field(&mut sub, ty, s(p, "type"));
        bool_field(&mut sub, unique, p["uniqueItems"].as_bool() == Some(true));
        let mut non_body = Vec::new();
        bytes_field(&mut non_body, which, &sub);
        bytes_field(&mut parameter, 2, &non_body);
    }
    let mut item = Vec::new();
    bytes_field(&mut item, 1, &parameter);
    item
}

fn operation_pb(op: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    for t in op["tags"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        str_field(&mut out, 1, t);
    }
    str_field(&mut out, 3, s(op, "description"));
    str_field(&mut out, 5, s(op, "operationId"));
    for p in op["produces"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        str_field(&mut out, 6, p);
    }
    for c in op["consumes"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        str_field(&mut out, 7, c);
    }
    for p in op["parameters"].as_array().into_iter().flatten() {
        bytes_field(&mut out, 8, &parameter_pb(p));
    }
    let mut responses = Vec::new();
    for (code, r) in op["responses"].as_object().into_iter().flatten() {
        let mut resp = Vec::new();
        str_field(&mut resp, 1, s(r, "description"));
        if let Some(schema) = r.get("schema") {
            let mut item = Vec::new();
            bytes_field(&mut item, 1, &schema_pb(schema));
            bytes_field(&mut resp, 2, &item);
        }
        let mut value = Vec::new();
        bytes_field(&mut value, 1, &resp);
        let mut named = Vec::new();
        str_field(&mut named, 1, code);
        bytes_field(&mut named, 2, &value);
        bytes_field(&mut responses, 1, &named);
    }
    bytes_field(&mut out, 9, &responses);
    for sc in op["schemes"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        str_field(&mut out, 10, sc);
    }
    vendor_extensions(&mut out, 13, op);
    out
}

/// The document in gnostic's `openapi.v2.Document` protobuf form.
pub fn to_protobuf(doc: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    str_field(&mut out, 1, s(doc, "swagger"));
    let mut info = Vec::new();
    str_field(&mut info, 1, s(&doc["info"], "title"));
    str_field(&mut info, 2, s(&doc["info"], "version"));
    bytes_field(&mut out, 2, &info);
    let mut paths = Vec::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        let mut pi = Vec::new();
        for (num, m) in
            [(2, "get"), (3, "put"), (4, "post"), (5, "delete"), (6, "options"), (7, "head"), (8, "patch")]
        {
            if let Some(op) = item.get(m) {
                bytes_field(&mut pi, num, &operation_pb(op));
            }
        }
        for p in item["parameters"].as_array().into_iter().flatten() {
            bytes_field(&mut pi, 9, &parameter_pb(p));
        }
        let mut named = Vec::new();
        str_field(&mut named, 1, path);
        bytes_field(&mut named, 2, &pi);
        bytes_field(&mut paths, 2, &named);
    }
    bytes_field(&mut out, 8, &paths);
    let mut defs = Vec::new();
    for (name, schema) in doc["definitions"].as_object().into_iter().flatten() {
        bytes_field(&mut defs, 1, &named_schema(name, schema));
    }
    bytes_field(&mut out, 9, &defs);
    // security: [{BearerToken: []}] and its definition (apiKey in the header).
    let mut api_key = Vec::new();
    str_field(&mut api_key, 1, "apiKey");
    str_field(&mut api_key, 2, "authorization");
    str_field(&mut api_key, 3, "header");
    str_field(&mut api_key, 4, "Bearer Token authentication");
    let mut item = Vec::new();
    bytes_field(&mut item, 2, &api_key);
    let mut named = Vec::new();
    str_field(&mut named, 1, "BearerToken");
    bytes_field(&mut named, 2, &item);
    let mut sec_defs = Vec::new();
    bytes_field(&mut sec_defs, 1, &named);
    let mut req = Vec::new();
    let mut named_arr = Vec::new();
    str_field(&mut named_arr, 1, "BearerToken");
    bytes_field(&mut named_arr, 2, &[]);
    bytes_field(&mut req, 1, &named_arr);
    bytes_field(&mut out, 12, &req);
    bytes_field(&mut out, 13, &sec_defs);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_fit_kube_openapis_v2_parser() {
        let v3 = json!({
            "description": "d",
            "type": "object",
            "nullable": true,
            "properties": {
                "meta": {"allOf": [{"$ref": "#/components/schemas/M"}], "description": "m"},
                "list": {"type": "array"},
                "any": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                "map": {"type": "object", "additionalProperties": {"type": "string"}},
            },
            "x-kubernetes-group-version-kind": [{"group": "", "kind": "Pod", "version": "v1"}],
        });
        let v2 = schema_v2(&v3);
        assert_eq!(v2["properties"]["meta"], json!({"$ref": "#/definitions/M", "description": "m"}));
        assert_eq!(v2["properties"]["list"], json!({"type": "array", "items": {}}));
        assert_eq!(v2["properties"]["any"], json!({}));
        assert_eq!(v2["properties"]["map"]["additionalProperties"], json!({"type": "string"}));
        assert!(v2.get("nullable").is_none());
        assert!(v2["x-kubernetes-group-version-kind"].is_array());
        // Protobuf: field 1 of a Schema is the reference, written as a length-delimited field.
        assert_eq!(schema_pb(&json!({"$ref": "#/definitions/M"}))[..2], [0x0a, 15]);
    }
}
