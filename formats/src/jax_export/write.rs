//! Writing a serialized `jax.export.Exported` (the blobs inside `.hlo`/`.xlo`), in the layout
//! `jax/_src/export/serialization.py` reads: each argument and result's symbolic shape and
//! dtype, the call's pytree structure, the platforms, and the StableHLO module.

use super::flatbuf::{finish, Field, Obj};
use super::DTYPES;

/// An argument or result: a dtype name of jax's list (`"f64"`, `"i32"`, ...) and dimensions
/// in jax's symbolic syntax (`"nf"`, `"nloc + nghost"`, `"3"`).
#[derive(Debug, Clone, PartialEq)]
pub struct ArrayType {
    pub dtype: &'static str,
    pub shape: Vec<String>,
}

/// A pytree, the way `jax.tree_util` sees the call's arguments or results.
#[derive(Debug, Clone, PartialEq)]
pub enum Tree {
    Leaf,
    None,
    Tuple(Vec<Tree>),
    List(Vec<Tree>),
    Dict(Vec<(String, Tree)>),
}

impl Tree {
    fn leaves(&self) -> usize {
        match self {
            Tree::Leaf => 1,
            Tree::None => 0,
            Tree::Tuple(c) | Tree::List(c) => c.iter().map(Tree::leaves).sum(),
            Tree::Dict(c) => c.iter().map(|(_, t)| t.leaves()).sum(),
        }
    }
}

/// What an export holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Exported {
    pub function_name: String,
    /// `(args, kwargs)`: one leaf per entry of `inputs`, in order.
    pub in_tree: Tree,
    pub inputs: Vec<ArrayType>,
    /// One leaf per entry of `outputs`, in order (a dict's children in key order).
    pub out_tree: Tree,
    pub outputs: Vec<ArrayType>,
    /// `"cpu"`, `"cuda"`, `"rocm"`, `"tpu"`. With more than one, the module's `main` takes
    /// the platform's index as its first argument.
    pub platforms: Vec<String>,
    /// MLIR text or bytecode.
    pub module: Vec<u8>,
    /// Whether the module has shape-polymorphic arguments, which the caller refines
    /// (`uses_global_constants` in jax).
    pub shape_polymorphic: bool,
}

/// The calling convention of the module's `main` (jax's current, 10).
const CALLING_CONVENTION: u16 = 10;
/// jax writes 3 for the sake of older readers, whatever its own version.
const SERIALIZATION_VERSION: u16 = 3;

fn dtype_code(d: &str) -> Result<u8, String> {
    DTYPES
        .iter()
        .position(|&x| x == d)
        .map(|i| i as u8)
        .ok_or_else(|| format!("jax export: unknown dtype {d}"))
}

fn tree(t: &Tree) -> Obj {
    let (kind, children, names): (u8, &[Tree], Option<Vec<String>>) = match t {
        Tree::Leaf => (0, &[], None),
        Tree::None => (1, &[], None),
        Tree::Tuple(c) => (2, c, None),
        Tree::List(c) => (3, c, None),
        Tree::Dict(c) => (4, &[], Some(c.iter().map(|(k, _)| k.clone()).collect())),
    };
    let mut fields = vec![(0, Field::U8(kind))];
    let kids: Vec<Obj> = match t {
        Tree::Dict(c) => c.iter().map(|(_, t)| tree(t)).collect(),
        _ => children.iter().map(tree).collect(),
    };
    if !kids.is_empty() {
        fields.push((1, Field::Obj(Obj::Objs(kids))));
    }
    if let Some(n) = names.filter(|n| !n.is_empty()) {
        fields.push((
            2,
            Field::Obj(Obj::Objs(n.into_iter().map(Obj::Str).collect())),
        ));
    }
    Obj::Table(fields)
}

fn aval(a: &ArrayType) -> Result<Obj, String> {
    Ok(Obj::Table(vec![
        (0, Field::U8(0)), // shapedArray
        (
            1,
            Field::Obj(Obj::Objs(
                a.shape.iter().map(|s| Obj::Str(s.clone())).collect(),
            )),
        ),
        (2, Field::U8(dtype_code(a.dtype)?)),
        (3, Field::U8(1)), // device memory
    ]))
}

/// Serialize `e` as `jax.export.Exported.serialize()` does.
pub fn write(e: &Exported) -> Result<Vec<u8>, String> {
    if e.in_tree.leaves() != e.inputs.len() || e.out_tree.leaves() != e.outputs.len() {
        return Err("jax export: the pytrees do not match the argument and result lists".into());
    }
    let mut unique: Vec<&ArrayType> = Vec::new();
    let mut index_of = |a| {
        if let Some(i) = unique.iter().position(|u| *u == a) {
            i as u32
        } else {
            unique.push(a);
            unique.len() as u32 - 1
        }
    };
    let in_idx: Vec<u32> = e.inputs.iter().map(&mut index_of).collect();
    let out_idx: Vec<u32> = e.outputs.iter().map(&mut index_of).collect();
    let avals = |v: &[ArrayType]| -> Result<Obj, String> {
        Ok(Obj::Objs(v.iter().map(aval).collect::<Result<_, _>>()?))
    };
    // An unspecified sharding per argument and result (older readers read these).
    let shardings = |n: usize| Obj::Objs((0..n).map(|_| Obj::Table(vec![])).collect());
    let unique_avals = Obj::Objs(unique.iter().map(|a| aval(a)).collect::<Result<_, _>>()?);
    let root = Obj::Table(vec![
        (0, Field::U16(SERIALIZATION_VERSION)),
        (1, Field::Obj(Obj::Str(e.function_name.clone()))),
        (2, Field::Obj(tree(&e.in_tree))),
        (3, Field::Obj(avals(&e.inputs)?)),
        (4, Field::Obj(tree(&e.out_tree))),
        (5, Field::Obj(avals(&e.outputs)?)),
        (6, Field::U16(1)), // nr_devices (short, for older readers)
        (7, Field::Obj(shardings(e.inputs.len()))),
        (8, Field::Obj(shardings(e.outputs.len()))),
        (
            9,
            Field::Obj(Obj::Objs(
                e.platforms.iter().map(|p| Obj::Str(p.clone())).collect(),
            )),
        ),
        (10, Field::Obj(Obj::Objs(vec![]))),
        (11, Field::Obj(Obj::Objs(vec![]))),
        (12, Field::Obj(Obj::Objs(vec![]))),
        (13, Field::Obj(Obj::Bytes(e.module.clone()))),
        (14, Field::U16(CALLING_CONVENTION)),
        (
            15,
            Field::Obj(Obj::U16s((0..e.inputs.len() as u16).collect())),
        ),
        (16, Field::U8(u8::from(e.shape_polymorphic))),
        (18, Field::U32(1)), // nr_devices
        (19, Field::Obj(unique_avals)),
        (20, Field::Obj(Obj::Objs(vec![]))),
        (21, Field::Obj(Obj::Objs(vec![]))),
        (22, Field::Obj(Obj::U32s(in_idx))),
        (23, Field::Obj(Obj::U32s(out_idx))),
        (24, Field::Obj(Obj::U32s(vec![0; e.inputs.len()]))),
        (25, Field::Obj(Obj::U32s(vec![0; e.outputs.len()]))),
    ]);
    Ok(finish(root))
}
