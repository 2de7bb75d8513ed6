//! `x-kubernetes-validations`: CEL rules on a schema node, as upstream's apiextensions
//! server evaluates them, with the `cel` crate (cel-rust).
//!
//! A rule sees the node's value as `self`; a rule that names `oldSelf` is a transition
//! rule, evaluated only on an update where the old object has a value at the same place
//! (properties and map entries by key, `x-kubernetes-list-type: map` items by their keys).
//! A rule that is false gives one cause at the node's path (or `fieldPath` under it), with
//! `message`, the string `messageExpression` yields, or `failed rule: <rule>`.
//!
//! Costs are bounded as upstream's (see [`super::cost`]): a rule whose estimated cost is
//! over budget is refused when the CRD is written, and a rule whose cost with the actual
//! sizes of the value is over the per-call limit is not run (the object is refused with
//! `call cost exceeds limit for rule: ...`).
//!
//! Not done as upstream: CEL's Kubernetes library extensions (`quantity`, `url`,
//! `isSorted`...) and the per-request total runtime budget.

use crate::Cause;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

/// The longest rule accepted (upstream bounds rules by estimated cost instead).
pub const MAX_RULE_LEN: usize = 4096;

/// Compiled programs by source (the same few rules run on every write of a kind).
static PROGRAMS: LazyLock<Mutex<HashMap<String, Arc<cel::Program>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Compiles `rule` (cached), or says why it cannot be.
pub fn compile(rule: &str) -> Result<Arc<cel::Program>, String> {
    if rule.len() > MAX_RULE_LEN {
        return Err(format!("rule is longer than {MAX_RULE_LEN} characters"));
    }
    let mut cache = PROGRAMS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = cache.get(rule) {
        return Ok(p.clone());
    }
    // The parser may panic on input it does not expect: a rule is user input.
    let parsed = std::panic::catch_unwind(|| cel::Program::compile(rule))
        .map_err(|_| "compilation failed: the expression could not be parsed".to_string())?;
    let program = Arc::new(parsed.map_err(|e| format!("compilation failed: {e}"))?);
    if cache.len() > 10_000 {
        cache.clear();
    }
    cache.insert(rule.to_string(), program.clone());
    Ok(program)
}

/// Whether a compiled rule refers to `oldSelf` (a transition rule).
fn is_transition(p: &cel::Program) -> bool {
    p.references().has_variable("oldSelf")
}

fn to_cel(v: &Value) -> Result<cel::Value, String> {
    cel::to_value(v).map_err(|e| e.to_string())
}

/// CEL's standard library, built once: `cel::Context::default()` builds it for every
/// context, which was most of a rule's run time on the create path.
static STDLIB: LazyLock<Arc<cel::Env>> = LazyLock::new(|| Arc::new(cel::Env::stdlib()));

/// A fresh context over the shared standard library (what `cel::Context::default()` gives,
/// without building the library again).
pub fn context<'p, 'v>() -> cel::Context<'p, 'v> {
    cel::Context::with_env(STDLIB.clone())
}

fn run(p: &cel::Program, this: &Value, old: Option<&Value>) -> Result<cel::Value, String> {
    let mut ctx = context();
    ctx.add_variable_from_value("self", to_cel(this)?);
    if let Some(o) = old {
        ctx.add_variable_from_value("oldSelf", to_cel(o)?);
    }
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| p.execute(&ctx)))
        .map_err(|_| "evaluation failed".to_string())?
        .map_err(|e| e.to_string())
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Evaluates the `x-kubernetes-validations` of `schema` on `this` (at `path`; `old` is the
/// value at the same place in the old object, on an update) and appends a cause per failed
/// rule.
pub fn check(schema: &Value, this: &Value, old: Option<&Value>, path: &str, out: &mut Vec<Cause>) {
    let Some(rules) = schema.get("x-kubernetes-validations").and_then(Value::as_array) else { return };
    for r in rules {
        let Some(rule) = r.get("rule").and_then(Value::as_str) else { continue };
        let program = match compile(rule) {
            Ok(p) => p,
            Err(e) => {
                out.push(Cause::invalid(path_or_root(path), format!("Invalid value: {rule:?}: {e}")));
                continue;
            }
        };
        let transition = is_transition(&program);
        if transition && old.is_none() {
            continue;
        }
        if super::cost::check_call(&program, this, old.filter(|_| transition)).is_err() {
            let msg = r
                .get("message")
                .and_then(Value::as_str)
                .filter(|m| !m.is_empty())
                .map(str::to_string)
                .unwrap_or_else(|| format!("failed rule: {rule}"));
            out.push(Cause::invalid(
                path_or_root(path),
                format!("Invalid value: \"{}\": call cost exceeds limit for rule: {msg}", type_name(this)),
            ));
            continue;
        }
        let passed = match run(&program, this, old.filter(|_| transition)) {
            Ok(cel::Value::Bool(b)) => b,
            Ok(other) => {
                out.push(Cause::invalid(
                    path_or_root(path),
                    format!(
                        "Invalid value: \"{}\": rule did not evaluate to a boolean: {other:?}",
                        type_name(this)
                    ),
                ));
                continue;
            }
            Err(e) => {
                out.push(Cause::invalid(
                    path_or_root(path),
                    format!("Invalid value: \"{}\": rule evaluation error: {e}", type_name(this)),
                ));
                continue;
            }
        };
        if passed {
            continue;
        }
        let message = match (
            r.get("messageExpression").and_then(Value::as_str),
            r.get("message").and_then(Value::as_str),
        ) {
            (Some(expr), fallback) => {
                match compile(expr).and_then(|p| run(&p, this, old.filter(|_| transition))) {
                    Ok(cel::Value::String(s)) if !s.trim().is_empty() => s.to_string(),
                    _ => fallback.map(str::to_string).unwrap_or_else(|| format!("failed rule: {rule}")),
                }
            }
            (None, Some(m)) => m.to_string(),
            (None, None) => format!("failed rule: {rule}"),
        };
        let field = match r.get("fieldPath").and_then(Value::as_str).filter(|f| !f.is_empty()) {
            Some(fp) if path.is_empty() => fp.trim_start_matches('.').to_string(),
            Some(fp) => format!(
                "{path}{}",
                if fp.starts_with('.') || fp.starts_with('[') { fp.to_string() } else { format!(".{fp}") }
            ),
            None => path_or_root(path),
        };
        let reason = match r.get("reason").and_then(Value::as_str) {
            Some("FieldValueRequired") => "FieldValueRequired",
            Some("FieldValueDuplicate") => "FieldValueDuplicate",
            Some("FieldValueForbidden") => "FieldValueForbidden",
            _ => "FieldValueInvalid",
        };
        out.push(Cause {
            reason,
            field,
            message: format!("Invalid value: \"{}\": {message}", type_name(this)),
        });
    }
}

fn path_or_root(path: &str) -> String {
    if path.is_empty() {
        "<nil>".to_string()
    } else {
        path.to_string()
    }
}

/// Checks the rules of one schema node when a CRD is written: each compiles and is not too
/// long; causes under `field` (`...x-kubernetes-validations[0].rule`).
pub fn check_definitions(schema: &Value, field: &str, out: &mut Vec<Cause>) {
    let Some(rules) = schema.get("x-kubernetes-validations").and_then(Value::as_array) else { return };
    for (i, r) in rules.iter().enumerate() {
        let at = format!("{field}.x-kubernetes-validations[{i}]");
        match r.get("rule").and_then(Value::as_str) {
            None | Some("") => out.push(Cause::required(format!("{at}.rule"))),
            Some(rule) => {
                if let Err(e) = compile(rule) {
                    out.push(Cause::invalid(format!("{at}.rule"), format!("Invalid value: {rule:?}: {e}")));
                }
            }
        }
        if let Some(expr) = r.get("messageExpression").and_then(Value::as_str) {
            if let Err(e) = compile(expr) {
                out.push(Cause::invalid(
                    format!("{at}.messageExpression"),
                    format!("Invalid value: {expr:?}: {e}"),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "x-kubernetes-validations": [
            {"rule": "self.replicas <= self.maxReplicas", "message": "replicas must be at most maxReplicas"},
            {"rule": "!has(oldSelf.image) || self.image == oldSelf.image", "message": "image is immutable", "fieldPath": ".image"},
            {"rule": "self.name.startsWith('a')", "messageExpression": "'name ' + self.name + ' must start with a'"},
        ]})
    }

    #[test]
    fn rules_pass_and_fail_with_their_messages() {
        let mut out = Vec::new();
        check(
            &schema(),
            &json!({"replicas": 3, "maxReplicas": 5, "image": "x", "name": "abc"}),
            None,
            "spec",
            &mut out,
        );
        assert!(out.is_empty(), "{out:?}");
        check(
            &schema(),
            &json!({"replicas": 6, "maxReplicas": 5, "image": "x", "name": "bob"}),
            None,
            "spec",
            &mut out,
        );
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0].field, "spec");
        assert_eq!(out[0].message, "Invalid value: \"object\": replicas must be at most maxReplicas");
        assert_eq!(out[1].message, "Invalid value: \"object\": name bob must start with a");
    }

    #[test]
    fn transition_rules_need_an_old_value() {
        let new = json!({"replicas": 1, "maxReplicas": 5, "image": "y", "name": "a"});
        let mut out = Vec::new();
        check(&schema(), &new, None, "spec", &mut out);
        assert!(out.is_empty(), "no oldSelf on create: {out:?}");
        check(&schema(), &new, Some(&json!({"image": "x"})), "spec", &mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].field, "spec.image");
        assert_eq!(out[0].message, "Invalid value: \"object\": image is immutable");
    }

    #[test]
    fn bad_rules_are_refused_at_definition() {
        let mut out = Vec::new();
        check_definitions(
            &json!({"x-kubernetes-validations": [{"rule": "self.a >"}, {"rule": ""}]}),
            "s",
            &mut out,
        );
        let fields: Vec<&str> = out.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, ["s.x-kubernetes-validations[0].rule", "s.x-kubernetes-validations[1].rule"]);
        assert!(out[0].message.contains("compilation failed"), "{out:?}");
    }
}
