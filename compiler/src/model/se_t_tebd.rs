//! `se_e3_tebd` (`deepmd/dpmodel/descriptor/se_t_tebd.py`): the three-body block of DPA-2
//! on its own, an embedding of the angles between neighbour pairs and of their types,
//! optionally followed by the centre's type embedding.

use super::access::At;
use super::descriptor::{dtype_of, env_params, parse_type_embedding, stats};
use super::dpa2::{three_body_nets, ThreeBody};
use super::{ModelError, TebdInput, TypeEmbedding};
use crate::graph::DType;

#[derive(Debug, Clone)]
pub struct SeTTebd {
    pub block: ThreeBody,
    pub type_embedding: TypeEmbedding,
    pub concat_output_tebd: bool,
    pub dtype: DType,
}

impl SeTTebd {
    pub fn dim_out(&self) -> usize {
        self.block.embedding.n_out().unwrap_or(0)
            + if self.concat_output_tebd {
                self.type_embedding.dim()
            } else {
                0
            }
    }
}

pub fn parse(at: At, ntypes_model: usize) -> Result<SeTTebd, ModelError> {
    at.version(1, 1, 2)?;
    if at.opt("compress").is_some() {
        return Err(at.unsupported(
            "a compressed se_e3_tebd (its `compress` tables); use the uncompressed model",
        ));
    }
    let ntypes = at.ntypes(ntypes_model)?;
    let dtype = dtype_of(&at)?;
    let env = env_params(&at)?;
    let nnei: usize = at.usizes("sel")?.iter().sum();
    let tebd_input = match at.opt_str("tebd_input_mode")?.unwrap_or("concat") {
        "concat" => TebdInput::Concat,
        "strip" => TebdInput::Strip,
        other => return Err(at.err(format!("unknown tebd_input_mode `{other}`"))),
    };
    let type_embedding = parse_type_embedding(at.get("type_embedding")?.at(), ntypes)?;
    let nt = type_embedding.dim();
    let (embedding, embedding_strip) = three_body_nets(&at, tebd_input, nt)?;
    Ok(SeTTebd {
        block: ThreeBody {
            env,
            nnei,
            stats: stats(&at, ntypes, nnei, 4, dtype)?,
            tebd_input,
            smooth: at.bool_or("smooth", true)?,
            exclude_types: at.pairs("exclude_types", ntypes)?,
            embedding,
            embedding_strip,
        },
        type_embedding,
        concat_output_tebd: at.bool_or("concat_output_tebd", true)?,
        dtype,
    })
}
