//! Label selectors (equality and set-based) and field selectors, parsed from their
//! query-string form as upstream does.
//!
//! The label selector grammar, error messages and canonical string form follow
//! `k8s.io/apimachinery/pkg/labels`; field selectors follow `.../pkg/fields` plus the
//! per-kind field label tables of the upstream registries.

use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;

/// The operator of one label selector requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelOp {
    /// `k=v`.
    Equals,
    /// `k==v`.
    DoubleEquals,
    /// `k!=v`.
    NotEquals,
    /// `k in (a,b)`.
    In,
    /// `k notin (a,b)`.
    NotIn,
    /// `k`.
    Exists,
    /// `!k`.
    DoesNotExist,
    /// `k>5` (integers).
    GreaterThan,
    /// `k<5` (integers).
    LessThan,
}

/// One requirement of a label selector: a key, an operator and its values (sorted,
/// deduplicated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// The label key.
    pub key: String,
    /// The operator.
    pub op: LabelOp,
    /// The values, sorted and without duplicates; empty for `Exists`/`DoesNotExist`.
    pub values: Vec<String>,
}

impl Requirement {
    /// Builds a requirement, validating the key, the values and their count as upstream's
    /// `NewRequirement` does.
    pub fn new(key: &str, op: LabelOp, values: Vec<String>) -> Result<Requirement, String> {
        validate_label_key(key)?;
        let mut values = values;
        values.sort();
        values.dedup();
        match op {
            LabelOp::In | LabelOp::NotIn => {
                if values.is_empty() {
                    return Err("for 'in', 'notin' operators, values set can't be empty".into());
                }
            }
            LabelOp::Equals | LabelOp::DoubleEquals | LabelOp::NotEquals => {
                if values.len() != 1 {
                    return Err("exact-match compatibility requires one single value".into());
                }
            }
            LabelOp::Exists | LabelOp::DoesNotExist => {
                if !values.is_empty() {
                    return Err("values set must be empty for exists and does not exist".into());
                }
            }
            LabelOp::GreaterThan | LabelOp::LessThan => {
                if values.len() != 1 {
                    return Err("for 'Gt', 'Lt' operators, exactly one value is required".into());
                }
                if values[0].parse::<i64>().is_err() {
                    return Err(format!(
                        "for 'Gt', 'Lt' operators, the value must be an integer: {:?}",
                        values[0]
                    ));
                }
            }
        }
        for (i, v) in values.iter().enumerate() {
            let errs = label_value_errors(v);
            if !errs.is_empty() {
                return Err(format!("values[{i}][{key}]: Invalid value: {v:?}: {}", errs.join("; ")));
            }
        }
        Ok(Requirement { key: key.to_string(), op, values })
    }

    /// Whether `labels` satisfy this requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let got = labels.get(&self.key);
        match self.op {
            LabelOp::Equals | LabelOp::DoubleEquals | LabelOp::In => {
                got.is_some_and(|v| self.values.iter().any(|x| x == v))
            }
            LabelOp::NotEquals | LabelOp::NotIn => got.is_none_or(|v| !self.values.iter().any(|x| x == v)),
            LabelOp::Exists => got.is_some(),
            LabelOp::DoesNotExist => got.is_none(),
            LabelOp::GreaterThan | LabelOp::LessThan => {
                let Some(have) = got.and_then(|v| v.parse::<i64>().ok()) else {
                    return false;
                };
                let Some(want) = self.values.first().and_then(|v| v.parse::<i64>().ok()) else {
                    return false;
                };
                if self.op == LabelOp::GreaterThan {
                    have > want
                } else {
                    have < want
                }
            }
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let first = self.values.first().map(String::as_str).unwrap_or("");
        match self.op {
            LabelOp::DoesNotExist => write!(f, "!{}", self.key),
            LabelOp::Exists => write!(f, "{}", self.key),
            LabelOp::Equals => write!(f, "{}={first}", self.key),
            LabelOp::DoubleEquals => write!(f, "{}=={first}", self.key),
            LabelOp::NotEquals => write!(f, "{}!={first}", self.key),
            LabelOp::GreaterThan => write!(f, "{}>{first}", self.key),
            LabelOp::LessThan => write!(f, "{}<{first}", self.key),
            LabelOp::In => write!(f, "{} in ({})", self.key, self.values.join(",")),
            LabelOp::NotIn => write!(f, "{} notin ({})", self.key, self.values.join(",")),
        }
    }
}

/// A parsed label selector. The empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    reqs: Vec<Requirement>,
}

impl LabelSelector {
    /// Parses `app=web,tier!=db,env in (a,b),!legacy,has`.
    pub fn parse(s: &str) -> Result<LabelSelector, String> {
        let tokens = lex(s)?;
        let mut p = Parser { tokens, pos: 0 };
        let mut reqs = p.parse()?;
        reqs.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(LabelSelector { reqs })
    }

    /// Converts a `metav1.LabelSelector` object (`matchLabels`, `matchExpressions` with
    /// `In`, `NotIn`, `Exists`, `DoesNotExist`). `null` or `{}` gives the empty selector,
    /// which matches everything.
    pub fn from_label_selector_json(v: &Value) -> Result<LabelSelector, String> {
        let mut reqs = Vec::new();
        if v.is_null() {
            return Ok(LabelSelector { reqs });
        }
        let obj = v.as_object().ok_or("a label selector must be an object")?;
        match obj.get("matchLabels") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (k, val) in m {
                    let val = val.as_str().ok_or_else(|| format!("matchLabels[{k}] must be a string"))?;
                    reqs.push(Requirement::new(k, LabelOp::Equals, vec![val.to_string()])?);
                }
            }
            Some(_) => return Err("matchLabels must be an object".into()),
        }
        match obj.get("matchExpressions") {
            None | Some(Value::Null) => {}
            Some(Value::Array(exprs)) => {
                for e in exprs {
                    let key = e.get("key").and_then(Value::as_str).unwrap_or("");
                    let op = e.get("operator").and_then(Value::as_str).unwrap_or("");
                    let op = match op {
                        "In" => LabelOp::In,
                        "NotIn" => LabelOp::NotIn,
                        "Exists" => LabelOp::Exists,
                        "DoesNotExist" => LabelOp::DoesNotExist,
                        other => return Err(format!("{other:?} is not a valid label selector operator")),
                    };
                    let values = match e.get("values") {
                        None | Some(Value::Null) => Vec::new(),
                        Some(Value::Array(a)) => a
                            .iter()
                            .map(|x| {
                                x.as_str()
                                    .map(str::to_string)
                                    .ok_or_else(|| "matchExpressions values must be strings".to_string())
                            })
                            .collect::<Result<_, _>>()?,
                        Some(_) => return Err("matchExpressions values must be a list".into()),
                    };
                    reqs.push(Requirement::new(key, op, values)?);
                }
            }
            Some(_) => return Err("matchExpressions must be a list".into()),
        }
        reqs.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(LabelSelector { reqs })
    }

    /// Whether `labels` satisfy the selector.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.reqs.iter().all(|r| r.matches(labels))
    }

    /// Whether the selector matches everything.
    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// The requirements, sorted by key.
    pub fn requirements(&self) -> &[Requirement] {
        &self.reqs
    }
}

impl fmt::Display for LabelSelector {
    /// Upstream's canonical form: `app=web,tier in (a,b)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.reqs.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Label selector lexer and parser.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    In,
    NotIn,
    Bang,
    Eq,
    DoubleEq,
    NotEq,
    Gt,
    Lt,
    Comma,
    Open,
    Close,
    End,
}

impl Tok {
    fn literal(&self) -> &str {
        match self {
            Tok::Ident(s) => s,
            Tok::In => "in",
            Tok::NotIn => "notin",
            Tok::Bang => "!",
            Tok::Eq => "=",
            Tok::DoubleEq => "==",
            Tok::NotEq => "!=",
            Tok::Gt => ">",
            Tok::Lt => "<",
            Tok::Comma => ",",
            Tok::Open => "(",
            Tok::Close => ")",
            Tok::End => "",
        }
    }

    /// In a value position, `in` and `notin` are plain identifiers.
    fn as_value(&self) -> Tok {
        match self {
            Tok::In => Tok::Ident("in".into()),
            Tok::NotIn => Tok::Ident("notin".into()),
            t => t.clone(),
        }
    }
}

fn is_special(c: char) -> bool {
    matches!(c, '=' | '!' | '(' | ')' | ',' | '>' | '<')
}

fn is_ws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn symbol(s: &str) -> Option<Tok> {
    Some(match s {
        "!" => Tok::Bang,
        "=" => Tok::Eq,
        "==" => Tok::DoubleEq,
        "!=" => Tok::NotEq,
        ">" => Tok::Gt,
        "<" => Tok::Lt,
        "," => Tok::Comma,
        "(" => Tok::Open,
        ")" => Tok::Close,
        _ => return None,
    })
}

fn lex(s: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        while i < chars.len() && is_ws(chars[i]) {
            i += 1;
        }
        if i >= chars.len() {
            out.push(Tok::End);
            return Ok(out);
        }
        if is_special(chars[i]) {
            // Longest run of special symbols that still forms a known token.
            let mut buf = String::new();
            let mut last: Option<(Tok, usize)> = None;
            let mut j = i;
            while j < chars.len() && is_special(chars[j]) {
                buf.push(chars[j]);
                if let Some(t) = symbol(&buf) {
                    last = Some((t, j + 1));
                } else if last.is_some() {
                    break;
                }
                j += 1;
            }
            match last {
                Some((t, end)) => {
                    out.push(t);
                    i = end;
                }
                None => return Err(format!("error expected: keyword found '{buf}'")),
            }
        } else {
            let start = i;
            while i < chars.len() && !is_special(chars[i]) && !is_ws(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            out.push(match word.as_str() {
                "in" => Tok::In,
                "notin" => Tok::NotIn,
                _ => Tok::Ident(word),
            });
        }
    }
}

struct Parser {
    tokens: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Tok {
        self.tokens.get(self.pos).cloned().unwrap_or(Tok::End).as_value()
    }

    fn peek_raw(&self) -> Tok {
        self.tokens.get(self.pos).cloned().unwrap_or(Tok::End)
    }

    fn next(&mut self) -> Tok {
        let t = self.peek();
        self.pos += 1;
        t
    }

    fn next_raw(&mut self) -> Tok {
        let t = self.peek_raw();
        self.pos += 1;
        t
    }

    fn parse(&mut self) -> Result<Vec<Requirement>, String> {
        let mut reqs = Vec::new();
        loop {
            match self.peek() {
                Tok::Ident(_) | Tok::Bang => {
                    let r = self.requirement().map_err(|e| format!("unable to parse requirement: {e}"))?;
                    reqs.push(r);
                    match self.next() {
                        Tok::End => return Ok(reqs),
                        Tok::Comma => {
                            let t = self.peek();
                            if !matches!(t, Tok::Ident(_) | Tok::Bang) {
                                return Err(format!(
                                    "found '{}', expected: identifier after ','",
                                    t.literal()
                                ));
                            }
                        }
                        t => {
                            return Err(format!("found '{}', expected: ',' or 'end of string'", t.literal()))
                        }
                    }
                }
                Tok::End => return Ok(reqs),
                t => {
                    return Err(format!(
                        "found '{}', expected: !, identifier, or 'end of string'",
                        t.literal()
                    ))
                }
            }
        }
    }

    fn requirement(&mut self) -> Result<Requirement, String> {
        let mut tok = self.next();
        let mut not_exists = false;
        if tok == Tok::Bang {
            not_exists = true;
            tok = self.next();
        }
        let key = match tok {
            Tok::Ident(k) => k,
            t => return Err(format!("found '{}', expected: identifier", t.literal())),
        };
        validate_label_key(&key)?;
        let following = self.peek();
        if not_exists || matches!(following, Tok::End | Tok::Comma) {
            let op = if not_exists { LabelOp::DoesNotExist } else { LabelOp::Exists };
            return Requirement::new(&key, op, Vec::new());
        }
        let op = match self.next_raw() {
            Tok::In => LabelOp::In,
            Tok::NotIn => LabelOp::NotIn,
            Tok::Eq => LabelOp::Equals,
            Tok::DoubleEq => LabelOp::DoubleEquals,
            Tok::NotEq => LabelOp::NotEquals,
            Tok::Gt => LabelOp::GreaterThan,
            Tok::Lt => LabelOp::LessThan,
            t => return Err(format!("found '{}', expected: in, notin, =, ==, !=, gt, lt", t.literal())),
        };
        let values = match op {
            LabelOp::In | LabelOp::NotIn => self.set_values()?,
            _ => self.exact_value()?,
        };
        Requirement::new(&key, op, values)
    }

    fn set_values(&mut self) -> Result<Vec<String>, String> {
        let t = self.next();
        if t != Tok::Open {
            return Err(format!("found '{}' expected: '('", t.literal()));
        }
        match self.peek() {
            Tok::Close => {
                self.next();
                Ok(vec![String::new()])
            }
            Tok::Ident(_) | Tok::Comma => {
                let mut vals: Vec<String> = Vec::new();
                loop {
                    match self.next() {
                        Tok::Ident(v) => {
                            vals.push(v);
                            match self.peek() {
                                Tok::Comma => continue,
                                Tok::Close => break,
                                t => return Err(format!("found '{}', expected: ',' or ')'", t.literal())),
                            }
                        }
                        Tok::Comma => {
                            if vals.is_empty() {
                                vals.push(String::new());
                            }
                            match self.peek() {
                                Tok::Close => {
                                    vals.push(String::new());
                                    break;
                                }
                                Tok::Comma => vals.push(String::new()),
                                _ => {}
                            }
                        }
                        t => return Err(format!("found '{}', expected: ',', or identifier", t.literal())),
                    }
                }
                let t = self.next();
                if t != Tok::Close {
                    return Err(format!("found '{}', expected: ')'", t.literal()));
                }
                Ok(vals)
            }
            t => Err(format!("found '{}', expected: ',', ')' or identifier", t.literal())),
        }
    }

    fn exact_value(&mut self) -> Result<Vec<String>, String> {
        match self.peek() {
            Tok::End | Tok::Comma => Ok(vec![String::new()]),
            _ => match self.next() {
                Tok::Ident(v) => Ok(vec![v]),
                t => Err(format!("found '{}', expected: identifier", t.literal())),
            },
        }
    }
}

// ---------------------------------------------------------------------------------------
// Validation of label keys and values (upstream `IsQualifiedName`, `IsValidLabelValue`).

const QUALIFIED_NAME_FMT: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";

fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    let (Some(first), Some(last)) = (b.first(), b.last()) else {
        return false;
    };
    first.is_ascii_alphanumeric()
        && last.is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            match (b.first(), b.last()) {
                (Some(f), Some(l)) => {
                    (f.is_ascii_lowercase() || f.is_ascii_digit())
                        && (l.is_ascii_lowercase() || l.is_ascii_digit())
                        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                }
                _ => false,
            }
        })
}

/// Upstream's `IsQualifiedName` messages for `key` (empty when valid).
pub fn qualified_name_errors(key: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = key.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_string());
            } else {
                if prefix.len() > 253 {
                    errs.push("prefix part must be no more than 253 characters".to_string());
                }
                if !is_dns1123_subdomain(prefix) {
                    errs.push("prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')".to_string());
                }
            }
            *name
        }
        _ => {
            errs.push(format!("a qualified name {QUALIFIED_NAME_FMT} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"));
            return errs;
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else if name.len() > 63 {
        errs.push("name part must be no more than 63 characters".to_string());
    }
    if !name.is_empty() && !is_qualified_name_part(name) {
        errs.push(format!("name part {QUALIFIED_NAME_FMT}"));
    }
    errs
}

/// Upstream's `IsValidLabelValue` messages for `v` (empty when valid).
pub fn label_value_errors(v: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if v.len() > 63 {
        errs.push("must be no more than 63 characters".to_string());
    }
    if !v.is_empty() && !is_qualified_name_part(v) {
        errs.push("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')".to_string());
    }
    errs
}

fn validate_label_key(key: &str) -> Result<(), String> {
    let errs = qualified_name_errors(key);
    if errs.is_empty() {
        Ok(())
    } else {
        Err(format!("key: Invalid value: {key:?}: {}", errs.join("; ")))
    }
}

// ---------------------------------------------------------------------------------------
// Field selectors.

/// A parsed field selector for one resource.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    /// `(field, equality, value)`; equality is false for `!=`.
    reqs: Vec<(String, bool, String)>,
    /// The group and kind the selector was parsed for (some fields read differently).
    kind: String,
    group: String,
}

/// The field labels a kind supports besides `metadata.name` (and `metadata.namespace`
/// for namespaced kinds), as upstream's registries list them.
fn kind_fields(group: &str, kind: &str) -> &'static [&'static str] {
    match (group, kind) {
        ("", "Pod") => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        ("", "Event") => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        ("", "Secret") => &["type"],
        ("", "Node") => &["spec.unschedulable"],
        ("", "Namespace") => &["status.phase"],
        ("apps", "ReplicaSet") => &["status.replicas"],
        ("batch", "Job") => &["status.successful"],
        _ => &[],
    }
}

fn namespaced(group: &str, kind: &str) -> bool {
    crate::registry::find_kind(group, kind).is_none_or(|r| r.namespaced())
}

fn split_field_terms(s: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    if s.is_empty() {
        return terms;
    }
    let mut start = 0;
    let mut in_slash = false;
    for (i, c) in s.char_indices() {
        if in_slash {
            in_slash = false;
        } else if c == '\\' {
            in_slash = true;
        } else if c == ',' {
            terms.push(&s[start..i]);
            start = i + 1;
        }
    }
    terms.push(&s[start..]);
    terms
}

fn split_field_term(term: &str) -> Option<(&str, &str, &str)> {
    for (i, _) in term.char_indices() {
        let rest = &term[i..];
        for op in ["!=", "==", "="] {
            if let Some(rhs) = rest.strip_prefix(op) {
                return Some((&term[..i], op, rhs));
            }
        }
    }
    None
}

fn unescape_field_value(s: &str) -> Result<String, String> {
    if !s.contains(['\\', ',', '=']) {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut in_slash = false;
    for c in s.chars() {
        if in_slash {
            match c {
                '\\' | ',' | '=' => out.push(c),
                _ => return Err(format!("invalid field selector: invalid escape sequence: \\{c}")),
            }
            in_slash = false;
            continue;
        }
        match c {
            '\\' => in_slash = true,
            ',' | '=' => return Err(format!("invalid field selector: unescaped character in value: {c}")),
            _ => out.push(c),
        }
    }
    if in_slash {
        return Err("invalid field selector: invalid escape sequence: \\".to_string());
    }
    Ok(out)
}

fn escape_field_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | ',' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl FieldSelector {
    /// Parses `metadata.name=x,status.phase!=Failed` for the resource of `kind` (core
    /// `Pod`, `Event`...). Fields the kind does not support give upstream's error
    /// `field label not supported: <field>`.
    pub fn parse(s: &str, group: &str, kind: &str) -> Result<FieldSelector, String> {
        let mut terms = split_field_terms(s);
        terms.sort_unstable();
        let supported = kind_fields(group, kind);
        let ns = namespaced(group, kind);
        let mut reqs = Vec::new();
        for term in terms {
            if term.is_empty() {
                continue;
            }
            let Some((lhs, op, rhs)) = split_field_term(term) else {
                return Err(format!("invalid selector: '{s}'; can't understand '{term}'"));
            };
            let value = unescape_field_value(rhs)?;
            let field = lhs.trim();
            let ok = field == "metadata.name"
                || (ns && field == "metadata.namespace")
                || supported.contains(&field);
            if !ok {
                return Err(format!("field label not supported: {field}"));
            }
            reqs.push((field.to_string(), op != "!=", value));
        }
        Ok(FieldSelector { reqs, kind: kind.to_string(), group: group.to_string() })
    }

    /// Whether the object matches. Missing fields read as the empty string; booleans
    /// and numbers compare by their string form.
    pub fn matches(&self, obj: &Value) -> bool {
        self.reqs.iter().all(|(k, eq, v)| {
            let path = if self.group.is_empty() && self.kind == "Event" && k == "source" {
                "source.component"
            } else {
                k.as_str()
            };
            let actual = match crate::meta::path(obj, path) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Number(n)) => n.to_string(),
                _ => match path {
                    // Upstream reads these from typed fields, where absence is false / 0.
                    "spec.hostNetwork" | "spec.unschedulable" => "false".to_string(),
                    "status.replicas" | "status.successful" => "0".to_string(),
                    _ => String::new(),
                },
            };
            (actual == *v) == *eq
        })
    }

    /// If the selector pins `metadata.name` to one value, that value.
    pub fn exact_name(&self) -> Option<&str> {
        self.reqs.iter().find(|(k, eq, _)| k == "metadata.name" && *eq).map(|(_, _, v)| v.as_str())
    }

    /// Whether the selector matches everything.
    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }
}

impl fmt::Display for FieldSelector {
    /// The canonical form, values escaped: `metadata.name=x,status.phase!=Failed`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, eq, v)) in self.reqs.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{k}{}{}", if *eq { "=" } else { "!=" }, escape_field_value(v))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn parses_all_operators() {
        let s = LabelSelector::parse(
            "app=web, tier==front,env!=prod,zone in (b, a),x notin (c),has,!legacy,n>3,m<10",
        )
        .unwrap();
        assert_eq!(
            s.to_string(),
            "app=web,env!=prod,has,!legacy,m<10,n>3,tier==front,x notin (c),zone in (a,b)"
        );
        let l = labels(&[
            ("app", "web"),
            ("tier", "front"),
            ("env", "dev"),
            ("zone", "a"),
            ("has", ""),
            ("n", "4"),
            ("m", "9"),
        ]);
        assert!(s.matches(&l));
        let mut l2 = l.clone();
        l2.insert("legacy".into(), "1".into());
        assert!(!s.matches(&l2));
        let mut l3 = l.clone();
        l3.insert("x".into(), "c".into());
        assert!(!s.matches(&l3));
        let mut l4 = l.clone();
        l4.remove("has");
        assert!(!s.matches(&l4));
        let mut l5 = l;
        l5.insert("n".into(), "3".into());
        assert!(!s.matches(&l5));
    }

    #[test]
    fn empty_and_whitespace() {
        let s = LabelSelector::parse("").unwrap();
        assert!(s.is_empty());
        assert!(s.matches(&BTreeMap::new()));
        assert!(LabelSelector::parse("   ").unwrap().is_empty());
        let s = LabelSelector::parse("  app = web ,  tier  in(a)  ").unwrap();
        assert_eq!(s.to_string(), "app=web,tier in (a)");
    }

    #[test]
    fn not_equals_and_notin_match_missing_keys() {
        let s = LabelSelector::parse("a!=1,b notin (x)").unwrap();
        assert!(s.matches(&BTreeMap::new()));
        assert!(!s.matches(&labels(&[("a", "1")])));
    }

    #[test]
    fn empty_values() {
        let s = LabelSelector::parse("a=,b in (,x),c in ()").unwrap();
        assert_eq!(s.to_string(), "a=,b in (,x),c in ()");
        assert!(s.matches(&labels(&[("a", ""), ("b", ""), ("c", "")])));
        assert!(!s.matches(&labels(&[("a", "1"), ("b", ""), ("c", "")])));
    }

    #[test]
    fn in_and_notin_as_values() {
        let s = LabelSelector::parse("x in (in,notin),y=in").unwrap();
        assert_eq!(s.to_string(), "x in (in,notin),y=in");
    }

    #[test]
    fn prefixed_keys() {
        let s = LabelSelector::parse("app.kubernetes.io/name=web").unwrap();
        assert!(s.matches(&labels(&[("app.kubernetes.io/name", "web")])));
        assert!(LabelSelector::parse("Example.com/x=1").is_err());
        assert!(LabelSelector::parse("/x=1").is_err());
        assert!(LabelSelector::parse("a/b/c=1").is_err());
    }

    #[test]
    fn errors() {
        let e = LabelSelector::parse("-bad=1").unwrap_err();
        assert!(e.starts_with("unable to parse requirement: key: Invalid value: \"-bad\""), "{e}");
        let e = LabelSelector::parse("a=-x").unwrap_err();
        assert!(e.starts_with("unable to parse requirement: values[0][a]: Invalid value"), "{e}");
        let long = "a".repeat(64);
        let e = LabelSelector::parse(&format!("{long}=1")).unwrap_err();
        assert!(e.contains("name part must be no more than 63 characters"), "{e}");
        let e = LabelSelector::parse(&format!("a={long}")).unwrap_err();
        assert!(e.contains("must be no more than 63 characters"), "{e}");
        assert_eq!(LabelSelector::parse("a=b c").unwrap_err(), "found 'c', expected: ',' or 'end of string'");
        assert_eq!(LabelSelector::parse("a=b,").unwrap_err(), "found '', expected: identifier after ','");
        assert_eq!(
            LabelSelector::parse(",a").unwrap_err(),
            "found ',', expected: !, identifier, or 'end of string'"
        );
        assert_eq!(
            LabelSelector::parse("a in b").unwrap_err(),
            "unable to parse requirement: found 'b' expected: '('"
        );
        assert_eq!(
            LabelSelector::parse("a in (b").unwrap_err(),
            "unable to parse requirement: found '', expected: ',' or ')'"
        );
        assert_eq!(LabelSelector::parse("!a=b").unwrap_err(), "found '=', expected: ',' or 'end of string'");
        assert!(LabelSelector::parse("a>b").is_err());
        assert!(LabelSelector::parse("a=(b)").is_err());
    }

    #[test]
    fn from_json() {
        let v = json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["b", "a"]},
                {"key": "legacy", "operator": "DoesNotExist"},
                {"key": "env", "operator": "NotIn", "values": ["prod"]},
                {"key": "zone", "operator": "Exists"}
            ]
        });
        let s = LabelSelector::from_label_selector_json(&v).unwrap();
        assert_eq!(s.to_string(), "app=web,env notin (prod),!legacy,tier in (a,b),zone");
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "a"), ("zone", "z")])));
        assert!(LabelSelector::from_label_selector_json(&json!({})).unwrap().is_empty());
        assert!(LabelSelector::from_label_selector_json(&Value::Null).unwrap().is_empty());
        let e = LabelSelector::from_label_selector_json(
            &json!({"matchExpressions": [{"key": "a", "operator": "Foo"}]}),
        )
        .unwrap_err();
        assert_eq!(e, "\"Foo\" is not a valid label selector operator");
        assert!(LabelSelector::from_label_selector_json(
            &json!({"matchExpressions": [{"key": "a", "operator": "In", "values": []}]})
        )
        .is_err());
        assert!(LabelSelector::from_label_selector_json(
            &json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]})
        )
        .is_err());
        // The canonical string parses back to the same selector.
        assert_eq!(LabelSelector::parse(&s.to_string()).unwrap(), s);
    }

    #[test]
    fn field_selectors_for_pods() {
        let pod = json!({
            "metadata": {"name": "x", "namespace": "default"},
            "spec": {"nodeName": "n1", "hostNetwork": false},
            "status": {"phase": "Running"}
        });
        let s = FieldSelector::parse("status.phase!=Succeeded,status.phase!=Failed", "", "Pod").unwrap();
        assert!(s.matches(&pod));
        let s = FieldSelector::parse("spec.nodeName=n1,metadata.namespace==default", "", "Pod").unwrap();
        assert!(s.matches(&pod));
        assert!(FieldSelector::parse("spec.nodeName=", "", "Pod").unwrap().matches(&json!({})));
        assert!(FieldSelector::parse("spec.hostNetwork=false", "", "Pod").unwrap().matches(&pod));
        assert!(FieldSelector::parse("spec.hostNetwork=false", "", "Pod")
            .unwrap()
            .matches(&json!({"spec": {}})));
        assert!(!FieldSelector::parse("spec.hostNetwork=true", "", "Pod").unwrap().matches(&pod));
        assert!(!FieldSelector::parse("status.podIP=1.2.3.4", "", "Pod").unwrap().matches(&pod));
        assert_eq!(
            FieldSelector::parse("spec.containers=x", "", "Pod").unwrap_err(),
            "field label not supported: spec.containers"
        );
    }

    #[test]
    fn field_selectors_per_kind() {
        let ev = json!({
            "involvedObject": {"kind": "Pod", "uid": "u1", "name": "x"},
            "source": {"component": "kubelet"},
            "type": "Normal", "reason": "Started"
        });
        let s =
            FieldSelector::parse("involvedObject.uid=u1,source=kubelet,type=Normal", "", "Event").unwrap();
        assert!(s.matches(&ev));
        assert!(FieldSelector::parse("type=Opaque", "", "Secret").is_ok());
        assert!(FieldSelector::parse("type=Opaque", "", "ConfigMap").is_err());
        let node = json!({"metadata": {"name": "n"}, "spec": {}});
        assert!(FieldSelector::parse("spec.unschedulable=false", "", "Node").unwrap().matches(&node));
        assert_eq!(
            FieldSelector::parse("metadata.namespace=x", "", "Node").unwrap_err(),
            "field label not supported: metadata.namespace"
        );
        assert!(FieldSelector::parse("status.phase=Active", "", "Namespace").is_ok());
        let rs = json!({"status": {"replicas": 0}});
        assert!(FieldSelector::parse("status.replicas=0", "apps", "ReplicaSet").unwrap().matches(&rs));
        assert!(FieldSelector::parse("status.replicas=0", "apps", "ReplicaSet").unwrap().matches(&json!({})));
        assert!(FieldSelector::parse("status.successful=1", "batch", "Job").is_ok());
        assert!(FieldSelector::parse("status.replicas=1", "apps", "Deployment").is_err());
        assert!(FieldSelector::parse("metadata.namespace=a", "apps", "Deployment").is_ok());
    }

    #[test]
    fn field_selector_syntax() {
        let s = FieldSelector::parse("metadata.name=a\\,b\\=c\\\\", "", "ConfigMap").unwrap();
        assert_eq!(s.exact_name(), Some("a,b=c\\"));
        assert_eq!(s.to_string(), "metadata.name=a\\,b\\=c\\\\");
        assert!(s.matches(&json!({"metadata": {"name": "a,b=c\\"}})));
        assert!(FieldSelector::parse("metadata.name=a\\x", "", "Pod").is_err());
        assert!(FieldSelector::parse("metadata.name=a\\", "", "Pod").is_err());
        assert!(FieldSelector::parse("metadata.name=a=b", "", "Pod").is_err());
        assert_eq!(
            FieldSelector::parse("metadata.name", "", "Pod").unwrap_err(),
            "invalid selector: 'metadata.name'; can't understand 'metadata.name'"
        );
        let s = FieldSelector::parse("", "", "Pod").unwrap();
        assert!(s.is_empty());
        assert_eq!(s.exact_name(), None);
        let s = FieldSelector::parse("metadata.name!=x", "", "Pod").unwrap();
        assert_eq!(s.exact_name(), None);
        let s = FieldSelector::parse("metadata.name==x,,", "", "Pod").unwrap();
        assert_eq!(s.exact_name(), Some("x"));
        assert!(!s.matches(&json!({"metadata": {"name": "y"}})));
    }
}
