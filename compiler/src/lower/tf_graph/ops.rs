//! A TensorFlow GraphDef under construction, and the IR's elementary ops as TF nodes, one
//! node (or a few) per IR node. Sizes with the graph's `nloc` symbol are computed in the
//! graph from a scalar the caller provides; every other size is a constant.

use std::collections::HashMap;

use dpc_formats::tf::graph_def::{
    attr_value::Value as AV, dtype as tfd, tensor_shape_proto, AttrValue, ListValue, NodeDef,
    TensorProto, TensorShapeProto,
};

use crate::graph::{Binary, Cmp, DType, Dim, Graph, GraphError, Op, Sym, Unary};

pub fn tf_dtype(dt: DType) -> i32 {
    match dt {
        DType::F32 => tfd::FLOAT,
        DType::F64 => tfd::DOUBLE,
        DType::I32 => tfd::INT32,
        DType::Bool => tfd::BOOL,
    }
}

pub fn ty(t: i32) -> AttrValue {
    AttrValue {
        value: Some(AV::Type(t)),
    }
}

pub fn int(i: i64) -> AttrValue {
    AttrValue {
        value: Some(AV::I(i)),
    }
}

pub fn float(f: f32) -> AttrValue {
    AttrValue {
        value: Some(AV::F(f)),
    }
}

pub fn boolean(b: bool) -> AttrValue {
    AttrValue {
        value: Some(AV::B(b)),
    }
}

pub fn ints(v: &[i64]) -> AttrValue {
    AttrValue {
        value: Some(AV::List(ListValue {
            i: v.to_vec(),
            ..Default::default()
        })),
    }
}

/// A shape attribute; -1 for an unknown size.
pub fn shape(dims: &[i64]) -> AttrValue {
    AttrValue {
        value: Some(AV::Shape(shape_proto(dims))),
    }
}

pub fn shape_proto(dims: &[i64]) -> TensorShapeProto {
    TensorShapeProto {
        dim: dims
            .iter()
            .map(|&size| tensor_shape_proto::Dim {
                size,
                name: String::new(),
            })
            .collect(),
        unknown_rank: false,
    }
}

/// The graph being written.
#[derive(Default)]
pub struct Tf {
    pub nodes: Vec<NodeDef>,
    next: usize,
    ints: HashMap<Vec<i32>, String>,
}

impl Tf {
    /// A node named `name` (None: a fresh `dpc/<op>_<n>`); returns its name (output 0).
    pub fn node(
        &mut self,
        name: Option<&str>,
        op: &str,
        inputs: &[&str],
        attrs: Vec<(&str, AttrValue)>,
    ) -> String {
        let name = match name {
            Some(n) => n.to_string(),
            None => {
                self.next += 1;
                format!("dpc/{op}_{}", self.next)
            }
        };
        self.nodes.push(NodeDef {
            name: name.clone(),
            op: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            device: String::new(),
            attr: attrs.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        });
        name
    }

    pub fn constant(
        &mut self,
        name: Option<&str>,
        dtype: i32,
        dims: &[i64],
        content: Vec<u8>,
    ) -> String {
        let value = AttrValue {
            value: Some(AV::Tensor(TensorProto {
                dtype,
                tensor_shape: Some(shape_proto(dims)),
                tensor_content: content,
                ..Default::default()
            })),
        };
        self.node(
            name,
            "Const",
            &[],
            vec![("dtype", ty(dtype)), ("value", value)],
        )
    }

    /// A scalar string constant named `name`.
    pub fn string(&mut self, name: &str, s: &str) -> String {
        self.strings(Some(name), &[], vec![s.as_bytes().to_vec()])
    }

    /// A string constant of shape `dims`.
    pub fn strings(&mut self, name: Option<&str>, dims: &[i64], strings: Vec<Vec<u8>>) -> String {
        let value = AttrValue {
            value: Some(AV::Tensor(TensorProto {
                dtype: tfd::STRING,
                tensor_shape: Some(shape_proto(dims)),
                string_val: strings,
                ..Default::default()
            })),
        };
        self.node(
            name,
            "Const",
            &[],
            vec![("dtype", ty(tfd::STRING)), ("value", value)],
        )
    }

    /// The int32 shape of `x` (of dtype `t`).
    pub fn shape_of(&mut self, x: &str, t: i32) -> String {
        self.node(
            None,
            "Shape",
            &[x],
            vec![("T", ty(t)), ("out_type", ty(tfd::INT32))],
        )
    }

    pub fn cast(&mut self, x: &str, from: i32, to: i32) -> String {
        self.node(
            None,
            "Cast",
            &[x],
            vec![("SrcT", ty(from)), ("DstT", ty(to))],
        )
    }

    /// A tensor of shape `shape` (int32 vector) filled with the scalar `value`.
    pub fn fill(&mut self, shape: &str, value: &str, t: i32) -> String {
        self.node(
            None,
            "Fill",
            &[shape, value],
            vec![("T", ty(t)), ("index_type", ty(tfd::INT32))],
        )
    }

    /// `x` broadcast to `shape` (int32 vector).
    pub fn broadcast_to(&mut self, x: &str, shape: &str, t: i32) -> String {
        self.node(
            None,
            "BroadcastTo",
            &[x, shape],
            vec![("T", ty(t)), ("Tidx", ty(tfd::INT32))],
        )
    }

    /// `cond ? a : b`, broadcasting.
    pub fn select(&mut self, cond: &str, a: &str, b: &str, t: i32) -> String {
        self.node(None, "SelectV2", &[cond, a, b], vec![("T", ty(t))])
    }

    pub fn concat(&mut self, parts: &[&str], axis: i32, t: i32) -> String {
        let ax = self.i32s(&[axis], true);
        let mut ins = parts.to_vec();
        ins.push(&ax);
        self.node(
            None,
            "ConcatV2",
            &ins,
            vec![
                ("T", ty(t)),
                ("N", int(parts.len() as i64)),
                ("Tidx", ty(tfd::INT32)),
            ],
        )
    }

    /// `params` gathered along `axis` by int32 `idx`, the first `batch_dims` axes shared.
    pub fn gather(
        &mut self,
        params: &str,
        idx: &str,
        axis: i32,
        batch_dims: i64,
        t: i32,
    ) -> String {
        let ax = self.i32s(&[axis], true);
        let mut attrs = vec![
            ("Tparams", ty(t)),
            ("Tindices", ty(tfd::INT32)),
            ("Taxis", ty(tfd::INT32)),
        ];
        if batch_dims != 0 {
            attrs.push(("batch_dims", int(batch_dims)));
        }
        self.node(None, "GatherV2", &[params, idx, &ax], attrs)
    }

    /// `x` summed over `axes` (int32 vector constant), the axes dropped.
    pub fn sum(&mut self, x: &str, axes: &[i32], t: i32) -> String {
        let ax = self.i32s(axes, false);
        self.node(
            None,
            "Sum",
            &[x, &ax],
            vec![
                ("T", ty(t)),
                ("Tidx", ty(tfd::INT32)),
                ("keep_dims", boolean(false)),
            ],
        )
    }

    /// An int32 constant: a scalar when `dims` is empty, else a vector.
    pub fn i32s(&mut self, v: &[i32], scalar: bool) -> String {
        let key: Vec<i32> = if scalar {
            let mut k = v.to_vec();
            k.push(i32::MIN); // distinct from the one-element vector
            k
        } else {
            v.to_vec()
        };
        if let Some(n) = self.ints.get(&key) {
            return n.clone();
        }
        let dims: Vec<i64> = if scalar { vec![] } else { vec![v.len() as i64] };
        let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let n = self.constant(None, tfd::INT32, &dims, bytes);
        self.ints.insert(key, n.clone());
        n
    }

    pub fn scalar_f64(&mut self, name: &str, x: f64) -> String {
        self.constant(Some(name), tfd::DOUBLE, &[], x.to_le_bytes().to_vec())
    }

    pub fn binary(&mut self, op: &str, a: &str, b: &str, t: i32) -> String {
        self.node(None, op, &[a, b], vec![("T", ty(t))])
    }

    /// `x` reshaped to `shape` (an int32 vector tensor).
    pub fn reshape(&mut self, name: Option<&str>, x: &str, shape: &str, t: i32) -> String {
        self.node(
            name,
            "Reshape",
            &[x, shape],
            vec![("T", ty(t)), ("Tshape", ty(tfd::INT32))],
        )
    }

    /// Element `i` of an int32 vector, as a scalar.
    pub fn element(&mut self, v: &str, i: i32) -> String {
        let (b, e, s) = (
            self.i32s(&[i], false),
            self.i32s(&[i + 1], false),
            self.i32s(&[1], false),
        );
        self.node(
            None,
            "StridedSlice",
            &[v, &b, &e, &s],
            vec![
                ("T", ty(tfd::INT32)),
                ("Index", ty(tfd::INT32)),
                ("shrink_axis_mask", int(1)),
            ],
        )
    }

    /// int32 scalars (tensor names) packed into a vector.
    pub fn pack(&mut self, items: &[String]) -> String {
        let refs: Vec<&str> = items.iter().map(String::as_str).collect();
        self.node(
            None,
            "Pack",
            &refs,
            vec![
                ("T", ty(tfd::INT32)),
                ("N", int(items.len() as i64)),
                ("axis", int(0)),
            ],
        )
    }
}

/// A size: a constant, or `nloc` (an int32 scalar in the graph) times a factor.
#[derive(Clone)]
enum Size {
    Fixed(i64),
    Tensor(String),
}

/// Lowers the nodes of one IR graph into `tf`.
pub struct Lowering<'a> {
    pub tf: &'a mut Tf,
    /// The int32 scalar the graph's `nloc` stands for.
    pub nloc: String,
    /// The int32 scalar the graph's `nall` stands for, where the graph has one.
    pub nall: Option<String>,
    sizes: HashMap<Dim, String>,
}

fn err(m: impl Into<String>) -> GraphError {
    GraphError(m.into())
}

impl<'a> Lowering<'a> {
    pub fn new(tf: &'a mut Tf, nloc: String) -> Self {
        Lowering {
            tf,
            nloc,
            nall: None,
            sizes: HashMap::new(),
        }
    }

    /// The graph's `nall` stands for this int32 scalar.
    pub fn with_nall(mut self, nall: String) -> Self {
        self.nall = Some(nall);
        self
    }

    fn size(&mut self, d: Dim) -> Result<Size, GraphError> {
        match d.sym {
            None => Ok(Size::Fixed(d.factor as i64)),
            Some(sym) => {
                if let Some(s) = self.sizes.get(&d) {
                    return Ok(Size::Tensor(s.clone()));
                }
                let base = match sym {
                    Sym::Nloc => self.nloc.clone(),
                    Sym::Nall => self.nall.clone().ok_or_else(|| {
                        err("this TensorFlow lowering has no `nall` size (the graph must not read coordinates)")
                    })?,
                };
                let s = if d.factor == 1 {
                    base
                } else {
                    let f = self.tf.i32s(&[d.factor as i32], true);
                    self.tf.binary("Mul", &base, &f, tfd::INT32)
                };
                self.sizes.insert(d, s.clone());
                Ok(Size::Tensor(s))
            }
        }
    }

    fn scalar(&mut self, s: &Size) -> String {
        match s {
            Size::Fixed(v) => self.tf.i32s(&[*v as i32], true),
            Size::Tensor(t) => t.clone(),
        }
    }

    /// An int32 vector of sizes (constant when every size is).
    fn vector(&mut self, sizes: &[Size]) -> String {
        if sizes.iter().all(|s| matches!(s, Size::Fixed(_))) {
            let v: Vec<i32> = sizes
                .iter()
                .map(|s| match s {
                    Size::Fixed(v) => *v as i32,
                    Size::Tensor(_) => unreachable!(),
                })
                .collect();
            return self.tf.i32s(&v, false);
        }
        let items: Vec<String> = sizes.iter().map(|s| self.scalar(s)).collect();
        self.tf.pack(&items)
    }

    fn shape(&mut self, dims: &[Dim]) -> Result<String, GraphError> {
        let sizes = dims
            .iter()
            .map(|&d| self.size(d))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self.vector(&sizes))
    }

    fn sub(&mut self, a: Size, b: Size) -> Size {
        match (&a, &b) {
            (Size::Fixed(x), Size::Fixed(y)) => Size::Fixed(x - y),
            _ => {
                let (x, y) = (self.scalar(&a), self.scalar(&b));
                Size::Tensor(self.tf.binary("Sub", &x, &y, tfd::INT32))
            }
        }
    }

    /// Every node an output needs, after its inputs (`inputs` by graph input name); returns
    /// the tensor of every graph output, by name.
    pub fn graph(
        &mut self,
        g: &Graph,
        inputs: &HashMap<&str, String>,
    ) -> Result<HashMap<String, String>, GraphError> {
        // Only what an output needs is written.
        let live = g.live();
        let mut vals: Vec<Option<String>> = vec![None; g.nodes.len()];
        for (i, node) in g.nodes.iter().enumerate() {
            if !live[i] {
                continue;
            }
            let a: Vec<String> = node
                .args
                .iter()
                .map(|v| vals[v.index()].clone().expect("args come first"))
                .collect();
            let t = tf_dtype(node.ty.dtype);
            let in_t = node.args.first().map(|v| tf_dtype(g.dtype(*v)));
            let v = match &node.op {
                Op::Input(n) => {
                    let name = g.inputs[*n].name.as_str();
                    inputs
                        .get(name)
                        .cloned()
                        .ok_or_else(|| err(format!("the TensorFlow lowering has no value for graph input {name}")))?
                }
                Op::Const(c) => {
                    let dims: Vec<i64> = c.shape.iter().map(|&n| n as i64).collect();
                    let bytes = c.to_le_bytes();
                    self.tf.constant(None, t, &dims, bytes)
                }
                Op::Unary(u) => {
                    let op = match u {
                        Unary::Neg => "Neg",
                        Unary::Exp => "Exp",
                        Unary::Log => "Log",
                        Unary::Tanh => "Tanh",
                        Unary::Sqrt => "Sqrt",
                        Unary::Recip => "Reciprocal",
                        Unary::Sigmoid => "Sigmoid",
                        Unary::Floor => "Floor",
                        Unary::Not => "LogicalNot",
                    };
                    let attrs = if *u == Unary::Not {
                        vec![]
                    } else {
                        vec![("T", ty(t))]
                    };
                    self.tf.node(None, op, &[&a[0]], attrs)
                }
                Op::Binary(b) => {
                    let op = match b {
                        Binary::Add => "AddV2",
                        Binary::Sub => "Sub",
                        Binary::Mul => "Mul",
                        // Integer division truncates, as the other lowerings' does.
                        Binary::Div if !node.ty.dtype.is_float() => "TruncateDiv",
                        Binary::Div => "RealDiv",
                        Binary::Max => "Maximum",
                        Binary::Min => "Minimum",
                        Binary::And => "LogicalAnd",
                        Binary::Or => "LogicalOr",
                    };
                    let attrs = if matches!(b, Binary::And | Binary::Or) {
                        vec![]
                    } else {
                        vec![("T", ty(t))]
                    };
                    self.tf.node(None, op, &[&a[0], &a[1]], attrs)
                }
                Op::Compare(c) => {
                    let op = match c {
                        Cmp::Lt => "Less",
                        Cmp::Le => "LessEqual",
                        Cmp::Gt => "Greater",
                        Cmp::Ge => "GreaterEqual",
                        Cmp::Eq => "Equal",
                        Cmp::Ne => "NotEqual",
                    };
                    let it = in_t.unwrap_or(t);
                    self.tf.node(None, op, &[&a[0], &a[1]], vec![("T", ty(it))])
                }
                Op::Select => self.tf.select(&a[0], &a[1], &a[2], t),
                Op::Cast(_) => self.tf.cast(&a[0], in_t.unwrap_or(t), t),
                Op::MatMul => self.tf.node(
                    None,
                    "BatchMatMulV2",
                    &[&a[0], &a[1]],
                    vec![("T", ty(t))],
                ),
                Op::Reshape(_) => {
                    let s = self.shape(&node.ty.shape)?;
                    self.tf.reshape(None, &a[0], &s, t)
                }
                Op::Transpose(perm) => {
                    let p: Vec<i32> = perm.iter().map(|&x| x as i32).collect();
                    let p = self.tf.i32s(&p, false);
                    self.tf.node(
                        None,
                        "Transpose",
                        &[&a[0], &p],
                        vec![("T", ty(t)), ("Tperm", ty(tfd::INT32))],
                    )
                }
                Op::Broadcast(_) => {
                    let s = self.shape(&node.ty.shape)?;
                    self.tf.broadcast_to(&a[0], &s, t)
                }
                Op::Slice { axis, start, end } => {
                    let rank = node.ty.shape.len();
                    let (s, e) = (self.size(*start)?, self.size(*end)?);
                    let len = self.sub(e, s.clone());
                    let mut begin = vec![Size::Fixed(0); rank];
                    let mut size = vec![Size::Fixed(-1); rank];
                    begin[*axis] = s;
                    size[*axis] = len;
                    let (b, z) = (self.vector(&begin), self.vector(&size));
                    self.tf.node(
                        None,
                        "Slice",
                        &[&a[0], &b, &z],
                        vec![("T", ty(t)), ("Index", ty(tfd::INT32))],
                    )
                }
                Op::Pad { axis, before, size } => {
                    let rank = node.ty.shape.len();
                    let x_axis = g.shape(node.args[0])[*axis];
                    let (b, s, xa) = (self.size(*before)?, self.size(*size)?, self.size(x_axis)?);
                    let rest = self.sub(s, b.clone());
                    let after = self.sub(rest, xa);
                    let mut pads = vec![Size::Fixed(0); 2 * rank];
                    pads[2 * axis] = b;
                    pads[2 * axis + 1] = after;
                    let flat = self.vector(&pads);
                    let shape = self.tf.i32s(&[rank as i32, 2], false);
                    let p = self.tf.reshape(None, &flat, &shape, tfd::INT32);
                    self.tf.node(
                        None,
                        "Pad",
                        &[&a[0], &p],
                        vec![("T", ty(t)), ("Tpaddings", ty(tfd::INT32))],
                    )
                }
                Op::Concat { axis } => {
                    let parts: Vec<&str> = a.iter().map(String::as_str).collect();
                    self.tf.concat(&parts, *axis as i32, t)
                }
                Op::ReduceSum { axes, keepdims } | Op::ReduceMax { axes, keepdims } => {
                    if axes.is_empty() {
                        self.tf
                            .node(None, "Identity", &[&a[0]], vec![("T", ty(t))])
                    } else {
                        let op = if matches!(node.op, Op::ReduceSum { .. }) {
                            "Sum"
                        } else {
                            "Max"
                        };
                        let ax: Vec<i32> = axes.iter().map(|&x| x as i32).collect();
                        let ax = self.tf.i32s(&ax, false);
                        self.tf.node(
                            None,
                            op,
                            &[&a[0], &ax],
                            vec![
                                ("T", ty(t)),
                                ("Tidx", ty(tfd::INT32)),
                                ("keep_dims", boolean(*keepdims)),
                            ],
                        )
                    }
                }
                Op::Gather => self.tf.gather(&a[0], &a[1], 0, 0, t),
                Op::ScatterAdd { rows } => {
                    let r = self.size(*rows)?;
                    let r = self.scalar(&r);
                    self.tf.node(
                        None,
                        "UnsortedSegmentSum",
                        &[&a[1], &a[0], &r],
                        vec![
                            ("T", ty(t)),
                            ("Tindices", ty(tfd::INT32)),
                            ("Tnumsegments", ty(tfd::INT32)),
                        ],
                    )
                }
                Op::StopGradient => self
                    .tf
                    .node(None, "Identity", &[&a[0]], vec![("T", ty(t))]),
                other => {
                    return Err(err(format!(
                        "the TensorFlow lowering takes the elementary form of every op; `{}` is a fused op",
                        other.name()
                    )))
                }
            };
            vals[i] = Some(v);
        }
        let mut out = HashMap::new();
        for (name, v) in &g.outputs {
            out.insert(name.clone(), vals[v.index()].clone().expect("live"));
        }
        Ok(out)
    }
}
