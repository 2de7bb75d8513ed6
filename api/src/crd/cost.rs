//! The cost of CEL rules (`x-kubernetes-validations`), bounded as upstream bounds it.
//!
//! When a CRD is written, every rule gets an estimated worst-case cost from the schema's
//! bounds: `self` (and `oldSelf`) has the shape of the rule's schema node, where a string is
//! at most `maxLength` long, a list has at most `maxItems` items and a map at most
//! `maxProperties` entries; where a bound is missing, upstream's worst case for a 3 MiB
//! request is used (a string of 3,145,726 characters; as many list items or map entries as
//! fit when each takes its minimal JSON size plus a separator). A rule over the cost
//! [`STATIC_ESTIMATED_COST_LIMIT`] is refused with upstream's `estimated rule cost exceeds
//! budget by factor of ...`; the sum over the schema of each rule's cost times the number of
//! times it can run (the product of the bounds of the lists and maps above its node) over
//! [`STATIC_ESTIMATED_CRD_COST_LIMIT`] is refused with `x-kubernetes-validations estimated
//! rule cost total for entire OpenAPIv3Schema exceeds budget by factor of ...`, the most
//! expensive rules named. Before a rule runs, the same estimate is made with the actual sizes
//! of the value; above [`PER_CALL_LIMIT`] the rule is not run and the object is refused with
//! `call cost exceeds limit for rule: ...`, so no rule can hold a request for long.
//!
//! How this differs from upstream's checker (cel-go's `checker.CostEstimator` with the
//! Kubernetes library's estimates): the model is simpler and coarser. Identifiers, field
//! selections, `has()`, indexing and most functions cost 1; comparisons, concatenation and
//! string functions (`contains`, `startsWith`, `matches`, `split`...) cost 1 plus a tenth of
//! the lengths they traverse (upstream's traversal factor), `matches` times a quarter of the
//! pattern's length; `in` over a list costs its length; a macro (`all`, `exists`,
//! `exists_one`, `map`, `filter`) costs its range plus, for each possible element, its
//! condition and step, so nested macros multiply the bounds of the lists they iterate.
//! Types are taken from the schema only (no type checking), so a value of unknown shape
//! (`x-kubernetes-preserve-unknown-fields`) is taken at its largest. Estimates are of the
//! same order as upstream's for the usual rules, not equal to them.

use crate::Cause;
use cel::common::ast::{operators, Expr, IdedExpr};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

/// Upstream's `StaticEstimatedCostLimit`: the most one rule may cost.
pub const STATIC_ESTIMATED_COST_LIMIT: u64 = 10_000_000;
/// Upstream's `StaticEstimatedCRDCostLimit`: the most all rules of a schema may cost.
pub const STATIC_ESTIMATED_CRD_COST_LIMIT: u64 = 100_000_000;
/// Upstream's `PerCallLimit`: the most one evaluation may cost.
pub const PER_CALL_LIMIT: u64 = 1_000_000;
/// Upstream's bound on a request body, from which unbounded sizes are estimated.
const MAX_REQUEST_SIZE_BYTES: u64 = 3 * 1024 * 1024;
/// Deepest schema or expression looked at.
const MAX_DEPTH: usize = 64;

/// What the estimate knows of a value: its kind and its largest size.
#[derive(Clone, Debug)]
pub(crate) enum Shape {
    /// A number, a boolean, null.
    Scalar,
    /// A string of at most this many characters.
    Str(u64),
    /// A list of at most this many items of this shape.
    List(u64, Box<Shape>),
    /// A map with at most this many entries of this shape.
    Map(u64, Box<Shape>),
    /// An object with these properties.
    Object(BTreeMap<String, Shape>),
    /// Anything: taken at its largest.
    Dyn,
    /// Nothing (a field an actual value does not have: using it is an error, not a cost).
    Absent,
}

const UNBOUNDED_STRING: u64 = MAX_REQUEST_SIZE_BYTES - 2;

fn flag(s: &Value, k: &str) -> bool {
    s.get(k).and_then(Value::as_bool) == Some(true)
}

/// The smallest JSON encoding of a value of `schema` (upstream's `MinSize` estimates).
fn min_size(schema: &Value) -> u64 {
    match schema.get("type").and_then(Value::as_str) {
        Some("string") => 2,
        Some("boolean") => 4,
        Some("object" | "array") => 2,
        _ => 1,
    }
}

fn additional(schema: &Value) -> Option<&Value> {
    schema.get("additionalProperties").filter(|a| a.is_object())
}

impl Shape {
    /// The largest value `schema` admits.
    pub(crate) fn of_schema(schema: &Value) -> Shape {
        Shape::of_schema_at(schema, 0)
    }

    fn of_schema_at(schema: &Value, depth: usize) -> Shape {
        if depth > MAX_DEPTH {
            return Shape::Dyn;
        }
        let bound = |k: &str| schema.get(k).and_then(Value::as_u64);
        match schema.get("type").and_then(Value::as_str) {
            Some("string") => Shape::Str(bound("maxLength").unwrap_or(UNBOUNDED_STRING)),
            Some("integer" | "number" | "boolean") => Shape::Scalar,
            Some("array") => {
                let items = schema.get("items").cloned().unwrap_or(Value::Null);
                let n = bound("maxItems").unwrap_or((MAX_REQUEST_SIZE_BYTES - 2) / (min_size(&items) + 1));
                Shape::List(n, Box::new(Shape::of_schema_at(&items, depth + 1)))
            }
            Some("object") => {
                if let Some(add) = additional(schema) {
                    let n =
                        bound("maxProperties").unwrap_or((MAX_REQUEST_SIZE_BYTES - 2) / (min_size(add) + 4));
                    Shape::Map(n, Box::new(Shape::of_schema_at(add, depth + 1)))
                } else if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                    Shape::Object(
                        props.iter().map(|(k, s)| (k.clone(), Shape::of_schema_at(s, depth + 1))).collect(),
                    )
                } else if flag(schema, "x-kubernetes-preserve-unknown-fields") {
                    Shape::Dyn
                } else {
                    Shape::Object(BTreeMap::new())
                }
            }
            _ if flag(schema, "x-kubernetes-int-or-string") => {
                Shape::Str(bound("maxLength").unwrap_or(UNBOUNDED_STRING))
            }
            _ => Shape::Dyn,
        }
    }

    /// The shape of a value as it is.
    pub(crate) fn of_value(v: &Value) -> Shape {
        Shape::of_value_at(v, 0)
    }

    fn of_value_at(v: &Value, depth: usize) -> Shape {
        if depth > MAX_DEPTH {
            return Shape::Dyn;
        }
        match v {
            Value::String(s) => Shape::Str(s.chars().count() as u64),
            Value::Array(a) => {
                let item = a.iter().map(|x| Shape::of_value_at(x, depth + 1)).reduce(Shape::merge);
                Shape::List(a.len() as u64, Box::new(item.unwrap_or(Shape::Scalar)))
            }
            Value::Object(m) => {
                Shape::Object(m.iter().map(|(k, x)| (k.clone(), Shape::of_value_at(x, depth + 1))).collect())
            }
            _ => Shape::Scalar,
        }
    }

    /// The larger of two shapes (for the items of a list).
    fn merge(self, other: Shape) -> Shape {
        match (self, other) {
            (Shape::Str(a), Shape::Str(b)) => Shape::Str(a.max(b)),
            (Shape::List(a, x), Shape::List(b, y)) => Shape::List(a.max(b), Box::new(x.merge(*y))),
            (Shape::Map(a, x), Shape::Map(b, y)) => Shape::Map(a.max(b), Box::new(x.merge(*y))),
            (Shape::Object(mut a), Shape::Object(b)) => {
                for (k, v) in b {
                    let merged = match a.remove(&k) {
                        Some(old) => old.merge(v),
                        None => v,
                    };
                    a.insert(k, merged);
                }
                Shape::Object(a)
            }
            (a, b) => {
                if b.size() > a.size() {
                    b
                } else {
                    a
                }
            }
        }
    }

    /// The largest number of elements a macro iterates over this value.
    fn len(&self) -> u64 {
        match self {
            Shape::Str(n) => *n,
            Shape::List(n, _) | Shape::Map(n, _) => *n,
            Shape::Object(p) => p.len() as u64,
            Shape::Scalar => 1,
            Shape::Dyn => (MAX_REQUEST_SIZE_BYTES - 2) / 2,
            Shape::Absent => 0,
        }
    }

    /// The largest size of the value (characters, or the sum over its elements), what a
    /// comparison or a copy traverses.
    fn size(&self) -> u64 {
        match self {
            Shape::Scalar => 1,
            Shape::Str(n) => *n,
            Shape::List(n, i) | Shape::Map(n, i) => n.saturating_mul(i.size()),
            Shape::Object(p) => p.values().fold(1u64, |acc, s| acc.saturating_add(s.size())),
            Shape::Dyn => MAX_REQUEST_SIZE_BYTES,
            Shape::Absent => 0,
        }
    }

    /// The shape of an element of this value (list item, map value or key, string character).
    fn element(&self) -> Shape {
        match self {
            Shape::List(_, i) => (**i).clone(),
            Shape::Map(_, _) | Shape::Object(_) => Shape::Str(UNBOUNDED_STRING.min(self.key_len())),
            Shape::Str(_) | Shape::Scalar => Shape::Scalar,
            Shape::Dyn => Shape::Dyn,
            Shape::Absent => Shape::Absent,
        }
    }

    fn key_len(&self) -> u64 {
        match self {
            Shape::Object(p) => p.keys().map(|k| k.len() as u64).max().unwrap_or(0),
            _ => UNBOUNDED_STRING,
        }
    }

    fn field(&self, name: &str) -> Shape {
        match self {
            Shape::Object(p) => p.get(name).cloned().unwrap_or(Shape::Dyn),
            Shape::Map(_, v) => (**v).clone(),
            _ => Shape::Dyn,
        }
    }
}

/// A tenth of a traversed length, rounded up (upstream's `StringTraversalCostFactor`).
fn traversal(n: u64) -> u64 {
    n.div_ceil(10)
}

struct Estimator {
    vars: HashMap<String, Shape>,
    /// Whether the variables hold actual values: then what is not there is absent, not
    /// anything.
    actual: bool,
}

impl Estimator {
    fn est(&mut self, e: &IdedExpr, depth: usize) -> (u64, Shape) {
        let (cost, shape) = self.est_any(e, depth);
        match shape {
            Shape::Dyn if self.actual => (cost, Shape::Absent),
            shape => (cost, shape),
        }
    }

    fn est_any(&mut self, e: &IdedExpr, depth: usize) -> (u64, Shape) {
        if depth > MAX_DEPTH {
            return (u64::MAX, Shape::Dyn);
        }
        match &e.expr {
            Expr::Unspecified | Expr::Struct(_) => (1, Shape::Dyn),
            Expr::Literal(l) => {
                let shape = match l {
                    cel::common::ast::LiteralValue::String(s) => Shape::Str(s.len() as u64),
                    cel::common::ast::LiteralValue::Bytes(b) => Shape::Str(b.len() as u64),
                    _ => Shape::Scalar,
                };
                (0, shape)
            }
            Expr::Ident(name) => (1, self.vars.get(name).cloned().unwrap_or(Shape::Dyn)),
            Expr::Select(s) => {
                let (c, shape) = self.est(&s.operand, depth + 1);
                let out = if s.test { Shape::Scalar } else { shape.field(&s.field) };
                (c.saturating_add(1), out)
            }
            Expr::List(l) => {
                let mut cost = 10u64;
                let mut item: Option<Shape> = None;
                for el in &l.elements {
                    let (c, s) = self.est(el, depth + 1);
                    cost = cost.saturating_add(c);
                    item = Some(match item {
                        Some(i) => i.merge(s),
                        None => s,
                    });
                }
                (cost, Shape::List(l.elements.len() as u64, Box::new(item.unwrap_or(Shape::Scalar))))
            }
            Expr::Map(m) => {
                let mut cost = 30u64;
                for entry in &m.entries {
                    if let cel::common::ast::EntryExpr::MapEntry(me) = &entry.expr {
                        cost = cost.saturating_add(self.est(&me.key, depth + 1).0);
                        cost = cost.saturating_add(self.est(&me.value, depth + 1).0);
                    }
                }
                (cost, Shape::Map(m.entries.len() as u64, Box::new(Shape::Dyn)))
            }
            Expr::Comprehension(c) => {
                let (range_cost, range) = self.est(&c.iter_range, depth + 1);
                let (init_cost, init) = self.est(&c.accu_init, depth + 1);
                let n = range.len();
                let saved: Vec<(String, Option<Shape>)> =
                    [Some(&c.iter_var), c.iter_var2.as_ref(), Some(&c.accu_var)]
                        .into_iter()
                        .flatten()
                        .map(|v| (v.clone(), self.vars.get(v).cloned()))
                        .collect();
                let (first, second) = match (&range, &c.iter_var2) {
                    // Two variables: index and item of a list, key and value of a map.
                    (Shape::List(_, i), Some(_)) => (Shape::Scalar, (**i).clone()),
                    (Shape::Map(_, v), Some(_)) => (range.element(), (**v).clone()),
                    _ => (range.element(), Shape::Dyn),
                };
                self.vars.insert(c.iter_var.clone(), first);
                if let Some(v2) = &c.iter_var2 {
                    self.vars.insert(v2.clone(), second);
                }
                self.vars.insert(c.accu_var.clone(), init.clone());
                let (cond_cost, _) = self.est(&c.loop_cond, depth + 1);
                let (step_cost, step) = self.est(&c.loop_step, depth + 1);
                // What the accumulator grows to: a list of at most `n` items (map, filter).
                let accu = match (&init, step) {
                    (Shape::List(..), Shape::List(_, item)) => Shape::List(n, item),
                    (_, _) => init,
                };
                self.vars.insert(c.accu_var.clone(), accu);
                let (result_cost, result) = self.est(&c.result, depth + 1);
                for (k, v) in saved {
                    match v {
                        Some(v) => self.vars.insert(k, v),
                        None => self.vars.remove(&k),
                    };
                }
                let per = cond_cost.saturating_add(step_cost);
                let cost = range_cost
                    .saturating_add(init_cost)
                    .saturating_add(n.saturating_mul(per))
                    .saturating_add(result_cost);
                (cost, result)
            }
            Expr::Call(call) => {
                let mut cost = 0u64;
                let target = call.target.as_ref().map(|t| {
                    let (c, s) = self.est(t, depth + 1);
                    cost = cost.saturating_add(c);
                    s
                });
                let args: Vec<Shape> = call
                    .args
                    .iter()
                    .map(|a| {
                        let (c, s) = self.est(a, depth + 1);
                        cost = cost.saturating_add(c);
                        s
                    })
                    .collect();
                let (own, shape) = call_cost(&call.func_name, target.as_ref(), &args);
                (cost.saturating_add(own), shape)
            }
        }
    }
}

/// The cost of one call (its arguments aside) and the shape of its result.
fn call_cost(name: &str, target: Option<&Shape>, args: &[Shape]) -> (u64, Shape) {
    let arg = |i: usize| args.get(i).cloned().unwrap_or(Shape::Scalar);
    // The receiver of a member call, or the first argument of a global one.
    let subject = target.cloned().unwrap_or_else(|| arg(0));
    let other = if target.is_some() { arg(0) } else { arg(1) };
    match name {
        operators::EQUALS
        | operators::NOT_EQUALS
        | operators::LESS
        | operators::LESS_EQUALS
        | operators::GREATER
        | operators::GREATER_EQUALS => (1 + traversal(subject.size().min(other.size())), Shape::Scalar),
        operators::ADD => match (&subject, &other) {
            (Shape::Str(a), Shape::Str(b)) => (1 + traversal(a + b), Shape::Str(a.saturating_add(*b))),
            (Shape::List(a, x), Shape::List(b, y)) => (
                1 + traversal(a + b),
                Shape::List(a.saturating_add(*b), Box::new((**x).clone().merge((**y).clone()))),
            ),
            _ => (1, Shape::Scalar),
        },
        operators::IN => match &other {
            Shape::List(n, i) => {
                (1 + n.saturating_mul(1 + traversal(i.size().min(subject.size()))), Shape::Scalar)
            }
            _ => (1, Shape::Scalar),
        },
        operators::INDEX | operators::OPT_INDEX => (1, subject.element_at()),
        operators::LOGICAL_AND
        | operators::LOGICAL_OR
        | operators::LOGICAL_NOT
        | operators::CONDITIONAL
        | operators::NOT_STRICTLY_FALSE
        | operators::NEGATE
        | operators::SUBSTRACT
        | operators::MULTIPLY
        | operators::DIVIDE
        | operators::MODULO => {
            let shape = if name == operators::CONDITIONAL { arg(1).merge(arg(2)) } else { Shape::Scalar };
            (1, shape)
        }
        "size" | "int" | "uint" | "double" | "bool" | "type" | "duration" | "timestamp" | "dyn" => {
            (1, if name == "dyn" { subject } else { Shape::Scalar })
        }
        "string" | "bytes" => (1 + traversal(subject.size()), Shape::Str(subject.size())),
        "contains" | "startsWith" | "endsWith" | "indexOf" | "lastIndexOf" => {
            (1 + traversal(subject.size()), Shape::Scalar)
        }
        "matches" => {
            let pattern = other.size().max(1);
            (1 + traversal(subject.size()).saturating_mul(pattern.div_ceil(4)), Shape::Scalar)
        }
        "lowerAscii" | "upperAscii" | "trim" | "replace" | "substring" | "charAt" | "reverse" | "format"
        | "quote" => (1 + traversal(subject.size()), Shape::Str(subject.size())),
        "split" => {
            (1 + traversal(subject.size()), Shape::List(subject.size(), Box::new(Shape::Str(subject.size()))))
        }
        "join" => (1 + traversal(subject.size()), Shape::Str(subject.size())),
        "max" | "min" | "sum" => (1 + subject.len(), Shape::Scalar),
        _ => (1 + traversal(subject.size()), Shape::Dyn),
    }
}

impl Shape {
    fn element_at(&self) -> Shape {
        match self {
            Shape::List(_, i) | Shape::Map(_, i) => (**i).clone(),
            Shape::Object(_) | Shape::Dyn => Shape::Dyn,
            _ => Shape::Scalar,
        }
    }
}

/// The estimated worst-case cost of `program` with `self` (and `oldSelf`) of `this` shape.
pub(crate) fn estimate(program: &cel::Program, this: &Shape) -> u64 {
    let vars = HashMap::from([("self".to_string(), this.clone()), ("oldSelf".to_string(), this.clone())]);
    Estimator { vars, actual: false }.est(program.expression(), 0).0
}

/// Upstream's `getCostErrorMessage`.
fn cost_error(what: &str, cost: u64, limit: u64) -> String {
    let factor = cost as f64 / limit as f64;
    let factor = if factor > 100.0 {
        "more than 100x".to_string()
    } else if factor < 1.5 {
        format!("{factor:.6}x")
    } else {
        format!("{factor:.1}x")
    };
    format!(
        "{what} exceeds budget by factor of {factor} (try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)"
    )
}

/// One rule's place and cost, for the schema's total.
struct Seen {
    field: String,
    total: u64,
}

fn walk(
    schema: &Value,
    field: &str,
    cardinality: u64,
    out: &mut Vec<Cause>,
    seen: &mut Vec<Seen>,
    depth: usize,
) {
    if depth > MAX_DEPTH || !schema.is_object() {
        return;
    }
    if let Some(rules) = schema.get("x-kubernetes-validations").and_then(Value::as_array) {
        let this = Shape::of_schema(schema);
        for (i, r) in rules.iter().enumerate() {
            let Some(rule) = r.get("rule").and_then(Value::as_str).filter(|r| !r.is_empty()) else {
                continue;
            };
            // Rules that do not compile are reported by `rules::check_definitions`.
            let Ok(program) = super::rules::compile(rule) else { continue };
            let cost = estimate(&program, &this);
            let at = format!("{field}.x-kubernetes-validations[{i}].rule");
            if cost > STATIC_ESTIMATED_COST_LIMIT {
                out.push(Cause::forbidden(
                    at.clone(),
                    format!(
                        "Forbidden: {}",
                        cost_error("estimated rule cost", cost, STATIC_ESTIMATED_COST_LIMIT)
                    ),
                ));
            }
            seen.push(Seen { field: at, total: cost.saturating_mul(cardinality) });
        }
    }
    let bound = |k: &str| schema.get(k).and_then(Value::as_u64);
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (k, sub) in props {
            walk(sub, &format!("{field}.properties[{k}]"), cardinality, out, seen, depth + 1);
        }
    }
    if let Some(items) = schema.get("items").filter(|i| i.is_object()) {
        let n = bound("maxItems").unwrap_or((MAX_REQUEST_SIZE_BYTES - 2) / (min_size(items) + 1));
        walk(items, &format!("{field}.items"), cardinality.saturating_mul(n), out, seen, depth + 1);
    }
    if let Some(add) = additional(schema) {
        let n = bound("maxProperties").unwrap_or((MAX_REQUEST_SIZE_BYTES - 2) / (min_size(add) + 4));
        walk(
            add,
            &format!("{field}.additionalProperties"),
            cardinality.saturating_mul(n),
            out,
            seen,
            depth + 1,
        );
    }
}

/// Checks the estimated costs of every rule of a version's `openAPIV3Schema` at `field`:
/// each within [`STATIC_ESTIMATED_COST_LIMIT`], their total (each times the times it can
/// run) within [`STATIC_ESTIMATED_CRD_COST_LIMIT`].
pub fn check_schema(schema: &Value, field: &str, out: &mut Vec<Cause>) {
    let mut seen = Vec::new();
    walk(schema, field, 1, out, &mut seen, 0);
    let total = seen.iter().fold(0u64, |acc, s| acc.saturating_add(s.total));
    if total > STATIC_ESTIMATED_CRD_COST_LIMIT {
        seen.sort_by_key(|s| std::cmp::Reverse(s.total));
        // The most expensive ones; rules under 1% of the per-rule limit are not named.
        for s in seen.iter().filter(|s| s.total >= STATIC_ESTIMATED_COST_LIMIT / 100).take(4) {
            out.push(Cause::forbidden(
                s.field.clone(),
                "Forbidden: contributed to estimated rule cost total exceeding cost limit for entire OpenAPIv3Schema",
            ));
        }
        out.push(Cause::forbidden(
            field,
            format!(
                "Forbidden: {}",
                cost_error(
                    "x-kubernetes-validations estimated rule cost total for entire OpenAPIv3Schema",
                    total,
                    STATIC_ESTIMATED_CRD_COST_LIMIT
                )
            ),
        ));
    }
}

/// The cost of running `program` on these values, estimated from their actual sizes; `Err`
/// with upstream's reason when over [`PER_CALL_LIMIT`].
pub(crate) fn check_call(program: &cel::Program, this: &Value, old: Option<&Value>) -> Result<u64, ()> {
    let mut shape = Shape::of_value(this);
    if let Some(o) = old {
        shape = shape.merge(Shape::of_value(o));
    }
    let vars = HashMap::from([("self".to_string(), shape.clone()), ("oldSelf".to_string(), shape)]);
    let cost = Estimator { vars, actual: true }.est(program.expression(), 0).0;
    if cost > PER_CALL_LIMIT {
        Err(())
    } else {
        Ok(cost)
    }
}

impl Shape {
    fn of_cel_at(v: &cel::Value, depth: usize) -> Shape {
        if depth > MAX_DEPTH {
            return Shape::Dyn;
        }
        match v {
            cel::Value::String(s) => Shape::Str(s.chars().count() as u64),
            cel::Value::Bytes(b) => Shape::Str(b.len() as u64),
            cel::Value::List(l) => {
                let item = l.iter().map(|x| Shape::of_cel_at(x, depth + 1)).reduce(Shape::merge);
                Shape::List(l.len() as u64, Box::new(item.unwrap_or(Shape::Scalar)))
            }
            cel::Value::Map(m) => Shape::Object(
                m.map
                    .iter()
                    .map(|(k, x)| {
                        let key = match k {
                            cel::objects::Key::String(s) => s.to_string(),
                            other => format!("{other:?}"),
                        };
                        (key, Shape::of_cel_at(x, depth + 1))
                    })
                    .collect(),
            ),
            _ => Shape::Scalar,
        }
    }
}

/// The runtime cap of an expression evaluated with `vars` (ValidatingAdmissionPolicy
/// expressions, webhook `matchConditions`): its cost estimated from the actual sizes of the
/// values; `Err` with cel-go's message when over [`PER_CALL_LIMIT`].
pub fn check_call_with(program: &cel::Program, vars: &[(&str, cel::Value)]) -> Result<u64, String> {
    let vars = vars.iter().map(|(n, v)| (n.to_string(), Shape::of_cel_at(v, 0))).collect();
    let cost = Estimator { vars, actual: true }.est(program.expression(), 0).0;
    if cost > PER_CALL_LIMIT {
        Err("operation cancelled: actual cost limit exceeded".into())
    } else {
        Ok(cost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cost(rule: &str, schema: Value) -> u64 {
        estimate(&cel::Program::compile(rule).unwrap(), &Shape::of_schema(&schema))
    }

    fn two_lists(max: Option<u64>) -> Value {
        let mut list = json!({"type": "array", "items": {"type": "integer"}});
        if let Some(m) = max {
            list["maxItems"] = json!(m);
        }
        json!({"type": "object", "properties": {"a": list.clone(), "b": list}})
    }

    const NESTED: &str = "self.a.all(x, self.b.all(y, x != y))";

    #[test]
    fn nested_macros_multiply_the_bounds_of_their_lists() {
        let unbounded = cost(NESTED, two_lists(None));
        assert!(unbounded > STATIC_ESTIMATED_COST_LIMIT * 100, "{unbounded}");
        let bounded = cost(NESTED, two_lists(Some(10)));
        assert!(bounded < 10_000, "{bounded}");
        // Comparing unbounded strings costs a tenth of their worst-case length.
        let strings = json!({"type": "object", "properties": {
            "a": {"type": "array", "maxItems": 10, "items": {"type": "string"}},
            "b": {"type": "array", "maxItems": 10, "items": {"type": "string", "maxLength": 64}}}});
        let with_strings = cost(NESTED, strings);
        assert!((1_000..10_000).contains(&with_strings), "{with_strings}");
        // Unbounded strings cost a tenth of upstream's worst-case length to traverse.
        let cheap = cost("self.startsWith('my-')", json!({"type": "string"}));
        assert_eq!(cheap, 1 + 1 + traversal(UNBOUNDED_STRING));
        assert!(cheap < STATIC_ESTIMATED_COST_LIMIT);
        assert_eq!(
            cost(
                "self.replicas <= 5",
                json!({"type": "object", "properties": {"replicas": {"type": "integer"}}})
            ),
            4
        );
    }

    #[test]
    fn schemas_over_budget_are_refused_with_upstreams_messages() {
        let mut schema = two_lists(None);
        schema["x-kubernetes-validations"] = json!([{"rule": NESTED}]);
        let mut out = Vec::new();
        check_schema(&schema, "s", &mut out);
        let got: Vec<String> = out.iter().map(|c| format!("{}: {}", c.field, c.message)).collect();
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got[0].starts_with("s.x-kubernetes-validations[0].rule: Forbidden: estimated rule cost exceeds budget by factor of more than 100x (try simplifying the rule"), "{got:?}");
        assert_eq!(got[1], "s.x-kubernetes-validations[0].rule: Forbidden: contributed to estimated rule cost total exceeding cost limit for entire OpenAPIv3Schema");
        assert!(got[2].starts_with("s: Forbidden: x-kubernetes-validations estimated rule cost total for entire OpenAPIv3Schema exceeds budget by factor of more than 100x"), "{got:?}");
        let mut bounded = two_lists(Some(10));
        bounded["x-kubernetes-validations"] = json!([{"rule": NESTED}]);
        let mut out = Vec::new();
        check_schema(&bounded, "s", &mut out);
        assert!(out.is_empty(), "{out:?}");
        // A cheap rule on each item of an unbounded list of unbounded strings: the total
        // is over budget, as upstream's.
        let per_item = json!({"type": "array", "items": {"type": "string", "x-kubernetes-validations": [{"rule": "self.startsWith('a')"}]}});
        let mut out = Vec::new();
        check_schema(&per_item, "s", &mut out);
        assert!(out.iter().any(|c| c.message.contains("estimated rule cost total")), "{out:?}");
        assert_eq!(
            cost_error("x", 12_000_000, 10_000_000).split(" (").next().unwrap(),
            "x exceeds budget by factor of 1.200000x"
        );
        assert_eq!(
            cost_error("x", 25_000_000, 10_000_000).split(" (").next().unwrap(),
            "x exceeds budget by factor of 2.5x"
        );
    }

    #[test]
    fn calls_are_capped_by_the_actual_sizes() {
        let p = cel::Program::compile(NESTED).unwrap();
        let small = json!({"a": ["x", "y"], "b": ["z"]});
        assert!(check_call(&p, &small, None).is_ok());
        let many: Vec<String> = (0..2000).map(|i| i.to_string()).collect();
        let big = json!({"a": many, "b": many});
        assert!(check_call(&p, &big, None).is_err());
        // A field the value does not have costs nothing (it is guarded, or an error).
        let guarded = cel::Program::compile("!has(self.c) || self.c.all(x, self.c.all(y, x != y))").unwrap();
        assert!(check_call(&guarded, &small, None).is_ok());
        let vars = [("object", cel::Value::from(vec![1i64, 2, 3]))];
        assert!(check_call_with(&guarded, &vars).is_ok());
    }
}
