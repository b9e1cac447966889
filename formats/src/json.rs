//! JSON for the serialization tree, with Python's dialect: `NaN`, `Infinity` and `-Infinity`
//! are accepted and written (Python's `json.dumps` emits them), integers stay integers, dict
//! order is kept, and floats are written in their shortest round-trip form.

use crate::tree::{Dict, Value};
use crate::FormatError;

/// Parse a JSON document into a tree (arrays stay lists; see `Value`).
pub fn parse(text: &str) -> Result<Value, FormatError> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
        depth: 0,
    };
    p.ws();
    let v = p.value()?;
    p.ws();
    if p.i != p.s.len() {
        return Err(p.err("trailing characters after the JSON document"));
    }
    Ok(v)
}

/// Nesting deeper than this is refused, so hostile input cannot overflow the stack.
const MAX_DEPTH: usize = 512;

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    depth: usize,
}

impl Parser<'_> {
    fn err(&self, msg: &str) -> FormatError {
        FormatError::invalid(format!("JSON: {msg} at byte {}", self.i))
    }

    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn eat(&mut self, lit: &str) -> bool {
        if self.s[self.i..].starts_with(lit.as_bytes()) {
            self.i += lit.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self) -> Result<Value, FormatError> {
        let Some(&c) = self.s.get(self.i) else {
            return Err(self.err("unexpected end of input"));
        };
        match c {
            b'{' => self.nested(|p| p.object()),
            b'[' => self.nested(|p| p.array()),
            b'"' => Ok(Value::Str(self.string()?)),
            b't' if self.eat("true") => Ok(Value::Bool(true)),
            b'f' if self.eat("false") => Ok(Value::Bool(false)),
            b'n' if self.eat("null") => Ok(Value::Null),
            b'N' if self.eat("NaN") => Ok(Value::Float(f64::NAN)),
            b'I' if self.eat("Infinity") => Ok(Value::Float(f64::INFINITY)),
            b'-' if self.eat("-Infinity") => Ok(Value::Float(f64::NEG_INFINITY)),
            b'-' | b'0'..=b'9' => self.number(),
            _ => Err(self.err("unexpected character")),
        }
    }

    fn nested(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<Value, FormatError>,
    ) -> Result<Value, FormatError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err("nesting too deep"));
        }
        let v = f(self);
        self.depth -= 1;
        v
    }

    fn object(&mut self) -> Result<Value, FormatError> {
        self.i += 1;
        let mut d = Dict::new();
        self.ws();
        if self.eat("}") {
            return Ok(Value::Dict(d));
        }
        loop {
            self.ws();
            if self.s.get(self.i) != Some(&b'"') {
                return Err(self.err("expected a string key"));
            }
            let k = self.string()?;
            self.ws();
            if !self.eat(":") {
                return Err(self.err("expected ':'"));
            }
            self.ws();
            let v = self.value()?;
            d.insert(k, v);
            self.ws();
            if self.eat(",") {
                continue;
            }
            if self.eat("}") {
                return Ok(Value::Dict(d));
            }
            return Err(self.err("expected ',' or '}'"));
        }
    }

    fn array(&mut self) -> Result<Value, FormatError> {
        self.i += 1;
        let mut l = Vec::new();
        self.ws();
        if self.eat("]") {
            return Ok(Value::List(l));
        }
        loop {
            self.ws();
            l.push(self.value()?);
            self.ws();
            if self.eat(",") {
                continue;
            }
            if self.eat("]") {
                return Ok(Value::List(l));
            }
            return Err(self.err("expected ',' or ']'"));
        }
    }

    fn hex4(&mut self) -> Result<u32, FormatError> {
        let h = self
            .s
            .get(self.i..self.i + 4)
            .ok_or_else(|| self.err("truncated \\u escape"))?;
        let h = std::str::from_utf8(h).map_err(|_| self.err("bad \\u escape"))?;
        let v = u32::from_str_radix(h, 16).map_err(|_| self.err("bad \\u escape"))?;
        self.i += 4;
        Ok(v)
    }

    fn string(&mut self) -> Result<String, FormatError> {
        self.i += 1;
        let mut out = Vec::new();
        loop {
            let Some(&c) = self.s.get(self.i) else {
                return Err(self.err("unterminated string"));
            };
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let Some(&e) = self.s.get(self.i) else {
                        return Err(self.err("unterminated escape"));
                    };
                    self.i += 1;
                    let ch = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            let cp = if (0xD800..0xDC00).contains(&hi) && self.eat("\\u") {
                                let lo = self.hex4()?;
                                0x10000 + ((hi - 0xD800) << 10) + (lo.wrapping_sub(0xDC00) & 0x3ff)
                            } else {
                                hi
                            };
                            char::from_u32(cp).unwrap_or('\u{fffd}')
                        }
                        _ => return Err(self.err("unknown escape")),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                _ => out.push(c),
            }
        }
        String::from_utf8(out).map_err(|_| self.err("string is not UTF-8"))
    }

    fn number(&mut self) -> Result<Value, FormatError> {
        let start = self.i;
        let mut is_float = false;
        while let Some(&c) = self.s.get(self.i) {
            match c {
                b'0'..=b'9' | b'-' | b'+' => {}
                b'.' | b'e' | b'E' => is_float = true,
                _ => break,
            }
            self.i += 1;
        }
        let text = std::str::from_utf8(&self.s[start..self.i]).unwrap();
        if !is_float {
            if let Ok(i) = text.parse::<i64>() {
                return Ok(Value::Int(i));
            }
        }
        text.parse::<f64>()
            .map(Value::Float)
            .map_err(|_| self.err("bad number"))
    }
}

/// Write a model tree as JSON with every array as an `np.ndarray` dict, as DeePMD-kit's
/// `pt_expt` backend stores it in `extra/model.json` (`inline_ndarrays` reads it back;
/// floats are written with Python's shortest round-trip digits, so nothing is lost).
pub fn write_tree(v: &Value) -> Result<String, FormatError> {
    fn encode(v: &Value) -> Value {
        match v {
            Value::Array(a) => Value::Dict(crate::tree::ndarray_to_dict(a)),
            Value::Dict(d) => Value::Dict(d.iter().map(|(k, x)| (k.clone(), encode(x))).collect()),
            Value::List(l) => Value::List(l.iter().map(encode).collect()),
            other => other.clone(),
        }
    }
    write(&encode(v))
}

/// Write a tree as compact JSON (`separators=(",", ":")`, as DeePMD-kit does).
/// Arrays and byte blobs cannot appear here: callers replace them first.
pub fn write(v: &Value) -> Result<String, FormatError> {
    let mut out = String::new();
    write_into(v, &mut out)?;
    Ok(out)
}

fn write_into(v: &Value, out: &mut String) -> Result<(), FormatError> {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => out.push_str(&i.to_string()),
        Value::Float(f) => out.push_str(&python_float_repr(*f, "NaN", "Infinity")),
        Value::Str(s) => write_string(s, out),
        Value::List(l) => {
            out.push('[');
            for (i, x) in l.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_into(x, out)?;
            }
            out.push(']');
        }
        Value::Dict(d) => {
            out.push('{');
            for (i, (k, x)) in d.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(k, out);
                out.push(':');
                write_into(x, out)?;
            }
            out.push('}');
        }
        Value::Array(_) | Value::Bytes(_) => {
            return Err(FormatError::invalid(
                "an array reached the JSON writer; store it as a variable",
            ))
        }
    }
    Ok(())
}

/// A JSON string literal (non-ASCII kept as UTF-8; control characters escaped).
pub fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)`: shortest round-trip digits, scientific notation outside
/// 1e-4 <= |x| < 1e16, always with a `.0` or exponent so it reads back as a float.
pub fn python_float_repr(f: f64, nan: &str, inf: &str) -> String {
    if f.is_nan() {
        return nan.to_string();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            inf.to_string()
        } else {
            format!("-{inf}")
        };
    }
    if f == 0.0 {
        return if f.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    // `{:e}` gives the shortest round-trip digits as d.ddde<exp>.
    let sci = format!("{:e}", f);
    let (mant, exp) = sci.split_once('e').unwrap();
    let exp: i32 = exp.parse().unwrap();
    if (-4..16).contains(&exp) {
        let s = format!("{}", f);
        if s.contains('.') {
            s
        } else {
            format!("{s}.0")
        }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mant}e{sign}{:02}", exp.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_repr_matches() {
        assert_eq!(python_float_repr(1.0, "NaN", "Infinity"), "1.0");
        assert_eq!(python_float_repr(1e-5, "NaN", "Infinity"), "1e-05");
        assert_eq!(python_float_repr(1.5e-7, "NaN", "Infinity"), "1.5e-07");
        assert_eq!(python_float_repr(0.0001, "NaN", "Infinity"), "0.0001");
        assert_eq!(python_float_repr(1e16, "NaN", "Infinity"), "1e+16");
        assert_eq!(python_float_repr(123456.75, "NaN", "Infinity"), "123456.75");
        assert_eq!(python_float_repr(-2.5, "NaN", "Infinity"), "-2.5");
        assert_eq!(
            python_float_repr(f64::NEG_INFINITY, "NaN", "Infinity"),
            "-Infinity"
        );
    }

    #[test]
    fn round_trip_keeps_order_ints_and_specials() {
        let text =
            r#"{"b":1,"a":[1.0,-0.0,NaN,Infinity,-Infinity,"x\"y\u00e9"],"c":null,"d":true}"#;
        let v = parse(text).unwrap();
        let keys: Vec<_> = v.as_dict().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["b", "a", "c", "d"]);
        assert_eq!(v.get("b"), Some(&Value::Int(1)));
        let back = write(&v).unwrap();
        assert_eq!(
            back,
            r#"{"b":1,"a":[1.0,-0.0,NaN,Infinity,-Infinity,"x\"yé"],"c":null,"d":true}"#
        );
    }

    #[test]
    fn float_bits_survive() {
        for x in [
            0.1,
            1.0 / 3.0,
            6.02214076e23,
            5e-324,
            f64::MAX,
            -1.2345678901234567e-300,
        ] {
            let s = write(&Value::Float(x)).unwrap();
            match parse(&s).unwrap() {
                Value::Float(y) => assert_eq!(x.to_bits(), y.to_bits(), "{s}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            "",
            "{",
            "[1,",
            "{\"a\" 1}",
            "\"abc",
            "[1] x",
            "{\"a\":\"\\u12\"}",
            "tru",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let deep = "[".repeat(10_000);
        assert!(parse(&deep).is_err());
    }
}
