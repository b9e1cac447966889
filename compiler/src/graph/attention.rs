//! The attributes of `Op::Attention` and its VJP: one DPA-1 gated self-attention layer
//! (`deepmd/dpmodel/descriptor/dpa1.py`, `GatedAttentionLayer` with its residual and
//! layer norm), carried whole so a kernel can run it per atom with the `[nnei, nnei]`
//! weights in cache instead of a dozen graph ops each writing them to memory.

use std::sync::Arc;

use super::mlp::{Act, Mlp, Residual};
use super::tensor::Tensor;

/// `out = LayerNorm(x + OutProj(P V))` per atom, with `P` the gated softmax of `Q K^T`.
#[derive(Debug, Clone, PartialEq)]
pub struct Attention {
    /// One linear layer `[d, 3 hidden]` giving `[Q, K, V]`.
    pub in_proj: Arc<Mlp>,
    /// One linear layer `[hidden, d]`.
    pub out_proj: Arc<Mlp>,
    pub hidden: usize,
    /// The factor on `Q K^T`.
    pub scaling: f64,
    /// `Q`, `K`, `V` rows are L2-normalised, with `|v|^2` floored at `floor_sq`.
    pub normalize: bool,
    pub floor_sq: f64,
    /// The weights are multiplied by the cosines `r_j . r_k` of the (normalised) pair
    /// directions.
    pub dotr: bool,
    /// DeePMD-kit's smooth gating: logits `(w + shift) sw_j sw_k - shift` and weights
    /// times `sw_j sw_k`; otherwise masked keys get a logit of `masked_logit`.
    pub smooth: bool,
    pub shift: f64,
    pub masked_logit: f64,
    /// The layer norm's scale and offset `[d]` and epsilon.
    pub norm_w: Arc<Tensor>,
    pub norm_b: Arc<Tensor>,
    pub eps: f64,
}

impl Attention {
    /// The feature width `d` of the rows it maps.
    pub fn width(&self) -> usize {
        self.in_proj.n_in()
    }

    /// Whether the pieces fit together: two linear single-layer projections of matching
    /// widths, norm vectors of width `d`, one dtype throughout.
    pub fn check(&self) -> Result<(), String> {
        let (d, h) = (self.width(), self.hidden);
        let linear = |m: &Mlp| {
            m.check().is_ok()
                && m.layers.len() == 1
                && m.layers[0].act == Act::Linear
                && m.layers[0].idt.is_none()
                && m.layers[0].residual == Residual::None
        };
        let dt = self.in_proj.dtype;
        let vec_ok = |t: &Tensor| t.shape == [d] && t.dtype() == dt;
        if !linear(&self.in_proj)
            || !linear(&self.out_proj)
            || self.in_proj.n_out() != 3 * h
            || self.out_proj.n_in() != h
            || self.out_proj.n_out() != d
            || self.out_proj.dtype != dt
            || !vec_ok(&self.norm_w)
            || !vec_ok(&self.norm_b)
            || h == 0
        {
            return Err("the fused attention layer's weights are inconsistent".into());
        }
        Ok(())
    }
}
