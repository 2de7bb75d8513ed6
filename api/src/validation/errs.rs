//! Field errors in upstream's shape (`field.ErrorList`), and Go-style value printing for
//! their messages.

use crate::Cause;
use serde_json::{Map, Value};

/// Collected causes.
#[derive(Default)]
pub(crate) struct Errs(pub(crate) Vec<Cause>);

fn with_detail(mut s: String, detail: &str) -> String {
    if !detail.is_empty() {
        s.push_str(": ");
        s.push_str(detail);
    }
    s
}

impl Errs {
    /// `Required value[: detail]`.
    pub(crate) fn required(&mut self, field: &str, detail: &str) {
        let message = with_detail("Required value".into(), detail);
        self.0.push(Cause { reason: "FieldValueRequired", field: field.into(), message });
    }

    /// `Invalid value: <value>[: detail]`; `value` is already printed (see [`q`]).
    pub(crate) fn invalid(&mut self, field: &str, value: &str, detail: &str) {
        let message = with_detail(format!("Invalid value: {value}"), detail);
        self.0.push(Cause { reason: "FieldValueInvalid", field: field.into(), message });
    }

    /// `Invalid value` for a string value, quoted as Go's `%q`.
    pub(crate) fn invalid_str(&mut self, field: &str, value: &str, detail: &str) {
        self.invalid(field, &q(value), detail);
    }

    /// `Forbidden: detail`.
    pub(crate) fn forbidden(&mut self, field: &str, detail: &str) {
        let message = with_detail("Forbidden".into(), detail);
        self.0.push(Cause { reason: "FieldValueForbidden", field: field.into(), message });
    }

    /// `Unsupported value: "x": supported values: "a", "b"`.
    pub(crate) fn not_supported(&mut self, field: &str, value: &str, valid: &[&str]) {
        let list: Vec<String> = valid.iter().map(|v| q(v)).collect();
        let message = format!("Unsupported value: {}: supported values: {}", q(value), list.join(", "));
        self.0.push(Cause { reason: "FieldValueNotSupported", field: field.into(), message });
    }

    /// `Duplicate value: <value>`; `value` is already printed.
    pub(crate) fn duplicate(&mut self, field: &str, value: &str) {
        let message = format!("Duplicate value: {value}");
        self.0.push(Cause { reason: "FieldValueDuplicate", field: field.into(), message });
    }

    /// `Not found: <value>`; `value` is already printed.
    pub(crate) fn not_found(&mut self, field: &str, value: &str) {
        let message = format!("Not found: {value}");
        self.0.push(Cause { reason: "FieldValueNotFound", field: field.into(), message });
    }

    /// `Too long: may not be more than N bytes`.
    pub(crate) fn too_long(&mut self, field: &str, max: usize) {
        let message = format!("Too long: may not be more than {max} bytes");
        self.0.push(Cause { reason: "FieldValueTooLong", field: field.into(), message });
    }

    /// One `Invalid value` per message of a name check.
    pub(crate) fn invalid_msgs(&mut self, field: &str, value: &str, msgs: Vec<String>) {
        for m in msgs {
            self.invalid_str(field, value, &m);
        }
    }

    /// `must be greater than or equal to 0` for a negative integer at `field` of `obj`.
    pub(crate) fn nonnegative(&mut self, obj: Option<&Value>, key: &str, field: &str) {
        if let Some(v) = obj.and_then(|o| o.get(key)).and_then(Value::as_i64) {
            if v < 0 {
                self.invalid(field, &v.to_string(), "must be greater than or equal to 0");
            }
        }
    }
}

/// Go's `%q` of a string.
pub(crate) fn q(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Go's `%#v` of a `map[string]string`.
pub(crate) fn go_map(m: Option<&Value>) -> String {
    match m.and_then(Value::as_object) {
        None => "map[string]string(nil)".into(),
        Some(m) => {
            let mut pairs: Vec<(&String, &Value)> = m.iter().collect();
            pairs.sort_by(|a, b| a.0.cmp(b.0));
            let body: Vec<String> =
                pairs.iter().map(|(k, v)| format!("{}:{}", q(k), q(v.as_str().unwrap_or("")))).collect();
            format!("map[string]string{{{}}}", body.join(", "))
        }
    }
}

/// Go's `%#v` of a `[]string`.
pub(crate) fn go_strings(v: Option<&Value>) -> String {
    match v.and_then(Value::as_array) {
        None => "[]string(nil)".into(),
        Some(a) => {
            let items: Vec<String> = a.iter().map(|s| q(s.as_str().unwrap_or(""))).collect();
            format!("[]string{{{}}}", items.join(", "))
        }
    }
}

/// Go's `%#v` of an `intstr.IntOrString`.
pub(crate) fn go_int_or_string(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => format!("intstr.IntOrString{{Type:1, IntVal:0, StrVal:{}}}", q(s)),
        Some(n) => format!("intstr.IntOrString{{Type:0, IntVal:{}, StrVal:\"\"}}", n.as_i64().unwrap_or(0)),
        None => "null".into(),
    }
}

/// Go's `%#v` of a `metav1.LabelSelector`, or `null`.
pub(crate) fn go_selector(v: Option<&Value>) -> String {
    let Some(sel) = v.filter(|v| v.is_object()) else { return "null".into() };
    let exprs = match sel.get("matchExpressions").and_then(Value::as_array) {
        None => "[]v1.LabelSelectorRequirement(nil)".to_string(),
        Some(a) => {
            let items: Vec<String> = a
                .iter()
                .map(|e| {
                    format!(
                        "v1.LabelSelectorRequirement{{Key:{}, Operator:{}, Values:{}}}",
                        q(e.get("key").and_then(Value::as_str).unwrap_or("")),
                        q(e.get("operator").and_then(Value::as_str).unwrap_or("")),
                        go_strings(e.get("values"))
                    )
                })
                .collect();
            format!("[]v1.LabelSelectorRequirement{{{}}}", items.join(", "))
        }
    };
    format!("v1.LabelSelector{{MatchLabels:{}, MatchExpressions:{}}}", go_map(sel.get("matchLabels")), exprs)
}

/// A compact JSON rendering for composite values whose Go dump would be unreadable.
pub(crate) fn json_value(v: Option<&Value>) -> String {
    v.map_or_else(|| "null".into(), Value::to_string)
}

// ---- JSON accessors ------------------------------------------------------------------------

/// A string field, `""` when missing.
pub(crate) fn st<'a>(v: Option<&'a Value>, key: &str) -> &'a str {
    v.and_then(|v| v.get(key)).and_then(Value::as_str).unwrap_or("")
}

/// An array field, empty when missing.
pub(crate) fn ar<'a>(v: Option<&'a Value>, key: &str) -> &'a [Value] {
    v.and_then(|v| v.get(key)).and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

/// An object field.
pub(crate) fn ob<'a>(v: Option<&'a Value>, key: &str) -> Option<&'a Map<String, Value>> {
    v.and_then(|v| v.get(key)).and_then(Value::as_object)
}

/// A field that is present and not null.
pub(crate) fn get<'a>(v: Option<&'a Value>, key: &str) -> Option<&'a Value> {
    v.and_then(|v| v.get(key)).filter(|v| !v.is_null())
}

/// An integer field.
pub(crate) fn int(v: Option<&Value>, key: &str) -> Option<i64> {
    v.and_then(|v| v.get(key)).and_then(Value::as_i64)
}
