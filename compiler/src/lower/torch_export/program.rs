//! An ExportedProgram under construction (torch/_export/serde/schema.py, schema 8): ATen
//! nodes with their arguments named as the op's schema names them, every tensor's metadata
//! (dtype, symbolic sizes, contiguous strides), SymInt values computed in the graph, the
//! lifted weights (buffers) and the user inputs and outputs.

use std::collections::{BTreeMap, HashMap};

use super::json::{obj, one, s, J};

/// A size: a sum of integer multiples of products of the program's symbols.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Expr(BTreeMap<Vec<&'static str>, i64>);

impl Expr {
    pub fn int(n: i64) -> Expr {
        let mut m = BTreeMap::new();
        if n != 0 {
            m.insert(vec![], n);
        }
        Expr(m)
    }

    pub fn sym(name: &'static str) -> Expr {
        Expr(BTreeMap::from([(vec![name], 1)]))
    }

    pub fn constant(&self) -> Option<i64> {
        match self.0.len() {
            0 => Some(0),
            1 => self.0.get(&Vec::new()).copied(),
            _ => None,
        }
    }

    pub fn add(&self, o: &Expr) -> Expr {
        let mut m = self.0.clone();
        for (k, v) in &o.0 {
            *m.entry(k.clone()).or_insert(0) += v;
        }
        m.retain(|_, v| *v != 0);
        Expr(m)
    }

    pub fn sub(&self, o: &Expr) -> Expr {
        self.add(&o.scale(-1))
    }

    pub fn scale(&self, c: i64) -> Expr {
        self.mul(&Expr::int(c))
    }

    pub fn mul(&self, o: &Expr) -> Expr {
        let mut m = BTreeMap::new();
        for (ka, va) in &self.0 {
            for (kb, vb) in &o.0 {
                let mut k = ka.clone();
                k.extend(kb.iter().copied());
                k.sort_unstable();
                *m.entry(k).or_insert(0) += va * vb;
            }
        }
        m.retain(|_, v: &mut i64| *v != 0);
        Expr(m)
    }

    /// sympy's `srepr`, which the loader parses with `sympify`.
    fn srepr(&self) -> String {
        let sym = |n: &str| format!("Symbol('{n}', positive=True, integer=True)");
        let monos: Vec<String> = self
            .0
            .iter()
            .map(|(k, &c)| {
                let mut f: Vec<String> = Vec::new();
                if c != 1 || k.is_empty() {
                    f.push(format!("Integer({c})"));
                }
                f.extend(k.iter().map(|n| sym(n)));
                if f.len() == 1 {
                    f.pop().unwrap()
                } else {
                    format!("Mul({})", f.join(", "))
                }
            })
            .collect();
        match monos.len() {
            0 => "Integer(0)".into(),
            1 => monos[0].clone(),
            _ => format!("Add({})", monos.join(", ")),
        }
    }

    fn json(&self) -> J {
        match self.constant() {
            Some(n) => one("as_int", J::Int(n)),
            None => one("as_expr", obj([("expr_str", s(&self.srepr()))])),
        }
    }
}

/// torch's `ScalarType` codes in the schema.
pub mod dtype {
    pub const I32: i64 = 4;
    pub const I64: i64 = 5;
    pub const F32: i64 = 7;
    pub const F64: i64 = 8;
    pub const BOOL: i64 = 12;
}

/// A tensor value of the graph.
#[derive(Clone, Debug)]
pub struct T {
    pub name: String,
    pub dtype: i64,
    pub shape: Vec<Expr>,
}

/// A SymInt argument: a number, or a value computed in the graph.
#[derive(Clone, Debug)]
pub enum SymArg {
    Int(i64),
    Name(String),
}

impl SymArg {
    fn json(&self) -> J {
        match self {
            SymArg::Int(n) => one("as_int", J::Int(*n)),
            SymArg::Name(n) => one("as_name", s(n)),
        }
    }
}

/// A node argument (the schema's `Argument` union).
pub enum A {
    T(T),
    Ts(Vec<T>),
    Int(i64),
    Ints(Vec<i64>),
    Bool(bool),
    Sym(SymArg),
    Syms(Vec<SymArg>),
    Dtype(i64),
    Str(String),
}

impl A {
    fn json(&self) -> J {
        match self {
            A::T(t) => one("as_tensor", obj([("name", s(&t.name))])),
            A::Ts(ts) => one(
                "as_tensors",
                J::Arr(ts.iter().map(|t| obj([("name", s(&t.name))])).collect()),
            ),
            A::Int(n) => one("as_int", J::Int(*n)),
            A::Ints(v) => one("as_ints", J::Arr(v.iter().map(|&n| J::Int(n)).collect())),
            A::Bool(b) => one("as_bool", J::Bool(*b)),
            A::Sym(SymArg::Int(n)) => one("as_int", J::Int(*n)),
            A::Sym(SymArg::Name(n)) => one("as_sym_int", one("as_name", s(n))),
            A::Syms(v) => one("as_sym_ints", J::Arr(v.iter().map(SymArg::json).collect())),
            A::Dtype(d) => one("as_scalar_type", J::Int(*d)),
            A::Str(v) => one("as_string", s(v)),
        }
    }
}

fn strides(shape: &[Expr]) -> Vec<Expr> {
    let mut out = vec![Expr::int(1); shape.len()];
    let mut acc = Expr::int(1);
    for i in (0..shape.len()).rev() {
        out[i] = acc.clone();
        acc = acc.mul(&shape[i]);
    }
    out
}

fn tensor_meta(dtype: i64, shape: &[Expr]) -> J {
    obj([
        ("dtype", J::Int(dtype)),
        ("sizes", J::Arr(shape.iter().map(Expr::json).collect())),
        ("requires_grad", J::Bool(false)),
        ("device", obj([("type", s("cpu")), ("index", J::Null)])),
        (
            "strides",
            J::Arr(strides(shape).iter().map(Expr::json).collect()),
        ),
        ("storage_offset", one("as_int", J::Int(0))),
        ("layout", J::Int(7)),
    ])
}

/// A user input: a tensor, or `None` (an argument the model does not take).
enum UserInput {
    Tensor(T),
    None(String),
}

#[derive(Default)]
pub struct Program {
    nodes: Vec<J>,
    tensor_values: Vec<(String, J)>,
    sym_int_values: Vec<(String, J)>,
    /// `(placeholder, buffer name, weight file, meta, bytes)`.
    buffers: Vec<(String, String, J, Vec<u8>)>,
    users: Vec<UserInput>,
    syms: HashMap<Expr, String>,
    /// The symbols, each with the input dimension that defines it.
    bases: Vec<(&'static str, T, usize)>,
    next: usize,
}

impl Program {
    fn fresh(&mut self, base: &str) -> String {
        self.next += 1;
        format!("{base}_{}", self.next)
    }

    /// A weight of the program (`data/weights/weight_<i>`: raw little-endian bytes).
    pub fn buffer(&mut self, dtype: i64, shape: &[usize], bytes: Vec<u8>) -> T {
        let i = self.buffers.len();
        let shape: Vec<Expr> = shape.iter().map(|&d| Expr::int(d as i64)).collect();
        let name = format!("b_c{i}");
        let meta = tensor_meta(dtype, &shape);
        self.tensor_values.push((name.clone(), meta.clone()));
        self.buffers
            .push((name.clone(), format!("c{i}"), meta, bytes));
        T { name, dtype, shape }
    }

    /// A tensor argument of the exported function.
    pub fn input(&mut self, name: &str, dtype: i64, shape: Vec<Expr>) -> T {
        let t = T {
            name: name.to_string(),
            dtype,
            shape,
        };
        self.tensor_values
            .push((t.name.clone(), tensor_meta(dtype, &t.shape)));
        self.users.push(UserInput::Tensor(t.clone()));
        t
    }

    /// An argument the function takes as `None`.
    pub fn none_input(&mut self, name: &str) {
        self.users.push(UserInput::None(name.to_string()));
    }

    /// `symbol` is dimension `dim` of input `t`.
    pub fn define(&mut self, symbol: &'static str, t: &T, dim: usize) {
        self.bases.push((symbol, t.clone(), dim));
    }

    fn node(&mut self, target: &str, inputs: Vec<(&str, A, bool)>, outputs: J, name: &str) {
        let inputs = inputs
            .into_iter()
            .map(|(n, a, kw)| {
                obj([
                    ("name", s(n)),
                    ("arg", a.json()),
                    ("kind", J::Int(if kw { 2 } else { 1 })),
                ])
            })
            .collect();
        self.nodes.push(obj([
            ("target", s(target)),
            ("inputs", J::Arr(inputs)),
            ("outputs", outputs),
            ("metadata", J::Obj(vec![])),
            ("name", s(name)),
        ]));
    }

    /// `aten.<op>` on positional `args` and keyword-only `kwargs`, giving a tensor.
    pub fn call(
        &mut self,
        op: &str,
        args: Vec<(&str, A)>,
        kwargs: Vec<(&str, A)>,
        dtype: i64,
        shape: Vec<Expr>,
    ) -> T {
        let name = self.fresh(op.split('.').next().unwrap_or("v"));
        let mut inputs: Vec<(&str, A, bool)> =
            args.into_iter().map(|(n, a)| (n, a, false)).collect();
        inputs.extend(kwargs.into_iter().map(|(n, a)| (n, a, true)));
        let outputs = J::Arr(vec![one("as_tensor", obj([("name", s(&name))]))]);
        self.node(&format!("torch.ops.aten.{op}"), inputs, outputs, &name);
        self.tensor_values
            .push((name.clone(), tensor_meta(dtype, &shape)));
        T { name, dtype, shape }
    }

    /// The size `e` as a SymInt argument, computed in the graph from the inputs' sizes.
    pub fn size(&mut self, e: &Expr) -> SymArg {
        if let Some(n) = e.constant() {
            return SymArg::Int(n);
        }
        if let Some(n) = self.syms.get(e) {
            return SymArg::Name(n.clone());
        }
        let name = if e.0.len() > 1 {
            // A sum: its first monomial plus the rest.
            let (k, &c) = e.0.iter().next().expect("a sum has terms");
            let first = Expr(BTreeMap::from([(k.clone(), c)]));
            let rest = e.sub(&first);
            let (a, b) = (self.size(&first), self.size(&rest));
            self.sym_op("add", a, b, e)
        } else {
            let (k, &c) = e.0.iter().next().expect("not a constant");
            if c != 1 {
                let unit = Expr(BTreeMap::from([(k.clone(), 1)]));
                let a = self.size(&unit);
                self.sym_op("mul", a, SymArg::Int(c), e)
            } else if k.len() > 1 {
                let a = self.size(&Expr::sym(k[0]));
                let rest = Expr(BTreeMap::from([(k[1..].to_vec(), 1)]));
                let b = self.size(&rest);
                self.sym_op("mul", a, b, e)
            } else {
                let (t, dim) = self
                    .bases
                    .iter()
                    .find(|b| b.0 == k[0])
                    .map(|b| (b.1.clone(), b.2))
                    .expect("every symbol is defined by an input");
                let name = self.fresh("sym_size");
                self.node(
                    "torch.ops.aten.sym_size.int",
                    vec![("self", A::T(t), false), ("dim", A::Int(dim as i64), false)],
                    J::Arr(vec![one("as_sym_int", one("as_name", s(&name)))]),
                    &name,
                );
                self.sym_int_values.push((name.clone(), e.json()));
                name
            }
        };
        self.syms.insert(e.clone(), name.clone());
        SymArg::Name(name)
    }

    fn sym_op(&mut self, op: &str, a: SymArg, b: SymArg, e: &Expr) -> String {
        let name = self.fresh(op);
        self.node(
            &format!("_operator.{op}"),
            vec![("a", A::Sym(a), false), ("b", A::Sym(b), false)],
            J::Arr(vec![one("as_sym_int", one("as_name", s(&name)))]),
            &name,
        );
        self.sym_int_values.push((name.clone(), e.json()));
        name
    }

    pub fn sizes(&mut self, shape: &[Expr]) -> A {
        A::Syms(shape.iter().map(|e| self.size(e)).collect())
    }

    /// `model.json` (the program returning `outputs` as a dict in this order), the weights'
    /// config and their files.
    pub fn finish(self, outputs: &[(&str, T)]) -> (String, String, Vec<(String, Vec<u8>)>) {
        let mut inputs = Vec::new();
        let mut specs = Vec::new();
        for (ph, buf, _, _) in &self.buffers {
            inputs.push(one("as_tensor", obj([("name", s(ph))])));
            specs.push(one(
                "buffer",
                obj([
                    ("arg", obj([("name", s(ph))])),
                    ("buffer_name", s(buf)),
                    ("persistent", J::Bool(true)),
                ]),
            ));
        }
        let mut arg_names = Vec::new();
        for u in &self.users {
            match u {
                UserInput::Tensor(t) => {
                    inputs.push(one("as_tensor", obj([("name", s(&t.name))])));
                    specs.push(one(
                        "user_input",
                        obj([("arg", one("as_tensor", obj([("name", s(&t.name))])))]),
                    ));
                    arg_names.push(s(&t.name));
                }
                UserInput::None(n) => {
                    inputs.push(one("as_none", J::Bool(true)));
                    specs.push(one(
                        "constant_input",
                        obj([("name", s(n)), ("value", one("as_none", J::Bool(true)))]),
                    ));
                    arg_names.push(s(n));
                }
            }
        }
        let leaf = || {
            obj([
                ("type", J::Null),
                ("context", J::Null),
                ("children_spec", J::Arr(vec![])),
            ])
        };
        let in_spec = J::Arr(vec![
            J::Int(1),
            obj([
                ("type", s("builtins.tuple")),
                ("context", s("null")),
                (
                    "children_spec",
                    J::Arr(vec![
                        obj([
                            ("type", s("builtins.tuple")),
                            ("context", s("null")),
                            (
                                "children_spec",
                                J::Arr(self.users.iter().map(|_| leaf()).collect()),
                            ),
                        ]),
                        obj([
                            ("type", s("builtins.dict")),
                            ("context", s("[]")),
                            ("children_spec", J::Arr(vec![])),
                        ]),
                    ]),
                ),
            ]),
        ]);
        let keys = J::Arr(outputs.iter().map(|(k, _)| s(k)).collect()).text();
        let out_spec = J::Arr(vec![
            J::Int(1),
            obj([
                ("type", s("builtins.dict")),
                ("context", J::Str(keys)),
                (
                    "children_spec",
                    J::Arr(outputs.iter().map(|_| leaf()).collect()),
                ),
            ]),
        ]);
        let graph_outputs: Vec<J> = outputs
            .iter()
            .map(|(_, t)| one("as_tensor", obj([("name", s(&t.name))])))
            .collect();
        let output_specs: Vec<J> = outputs
            .iter()
            .map(|(_, t)| {
                one(
                    "user_output",
                    obj([("arg", one("as_tensor", obj([("name", s(&t.name))])))]),
                )
            })
            .collect();
        let range: Vec<(String, J)> = self
            .bases
            .iter()
            .map(|b| {
                (
                    b.0.to_string(),
                    obj([("min_val", J::Int(1)), ("max_val", J::Null)]),
                )
            })
            .collect();
        let program = obj([
            (
                "graph_module",
                obj([
                    (
                        "graph",
                        obj([
                            ("inputs", J::Arr(inputs)),
                            ("outputs", J::Arr(graph_outputs)),
                            ("nodes", J::Arr(self.nodes)),
                            ("tensor_values", J::Obj(self.tensor_values)),
                            ("sym_int_values", J::Obj(self.sym_int_values)),
                            ("sym_bool_values", J::Obj(vec![])),
                            ("is_single_tensor_return", J::Bool(false)),
                            ("custom_obj_values", J::Obj(vec![])),
                            ("sym_float_values", J::Obj(vec![])),
                        ]),
                    ),
                    (
                        "signature",
                        obj([
                            ("input_specs", J::Arr(specs)),
                            ("output_specs", J::Arr(output_specs)),
                        ]),
                    ),
                    (
                        "module_call_graph",
                        J::Arr(vec![obj([
                            ("fqn", s("")),
                            (
                                "signature",
                                obj([
                                    ("inputs", J::Arr(vec![])),
                                    ("outputs", J::Arr(vec![])),
                                    ("in_spec", J::Str(in_spec.text())),
                                    ("out_spec", J::Str(out_spec.text())),
                                    ("forward_arg_names", J::Arr(arg_names)),
                                ]),
                            ),
                        ])]),
                    ),
                    ("metadata", J::Obj(vec![])),
                    ("treespec_namedtuple_fields", J::Obj(vec![])),
                ]),
            ),
            ("opset_version", obj([("aten", J::Int(10))])),
            ("range_constraints", J::Obj(range)),
            (
                "schema_version",
                obj([("major", J::Int(8)), ("minor", J::Int(17))]),
            ),
            ("verifiers", J::Arr(vec![s("TRAINING")])),
            ("torch_version", s("2.11.0")),
        ]);
        let mut config = Vec::new();
        let mut files = Vec::new();
        for (i, (_, buf, meta, bytes)) in self.buffers.into_iter().enumerate() {
            let file = format!("weight_{i}");
            config.push((
                buf,
                obj([
                    ("path_name", s(&file)),
                    ("is_param", J::Bool(false)),
                    ("use_pickle", J::Bool(false)),
                    ("tensor_meta", meta),
                ]),
            ));
            files.push((file, bytes));
        }
        let config = obj([("config", J::Obj(config))]).text();
        (program.text(), config, files)
    }
}
