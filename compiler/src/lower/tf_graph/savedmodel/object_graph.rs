//! The object graph Python's `tf.saved_model.load` rebuilds: a root whose attributes are
//! the exported functions (`model.call_atomic_virial(...)`, `model.get_rcut()`), each with
//! the argument specs calls are matched against and the structure of what it returns.

use std::collections::BTreeMap;

use dpc_formats::tf::graph_def::VersionDef;
use dpc_formats::tf::saved_object_graph::{
    saved_object::Kind, FunctionSpec, ObjectReference, SavedConcreteFunction, SavedFunction,
    SavedObject, SavedObjectGraph, SavedUserObject, StructuredValue as SV,
};

use super::{Exported, Returns, Spec};
use crate::lower::tf_graph::ops::shape_proto;

fn spec(s: &Spec) -> SV {
    SV::tensor_spec(&s.name, shape_proto(&s.dims), s.dtype)
}

/// Python's `inspect.FullArgSpec` of a function of positional `args`.
fn full_arg_spec(args: &[Spec]) -> SV {
    SV::named_tuple(
        "FullArgSpec",
        vec![
            (
                "args",
                SV::list(args.iter().map(|a| SV::string(&a.name)).collect()),
            ),
            ("varargs", SV::none()),
            ("varkw", SV::none()),
            ("defaults", SV::none()),
            ("kwonlyargs", SV::list(vec![])),
            ("kwonlydefaults", SV::none()),
            ("annotations", SV::dict(BTreeMap::new())),
        ],
    )
}

pub(super) fn object_graph(exported: &[Exported]) -> SavedObjectGraph {
    let mut root = SavedObject {
        children: Vec::new(),
        kind: Some(Kind::UserObject(SavedUserObject {
            identifier: "_generic_user_object".into(),
            version: Some(VersionDef {
                producer: 1,
                min_consumer: 1,
            }),
        })),
    };
    let mut nodes = Vec::new();
    let mut concrete_functions = BTreeMap::new();
    for (i, e) in exported.iter().enumerate() {
        let name = e.def.signature.as_ref().map_or("", |s| s.name.as_str());
        root.children.push(ObjectReference {
            node_id: i as i32 + 1,
            local_name: e.attribute.to_string(),
        });
        let args = SV::tuple(e.args.iter().map(spec).collect());
        nodes.push(SavedObject {
            children: Vec::new(),
            kind: Some(Kind::Function(SavedFunction {
                concrete_functions: vec![name.to_string()],
                function_spec: Some(FunctionSpec {
                    fullargspec: Some(full_arg_spec(&e.args)),
                    is_method: false,
                    input_signature: Some(args.clone()),
                }),
            })),
        });
        let output = match &e.returns {
            Returns::One(s) => spec(s),
            Returns::Dict(specs) => {
                SV::dict(specs.iter().map(|s| (s.name.clone(), spec(s))).collect())
            }
        };
        concrete_functions.insert(
            name.to_string(),
            SavedConcreteFunction {
                canonicalized_input_signature: Some(SV::tuple(vec![
                    args,
                    SV::dict(BTreeMap::new()),
                ])),
                output_signature: Some(output),
            },
        );
    }
    nodes.insert(0, root);
    SavedObjectGraph {
        nodes,
        concrete_functions,
    }
}
