//! Protobuf text format (`.pbtxt`) for `GraphDef`: a tokenizer, a generic message tree,
//! and the conversion of that tree into the prost `GraphDef` structs.

use super::graph_def::{
    attr_value, dtype, AttrValue, GraphDef, ListValue, NodeDef, TensorProto, TensorShapeProto,
    VersionDef,
};
use crate::FormatError;

fn bad(msg: impl Into<String>) -> FormatError {
    FormatError::invalid(format!(".pbtxt: {}", msg.into()))
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(Vec<u8>),
    Num(String),
    Open(u8),
    Close(u8),
    Colon,
}

/// A field value: a scalar token or a nested message.
#[derive(Debug, Clone)]
enum TVal {
    Scalar(Tok),
    Msg(TMsg),
}

/// A text-format message: fields in order (repeated fields appear several times).
#[derive(Debug, Clone, Default)]
struct TMsg(Vec<(String, TVal)>);

impl TMsg {
    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a TVal> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v)
    }

    fn msg<'a>(&'a self, name: &'a str) -> Option<&'a TMsg> {
        self.all(name).find_map(|v| match v {
            TVal::Msg(m) => Some(m),
            _ => None,
        })
    }

    fn scalar<'a>(&'a self, name: &'a str) -> Option<&'a Tok> {
        self.all(name).find_map(|v| match v {
            TVal::Scalar(t) => Some(t),
            _ => None,
        })
    }
}

struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
}

impl Lexer<'_> {
    fn next(&mut self) -> Result<Option<Tok>, FormatError> {
        loop {
            while self.i < self.s.len()
                && (self.s[self.i].is_ascii_whitespace()
                    || self.s[self.i] == b','
                    || self.s[self.i] == b';')
            {
                self.i += 1;
            }
            if self.s.get(self.i) == Some(&b'#') {
                while self.i < self.s.len() && self.s[self.i] != b'\n' {
                    self.i += 1;
                }
                continue;
            }
            break;
        }
        let Some(&c) = self.s.get(self.i) else {
            return Ok(None);
        };
        self.i += 1;
        Ok(Some(match c {
            b'{' | b'<' | b'[' => Tok::Open(c),
            b'}' | b'>' | b']' => Tok::Close(c),
            b':' => Tok::Colon,
            b'"' | b'\'' => Tok::Str(self.string(c)?),
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = self.i - 1;
                while self.i < self.s.len()
                    && (self.s[self.i].is_ascii_alphanumeric()
                        || matches!(self.s[self.i], b'_' | b'.' | b'/'))
                {
                    self.i += 1;
                }
                Tok::Ident(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
            }
            c if c.is_ascii_digit() || c == b'-' || c == b'+' || c == b'.' => {
                let start = self.i - 1;
                while self.i < self.s.len()
                    && (self.s[self.i].is_ascii_alphanumeric()
                        || matches!(self.s[self.i], b'.' | b'-' | b'+'))
                {
                    self.i += 1;
                }
                Tok::Num(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
            }
            other => {
                return Err(bad(format!(
                    "unexpected character {:?} at byte {}",
                    other as char,
                    self.i - 1
                )))
            }
        }))
    }

    fn string(&mut self, quote: u8) -> Result<Vec<u8>, FormatError> {
        let mut out = Vec::new();
        loop {
            let c = *self
                .s
                .get(self.i)
                .ok_or_else(|| bad("unterminated string"))?;
            self.i += 1;
            if c == quote {
                return Ok(out);
            }
            if c != b'\\' {
                out.push(c);
                continue;
            }
            let e = *self
                .s
                .get(self.i)
                .ok_or_else(|| bad("unterminated escape"))?;
            self.i += 1;
            match e {
                b'n' => out.push(b'\n'),
                b't' => out.push(b'\t'),
                b'r' => out.push(b'\r'),
                b'a' => out.push(7),
                b'b' => out.push(8),
                b'f' => out.push(12),
                b'v' => out.push(11),
                b'\\' | b'\'' | b'"' | b'?' => out.push(e),
                b'x' | b'X' => {
                    let mut v = 0u32;
                    let mut n = 0;
                    while n < 2 && self.s.get(self.i).is_some_and(|c| c.is_ascii_hexdigit()) {
                        v = v * 16 + (self.s[self.i] as char).to_digit(16).unwrap();
                        self.i += 1;
                        n += 1;
                    }
                    if n == 0 {
                        return Err(bad("bad \\x escape"));
                    }
                    out.push(v as u8);
                }
                b'0'..=b'7' => {
                    let mut v = (e - b'0') as u32;
                    let mut n = 1;
                    while n < 3
                        && self
                            .s
                            .get(self.i)
                            .is_some_and(|c| (b'0'..=b'7').contains(c))
                    {
                        v = v * 8 + (self.s[self.i] - b'0') as u32;
                        self.i += 1;
                        n += 1;
                    }
                    out.push(v as u8);
                }
                other => return Err(bad(format!("unknown escape \\{}", other as char))),
            }
        }
    }
}

struct Parser<'a> {
    lex: Lexer<'a>,
    peeked: Option<Option<Tok>>,
}

impl Parser<'_> {
    fn peek(&mut self) -> Result<&Option<Tok>, FormatError> {
        if self.peeked.is_none() {
            self.peeked = Some(self.lex.next()?);
        }
        Ok(self.peeked.as_ref().unwrap())
    }

    fn take(&mut self) -> Result<Option<Tok>, FormatError> {
        match self.peeked.take() {
            Some(t) => Ok(t),
            None => self.lex.next(),
        }
    }

    fn message(&mut self, depth: usize, closing: Option<u8>) -> Result<TMsg, FormatError> {
        if depth > 100 {
            return Err(bad("messages nested too deeply"));
        }
        let mut m = TMsg::default();
        loop {
            let name = match self.take()? {
                None if closing.is_none() => return Ok(m),
                None => return Err(bad("unexpected end of file")),
                Some(Tok::Close(_)) if closing.is_some() => return Ok(m),
                Some(Tok::Ident(n)) => n,
                Some(t) => return Err(bad(format!("expected a field name, found {t:?}"))),
            };
            if self.peek()? == &Some(Tok::Colon) {
                self.take()?;
            }
            match self.take()? {
                Some(Tok::Open(b'[')) => {
                    // A list of values: name: [a, b, {...}]
                    loop {
                        match self.take()? {
                            Some(Tok::Close(_)) => break,
                            Some(Tok::Open(_)) => {
                                let sub = self.message(depth + 1, Some(b'}'))?;
                                m.0.push((name.clone(), TVal::Msg(sub)));
                            }
                            Some(t) => m.0.push((name.clone(), TVal::Scalar(t))),
                            None => return Err(bad("unterminated list")),
                        }
                    }
                }
                Some(Tok::Open(b)) => {
                    let sub = self.message(depth + 1, Some(b))?;
                    m.0.push((name, TVal::Msg(sub)));
                }
                Some(Tok::Str(mut s)) => {
                    // Adjacent string literals concatenate.
                    while let Some(Tok::Str(_)) = self.peek()? {
                        if let Some(Tok::Str(more)) = self.take()? {
                            s.extend(more);
                        }
                    }
                    m.0.push((name, TVal::Scalar(Tok::Str(s))));
                }
                Some(t @ (Tok::Ident(_) | Tok::Num(_))) => m.0.push((name, TVal::Scalar(t))),
                other => {
                    return Err(bad(format!(
                        "field `{name}` has no value (found {other:?})"
                    )))
                }
            }
        }
    }
}

fn text(t: &Tok) -> Option<String> {
    match t {
        Tok::Str(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Tok::Ident(s) | Tok::Num(s) => Some(s.clone()),
        _ => None,
    }
}

fn bytes(t: &Tok) -> Vec<u8> {
    match t {
        Tok::Str(b) => b.clone(),
        Tok::Ident(s) | Tok::Num(s) => s.as_bytes().to_vec(),
        _ => vec![],
    }
}

fn int(t: &Tok) -> Result<i64, FormatError> {
    let s = text(t).unwrap_or_default();
    if let Some(h) = s.strip_prefix("0x") {
        return i64::from_str_radix(h, 16).map_err(|_| bad(format!("bad integer `{s}`")));
    }
    s.parse().map_err(|_| bad(format!("bad integer `{s}`")))
}

fn float(t: &Tok) -> Result<f64, FormatError> {
    let s = text(t).unwrap_or_default();
    let lower = s.to_ascii_lowercase();
    let t = lower.trim_end_matches('f');
    match t {
        "inf" | "infinity" => return Ok(f64::INFINITY),
        "-inf" | "-infinity" => return Ok(f64::NEG_INFINITY),
        "nan" => return Ok(f64::NAN),
        _ => {}
    }
    t.parse().map_err(|_| bad(format!("bad number `{s}`")))
}

fn boolean(t: &Tok) -> Result<bool, FormatError> {
    match text(t).as_deref() {
        Some("true" | "True" | "1") => Ok(true),
        Some("false" | "False" | "0") => Ok(false),
        other => Err(bad(format!("bad bool {other:?}"))),
    }
}

fn dtype_of(t: &Tok) -> Result<i32, FormatError> {
    let s = text(t).unwrap_or_default();
    dtype::from_name(&s)
        .or_else(|| s.parse().ok())
        .ok_or_else(|| bad(format!("unknown dtype `{s}`")))
}

fn scalars<'a>(m: &'a TMsg, name: &'a str) -> impl Iterator<Item = &'a Tok> + 'a {
    m.all(name).filter_map(|v| match v {
        TVal::Scalar(t) => Some(t),
        _ => None,
    })
}

fn shape(m: &TMsg) -> Result<TensorShapeProto, FormatError> {
    let mut s = TensorShapeProto::default();
    for d in m.all("dim") {
        if let TVal::Msg(d) = d {
            let size = d.scalar("size").map(int).transpose()?.unwrap_or(0);
            s.dim.push(super::graph_def::tensor_shape_proto::Dim {
                size,
                name: String::new(),
            });
        }
    }
    s.unknown_rank = m
        .scalar("unknown_rank")
        .map(boolean)
        .transpose()?
        .unwrap_or(false);
    Ok(s)
}

fn tensor(m: &TMsg) -> Result<TensorProto, FormatError> {
    let mut t = TensorProto {
        dtype: m.scalar("dtype").map(dtype_of).transpose()?.unwrap_or(0),
        ..Default::default()
    };
    t.tensor_shape = m.msg("tensor_shape").map(shape).transpose()?;
    t.tensor_content = m.scalar("tensor_content").map(bytes).unwrap_or_default();
    t.float_val = scalars(m, "float_val")
        .map(|x| float(x).map(|v| v as f32))
        .collect::<Result<_, _>>()?;
    t.double_val = scalars(m, "double_val")
        .map(float)
        .collect::<Result<_, _>>()?;
    t.int_val = scalars(m, "int_val")
        .map(|x| int(x).map(|v| v as i32))
        .collect::<Result<_, _>>()?;
    t.int64_val = scalars(m, "int64_val").map(int).collect::<Result<_, _>>()?;
    t.bool_val = scalars(m, "bool_val")
        .map(boolean)
        .collect::<Result<_, _>>()?;
    t.string_val = scalars(m, "string_val").map(bytes).collect();
    t.half_val = scalars(m, "half_val")
        .map(|x| int(x).map(|v| v as i32))
        .collect::<Result<_, _>>()?;
    Ok(t)
}

fn attr(m: &TMsg) -> Result<AttrValue, FormatError> {
    use attr_value::Value as V;
    let v = if let Some(t) = m.scalar("s") {
        V::S(bytes(t))
    } else if let Some(t) = m.scalar("i") {
        V::I(int(t)?)
    } else if let Some(t) = m.scalar("f") {
        V::F(float(t)? as f32)
    } else if let Some(t) = m.scalar("b") {
        V::B(boolean(t)?)
    } else if let Some(t) = m.scalar("type") {
        V::Type(dtype_of(t)?)
    } else if let Some(s) = m.msg("shape") {
        V::Shape(shape(s)?)
    } else if let Some(t) = m.msg("tensor") {
        V::Tensor(tensor(t)?)
    } else if let Some(l) = m.msg("list") {
        V::List(ListValue {
            s: scalars(l, "s").map(bytes).collect(),
            i: scalars(l, "i").map(int).collect::<Result<_, _>>()?,
            f: scalars(l, "f")
                .map(|x| float(x).map(|v| v as f32))
                .collect::<Result<_, _>>()?,
            b: scalars(l, "b").map(boolean).collect::<Result<_, _>>()?,
            r#type: scalars(l, "type").map(dtype_of).collect::<Result<_, _>>()?,
            shape: l
                .all("shape")
                .filter_map(|v| {
                    if let TVal::Msg(s) = v {
                        Some(shape(s))
                    } else {
                        None
                    }
                })
                .collect::<Result<_, _>>()?,
            tensor: vec![],
        })
    } else {
        return Ok(AttrValue { value: None });
    };
    Ok(AttrValue { value: Some(v) })
}

/// Parse a text-format GraphDef.
pub fn parse(text_bytes: &[u8]) -> Result<GraphDef, FormatError> {
    let mut p = Parser {
        lex: Lexer {
            s: text_bytes,
            i: 0,
        },
        peeked: None,
    };
    let root = p.message(0, None)?;
    let mut g = GraphDef::default();
    for n in root.all("node") {
        let TVal::Msg(n) = n else {
            return Err(bad("`node` is not a message"));
        };
        let mut node = NodeDef {
            name: n.scalar("name").and_then(text).unwrap_or_default(),
            op: n.scalar("op").and_then(text).unwrap_or_default(),
            input: scalars(n, "input").filter_map(text).collect(),
            device: n.scalar("device").and_then(text).unwrap_or_default(),
            ..Default::default()
        };
        for a in n.all("attr") {
            let TVal::Msg(a) = a else { continue };
            let key = a
                .scalar("key")
                .and_then(text)
                .ok_or_else(|| bad(format!("node {}: attr without key", node.name)))?;
            let value = a
                .msg("value")
                .map(attr)
                .transpose()?
                .unwrap_or(AttrValue { value: None });
            node.attr.insert(key, value);
        }
        g.node.push(node);
    }
    if let Some(v) = root.msg("versions") {
        g.versions = Some(VersionDef {
            producer: v.scalar("producer").map(int).transpose()?.unwrap_or(0) as i32,
            min_consumer: v.scalar("min_consumer").map(int).transpose()?.unwrap_or(0) as i32,
        });
    }
    Ok(g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nodes_attrs_and_escaped_tensors() {
        let text = br#"
node {
  name: "descrpt_attr/rcut"
  op: "Const"
  attr { key: "dtype" value { type: DT_DOUBLE } }
  attr {
    key: "value"
    value { tensor { dtype: DT_DOUBLE tensor_shape { dim { size: 2 } } tensor_content: "\000\000\000\000\000\000\030@\232\231\231\231\231\231\271?" } }
  }
}
node { name: "t" op: "Const" attr { key: "value" value { tensor { dtype: DT_STRING tensor_shape {} string_val: "a\"b" "c" } } } }
versions { producer: 1087 }
"#;
        let g = parse(text).unwrap();
        assert_eq!(g.node.len(), 2);
        let Some(attr_value::Value::Tensor(t)) = &g.node[0].attr["value"].value else {
            panic!()
        };
        assert_eq!(t.tensor_content.len(), 16);
        assert_eq!(
            f64::from_le_bytes(t.tensor_content[..8].try_into().unwrap()),
            6.0
        );
        let Some(attr_value::Value::Tensor(s)) = &g.node[1].attr["value"].value else {
            panic!()
        };
        assert_eq!(s.string_val, vec![b"a\"bc".to_vec()]);
        assert_eq!(g.versions.unwrap().producer, 1087);
    }

    #[test]
    fn malformed_text_is_an_error() {
        for t in [
            &b"node {"[..],
            b"node { name: \"x",
            b"node { name: }",
            b"node { attr { key: \"v\" value { i: zz } } }",
        ] {
            assert!(parse(t).is_err(), "{}", String::from_utf8_lossy(t));
        }
    }
}
