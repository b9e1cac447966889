//! `hybrid` (`deepmd/dpmodel/descriptor/hybrid.py`): every sub-descriptor reads its own cut
//! of the model's neighbour list, and their rows are concatenated.
//!
//! The list holds, per type (or for all types together), the largest `sel` of any
//! sub-descriptor, within the largest cutoff, nearest first. A sub-descriptor takes the first
//! `sel[t]` slots of each type block: its own list, plus neighbours between its cutoff and
//! the largest, which its switch function weighs as DeePMD-kit's does.

use super::Inputs;
use crate::graph::{DType, Graph, GraphError, ValueId};
use crate::model::Descriptor;

pub fn build(
    g: &mut Graph,
    inp: &Inputs,
    hybrid: &Descriptor,
    list: &[Descriptor],
    nlist: ValueId,
) -> Result<ValueId, GraphError> {
    let hsel = hybrid.sel();
    let mut rows = Vec::with_capacity(list.len());
    for sub in list {
        let ssel = sub.sel();
        let mut ranges = Vec::new();
        let mut start = 0;
        for (t, (&h, &s)) in hsel.iter().zip(&ssel).enumerate() {
            if s > h {
                return Err(GraphError(format!(
                    "hybrid: sub-descriptor sel {s} of type {t} exceeds the list's {h}"
                )));
            }
            if s > 0 {
                ranges.push(start..start + s);
            }
            start += h;
        }
        let nl = slots(g, nlist, &ranges)?;
        // Given pair vectors follow the list's slots.
        let rij = match inp.rij {
            Some(r) => Some(slots(g, r, &ranges)?),
            None => None,
        };
        let out = super::descriptor(g, &Inputs { rij, ..*inp }, sub, nl)?;
        rows.push(g.cast(out, DType::F64)?);
    }
    match rows.as_slice() {
        [one] => Ok(*one),
        _ => g.concat(&rows, 1),
    }
}

/// The neighbour slots `ranges` (axis 1) of `x`, in order.
fn slots(
    g: &mut Graph,
    x: ValueId,
    ranges: &[std::ops::Range<usize>],
) -> Result<ValueId, GraphError> {
    let parts = ranges
        .iter()
        .map(|r| g.slice_n(x, 1, r.start, r.end))
        .collect::<Result<Vec<_>, _>>()?;
    match parts.as_slice() {
        [one] => Ok(*one),
        _ => g.concat(&parts, 1),
    }
}
