//! A safe unpickler: runs the pickle opcode machine without executing anything.
//!
//! Python's pickle calls functions named in the stream (`GLOBAL` + `REDUCE`), which is how
//! a hostile file runs `os.system`. Here every value becomes a node in an arena; calls and
//! object constructions are recorded as `Call`/`Object` nodes for the caller to interpret,
//! and only globals on an allow-list may be named at all (anything else is an error naming
//! it). Containers are arena nodes so later mutation (`APPENDS` on a memoized list) is seen
//! through every reference, as in Python.

use crate::FormatError;

/// Index of a node in `Pickle::nodes`.
pub type Id = usize;

#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Id>),
    List(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    Set(Vec<Id>),
    /// A named global (`module`, `name`), never resolved to anything executable.
    Global(String, String),
    /// `callable(*args)` from `REDUCE`.
    Call(Id, Vec<Id>),
    /// `cls.__new__(cls, *args)` from `NEWOBJ`, with the `BUILD` state once set.
    Object {
        class: Id,
        args: Vec<Id>,
        state: Option<Id>,
    },
    /// A persistent reference (`BINPERSID`): in TorchScript archives, a storage.
    PersId(Id),
}

/// A parsed pickle: its nodes and the root value.
#[derive(Debug, Clone)]
pub struct Pickle {
    pub nodes: Vec<Node>,
    pub root: Id,
}

/// Which globals a stream may name.
pub trait Allow {
    fn allows(&self, module: &str, name: &str) -> bool;
}

impl<F: Fn(&str, &str) -> bool> Allow for F {
    fn allows(&self, module: &str, name: &str) -> bool {
        self(module, name)
    }
}

const MAX_NODES: usize = 50_000_000;

struct Vm<'a, A: Allow> {
    data: &'a [u8],
    pos: usize,
    nodes: Vec<Node>,
    stack: Vec<Id>,
    marks: Vec<usize>,
    memo: std::collections::HashMap<u32, Id>,
    allow: &'a A,
}

fn bad(msg: impl Into<String>) -> FormatError {
    FormatError::invalid(format!("pickle: {}", msg.into()))
}

/// Parse `data` with the given allow-list of globals.
pub fn parse(data: &[u8], allow: &impl Allow) -> Result<Pickle, FormatError> {
    let mut vm = Vm {
        data,
        pos: 0,
        nodes: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: Default::default(),
        allow,
    };
    let root = vm.run()?;
    Ok(Pickle {
        nodes: vm.nodes,
        root,
    })
}

impl<A: Allow> Vm<'_, A> {
    fn take(&mut self, n: usize) -> Result<&[u8], FormatError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| bad("truncated stream"))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<usize, FormatError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]) as usize)
    }

    fn u32(&mut self) -> Result<u32, FormatError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<usize, FormatError> {
        let b = self.take(8)?;
        usize::try_from(u64::from_le_bytes(b.try_into().unwrap()))
            .map_err(|_| bad("length too large"))
    }

    fn line(&mut self) -> Result<String, FormatError> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&c| c == b'\n')
            .ok_or_else(|| bad("unterminated text argument"))?;
        let s =
            String::from_utf8(rest[..n].to_vec()).map_err(|_| bad("text argument is not UTF-8"))?;
        self.pos += n + 1;
        Ok(s)
    }

    fn push_node(&mut self, n: Node) -> Result<Id, FormatError> {
        if self.nodes.len() >= MAX_NODES {
            return Err(bad("too many objects"));
        }
        self.nodes.push(n);
        let id = self.nodes.len() - 1;
        self.stack.push(id);
        Ok(id)
    }

    fn pop(&mut self) -> Result<Id, FormatError> {
        self.stack.pop().ok_or_else(|| bad("stack underflow"))
    }

    fn top(&self) -> Result<Id, FormatError> {
        self.stack
            .last()
            .copied()
            .ok_or_else(|| bad("stack underflow"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Id>, FormatError> {
        let m = self.marks.pop().ok_or_else(|| bad("no mark"))?;
        if m > self.stack.len() {
            return Err(bad("mark beyond the stack"));
        }
        Ok(self.stack.split_off(m))
    }

    fn str_node(&mut self, b: Vec<u8>) -> Result<(), FormatError> {
        let s = String::from_utf8(b).map_err(|_| bad("string is not UTF-8"))?;
        self.push_node(Node::Str(s)).map(|_| ())
    }

    fn global(&mut self, module: String, name: String) -> Result<(), FormatError> {
        if !self.allow.allows(&module, &name) {
            return Err(FormatError::invalid(format!(
                "pickle: refusing to load `{module}.{name}`: not a global a model file may name (possibly a malicious file)"
            )));
        }
        self.push_node(Node::Global(module, name)).map(|_| ())
    }

    fn memo_put(&mut self, key: u32) -> Result<(), FormatError> {
        let top = self.top()?;
        self.memo.insert(key, top);
        Ok(())
    }

    fn memo_get(&mut self, key: u32) -> Result<(), FormatError> {
        let id = *self
            .memo
            .get(&key)
            .ok_or_else(|| bad(format!("memo key {key} missing")))?;
        self.stack.push(id);
        Ok(())
    }

    fn append(&mut self, items: Vec<Id>) -> Result<(), FormatError> {
        let target = self.top()?;
        match &mut self.nodes[target] {
            Node::List(l) => l.extend(items),
            Node::Set(s) => s.extend(items),
            _ => return Err(bad("append to a non-list")),
        }
        Ok(())
    }

    fn set_items(&mut self, items: Vec<Id>) -> Result<(), FormatError> {
        if !items.len().is_multiple_of(2) {
            return Err(bad("odd number of dict items"));
        }
        let target = self.top()?;
        let Node::Dict(d) = &mut self.nodes[target] else {
            return Err(bad("setitem on a non-dict"));
        };
        for kv in items.chunks(2) {
            d.push((kv[0], kv[1]));
        }
        Ok(())
    }

    fn run(&mut self) -> Result<Id, FormatError> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    let v = self.u8()?;
                    if v > 5 {
                        return Err(bad(format!("unsupported protocol {v}")));
                    }
                }
                0x95 => {
                    self.u64()?;
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let t = self.top()?;
                    self.stack.push(t);
                }
                b'N' => {
                    self.push_node(Node::None)?;
                }
                0x88 => {
                    self.push_node(Node::Bool(true))?;
                }
                0x89 => {
                    self.push_node(Node::Bool(false))?;
                }
                b'J' => {
                    let v = self.u32()? as i32 as i64;
                    self.push_node(Node::Int(v))?;
                }
                b'K' => {
                    let v = self.u8()? as i64;
                    self.push_node(Node::Int(v))?;
                }
                b'M' => {
                    let v = self.u16()? as i64;
                    self.push_node(Node::Int(v))?;
                }
                b'I' | b'L' => {
                    let l = self.line()?;
                    let t = l.trim_end_matches('L');
                    let n = match t {
                        "00" => Node::Bool(false),
                        "01" => Node::Bool(true),
                        _ => Node::Int(t.parse().map_err(|_| bad(format!("bad int `{l}`")))?),
                    };
                    self.push_node(n)?;
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a { self.u8()? as usize } else { self.u32()? as usize };
                    let b = self.take(n)?.to_vec();
                    if n > 8 {
                        return Err(bad("integer wider than 64 bits"));
                    }
                    let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) { [0xffu8; 8] } else { [0u8; 8] };
                    buf[..n].copy_from_slice(&b);
                    self.push_node(Node::Int(i64::from_le_bytes(buf)))?;
                }
                b'F' => {
                    let l = self.line()?;
                    let v = l.trim().parse().map_err(|_| bad(format!("bad float `{l}`")))?;
                    self.push_node(Node::Float(v))?;
                }
                b'G' => {
                    let b = self.take(8)?;
                    let v = f64::from_be_bytes(b.try_into().unwrap());
                    self.push_node(Node::Float(v))?;
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.str_node(b)?;
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.str_node(b)?;
                }
                0x8d => {
                    let n = self.u64()?;
                    let b = self.take(n)?.to_vec();
                    self.str_node(b)?;
                }
                b'V' => {
                    let l = self.line()?;
                    self.push_node(Node::Str(l))?;
                }
                b'T' | b'B' => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.push_node(Node::Bytes(b))?;
                }
                b'U' | b'C' => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.push_node(Node::Bytes(b))?;
                }
                0x8e | 0x96 => {
                    let n = self.u64()?;
                    let b = self.take(n)?.to_vec();
                    self.push_node(Node::Bytes(b))?;
                }
                b')' => {
                    self.push_node(Node::Tuple(vec![]))?;
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push_node(Node::Tuple(items))?;
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err(bad("stack underflow"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push_node(Node::Tuple(items))?;
                }
                b']' => {
                    self.push_node(Node::List(vec![]))?;
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push_node(Node::List(items))?;
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append(vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                b'}' => {
                    self.push_node(Node::Dict(vec![]))?;
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    self.push_node(Node::Dict(vec![]))?;
                    self.set_items(items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                0x8f => {
                    self.push_node(Node::Set(vec![]))?;
                }
                0x90 => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push_node(Node::Set(items))?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(module, name)?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (&self.nodes[module], &self.nodes[name]) {
                        (Node::Str(m), Node::Str(n)) => {
                            let (m, n) = (m.clone(), n.clone());
                            self.global(m, n)?;
                        }
                        _ => return Err(bad("STACK_GLOBAL needs two strings")),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let f = self.pop()?;
                    let Node::Tuple(a) = &self.nodes[args] else { return Err(bad("REDUCE arguments are not a tuple")) };
                    let a = a.clone();
                    self.push_node(Node::Call(f, a))?;
                }
                0x81 => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let Node::Tuple(a) = &self.nodes[args] else { return Err(bad("NEWOBJ arguments are not a tuple")) };
                    let a = a.clone();
                    self.push_node(Node::Object { class: cls, args: a, state: None })?;
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let Node::Tuple(a) = &self.nodes[args] else { return Err(bad("NEWOBJ_EX arguments are not a tuple")) };
                    let a = a.clone();
                    self.push_node(Node::Object { class: cls, args: a, state: None })?;
                }
                b'b' => {
                    let st = self.pop()?;
                    let obj = self.top()?;
                    match &mut self.nodes[obj] {
                        Node::Object { state, .. } => *state = Some(st),
                        // BUILD on a reconstructed value (e.g. a tensor's hooks): keep the value.
                        Node::Call(..) => {}
                        _ => return Err(bad("BUILD on something that is not an object")),
                    }
                }
                b'p' => {
                    let l = self.line()?;
                    let k = l.trim().parse().map_err(|_| bad("bad PUT index"))?;
                    self.memo_put(k)?;
                }
                b'q' => {
                    let k = self.u8()? as u32;
                    self.memo_put(k)?;
                }
                b'r' => {
                    let k = self.u32()?;
                    self.memo_put(k)?;
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    self.memo_put(k)?;
                }
                b'g' => {
                    let l = self.line()?;
                    let k = l.trim().parse().map_err(|_| bad("bad GET index"))?;
                    self.memo_get(k)?;
                }
                b'h' => {
                    let k = self.u8()? as u32;
                    self.memo_get(k)?;
                }
                b'j' => {
                    let k = self.u32()?;
                    self.memo_get(k)?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.push_node(Node::PersId(pid))?;
                }
                b'P' => {
                    let l = self.line()?;
                    let s = self.nodes.len();
                    self.push_node(Node::Str(l))?;
                    self.stack.pop();
                    self.push_node(Node::PersId(s))?;
                }
                other => {
                    return Err(bad(format!(
                        "opcode 0x{other:02x} at byte {} is not supported (old-style instances, extensions and buffers are refused)",
                        self.pos - 1
                    )))
                }
            }
        }
    }
}

impl Pickle {
    pub fn node(&self, id: Id) -> &Node {
        &self.nodes[id]
    }

    pub fn as_str(&self, id: Id) -> Option<&str> {
        match &self.nodes[id] {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_int(&self, id: Id) -> Option<i64> {
        match &self.nodes[id] {
            Node::Int(i) => Some(*i),
            Node::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    /// Tuple or list items.
    pub fn items(&self, id: Id) -> Option<&[Id]> {
        match &self.nodes[id] {
            Node::Tuple(v) | Node::List(v) => Some(v),
            _ => None,
        }
    }

    /// The `(module, name)` a `Global` node names.
    pub fn global(&self, id: Id) -> Option<(&str, &str)> {
        match &self.nodes[id] {
            Node::Global(m, n) => Some((m, n)),
            _ => None,
        }
    }

    /// Look a string key up in a dict node.
    pub fn dict_get(&self, id: Id, key: &str) -> Option<Id> {
        match &self.nodes[id] {
            Node::Dict(kv) => kv
                .iter()
                .find(|(k, _)| self.as_str(*k) == Some(key))
                .map(|&(_, v)| v),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow_all(_: &str, _: &str) -> bool {
        true
    }

    #[test]
    fn containers_shared_through_the_memo() {
        // [l, l] where l = [1] is appended to after being memoized.
        let data = b"\x80\x02]q\x00(h\x00h\x00e(K\x01e.";
        // outer list (memo 0), MARK, GET 0, GET 0, APPENDS -> outer has itself twice;
        let p = parse(data, &allow_all).unwrap();
        let items = p.items(p.root).unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(items[0], p.root);
    }

    #[test]
    fn refuses_dangerous_globals() {
        // cos\nsystem\n(S'echo hi'\ntR.
        let data = b"cos\nsystem\n(X\x07\x00\x00\x00echo hitR.";
        let deny = |m: &str, _: &str| m == "collections";
        let e = parse(data, &deny).unwrap_err().to_string();
        assert!(e.contains("os.system"), "{e}");
        let ok = parse(data, &allow_all).unwrap();
        assert!(matches!(ok.node(ok.root), Node::Call(..)));
    }

    #[test]
    fn truncated_and_garbage_streams_are_errors() {
        for data in [
            &b""[..],
            b"\x80",
            b"\x80\x02]q",
            b"\x80\x02X\xff\xff\xff\xff",
            b"\x80\x02\xff",
            b"\x80\x02e.",
            b"h\x05.",
        ] {
            assert!(parse(data, &allow_all).is_err(), "{data:?}");
        }
    }
}
