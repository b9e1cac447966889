//! The SavedModel's object graph (`MetaGraphDef.object_graph_def`): what Python's
//! `tf.saved_model.load` rebuilds into an object whose attributes call the library's
//! functions. Field numbers follow tensorflow/core/protobuf/{saved_object_graph,struct,
//! trackable_object_graph}.proto; only the messages a model of plain functions needs.

use std::collections::BTreeMap;

use super::graph_def::{TensorShapeProto, VersionDef};

#[derive(Clone, PartialEq, prost::Message)]
pub struct SavedObjectGraph {
    /// Node 0 is the root `load` returns; a node's id is its index.
    #[prost(message, repeated, tag = "1")]
    pub nodes: Vec<SavedObject>,
    /// By the `FunctionDef`'s signature name.
    #[prost(btree_map = "string, message", tag = "2")]
    pub concrete_functions: BTreeMap<String, SavedConcreteFunction>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SavedObject {
    /// Attributes of this object.
    #[prost(message, repeated, tag = "1")]
    pub children: Vec<ObjectReference>,
    #[prost(oneof = "saved_object::Kind", tags = "4, 6")]
    pub kind: Option<saved_object::Kind>,
}

pub mod saved_object {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        #[prost(message, tag = "4")]
        UserObject(super::SavedUserObject),
        #[prost(message, tag = "6")]
        Function(super::SavedFunction),
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ObjectReference {
    #[prost(int32, tag = "1")]
    pub node_id: i32,
    #[prost(string, tag = "2")]
    pub local_name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SavedUserObject {
    /// A name no revived type claims gives a plain trackable object.
    #[prost(string, tag = "1")]
    pub identifier: String,
    #[prost(message, optional, tag = "2")]
    pub version: Option<VersionDef>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SavedFunction {
    #[prost(string, repeated, tag = "1")]
    pub concrete_functions: Vec<String>,
    #[prost(message, optional, tag = "2")]
    pub function_spec: Option<FunctionSpec>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct FunctionSpec {
    /// Python's `FullArgSpec` named tuple.
    #[prost(message, optional, tag = "1")]
    pub fullargspec: Option<StructuredValue>,
    #[prost(bool, tag = "2")]
    pub is_method: bool,
    /// Must be present (a tuple of specs, or `None`).
    #[prost(message, optional, tag = "5")]
    pub input_signature: Option<StructuredValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SavedConcreteFunction {
    /// `(args, kwargs)`.
    #[prost(message, optional, tag = "3")]
    pub canonicalized_input_signature: Option<StructuredValue>,
    /// A dict's results are packed in sorted key order.
    #[prost(message, optional, tag = "4")]
    pub output_signature: Option<StructuredValue>,
}

/// Python values as `nested_structure_coder` writes them.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StructuredValue {
    #[prost(oneof = "structured_value::Kind", tags = "1, 13, 33, 51, 52, 53, 54")]
    pub kind: Option<structured_value::Kind>,
}

pub mod structured_value {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        /// Encoded present though empty, as every oneof member is.
        #[prost(message, tag = "1")]
        NoneValue(super::NoneValue),
        #[prost(string, tag = "13")]
        StringValue(String),
        #[prost(message, tag = "33")]
        TensorSpecValue(super::TensorSpecProto),
        #[prost(message, tag = "51")]
        ListValue(super::ListValue),
        #[prost(message, tag = "52")]
        TupleValue(super::ListValue),
        #[prost(message, tag = "53")]
        DictValue(super::DictValue),
        #[prost(message, tag = "54")]
        NamedTupleValue(super::NamedTupleValue),
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct NoneValue {}

/// `ListValue` and `TupleValue` (the same layout).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListValue {
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<StructuredValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct DictValue {
    #[prost(btree_map = "string, message", tag = "1")]
    pub fields: BTreeMap<String, StructuredValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct NamedTupleValue {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, repeated, tag = "2")]
    pub values: Vec<PairValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PairValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<StructuredValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorSpecProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub shape: Option<TensorShapeProto>,
    /// A `dtype` value.
    #[prost(int32, tag = "3")]
    pub dtype: i32,
}

/// The checkpoint's `_CHECKPOINTABLE_OBJECT_GRAPH` (trackable_object_graph.proto): the
/// objects whose variables the checkpoint holds.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TrackableObjectGraph {
    #[prost(message, repeated, tag = "1")]
    pub nodes: Vec<TrackableObject>,
}

/// An object with no variables and no children.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TrackableObject {}

impl StructuredValue {
    fn of(kind: structured_value::Kind) -> Self {
        StructuredValue { kind: Some(kind) }
    }

    pub fn none() -> Self {
        Self::of(structured_value::Kind::NoneValue(NoneValue {}))
    }

    pub fn string(s: &str) -> Self {
        Self::of(structured_value::Kind::StringValue(s.to_string()))
    }

    pub fn list(values: Vec<StructuredValue>) -> Self {
        Self::of(structured_value::Kind::ListValue(ListValue { values }))
    }

    pub fn tuple(values: Vec<StructuredValue>) -> Self {
        Self::of(structured_value::Kind::TupleValue(ListValue { values }))
    }

    pub fn dict(fields: BTreeMap<String, StructuredValue>) -> Self {
        Self::of(structured_value::Kind::DictValue(DictValue { fields }))
    }

    pub fn named_tuple(name: &str, values: Vec<(&str, StructuredValue)>) -> Self {
        Self::of(structured_value::Kind::NamedTupleValue(NamedTupleValue {
            name: name.to_string(),
            values: values
                .into_iter()
                .map(|(k, v)| PairValue {
                    key: k.to_string(),
                    value: Some(v),
                })
                .collect(),
        }))
    }

    pub fn tensor_spec(name: &str, shape: TensorShapeProto, dtype: i32) -> Self {
        Self::of(structured_value::Kind::TensorSpecValue(TensorSpecProto {
            name: name.to_string(),
            shape: Some(shape),
            dtype,
        }))
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn empty_members_are_encoded_present() {
        // `nested_structure_coder` tells None from an unset value by the field's presence.
        assert_eq!(StructuredValue::none().encode_to_vec(), [0x0a, 0x00]);
        assert_eq!(
            StructuredValue::tuple(vec![]).encode_to_vec(),
            [0xa2, 0x03, 0x00]
        );
        let root = TrackableObjectGraph {
            nodes: vec![TrackableObject {}],
        };
        assert_eq!(root.encode_to_vec(), [0x0a, 0x00]);
    }
}
