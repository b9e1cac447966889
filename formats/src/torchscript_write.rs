//! Writing TorchScript archives (`.pth`) without PyTorch: the zip layout `torch.jit.save`
//! produces (`code/`, `data.pkl`, `constants.pkl`, `data/N` storages, `extra/`), with one
//! module object whose attributes are plain values and tensors.
//!
//! The module's code is TorchScript source the caller writes; `torch.jit.load` compiles it.
//! The pickle is protocol 2 with the opcodes PyTorch's own unpickler accepts
//! (`torch/csrc/jit/serialization/unpickler.cpp`).

use crate::tree::DType;
use crate::FormatError;

/// An attribute of the module object.
#[derive(Debug, Clone)]
pub enum Attr {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    None,
    /// A tensor, stored contiguously (little-endian element bytes).
    Tensor {
        dtype: DType,
        shape: Vec<usize>,
        bytes: Vec<u8>,
    },
}

/// The archive being assembled.
pub struct Archive {
    /// The folder every entry sits in (`torch.jit.save` uses the file's stem).
    root: String,
    code: Vec<(String, String)>,
    extra: Vec<(String, Vec<u8>)>,
}

impl Archive {
    pub fn new(root: &str) -> Archive {
        Archive {
            root: root.to_string(),
            code: Vec::new(),
            extra: Vec::new(),
        }
    }

    /// A source file under `code/` (e.g. `__torch__/dpc.py` for classes `__torch__.dpc.X`).
    pub fn code(&mut self, path: &str, text: String) {
        self.code.push((path.to_string(), text));
    }

    /// A file under `extra/`, which `torch.jit.load(..., _extra_files=...)` returns.
    pub fn extra(&mut self, name: &str, bytes: Vec<u8>) {
        self.extra.push((name.to_string(), bytes));
    }

    /// The archive with one module object of class `class` (`__torch__.dpc.Model`) holding
    /// `attrs`, in order.
    pub fn finish(self, class: &str, attrs: &[(String, Attr)]) -> Result<Vec<u8>, FormatError> {
        let (module, name) = class
            .rsplit_once('.')
            .ok_or_else(|| FormatError::invalid(format!("class `{class}` has no module")))?;
        let mut storages: Vec<&[u8]> = Vec::new();
        let mut p = Pickler::default();
        p.op(0x80).op(2); // PROTO 2
        p.global(module, name);
        p.op(b')').op(0x81); // EMPTY_TUPLE NEWOBJ
        p.op(b'}').op(b'('); // EMPTY_DICT MARK
        for (key, value) in attrs {
            p.str(key);
            match value {
                Attr::Bool(b) => p.bool(*b),
                Attr::Int(i) => p.int(*i),
                Attr::Float(f) => p.float(*f),
                Attr::Str(s) => p.str(s),
                Attr::None => {
                    p.op(b'N');
                }
                Attr::Tensor {
                    dtype,
                    shape,
                    bytes,
                } => {
                    let numel: usize = shape.iter().product();
                    if numel * dtype.size() != bytes.len() {
                        return Err(FormatError::invalid(format!(
                            "attribute {key}: {} bytes for shape {shape:?} of {}",
                            bytes.len(),
                            dtype.name()
                        )));
                    }
                    p.tensor(storages.len(), *dtype, shape)?;
                    storages.push(bytes);
                }
            };
        }
        p.op(b'u').op(b'b').op(b'.'); // SETITEMS BUILD STOP

        // constants.pkl: an empty tuple (the code refers to no tensor constants). The
        // version is the format torch 2.x writes: code without `op_version_set`, current
        // `div`.
        let mut files: Vec<(String, &[u8])> = vec![
            ("data.pkl".into(), &p.out),
            ("constants.pkl".into(), &[0x80, 2, b')', b'.']),
            (".data/version".into(), b"10\n"),
            ("byteorder".into(), b"little"),
        ];
        for (path, text) in &self.code {
            files.push((format!("code/{path}"), text.as_bytes()));
        }
        for (name, bytes) in &self.extra {
            files.push((format!("extra/{name}"), bytes));
        }
        for (i, s) in storages.iter().enumerate() {
            files.push((format!("data/{i}"), s));
        }
        crate::archive::write(&self.root, &files)
    }
}

/// Protocol-2 pickle opcodes, appended to `out`.
#[derive(Default)]
struct Pickler {
    out: Vec<u8>,
}

impl Pickler {
    fn op(&mut self, b: u8) -> &mut Self {
        self.out.push(b);
        self
    }

    fn global(&mut self, module: &str, name: &str) {
        self.out.push(b'c');
        self.out.extend_from_slice(module.as_bytes());
        self.out.push(b'\n');
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(b'\n');
    }

    fn str(&mut self, s: &str) {
        self.out.push(b'X'); // BINUNICODE
        self.out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.out.extend_from_slice(s.as_bytes());
    }

    fn bool(&mut self, b: bool) {
        self.out.push(if b { 0x88 } else { 0x89 });
    }

    fn int(&mut self, i: i64) {
        if let Ok(i) = i32::try_from(i) {
            self.out.push(b'J'); // BININT
            self.out.extend_from_slice(&i.to_le_bytes());
        } else {
            self.out.push(0x8a); // LONG1, 8 bytes
            self.out.push(8);
            self.out.extend_from_slice(&i.to_le_bytes());
        }
    }

    fn float(&mut self, f: f64) {
        self.out.push(b'G'); // BINFLOAT, big-endian
        self.out.extend_from_slice(&f.to_be_bytes());
    }

    fn tuple(&mut self, items: &[usize]) {
        self.out.push(b'(');
        for &i in items {
            self.int(i as i64);
        }
        self.out.push(b't');
    }

    /// `torch._utils._rebuild_tensor_v2((storage key), 0, shape, strides, False, {})`.
    fn tensor(&mut self, key: usize, dtype: DType, shape: &[usize]) -> Result<(), FormatError> {
        let storage = match dtype {
            DType::F64 => "DoubleStorage",
            DType::F32 => "FloatStorage",
            DType::F16 => "HalfStorage",
            DType::I64 => "LongStorage",
            DType::I32 => "IntStorage",
            DType::I16 => "ShortStorage",
            DType::I8 => "CharStorage",
            DType::U8 => "ByteStorage",
            DType::Bool => "BoolStorage",
            other => {
                return Err(FormatError::unsupported(format!(
                    "a {} tensor in a TorchScript archive",
                    other.name()
                )))
            }
        };
        let numel: usize = shape.iter().product();
        let mut strides = vec![1usize; shape.len()];
        for i in (0..shape.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * shape[i + 1].max(1);
        }
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.op(b'(');
        self.op(b'(');
        self.str("storage");
        self.global("torch", storage);
        self.str(&key.to_string());
        self.str("cpu");
        self.int(numel as i64);
        self.op(b't').op(b'Q'); // TUPLE BINPERSID
        self.int(0);
        self.tuple(shape);
        self.tuple(&strides);
        self.bool(false);
        self.global("collections", "OrderedDict");
        self.op(b')').op(b'R'); // EMPTY_TUPLE REDUCE
        self.op(b't').op(b'R'); // TUPLE REDUCE
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::torchscript::TorchScript;

    /// What is written reads back through dpc's own TorchScript reader: the class, plain
    /// attributes, and tensors bit for bit (shape, dtype, bytes); extra files are kept.
    #[test]
    fn archives_read_back() {
        let w: Vec<f64> = vec![1.5, -0.0, f64::MIN_POSITIVE, 1e300, 3.25, -7.0];
        let bytes: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
        let mut ar = Archive::new("m");
        ar.code("__torch__/x.py", "class M(Module):\n  pass\n".into());
        ar.extra("note.txt", b"hello".to_vec());
        let attrs = vec![
            ("training".to_string(), Attr::Bool(false)),
            ("name".to_string(), Attr::Str("dpc é".into())),
            (
                "w".to_string(),
                Attr::Tensor {
                    dtype: DType::F64,
                    shape: vec![2, 3],
                    bytes: bytes.clone(),
                },
            ),
            (
                "s".to_string(),
                Attr::Tensor {
                    dtype: DType::I32,
                    shape: vec![],
                    bytes: 7i32.to_le_bytes().to_vec(),
                },
            ),
        ];
        let zip = ar.finish("__torch__.x.M", &attrs).unwrap();
        let mut ts = TorchScript::open(zip).unwrap();
        let root = ts.data.root;
        assert_eq!(ts.class(root).as_deref(), Some("__torch__.x.M"));
        let name = ts.attr(root, "name").unwrap();
        assert_eq!(ts.data.as_str(name), Some("dpc é"));
        let t = ts.attr(root, "w").unwrap();
        let a = ts.tensor(t).unwrap();
        assert_eq!((a.dtype, a.shape.clone()), (DType::F64, vec![2, 3]));
        let back: Vec<u64> = (0..6).map(|i| a.get_f64(i).to_bits()).collect();
        assert_eq!(back, w.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
        let s = ts.attr(root, "s").unwrap();
        assert_eq!(ts.tensor(s).unwrap().get_i64(0), Some(7));
        assert_eq!(
            ts.extra("note.txt").unwrap().as_deref(),
            Some(&b"hello"[..])
        );
        // A tensor whose bytes do not fit its shape is refused.
        let bad = vec![(
            "w".to_string(),
            Attr::Tensor {
                dtype: DType::F64,
                shape: vec![2],
                bytes,
            },
        )];
        assert!(Archive::new("m").finish("__torch__.x.M", &bad).is_err());
    }
}
