//! The Kubernetes protobuf encoding (`application/vnd.kubernetes.protobuf`) of every stable kind.
//!
//! client-go's typed clients (kubectl `create …`, `describe`, `auth can-i`, Helm, controllers)
//! POST protobuf bodies and ask for protobuf replies (KUBECTL.md 0.4). Such a body is the 4 magic bytes `k8s\0` followed by a
//! `runtime.Unknown` message: {1: TypeMeta{1: apiVersion, 2: kind}, 2: raw,
//! 3: contentEncoding, 4: contentType}, where `raw` is the object's own protobuf.
//!
//! A small wire reader walks the bytes guided by upstream's message descriptors (see
//! [`descriptors`]: generated from `generated.proto` and the Go types of every stable API
//! group, no hand-written field table) and produces the object's Kubernetes JSON form; the
//! writer does the reverse for responses (objects, lists, Status, watch events). Unknown
//! fields are skipped. The reader never panics and never allocates more than a
//! small multiple of the input size: every length is checked against the remaining
//! buffer, and nesting is bounded.
//!
//! JSON presence follows Go's `encoding/json` view of the decoded Go struct: upstream's
//! marshaller writes every non-pointer field, zero or not, so zero scalars of value fields
//! (`omitempty` in Go) are dropped, while pointer fields (`replicas`, `immutable`...) are
//! kept whenever present on the wire, even as `0` or `false`. Nested messages that are
//! present are emitted, possibly as `{}`; a zero `metav1.Time` (empty message) is omitted.
//!
//! ```
//! use serde_json::json;
//! let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
//!                 "metadata": {"name": "cm1"}, "data": {"a": "b"}});
//! let body = capstan_api::protobuf::encode(&cm).unwrap();
//! assert!(body.starts_with(b"k8s\0"));
//! assert_eq!(capstan_api::protobuf::decode(&body).unwrap(), cm);
//! ```

mod descriptors;

use base64::Engine as _;
use descriptors::{Card, Field, Msg, Pool, Ty, POOL};
use serde_json::{Map, Value};

/// The prefix of every Kubernetes protobuf body: `k8s` then a NUL byte.
pub const MAGIC: &[u8; 4] = b"k8s\0";

/// How deeply messages may nest before decoding gives up.
const MAX_DEPTH: usize = 64;

const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_FIXED32: u8 = 5;

/// Why a protobuf body could not be decoded or an object could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtobufError {
    /// The body does not start with `k8s\0`.
    #[error("body does not start with the kubernetes protobuf prefix \"k8s\\x00\"")]
    BadMagic,
    /// A varint, a length-delimited value or a fixed-size value runs past the end of its buffer.
    #[error("truncated protobuf message")]
    Truncated,
    /// A varint longer than 10 bytes or overflowing 64 bits.
    #[error("malformed protobuf varint")]
    BadVarint,
    /// A field tag with field number 0 or beyond the protobuf maximum.
    #[error("invalid protobuf field tag")]
    BadTag,
    /// A wire type that is not supported (groups, or the reserved values 6 and 7).
    #[error("unsupported protobuf wire type {0}")]
    UnsupportedWireType(u8),
    /// A known field arrived with a wire type that does not match its declared type.
    #[error("wrong protobuf wire type {wire_type} for field {field} of {message}")]
    WrongWireType {
        /// The message type being decoded.
        message: &'static str,
        /// The field's JSON name.
        field: &'static str,
        /// The wire type found.
        wire_type: u8,
    },
    /// Messages nested deeper than the limit.
    #[error("protobuf message nested too deeply")]
    TooDeep,
    /// The envelope (or the object to encode) has an empty apiVersion or kind.
    #[error("protobuf envelope has no apiVersion or kind")]
    MissingTypeMeta,
    /// The envelope declares a content encoding (e.g. gzip), which is not supported.
    #[error("unsupported content encoding {0:?} in protobuf envelope")]
    UnsupportedEncoding(String),
    /// The kind has no descriptor here; the gateway answers 415 Unsupported Media Type.
    #[error("protobuf is not supported for kind {kind:?} of apiVersion {api_version:?}")]
    UnsupportedKind {
        /// The envelope's apiVersion.
        api_version: String,
        /// The envelope's kind.
        kind: String,
    },
    /// A `runtime.RawExtension` whose bytes are neither JSON nor a protobuf object.
    #[error("embedded object is neither json nor protobuf")]
    InvalidRaw,
    /// A `metav1.Time` whose seconds are outside the representable range.
    #[error("timestamp with {0} seconds is out of range")]
    InvalidTime(i64),
    /// A JSON value that cannot be encoded as its field's protobuf type.
    #[error("cannot encode field {field}: {reason}")]
    Encode {
        /// The JSON path of the field, e.g. `spec.replicas`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

type Result<T> = std::result::Result<T, ProtobufError>;

/// Decodes a `k8s\0`-prefixed runtime.Unknown envelope into the object's Kubernetes JSON form
/// (with apiVersion and kind from the envelope's TypeMeta).
///
/// Kinds without a descriptor give [`ProtobufError::UnsupportedKind`]; fields of a covered
/// kind that have no descriptor are skipped.
/// Decodes a `k8s\0`-prefixed runtime.Unknown envelope into the object's Kubernetes JSON form
/// (with apiVersion and kind from the envelope's TypeMeta).
///
/// Kinds without a descriptor give [`ProtobufError::UnsupportedKind`]; unknown fields are
/// skipped.
pub fn decode(body: &[u8]) -> Result<Value> {
    decode_at(body, 1)
}

fn decode_at(body: &[u8], depth: usize) -> Result<Value> {
    let rest = body.strip_prefix(MAGIC.as_slice()).ok_or(ProtobufError::BadMagic)?;
    let mut r = Reader::new(rest);
    let (mut api_version, mut kind) = (String::new(), String::new());
    let mut raw: &[u8] = &[];
    let mut encoding = String::new();
    while !r.is_empty() {
        let (num, wt) = r.tag()?;
        if (1..=4).contains(&num) && wt != WIRE_LEN {
            let field = ["typeMeta", "raw", "contentEncoding", "contentType"]
                .get(num as usize - 1)
                .copied()
                .unwrap_or("");
            return Err(ProtobufError::WrongWireType { message: "Unknown", field, wire_type: wt });
        }
        match num {
            1 => {
                let mut tm = Reader::new(r.bytes()?);
                while !tm.is_empty() {
                    let (n, w) = tm.tag()?;
                    match (n, w) {
                        (1, WIRE_LEN) => api_version = lossy(tm.bytes()?),
                        (2, WIRE_LEN) => kind = lossy(tm.bytes()?),
                        (1 | 2, _) => {
                            let field = if n == 1 { "apiVersion" } else { "kind" };
                            return Err(ProtobufError::WrongWireType {
                                message: "TypeMeta",
                                field,
                                wire_type: w,
                            });
                        }
                        _ => tm.skip(w)?,
                    }
                }
            }
            2 => raw = r.bytes()?,
            3 => encoding = lossy(r.bytes()?),
            4 => {
                r.bytes()?;
            }
            _ => r.skip(wt)?,
        }
    }
    if !encoding.is_empty() {
        return Err(ProtobufError::UnsupportedEncoding(encoding));
    }
    if api_version.is_empty() || kind.is_empty() {
        return Err(ProtobufError::MissingTypeMeta);
    }
    let pool = pool();
    let msg = pool.kind(&api_version, &kind).ok_or_else(|| ProtobufError::UnsupportedKind {
        api_version: api_version.clone(),
        kind: kind.clone(),
    })?;
    let fields = decode_msg(pool, msg, raw, depth)?;
    let mut obj = Map::new();
    obj.insert("apiVersion".into(), Value::String(api_version));
    obj.insert("kind".into(), Value::String(kind));
    obj.extend(fields);
    Ok(Value::Object(obj))
}

/// Whether objects of `(apiVersion, kind)` have a protobuf form here.
pub fn supports(api_version: &str, kind: &str) -> bool {
    pool().kind(api_version, kind).is_some()
}

/// Encodes a JSON object of a supported kind (an object, a list, a Status, DeleteOptions...)
/// into a `k8s\0`-prefixed runtime.Unknown envelope, as upstream's protobuf serializer does.
///
/// `null` values are treated as absent; fields unknown to the kind are dropped.
pub fn encode(obj: &Value) -> Result<Vec<u8>> {
    encode_at(obj, 1)
}

fn encode_at(obj: &Value, depth: usize) -> Result<Vec<u8>> {
    let map = obj.as_object().ok_or_else(|| encode_err(&Path::ROOT, "expected a json object"))?;
    let api_version = map.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = map.get("kind").and_then(Value::as_str).unwrap_or("");
    if api_version.is_empty() || kind.is_empty() {
        return Err(ProtobufError::MissingTypeMeta);
    }
    let pool = pool();
    let msg = pool.kind(api_version, kind).ok_or_else(|| ProtobufError::UnsupportedKind {
        api_version: api_version.to_owned(),
        kind: kind.to_owned(),
    })?;
    let raw = encode_msg(pool, msg, map, &Path::ROOT, depth)?;
    let mut type_meta = Vec::new();
    put_bytes(&mut type_meta, 1, api_version.as_bytes());
    put_bytes(&mut type_meta, 2, kind.as_bytes());
    let mut out = Vec::with_capacity(raw.len() + type_meta.len() + 16);
    out.extend_from_slice(MAGIC);
    put_bytes(&mut out, 1, &type_meta);
    put_bytes(&mut out, 2, &raw);
    // Upstream writes the empty contentEncoding and contentType too.
    put_bytes(&mut out, 3, b"");
    put_bytes(&mut out, 4, b"");
    Ok(out)
}

/// Encodes one event of a protobuf watch stream (`application/vnd.kubernetes.protobuf;stream=watch`):
/// a 4-byte big-endian length, then a `metav1.WatchEvent` {type=1, object=2 RawExtension} without
/// envelope, whose `raw` is the object's own `k8s\0` envelope.
pub fn encode_watch_event(event_type: &str, obj: &Value) -> Result<Vec<u8>> {
    let object = encode(obj)?;
    let mut raw_ext = Vec::with_capacity(object.len() + 8);
    put_bytes(&mut raw_ext, 1, &object);
    let mut event = Vec::with_capacity(raw_ext.len() + event_type.len() + 16);
    put_bytes(&mut event, 1, event_type.as_bytes());
    put_bytes(&mut event, 2, &raw_ext);
    let len = u32::try_from(event.len()).map_err(|_| encode_err(&Path::ROOT, "watch event too large"))?;
    let mut frame = Vec::with_capacity(event.len() + 4);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&event);
    Ok(frame)
}

/// Decodes the payload of one watch frame (without its length prefix) into the event type and
/// the object's JSON form, as a client does.
pub fn decode_watch_event(event: &[u8]) -> Result<(String, Value)> {
    let mut r = Reader::new(event);
    let (mut event_type, mut object) = (String::new(), None);
    while !r.is_empty() {
        let (num, wt) = r.tag()?;
        match (num, wt) {
            (1, WIRE_LEN) => event_type = lossy(r.bytes()?),
            (2, WIRE_LEN) => {
                let mut ext = Reader::new(r.bytes()?);
                while !ext.is_empty() {
                    match ext.tag()? {
                        (1, WIRE_LEN) => object = Some(decode(ext.bytes()?)?),
                        (_, w) => ext.skip(w)?,
                    }
                }
            }
            (1 | 2, _) => {
                return Err(ProtobufError::WrongWireType {
                    message: "WatchEvent",
                    field: "type",
                    wire_type: wt,
                })
            }
            _ => r.skip(wt)?,
        }
    }
    Ok((event_type, object.ok_or(ProtobufError::MissingTypeMeta)?))
}

fn pool() -> &'static Pool {
    &POOL
}

// ---------------------------------------------------------------------------------------
// Wire reader
// ---------------------------------------------------------------------------------------

/// A cursor over a protobuf buffer; every read is bounds-checked.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn varint(&mut self) -> Result<u64> {
        let mut value: u64 = 0;
        for i in 0..10 {
            let (&byte, rest) = self.buf.split_first().ok_or(ProtobufError::Truncated)?;
            self.buf = rest;
            // The 10th byte may only carry the 64th bit.
            if i == 9 && byte > 1 {
                return Err(ProtobufError::BadVarint);
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(ProtobufError::BadVarint)
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8]> {
        let n = usize::try_from(n).map_err(|_| ProtobufError::Truncated)?;
        if n > self.buf.len() {
            return Err(ProtobufError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// A length-delimited value.
    fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.varint()?;
        self.take(n)
    }

    /// A field tag: (field number, wire type).
    fn tag(&mut self) -> Result<(u32, u8)> {
        let tag = self.varint()?;
        let wire_type = (tag & 7) as u8;
        let num = u32::try_from(tag >> 3).map_err(|_| ProtobufError::BadTag)?;
        if num == 0 || num > (1 << 29) - 1 {
            return Err(ProtobufError::BadTag);
        }
        Ok((num, wire_type))
    }

    /// Skips a field's value; groups (3, 4) are not supported, as upstream never uses them.
    fn skip(&mut self, wire_type: u8) -> Result<()> {
        match wire_type {
            0 => self.varint().map(drop),
            1 => self.take(8).map(drop),
            2 => self.bytes().map(drop),
            5 => self.take(4).map(drop),
            other => Err(ProtobufError::UnsupportedWireType(other)),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------

fn decode_msg(pool: &'static Pool, msg: usize, buf: &[u8], depth: usize) -> Result<Map<String, Value>> {
    if depth > MAX_DEPTH {
        return Err(ProtobufError::TooDeep);
    }
    let msg = &pool.msgs[msg];
    let mut out = Map::new();
    let mut r = Reader::new(buf);
    while !r.is_empty() {
        let (num, wt) = r.tag()?;
        match msg.field(num) {
            Some(field) => decode_field(pool, msg, field, wt, &mut r, &mut out, depth)?,
            None => r.skip(wt)?,
        }
    }
    Ok(out)
}

fn is_numeric(ty: &Ty) -> bool {
    matches!(ty, Ty::I32 | Ty::I64 | Ty::Bool | Ty::F64 | Ty::F32)
}

fn decode_field(
    pool: &'static Pool,
    msg: &'static Msg,
    field: &'static Field,
    wt: u8,
    r: &mut Reader<'_>,
    out: &mut Map<String, Value>,
    depth: usize,
) -> Result<()> {
    let wrong =
        || ProtobufError::WrongWireType { message: msg.short_name(), field: &field.name, wire_type: wt };
    if field.card == Card::Rep && is_numeric(&field.ty) && wt == WIRE_LEN {
        // A packed repeated scalar.
        let mut packed = Reader::new(r.bytes()?);
        while !packed.is_empty() {
            let wire = numeric_wire(&field.ty);
            let v = read_numeric(&field.ty, wire, &mut packed).ok_or_else(wrong)??;
            push(out, &field.name, v);
        }
        return Ok(());
    }
    if field.card == Card::Inline {
        if wt != WIRE_LEN {
            return Err(wrong());
        }
        let data = r.bytes()?;
        if let Ty::Msg(sub) = field.ty {
            out.extend(decode_msg(pool, sub, data, depth + 1)?);
        }
        return Ok(());
    }
    let value = match decode_single(pool, &field.ty, wt, r, depth) {
        Ok(Some(v)) => Some(v),
        Ok(None) => None,
        Err(ProtobufError::WrongWireType { message: "", .. }) => return Err(wrong()),
        Err(e) => return Err(e),
    };
    match (value, field.card) {
        (Some(v), Card::Rep) => push(out, &field.name, v),
        (None, Card::Rep) => {}
        // A zero metav1.Time: JSON null, omitted.
        (None, _) => {
            out.remove(&field.name);
        }
        (Some(Value::Object(obj)), _) if matches!(field.ty, Ty::Msg(_) | Ty::Map(_)) => {
            // A repeated occurrence of a singular message (or map entry) merges into the first.
            match out.get_mut(&field.name) {
                Some(Value::Object(existing)) => existing.extend(obj),
                _ => {
                    out.insert(field.name.clone(), Value::Object(obj));
                }
            }
        }
        (Some(v), card) => {
            let scalar = matches!(field.ty, Ty::Str | Ty::Bytes) || is_numeric(&field.ty);
            if card == Card::Opt && scalar && is_zero(&v) {
                // Last occurrence wins: a later zero clears an earlier value.
                out.remove(&field.name);
            } else {
                out.insert(field.name.clone(), v);
            }
        }
    }
    Ok(())
}

fn numeric_wire(ty: &Ty) -> u8 {
    match ty {
        Ty::F64 => WIRE_FIXED64,
        Ty::F32 => WIRE_FIXED32,
        _ => WIRE_VARINT,
    }
}

/// Reads a numeric value of wire type `wt`; `None` when the wire type does not fit.
fn read_numeric(ty: &Ty, wt: u8, r: &mut Reader<'_>) -> Option<Result<Value>> {
    if wt != numeric_wire(ty) {
        return None;
    }
    Some(match ty {
        // Go truncates to 32 bits, as does a negative int32 sign-extended to 64 on the wire.
        Ty::I32 => r.varint().map(|v| Value::from(v as i32)),
        Ty::Bool => r.varint().map(|v| Value::Bool(v != 0)),
        Ty::F64 => r.take(8).map(|b| {
            let bits = u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
            float(f64::from_bits(bits))
        }),
        Ty::F32 => r.take(4).map(|b| {
            let bits = u32::from_le_bytes(b.try_into().unwrap_or([0; 4]));
            float(f64::from(f32::from_bits(bits)))
        }),
        _ => r.varint().map(|v| Value::from(v as i64)),
    })
}

fn float(f: f64) -> Value {
    serde_json::Number::from_f64(f).map(Value::Number).unwrap_or(Value::Null)
}

/// A wire type mismatch, to be named by the caller (who knows the field).
fn mismatch(wt: u8) -> ProtobufError {
    ProtobufError::WrongWireType { message: "", field: "", wire_type: wt }
}

/// Decodes one value of type `ty`; `None` for a zero `metav1.Time` (JSON null).
fn decode_single(
    pool: &'static Pool,
    ty: &Ty,
    wt: u8,
    r: &mut Reader<'_>,
    depth: usize,
) -> Result<Option<Value>> {
    if is_numeric(ty) {
        return read_numeric(ty, wt, r).ok_or_else(|| mismatch(wt))?.map(Some);
    }
    if wt != WIRE_LEN {
        return Err(mismatch(wt));
    }
    let data = r.bytes()?;
    if depth + 1 > MAX_DEPTH {
        return Err(ProtobufError::TooDeep);
    }
    Ok(match ty {
        Ty::Str => Some(Value::String(lossy(data))),
        Ty::Bytes => Some(Value::String(base64_encode(data))),
        Ty::Msg(sub) => Some(Value::Object(decode_msg(pool, *sub, data, depth + 1)?)),
        Ty::Items(sub) => {
            let mut obj = decode_msg(pool, *sub, data, depth + 1)?;
            Some(obj.remove("items").unwrap_or_else(|| Value::Array(Vec::new())))
        }
        Ty::Time => decode_time(data, false)?.map(Value::String),
        Ty::MicroTime => decode_time(data, true)?.map(Value::String),
        Ty::Quantity => Some(Value::String(decode_quantity(data)?)),
        Ty::IntOrString => Some(decode_int_or_string(data)?),
        Ty::Raw => decode_raw(data, depth)?,
        Ty::Map(value_ty) => {
            let (key, value) = decode_map_entry(pool, value_ty, data, depth + 1)?;
            let mut map = Map::new();
            map.insert(key, value);
            Some(Value::Object(map))
        }
        Ty::Skip | Ty::I32 | Ty::I64 | Ty::Bool | Ty::F64 | Ty::F32 => None,
    })
}

fn push(out: &mut Map<String, Value>, name: &str, value: Value) {
    match out.get_mut(name) {
        Some(Value::Array(items)) => items.push(value),
        _ => {
            out.insert(name.to_owned(), Value::Array(vec![value]));
        }
    }
}

fn is_zero(value: &Value) -> bool {
    match value {
        Value::String(s) => s.is_empty(),
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        _ => false,
    }
}

fn lossy(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

fn base64_encode(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// `metav1.Time` / `MicroTime` {seconds=1, nanos=2}: an empty message is the zero time (JSON
/// null, omitted here). Time has seconds precision in JSON (upstream ignores nanos), MicroTime
/// microseconds.
fn decode_time(data: &[u8], micro: bool) -> Result<Option<String>> {
    if data.is_empty() {
        return Ok(None);
    }
    let (mut seconds, mut nanos): (i64, i64) = (0, 0);
    let mut r = Reader::new(data);
    while !r.is_empty() {
        let (num, wt) = r.tag()?;
        match (num, wt) {
            (1, WIRE_VARINT) => seconds = r.varint()? as i64,
            (2, WIRE_VARINT) => nanos = i64::from(r.varint()? as i32),
            (1 | 2, _) => {
                let field = if num == 1 { "seconds" } else { "nanos" };
                return Err(ProtobufError::WrongWireType { message: "Time", field, wire_type: wt });
            }
            _ => r.skip(wt)?,
        }
    }
    let ts = jiff::Timestamp::from_second(seconds).map_err(|_| ProtobufError::InvalidTime(seconds))?;
    let text = ts.to_string();
    if !micro {
        return Ok(Some(text));
    }
    let micros = nanos.clamp(0, 999_999_999) / 1000;
    Ok(Some(format!("{}.{micros:06}Z", text.trim_end_matches('Z'))))
}

/// `resource.Quantity` {string=1}.
fn decode_quantity(data: &[u8]) -> Result<String> {
    let mut value = String::new();
    let mut r = Reader::new(data);
    while !r.is_empty() {
        let (num, wt) = r.tag()?;
        match (num, wt) {
            (1, WIRE_LEN) => value = lossy(r.bytes()?),
            (1, _) => {
                return Err(ProtobufError::WrongWireType {
                    message: "Quantity",
                    field: "string",
                    wire_type: wt,
                })
            }
            _ => r.skip(wt)?,
        }
    }
    if value.is_empty() {
        value.push('0');
    }
    Ok(value)
}

/// `intstr.IntOrString` {type=1 (0 int, 1 string), intVal=2, strVal=3}.
fn decode_int_or_string(data: &[u8]) -> Result<Value> {
    let (mut kind, mut int_val, mut str_val) = (0u64, 0i32, String::new());
    let mut r = Reader::new(data);
    while !r.is_empty() {
        let (num, wt) = r.tag()?;
        match (num, wt) {
            (1, WIRE_VARINT) => kind = r.varint()?,
            (2, WIRE_VARINT) => int_val = r.varint()? as i32,
            (3, WIRE_LEN) => str_val = lossy(r.bytes()?),
            (1..=3, _) => {
                return Err(ProtobufError::WrongWireType {
                    message: "IntOrString",
                    field: "value",
                    wire_type: wt,
                })
            }
            _ => r.skip(wt)?,
        }
    }
    Ok(if kind == 1 { Value::String(str_val) } else { Value::from(int_val) })
}

/// `runtime.RawExtension` / `metav1.FieldsV1` {raw=1}: JSON bytes, or a nested protobuf
/// object (as in watch events and lists of `runtime.Object`).
fn decode_raw(data: &[u8], depth: usize) -> Result<Option<Value>> {
    let mut raw: &[u8] = &[];
    let mut r = Reader::new(data);
    while !r.is_empty() {
        let (num, wt) = r.tag()?;
        match (num, wt) {
            (1, WIRE_LEN) => raw = r.bytes()?,
            (1, _) => {
                return Err(ProtobufError::WrongWireType {
                    message: "RawExtension",
                    field: "raw",
                    wire_type: wt,
                })
            }
            _ => r.skip(wt)?,
        }
    }
    if raw.is_empty() {
        return Ok(None);
    }
    if raw.starts_with(MAGIC) {
        return decode_at(raw, depth + 1).map(Some);
    }
    serde_json::from_slice(raw).map(Some).map_err(|_| ProtobufError::InvalidRaw)
}

/// One entry of a protobuf map: a message {key=1, value=2}.
fn decode_map_entry(
    pool: &'static Pool,
    value_ty: &Ty,
    data: &[u8],
    depth: usize,
) -> Result<(String, Value)> {
    let mut key = String::new();
    let mut value: Option<Value> = None;
    let mut r = Reader::new(data);
    while !r.is_empty() {
        let (num, wt) = r.tag()?;
        match num {
            1 if wt == WIRE_LEN => key = lossy(r.bytes()?),
            1 => {
                return Err(ProtobufError::WrongWireType { message: "MapEntry", field: "key", wire_type: wt })
            }
            2 => {
                value = decode_single(pool, value_ty, wt, &mut r, depth).map_err(|e| match e {
                    ProtobufError::WrongWireType { message: "", .. } => {
                        ProtobufError::WrongWireType { message: "MapEntry", field: "value", wire_type: wt }
                    }
                    other => other,
                })?
            }
            _ => r.skip(wt)?,
        }
    }
    let value = value.unwrap_or_else(|| match value_ty {
        Ty::Quantity => Value::String("0".into()),
        Ty::Msg(_) => Value::Object(Map::new()),
        Ty::Items(_) => Value::Array(Vec::new()),
        Ty::Str | Ty::Bytes => Value::String(String::new()),
        _ => Value::Null,
    });
    Ok((key, value))
}

// ---------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------

/// Where in the object a value being encoded sits; rendered (`spec.ports[0].port`) only
/// for an error, so encoding allocates no path strings.
#[derive(Clone, Copy)]
struct Path<'a> {
    parent: Option<&'a Path<'a>>,
    seg: Seg<'a>,
}

#[derive(Clone, Copy)]
enum Seg<'a> {
    Root,
    Field(&'a str),
    Index(usize),
}

impl<'a> Path<'a> {
    const ROOT: Path<'static> = Path { parent: None, seg: Seg::Root };

    fn field(&'a self, name: &'a str) -> Path<'a> {
        Path { parent: Some(self), seg: Seg::Field(name) }
    }

    fn index(&'a self, i: usize) -> Path<'a> {
        Path { parent: Some(self), seg: Seg::Index(i) }
    }

    fn render(&self) -> String {
        let mut out = self.parent.map(Path::render).unwrap_or_default();
        match self.seg {
            Seg::Root => {}
            Seg::Field(name) if out.is_empty() => out.push_str(name),
            Seg::Field(name) => {
                out.push('.');
                out.push_str(name);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
        out
    }
}

fn encode_err(path: &Path<'_>, reason: &str) -> ProtobufError {
    ProtobufError::Encode { field: path.render(), reason: reason.to_owned() }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_tag(out: &mut Vec<u8>, num: u32, wire_type: u8) {
    put_varint(out, (u64::from(num) << 3) | u64::from(wire_type));
}

fn put_bytes(out: &mut Vec<u8>, num: u32, bytes: &[u8]) {
    put_tag(out, num, WIRE_LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_varint_field(out: &mut Vec<u8>, num: u32, v: u64) {
    put_tag(out, num, WIRE_VARINT);
    put_varint(out, v);
}

fn encode_msg(
    pool: &'static Pool,
    msg: usize,
    obj: &Map<String, Value>,
    path: &Path<'_>,
    depth: usize,
) -> Result<Vec<u8>> {
    if depth > MAX_DEPTH {
        return Err(ProtobufError::TooDeep);
    }
    let mut out = Vec::new();
    for field in &pool.msgs[msg].fields {
        if field.card == Card::Inline {
            // Inlined fields live in the same JSON object; Go always writes the embedded struct.
            if let Ty::Msg(sub) = field.ty {
                let bytes = encode_msg(pool, sub, obj, path, depth + 1)?;
                put_bytes(&mut out, field.num, &bytes);
            }
            continue;
        }
        let Some(value) = obj.get(&field.name).filter(|v| !v.is_null()) else {
            continue;
        };
        let fpath = path.field(&field.name);
        if field.card == Card::Rep {
            let items = value.as_array().ok_or_else(|| encode_err(&fpath, "expected an array"))?;
            for (i, item) in items.iter().enumerate() {
                encode_single(pool, &mut out, field.num, &field.ty, item, &fpath.index(i), depth)?;
            }
        } else {
            encode_single(pool, &mut out, field.num, &field.ty, value, &fpath, depth)?;
        }
    }
    Ok(out)
}

fn as_str<'v>(value: &'v Value, path: &Path<'_>) -> Result<&'v str> {
    value.as_str().ok_or_else(|| encode_err(path, "expected a string"))
}

fn as_int(value: &Value, path: &Path<'_>) -> Result<i64> {
    value.as_i64().ok_or_else(|| encode_err(path, "expected an integer"))
}

fn as_i32(value: &Value, path: &Path<'_>) -> Result<i32> {
    i32::try_from(as_int(value, path)?).map_err(|_| encode_err(path, "integer out of int32 range"))
}

fn base64_decode(s: &str, path: &Path<'_>) -> Result<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| encode_err(path, &format!("invalid base64: {e}")))
}

fn encode_time(value: &Value, path: &Path<'_>, micro: bool) -> Result<Vec<u8>> {
    let ts: jiff::Timestamp =
        as_str(value, path)?.parse().map_err(|e| encode_err(path, &format!("invalid RFC 3339 time: {e}")))?;
    let mut bytes = Vec::new();
    put_varint_field(&mut bytes, 1, ts.as_second() as u64);
    // Time is written with seconds only, as upstream; MicroTime keeps microseconds.
    let nanos = ts.subsec_nanosecond() / 1000 * 1000;
    if micro && nanos != 0 {
        put_varint_field(&mut bytes, 2, i64::from(nanos) as u64);
    }
    Ok(bytes)
}

fn encode_single(
    pool: &'static Pool,
    out: &mut Vec<u8>,
    num: u32,
    ty: &Ty,
    value: &Value,
    path: &Path<'_>,
    depth: usize,
) -> Result<()> {
    match ty {
        Ty::Str => put_bytes(out, num, as_str(value, path)?.as_bytes()),
        Ty::Bytes => put_bytes(out, num, &base64_decode(as_str(value, path)?, path)?),
        // Negative int32 values are sign-extended to 64 bits, as protobuf requires.
        Ty::I32 => put_varint_field(out, num, i64::from(as_i32(value, path)?) as u64),
        Ty::I64 => put_varint_field(out, num, as_int(value, path)? as u64),
        Ty::Bool => {
            let b = value.as_bool().ok_or_else(|| encode_err(path, "expected a boolean"))?;
            put_varint_field(out, num, u64::from(b));
        }
        Ty::F64 | Ty::F32 => {
            let f = value.as_f64().ok_or_else(|| encode_err(path, "expected a number"))?;
            if let Ty::F64 = ty {
                put_tag(out, num, WIRE_FIXED64);
                out.extend_from_slice(&f.to_bits().to_le_bytes());
            } else {
                put_tag(out, num, WIRE_FIXED32);
                out.extend_from_slice(&(f as f32).to_bits().to_le_bytes());
            }
        }
        Ty::Msg(sub) => {
            let obj = value.as_object().ok_or_else(|| encode_err(path, "expected an object"))?;
            let bytes = encode_msg(pool, *sub, obj, path, depth + 1)?;
            put_bytes(out, num, &bytes);
        }
        Ty::Items(sub) => {
            let mut wrapper = Map::new();
            wrapper.insert("items".into(), value.clone());
            let bytes = encode_msg(pool, *sub, &wrapper, path, depth + 1)?;
            put_bytes(out, num, &bytes);
        }
        Ty::Time => put_bytes(out, num, &encode_time(value, path, false)?),
        Ty::MicroTime => put_bytes(out, num, &encode_time(value, path, true)?),
        Ty::Quantity => {
            let s = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return Err(encode_err(path, "expected a quantity string")),
            };
            let mut bytes = Vec::new();
            put_bytes(&mut bytes, 1, s.as_bytes());
            put_bytes(out, num, &bytes);
        }
        Ty::IntOrString => {
            // Upstream writes all three fields.
            let mut bytes = Vec::new();
            match value {
                Value::String(s) => {
                    put_varint_field(&mut bytes, 1, 1);
                    put_varint_field(&mut bytes, 2, 0);
                    put_bytes(&mut bytes, 3, s.as_bytes());
                }
                _ => {
                    let n =
                        as_i32(value, path).map_err(|_| encode_err(path, "expected an int32 or a string"))?;
                    put_varint_field(&mut bytes, 1, 0);
                    put_varint_field(&mut bytes, 2, i64::from(n) as u64);
                    put_bytes(&mut bytes, 3, b"");
                }
            }
            put_bytes(out, num, &bytes);
        }
        Ty::Raw => {
            let json = serde_json::to_vec(value).map_err(|e| encode_err(path, &e.to_string()))?;
            let mut bytes = Vec::new();
            put_bytes(&mut bytes, 1, &json);
            put_bytes(out, num, &bytes);
        }
        Ty::Map(value_ty) => {
            let map = value.as_object().ok_or_else(|| encode_err(path, "expected an object"))?;
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            // Go writes map entries sorted by key.
            entries.sort_by(|a, b| a.0.cmp(b.0));
            for (key, item) in entries {
                let mut entry = Vec::new();
                put_bytes(&mut entry, 1, key.as_bytes());
                if !item.is_null() {
                    encode_single(pool, &mut entry, 2, value_ty, item, &path.field(key), depth + 1)?;
                }
                put_bytes(out, num, &entry);
            }
        }
        Ty::Skip => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn round_trip(obj: Value) {
        let body = encode(&obj).unwrap();
        assert!(body.starts_with(MAGIC));
        assert_eq!(decode(&body).unwrap(), obj);
    }

    /// Wraps raw object bytes in an envelope, as client-go does.
    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let mut tm = Vec::new();
        put_bytes(&mut tm, 1, api_version.as_bytes());
        put_bytes(&mut tm, 2, kind.as_bytes());
        let mut out = MAGIC.to_vec();
        put_bytes(&mut out, 1, &tm);
        put_bytes(&mut out, 2, raw);
        out
    }

    /// `kubectl auth can-i create pods`, hand-assembled from the layout in KUBECTL.md 0.4,
    /// with the zero-valued fields Go's marshaller writes for non-pointer fields.
    const SSAR_GOLDEN: &[u8] = &[
        b'k', b'8', b's', 0x00, // magic
        0x0a, 0x32, // 1: TypeMeta, 50 bytes
        0x0a, 0x17, // 1: apiVersion, 23 bytes
        b'a', b'u', b't', b'h', b'o', b'r', b'i', b'z', b'a', b't', b'i', b'o', b'n', b'.', b'k', b'8', b's',
        b'.', b'i', b'o', b'/', b'v', b'1', //
        0x12, 0x17, // 2: kind, 23 bytes
        b'S', b'e', b'l', b'f', b'S', b'u', b'b', b'j', b'e', b'c', b't', b'A', b'c', b'c', b'e', b's', b's',
        b'R', b'e', b'v', b'i', b'e', b'w', //
        0x12, 0x3f, // 2: raw, 63 bytes
        0x0a, 0x10, // 1: metadata, 16 bytes of empty fields
        0x0a, 0x00, 0x12, 0x00, 0x1a, 0x00, 0x22, 0x00, // name, generateName, namespace, selfLink
        0x2a, 0x00, 0x32, 0x00, 0x38, 0x00, 0x42,
        0x00, // uid, resourceVersion, generation, creationTimestamp
        0x12, 0x21, // 2: spec, 33 bytes
        0x0a, 0x1f, // 1: resourceAttributes, 31 bytes
        0x0a, 0x07, b'd', b'e', b'f', b'a', b'u', b'l', b't', // 1: namespace
        0x12, 0x06, b'c', b'r', b'e', b'a', b't', b'e', // 2: verb
        0x1a, 0x00, 0x22, 0x00, // 3: group, 4: version
        0x2a, 0x04, b'p', b'o', b'd', b's', // 5: resource
        0x32, 0x00, 0x3a, 0x00, // 6: subresource, 7: name
        0x1a, 0x08, // 3: status, 8 bytes
        0x08, 0x00, 0x12, 0x00, 0x1a, 0x00, 0x20, 0x00, // allowed, reason, evaluationError, denied
        0x1a, 0x00, // 3: contentEncoding
        0x22, 0x00, // 4: contentType
    ];

    #[test]
    fn round_trip_accounts_and_rbac() {
        round_trip(json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "bot", "namespace": "dev"}, "automountServiceAccountToken": false,
            "imagePullSecrets": [{"name": "reg"}], "secrets": [{"name": "s", "kind": "Secret"}]}));
        round_trip(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "r", "namespace": "dev"},
            "rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"], "resourceNames": ["a"]}]}));
        round_trip(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "c"}, "rules": [{"verbs": ["get"], "nonResourceURLs": ["/healthz"]}],
            "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"a": "b"}}]}}));
        for kind in ["RoleBinding", "ClusterRoleBinding"] {
            round_trip(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind,
                "metadata": {"name": "b"},
                "subjects": [{"kind": "ServiceAccount", "name": "bot", "namespace": "dev"}],
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"}}));
        }
        round_trip(
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview", "metadata": {}}),
        );
    }

    #[test]
    fn golden_self_subject_access_review() {
        let obj = decode(SSAR_GOLDEN).unwrap();
        assert_eq!(
            obj,
            json!({
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectAccessReview",
                "metadata": {},
                "spec": {"resourceAttributes": {"namespace": "default", "verb": "create", "resource": "pods"}},
                "status": {}
            })
        );
    }

    #[test]
    fn round_trip_namespace() {
        round_trip(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "ns1", "labels": {"team": "a"}, "annotations": {"x/y": "z"},
                         "creationTimestamp": "2024-05-01T12:34:56Z", "uid": "u-1",
                         "resourceVersion": "42", "generation": 3,
                         "finalizers": ["f1"],
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Thing", "name": "t",
                                              "uid": "u", "controller": false, "blockOwnerDeletion": true}]},
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active",
                       "conditions": [{"type": "T", "status": "True",
                                       "lastTransitionTime": "2024-01-01T00:00:00Z"}]}
        }));
    }

    #[test]
    fn round_trip_config_map() {
        round_trip(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "cm1", "namespace": "default"},
            "data": {"a": "b", "empty": ""},
            "binaryData": {"bin": "AAEC/w=="},
            "immutable": false
        }));
    }

    #[test]
    fn round_trip_secret() {
        round_trip(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "s1", "namespace": "default"},
            "data": {"a": "Yg==", "raw": "/wA="},
            "stringData": {"c": "d"},
            "type": "Opaque",
            "immutable": true
        }));
    }

    #[test]
    fn round_trip_deployment() {
        // What `kubectl create deployment d1 --image=nginx --port=80 --replicas=2 -- cmd args` builds,
        // plus the strategy, resources and env a fuller client would send.
        round_trip(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d1", "labels": {"app": "d1"}},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "d1"},
                             "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]},
                "template": {
                    "metadata": {"labels": {"app": "d1"}},
                    "spec": {
                        "containers": [{
                            "name": "nginx", "image": "nginx",
                            "command": ["cmd", "args"], "args": ["--x", ""], "workingDir": "/w",
                            "ports": [{"containerPort": 80, "protocol": "TCP", "name": "http",
                                       "hostPort": 8080, "hostIP": "0.0.0.0"}],
                            "env": [{"name": "A", "value": "1"},
                                    {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k", "optional": true}}},
                                    {"name": "C", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
                                    {"name": "D", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}}}],
                            "envFrom": [{"prefix": "P_", "secretRef": {"name": "s1"}}],
                            "resources": {"limits": {"cpu": "500m", "memory": "128Mi"}, "requests": {"cpu": "100m"}},
                            "imagePullPolicy": "Always",
                            "terminationMessagePath": "/dev/termination-log",
                            "terminationMessagePolicy": "File",
                            "securityContext": {"privileged": false, "runAsUser": 1000},
                            "tty": true
                        }],
                        "initContainers": [{"name": "init", "image": "busybox", "resources": {}}],
                        "restartPolicy": "Always",
                        "terminationGracePeriodSeconds": 30,
                        "dnsPolicy": "ClusterFirst",
                        "nodeSelector": {"disk": "ssd"},
                        "serviceAccountName": "default",
                        "hostNetwork": true,
                        "schedulerName": "default-scheduler",
                        "securityContext": {"supplementalGroups": [1, 2], "fsGroup": 0},
                        "imagePullSecrets": [{"name": "reg"}],
                        "priority": -5,
                        "enableServiceLinks": false
                    }
                },
                "strategy": {"type": "RollingUpdate",
                             "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": 1}},
                "minReadySeconds": 5,
                "revisionHistoryLimit": 10,
                "paused": true,
                "progressDeadlineSeconds": 600
            },
            "status": {"observedGeneration": 1, "replicas": 2, "readyReplicas": 1,
                       "conditions": [{"type": "Available", "status": "True", "reason": "R",
                                       "lastUpdateTime": "2024-05-01T12:34:56Z"}]}
        }));
    }

    #[test]
    fn round_trip_token_request() {
        round_trip(json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "metadata": {"name": "default", "namespace": "default"},
            "spec": {"audiences": ["https://kubernetes.default.svc"], "expirationSeconds": 3600,
                     "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "p", "uid": "u"}},
            "status": {"token": "abc", "expirationTimestamp": "2030-01-02T03:04:05Z"}
        }));
    }

    #[test]
    fn round_trip_access_and_rules_reviews() {
        round_trip(json!({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "metadata": {},
            "spec": {"nonResourceAttributes": {"path": "/healthz", "verb": "get"}},
            "status": {"allowed": true, "reason": "ok"}
        }));
        round_trip(json!({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "metadata": {},
            "spec": {"resourceAttributes": {"namespace": "ns", "verb": "get", "group": "apps",
                                            "version": "v1", "resource": "deployments",
                                            "subresource": "scale", "name": "d1",
                                            "labelSelector": {"rawSelector": "a=b"},
                                            "fieldSelector": {"requirements": [{"key": "k", "operator": "In", "values": ["v"]}]}}},
            "status": {}
        }));
        round_trip(json!({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview",
            "metadata": {},
            "spec": {"namespace": "default"},
            "status": {"resourceRules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}],
                       "nonResourceRules": [{"verbs": ["get"], "nonResourceURLs": ["/api"]}],
                       "incomplete": true}
        }));
    }

    /// A value for every property of an OpenAPI schema (one item per array and map), so a
    /// round trip exercises every field of a kind.
    fn example(schemas: &Map<String, Value>, schema: &Value, name: &str, depth: usize) -> Value {
        if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
            let key = r.trim_start_matches("#/components/schemas/");
            if depth > 12 {
                return Value::Null;
            }
            return match schemas.get(key) {
                Some(s) => example(schemas, s, name, depth + 1),
                None => Value::Null,
            };
        }
        if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
            if let Some(first) = all.first() {
                return example(schemas, first, name, depth);
            }
        }
        if schema.get("x-kubernetes-int-or-string") == Some(&json!(true)) {
            return json!("25%");
        }
        let format = schema.get("format").and_then(Value::as_str).unwrap_or("");
        if (name == "kind" || name == "apiVersion") && depth > 1 {
            // Embedded objects (StatefulSet's claim templates) require their own kind.
            return Value::Null;
        }
        match schema.get("type").and_then(Value::as_str) {
            Some("string") => match format {
                "date-time" => json!("2024-01-02T03:04:05Z"),
                "byte" => json!("YWJj"),
                _ if name == "apiVersion" => json!("v1"),
                _ => json!(format!("{name}-x")),
            },
            Some("integer") => json!(3),
            Some("number") => json!(1.5),
            Some("boolean") => json!(true),
            Some("array") => {
                let item = example(schemas, schema.get("items").unwrap_or(&Value::Null), name, depth + 1);
                if item.is_null() {
                    Value::Null
                } else {
                    json!([item])
                }
            }
            _ => {
                if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                    let mut out = Map::new();
                    for (k, v) in props {
                        let value = example(schemas, v, k, depth + 1);
                        if !value.is_null() {
                            out.insert(k.clone(), value);
                        }
                    }
                    Value::Object(out)
                } else if let Some(extra) = schema.get("additionalProperties").filter(|v| v.is_object()) {
                    let item = example(schemas, extra, name, depth + 1);
                    if item.is_null() {
                        Value::Null
                    } else {
                        json!({"key": item})
                    }
                } else if format == "quantity" || name.contains("Quantity") {
                    json!("100m")
                } else {
                    json!({})
                }
            }
        }
    }

    /// The object bytes inside an envelope.
    fn envelope_raw(body: &[u8]) -> &[u8] {
        let mut r = Reader::new(&body[4..]);
        while !r.is_empty() {
            let (num, _) = r.tag().unwrap();
            let bytes = r.bytes().unwrap();
            if num == 2 {
                return bytes;
            }
        }
        &[]
    }

    /// Decodes `raw` with the k8s-pb type of the kind and encodes it again.
    fn prost_round_trip(group: &str, version: &str, kind: &str, raw: &[u8]) -> Option<Vec<u8>> {
        use k8s_pb::api::{
            admissionregistration, apps, authentication, authorization, autoscaling, batch, certificates,
            coordination, core, discovery, flowcontrol, networking, policy, rbac, scheduling, storage,
        };
        use prost::Message;
        if (group, kind) == ("autoscaling", "HorizontalPodAutoscaler") {
            let decoded = "k8s-pb decodes our bytes";
            return Some(match version {
                "v1" => autoscaling::v1::HorizontalPodAutoscaler::decode(raw).expect(decoded).encode_to_vec(),
                _ => autoscaling::v2::HorizontalPodAutoscaler::decode(raw).expect(decoded).encode_to_vec(),
            });
        }
        macro_rules! kinds {
            ($($g:literal, $k:literal => $ty:ty;)*) => {
                match (group, kind) {
                    $(($g, $k) => <$ty>::decode(raw).expect("k8s-pb decodes our bytes").encode_to_vec(),)*
                    _ => return None,
                }
            };
        }
        Some(kinds! {
            "", "Namespace" => core::v1::Namespace;
            "", "Node" => core::v1::Node;
            "", "Pod" => core::v1::Pod;
            "", "Service" => core::v1::Service;
            "", "Endpoints" => core::v1::Endpoints;
            "", "ConfigMap" => core::v1::ConfigMap;
            "", "ReplicationController" => core::v1::ReplicationController;
            "", "Secret" => core::v1::Secret;
            "", "ServiceAccount" => core::v1::ServiceAccount;
            "", "Event" => core::v1::Event;
            "", "PersistentVolume" => core::v1::PersistentVolume;
            "", "PersistentVolumeClaim" => core::v1::PersistentVolumeClaim;
            "", "ResourceQuota" => core::v1::ResourceQuota;
            "", "LimitRange" => core::v1::LimitRange;
            "apps", "Deployment" => apps::v1::Deployment;
            "apps", "ReplicaSet" => apps::v1::ReplicaSet;
            "apps", "StatefulSet" => apps::v1::StatefulSet;
            "apps", "DaemonSet" => apps::v1::DaemonSet;
            "apps", "ControllerRevision" => apps::v1::ControllerRevision;
            "batch", "Job" => batch::v1::Job;
            "batch", "CronJob" => batch::v1::CronJob;
            "coordination.k8s.io", "Lease" => coordination::v1::Lease;
            "discovery.k8s.io", "EndpointSlice" => discovery::v1::EndpointSlice;
            "certificates.k8s.io", "CertificateSigningRequest" => certificates::v1::CertificateSigningRequest;
            "rbac.authorization.k8s.io", "Role" => rbac::v1::Role;
            "rbac.authorization.k8s.io", "RoleBinding" => rbac::v1::RoleBinding;
            "rbac.authorization.k8s.io", "ClusterRole" => rbac::v1::ClusterRole;
            "rbac.authorization.k8s.io", "ClusterRoleBinding" => rbac::v1::ClusterRoleBinding;
            "storage.k8s.io", "StorageClass" => storage::v1::StorageClass;
            "policy", "PodDisruptionBudget" => policy::v1::PodDisruptionBudget;
            "admissionregistration.k8s.io", "MutatingWebhookConfiguration" => admissionregistration::v1::MutatingWebhookConfiguration;
            "admissionregistration.k8s.io", "ValidatingWebhookConfiguration" => admissionregistration::v1::ValidatingWebhookConfiguration;
            "admissionregistration.k8s.io", "ValidatingAdmissionPolicy" => admissionregistration::v1::ValidatingAdmissionPolicy;
            "admissionregistration.k8s.io", "ValidatingAdmissionPolicyBinding" => admissionregistration::v1::ValidatingAdmissionPolicyBinding;
            "scheduling.k8s.io", "PriorityClass" => scheduling::v1::PriorityClass;
            "flowcontrol.apiserver.k8s.io", "FlowSchema" => flowcontrol::v1::FlowSchema;
            "flowcontrol.apiserver.k8s.io", "PriorityLevelConfiguration" => flowcontrol::v1::PriorityLevelConfiguration;
            "networking.k8s.io", "Ingress" => networking::v1::Ingress;
            "networking.k8s.io", "IngressClass" => networking::v1::IngressClass;
            "networking.k8s.io", "NetworkPolicy" => networking::v1::NetworkPolicy;
            "authentication.k8s.io", "TokenReview" => authentication::v1::TokenReview;
            "authentication.k8s.io", "SelfSubjectReview" => authentication::v1::SelfSubjectReview;
            "authorization.k8s.io", "SelfSubjectAccessReview" => authorization::v1::SelfSubjectAccessReview;
            "authorization.k8s.io", "SelfSubjectRulesReview" => authorization::v1::SelfSubjectRulesReview;
            "authorization.k8s.io", "SubjectAccessReview" => authorization::v1::SubjectAccessReview;
            "authorization.k8s.io", "LocalSubjectAccessReview" => authorization::v1::LocalSubjectAccessReview;
        })
    }

    /// The paths where two JSON values differ.
    fn diff(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                for k in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                    diff(
                        x.get(k).unwrap_or(&Value::Null),
                        y.get(k).unwrap_or(&Value::Null),
                        &format!("{path}.{k}"),
                        out,
                    );
                }
            }
            (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
                for (i, (p, q)) in x.iter().zip(y).enumerate() {
                    diff(p, q, &format!("{path}[{i}]"), out);
                }
            }
            _ if a != b => out.push(format!("{path}: {a} != {b}")),
            _ => {}
        }
    }

    #[test]
    fn every_served_kind_round_trips_its_example_object() {
        let mut checked = 0;
        for res in crate::registry::RESOURCES {
            // CustomResourceDefinitions and APIServices answer JSON: apiextensions' and
            // apiregistration's descriptors are not in k8s.desc (yet).
            if matches!(res.group, "apiextensions.k8s.io" | "apiregistration.k8s.io" | "metrics.k8s.io") {
                continue;
            }
            let doc = crate::openapi::document(res.group, res.version).expect("openapi document");
            let doc: Value = serde_json::from_slice(&doc).unwrap();
            let schemas = doc["components"]["schemas"].as_object().unwrap();
            let (key, schema) = schemas
                .iter()
                .find(|(_, s)| {
                    s["x-kubernetes-group-version-kind"].as_array().is_some_and(|gvks| {
                        gvks.iter().any(|g| {
                            g["kind"] == res.kind && g["group"] == res.group && g["version"] == res.version
                        })
                    })
                })
                .unwrap_or_else(|| panic!("no schema for {}", res.kind));
            let mut obj = example(schemas, schema, "object", 0);
            obj["apiVersion"] = json!(res.api_version());
            obj["kind"] = json!(res.kind);
            let obj =
                (res.round_trip)(obj).unwrap_or_else(|e| panic!("{key}: example does not fit its type: {e}"));
            let body = encode(&obj).unwrap_or_else(|e| panic!("{key}: {e}"));
            let back = decode(&body).unwrap_or_else(|e| panic!("{key}: {e}"));
            let back = (res.round_trip)(back).unwrap();
            let mut diffs = Vec::new();
            diff(&obj, &back, "", &mut diffs);
            assert!(diffs.is_empty(), "{key} changed in a protobuf round trip: {diffs:#?}");
            // Upstream's own generated code (the k8s-pb crate's prost types, compiled from
            // generated.proto) reads every field we write, with the wire types we use. k8s-pb
            // 0.9 is compiled from Kubernetes 1.34's protos: fields added since (capstan serves
            // 1.36) are unknown to it and skipped, so they come back missing; every field it
            // knows must come back equal (a wrong wire type fails its decode outright).
            let raw = envelope_raw(&body);
            let reencoded = prost_round_trip(res.group, res.version, res.kind, raw)
                .unwrap_or_else(|| panic!("{key}: no k8s-pb type"));
            let back = decode(&envelope(&res.api_version(), res.kind, &reencoded))
                .unwrap_or_else(|e| panic!("{key}: {e}"));
            let back = (res.round_trip)(back).unwrap();
            let mut diffs = Vec::new();
            diff(&obj, &back, "", &mut diffs);
            diffs.retain(|d| !d.ends_with(" != null"));
            assert!(diffs.is_empty(), "{key} changed through k8s-pb's prost types: {diffs:#?}");
            // A list of the kind too.
            let list = json!({"apiVersion": res.api_version(), "kind": res.list_kind,
                              "metadata": {"resourceVersion": "7", "continue": "c"}, "items": [obj.clone()]});
            if supports(&res.api_version(), res.list_kind) {
                let back = decode(&encode(&list).unwrap()).unwrap();
                let item = (res.round_trip)(back["items"][0].clone()).unwrap();
                assert_eq!(item, obj);
                assert_eq!(back["metadata"], list["metadata"]);
            }
            checked += 1;
        }
        assert!(checked >= 30, "{checked} kinds");
    }

    #[test]
    fn status_delete_options_and_watch_events() {
        let status = json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
            "message": "pods \"x\" not found", "reason": "NotFound",
            "details": {"name": "x", "kind": "pods", "causes": [{"reason": "FieldValueInvalid", "message": "m", "field": "spec"}]},
            "code": 404});
        assert_eq!(decode(&encode(&status).unwrap()).unwrap(), status);
        // Helm's and client-go's DeleteOptions, in the resource's group-version or meta.k8s.io.
        for api_version in ["v1", "apps/v1", "meta.k8s.io/v1"] {
            let opts = json!({"apiVersion": api_version, "kind": "DeleteOptions", "propagationPolicy": "Background",
                              "gracePeriodSeconds": 0, "dryRun": ["All"], "preconditions": {"uid": "u"}});
            assert_eq!(decode(&encode(&opts).unwrap()).unwrap(), opts);
        }
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "resourceVersion": "5"},
                         "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
        let frame = encode_watch_event("ADDED", &pod).unwrap();
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - 4);
        assert_eq!(decode_watch_event(&frame[4..]).unwrap(), ("ADDED".to_string(), pod));
        let frame = encode_watch_event("ERROR", &status).unwrap();
        assert_eq!(decode_watch_event(&frame[4..]).unwrap().1["code"], 404);
    }

    #[test]
    fn named_slices_raw_extensions_and_micro_times() {
        // authentication UserInfo.extra is map<string, ExtraValue{repeated items}>.
        let review = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "metadata": {},
            "spec": {"token": "t"},
            "status": {"authenticated": true, "user": {"username": "u", "extra": {"k": ["a", "b"]}}}});
        assert_eq!(decode(&encode(&review).unwrap()).unwrap(), review);
        let rev = json!({"apiVersion": "apps/v1", "kind": "ControllerRevision", "metadata": {"name": "r"},
            "data": {"spec": {"template": {"x": 1}}}, "revision": 2});
        assert_eq!(decode(&encode(&rev).unwrap()).unwrap(), rev);
        let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"},
            "spec": {"holderIdentity": "n", "renewTime": "2024-01-02T03:04:05.123456Z", "leaseDurationSeconds": 40}});
        assert_eq!(decode(&encode(&lease).unwrap()).unwrap(), lease);
    }

    #[test]
    fn pointer_fields_keep_zero_values_and_value_fields_drop_them() {
        let obj = json!({"apiVersion": "apps/v1", "kind": "Deployment",
                         "spec": {"replicas": 0, "minReadySeconds": 0, "paused": false}});
        let decoded = decode(&encode(&obj).unwrap()).unwrap();
        assert_eq!(decoded["spec"], json!({"replicas": 0}));
    }

    #[test]
    fn zero_time_is_omitted_and_epoch_is_kept() {
        // metadata{creationTimestamp: empty message} vs metadata{creationTimestamp{seconds: 0}}.
        let zero = envelope("v1", "Namespace", &[0x0a, 0x02, 0x42, 0x00]);
        assert_eq!(decode(&zero).unwrap()["metadata"], json!({}));
        let epoch = envelope("v1", "Namespace", &[0x0a, 0x04, 0x42, 0x02, 0x08, 0x00]);
        assert_eq!(decode(&epoch).unwrap()["metadata"], json!({"creationTimestamp": "1970-01-01T00:00:00Z"}));
    }

    #[test]
    fn int_or_string_and_packed_repeated() {
        // strategy{rollingUpdate{maxUnavailable{type 0, intVal 0}, maxSurge{type 1, strVal "50%"}}}
        let rolling =
            [0x0a, 0x04, 0x08, 0x00, 0x10, 0x00, 0x12, 0x07, 0x08, 0x01, 0x1a, 0x03, b'5', b'0', b'%'];
        let mut strategy = Vec::new();
        put_bytes(&mut strategy, 2, &rolling);
        let mut spec = Vec::new();
        put_bytes(&mut spec, 4, &strategy);
        let mut raw = Vec::new();
        put_bytes(&mut raw, 2, &spec);
        let obj = decode(&envelope("apps/v1", "Deployment", &raw)).unwrap();
        assert_eq!(obj["spec"]["strategy"]["rollingUpdate"], json!({"maxUnavailable": 0, "maxSurge": "50%"}));

        // Pod securityContext.supplementalGroups packed: [1, 300].
        let mut psc = Vec::new();
        put_bytes(&mut psc, 4, &[0x01, 0xac, 0x02]);
        let mut pod_spec = Vec::new();
        put_bytes(&mut pod_spec, 14, &psc);
        let mut template = Vec::new();
        put_bytes(&mut template, 2, &pod_spec);
        let mut spec = Vec::new();
        put_bytes(&mut spec, 3, &template);
        let mut raw = Vec::new();
        put_bytes(&mut raw, 2, &spec);
        let obj = decode(&envelope("apps/v1", "Deployment", &raw)).unwrap();
        assert_eq!(obj["spec"]["template"]["spec"]["securityContext"]["supplementalGroups"], json!([1, 300]));
    }

    #[test]
    fn unknown_fields_are_skipped() {
        // ConfigMap with unknown fields of every wire type around data{a: b}.
        let mut raw = vec![0xf8, 0x01, 0x05]; // 31: varint
        raw.extend([0xf9, 0x01, 1, 2, 3, 4, 5, 6, 7, 8]); // 31: fixed64
        raw.extend([0xfd, 0x01, 1, 2, 3, 4]); // 31: fixed32
        raw.extend([0xfa, 0x01, 0x02, 0xff, 0xff]); // 31: bytes
        raw.extend([0x12, 0x06, 0x0a, 0x01, b'a', 0x12, 0x01, b'b']); // 2: data
        let obj = decode(&envelope("v1", "ConfigMap", &raw)).unwrap();
        assert_eq!(obj, json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "b"}}));
    }

    #[test]
    fn unsupported_and_missing_kinds() {
        assert_eq!(
            decode(&envelope("example.com/v1", "Widget", &[])),
            Err(ProtobufError::UnsupportedKind {
                api_version: "example.com/v1".into(),
                kind: "Widget".into()
            })
        );
        assert!(decode(&envelope("v1", "NoSuchKind", &[])).is_err());
        assert_eq!(decode(&envelope("", "ConfigMap", &[])), Err(ProtobufError::MissingTypeMeta));
        assert!(matches!(
            encode(&json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition"})),
            Err(ProtobufError::UnsupportedKind { .. })
        ));
        let mut gz = envelope("v1", "ConfigMap", &[]);
        put_bytes(&mut gz, 3, b"gzip");
        assert_eq!(decode(&gz), Err(ProtobufError::UnsupportedEncoding("gzip".into())));
    }

    #[test]
    fn encode_rejects_mistyped_values() {
        let err =
            encode(&json!({"apiVersion": "apps/v1", "kind": "Deployment", "spec": {"replicas": "two"}}));
        assert!(matches!(err, Err(ProtobufError::Encode { ref field, .. }) if field == "spec.replicas"));
        let err = encode(&json!({"apiVersion": "v1", "kind": "Secret", "data": {"a": "not base64!"}}));
        assert!(matches!(err, Err(ProtobufError::Encode { .. })));
    }

    #[test]
    fn hostile_inputs_fail_cleanly() {
        assert_eq!(decode(b""), Err(ProtobufError::BadMagic));
        assert_eq!(decode(b"k8s"), Err(ProtobufError::BadMagic));
        assert_eq!(decode(b"{\"kind\":\"ConfigMap\"}"), Err(ProtobufError::BadMagic));
        // Truncated: the last byte (contentType's length) is missing.
        assert_eq!(decode(&SSAR_GOLDEN[..SSAR_GOLDEN.len() - 1]), Err(ProtobufError::Truncated));
        // Huge lengths.
        let huge = [b'k', b'8', b's', 0, 0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(decode(&huge), Err(ProtobufError::Truncated));
        let big = [b'k', b'8', b's', 0, 0x12, 0x80, 0x80, 0x80, 0x80, 0x08, 0x00];
        assert_eq!(decode(&big), Err(ProtobufError::Truncated));
        // Overlong varint.
        let mut long = MAGIC.to_vec();
        long.extend([0xff; 11]);
        assert_eq!(decode(&long), Err(ProtobufError::BadVarint));
        // Field number 0, groups.
        assert_eq!(decode(b"k8s\0\x00\x00"), Err(ProtobufError::BadTag));
        assert_eq!(decode(b"k8s\0\x2b"), Err(ProtobufError::UnsupportedWireType(3)));
        // A known string field sent as a varint.
        let bad = envelope("v1", "ConfigMap", &[0x0a, 0x02, 0x08, 0x01]);
        assert!(matches!(decode(&bad), Err(ProtobufError::WrongWireType { field: "name", .. })));
        // Every prefix of a valid body decodes or fails, without panicking.
        for n in 0..SSAR_GOLDEN.len() {
            let _ = decode(&SSAR_GOLDEN[..n]);
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let nest = |levels: usize| {
            let mut bytes = Vec::new();
            for _ in 0..levels {
                let mut outer = Vec::new();
                put_bytes(&mut outer, 1, &bytes);
                bytes = outer;
            }
            bytes
        };
        // A meta/v1 List whose only item is a List whose only item is ... (through RawExtension).
        let lists = |levels: usize| {
            let mut obj = json!({"apiVersion": "v1", "kind": "List", "metadata": {}});
            for _ in 0..levels {
                obj = json!({"apiVersion": "v1", "kind": "List", "items": [obj]});
            }
            obj
        };
        let shallow = encode(&lists(3)).unwrap();
        assert_eq!(decode(&shallow).unwrap()["items"][0]["items"][0]["kind"], "List");
        let mut deep = envelope("v1", "List", &[]);
        for _ in 0..200 {
            let mut ext = Vec::new();
            put_bytes(&mut ext, 1, &deep);
            let mut raw = Vec::new();
            put_bytes(&mut raw, 2, &ext);
            deep = envelope("v1", "List", &raw);
        }
        assert_eq!(decode(&deep), Err(ProtobufError::TooDeep));

        // Deeply nested unknown bytes inside a real kind are skipped without recursion.
        let mut raw = Vec::new();
        put_bytes(&mut raw, 1, &{
            let mut meta = Vec::new();
            put_bytes(&mut meta, 99, &nest(2000));
            meta
        });
        assert!(decode(&envelope("v1", "Namespace", &raw)).is_ok());
    }

    #[test]
    fn mutated_bodies_never_panic() {
        let body = encode(&json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d1", "labels": {"app": "d1"}, "creationTimestamp": "2024-05-01T12:34:56Z"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "d1"}},
                     "template": {"spec": {"containers": [{"name": "c", "image": "nginx",
                                                           "ports": [{"containerPort": 80}],
                                                           "resources": {"limits": {"cpu": "1"}}}]}},
                     "strategy": {"rollingUpdate": {"maxSurge": "25%"}}}
        }))
        .unwrap();
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..5000 {
            let mut mutated = body.clone();
            for _ in 0..(next() % 4 + 1) {
                let i = (next() as usize) % mutated.len();
                mutated[i] = next() as u8;
            }
            if next() % 3 == 0 {
                let cut = (next() as usize) % mutated.len();
                mutated.truncate(cut);
            }
            let _ = decode(&mutated);
        }
    }
}
