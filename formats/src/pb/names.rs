//! Node names (DeePMD-kit matches them with the regexes of deepmd/tf/env.py, `re.fullmatch`):
//! embedding-net (`filter_type_*`), fitting-net (`layer_*`, `final_layer*`) and attention
//! (`attention_layer_*`) weights.

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Kind {
    Matrix,
    Bias,
    Idt,
}

impl Kind {
    pub(super) fn strip(s: &str) -> Option<(Kind, &str)> {
        [
            ("matrix", Kind::Matrix),
            ("bias", Kind::Bias),
            ("idt", Kind::Idt),
        ]
        .into_iter()
        .find_map(|(p, k)| s.strip_prefix(p).map(|rest| (k, rest)))
    }
}

pub(super) fn digits(s: &str) -> Option<usize> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `_1_2_3` → `[1, 2, 3]` (at least one number).
fn underscore_nums(s: &str) -> Option<Vec<usize>> {
    let rest = s.strip_prefix('_')?;
    rest.split('_').map(digits).collect()
}

/// An embedding-net weight: `filter_type_{i}/{kind}_{l}_{j}` or
/// `filter_type_all/{kind}_{l}[_{a}[_{b}]]`.
pub(super) struct FilterName {
    pub(super) owner: Option<usize>,
    pub(super) kind: Kind,
    pub(super) nums: Vec<usize>,
}

pub(super) fn parse_filter(name: &str) -> Option<FilterName> {
    let rest = name.strip_prefix("filter_type_")?;
    let (owner, leaf) = rest.split_once('/')?;
    let owner = if owner == "all" {
        None
    } else {
        Some(digits(owner)?)
    };
    let (kind, tail) = Kind::strip(leaf)?;
    let nums = underscore_nums(tail)?;
    let ok = match owner {
        Some(_) => nums.len() == 2,
        None => (1..=3).contains(&nums.len()),
    };
    ok.then_some(FilterName { owner, kind, nums })
}

/// A fitting-net weight: `layer_{l}[_type_{t}]/{kind}` or `final_layer[_type_{t}]/{matrix|bias}`;
/// `layer` is `None` for the final layer.
pub(super) struct FitName {
    pub(super) layer: Option<usize>,
    pub(super) ty: Option<usize>,
    pub(super) kind: Kind,
}

pub(super) fn parse_fitting(name: &str) -> Option<FitName> {
    let (scope, leaf) = name.split_once('/')?;
    let kind = match leaf {
        "matrix" => Kind::Matrix,
        "bias" => Kind::Bias,
        "idt" => Kind::Idt,
        _ => return None,
    };
    let (layer, rest) = if let Some(r) = scope.strip_prefix("final_layer") {
        if kind == Kind::Idt {
            return None;
        }
        (None, r)
    } else {
        let r = scope.strip_prefix("layer_")?;
        let end = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
        (Some(digits(&r[..end])?), &r[end..])
    };
    let ty = if rest.is_empty() {
        None
    } else {
        Some(digits(rest.strip_prefix("_type_")?)?)
    };
    Some(FitName { layer, ty, kind })
}

/// An attention weight: `attention_layer_{k}/{c_query|c_key|c_value|c_out}/{matrix|bias}` or
/// `attention_layer_{k}/layer_normalization[_n]/{gamma|beta}` → (k, part, leaf).
pub(super) fn parse_attention(name: &str) -> Option<(usize, String, String)> {
    let rest = name.strip_prefix("attention_layer_")?;
    let mut it = rest.split('/');
    let (k, part, leaf) = (digits(it.next()?)?, it.next()?, it.next()?);
    if it.next().is_some() {
        return None;
    }
    match part {
        "c_query" | "c_key" | "c_value" | "c_out" if matches!(leaf, "matrix" | "bias") => {}
        _ if matches!(leaf, "gamma" | "beta")
            && (part == "layer_normalization"
                || part
                    .strip_prefix("layer_normalization_")
                    .is_some_and(|n| digits(n).is_some())) => {}
        _ => return None,
    }
    let part = if part.starts_with("layer_normalization") {
        "layer_normalization"
    } else {
        part
    };
    Some((k, part.to_string(), leaf.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names() {
        let f = parse_filter("filter_type_1/matrix_2_0").unwrap();
        assert_eq!(
            (f.owner, f.kind, f.nums),
            (Some(1), Kind::Matrix, vec![2, 0])
        );
        let f = parse_filter("filter_type_all/idt_3_0_1").unwrap();
        assert_eq!((f.owner, f.kind, f.nums), (None, Kind::Idt, vec![3, 0, 1]));
        assert!(parse_filter("filter_type_all/matrix_1_two_side_ebd").is_none());
        assert!(parse_filter("filter_type_0/matrix_1").is_none());
        assert!(parse_filter("filter_type_all/Slice/begin").is_none());
        let f = parse_fitting("layer_2_type_1/idt").unwrap();
        assert_eq!((f.layer, f.ty, f.kind), (Some(2), Some(1), Kind::Idt));
        let f = parse_fitting("final_layer/bias").unwrap();
        assert_eq!((f.layer, f.ty, f.kind), (None, None, Kind::Bias));
        assert!(parse_fitting("final_layer/idt").is_none());
        assert!(parse_fitting("attention_layer_0/c_out/matrix").is_none());
        assert!(parse_fitting("layer_0/Reshape/shape").is_none());
        assert_eq!(
            parse_attention("attention_layer_1/layer_normalization_3/gamma"),
            Some((1, "layer_normalization".into(), "gamma".into()))
        );
        assert!(parse_attention("attention_layer_0/layer_normalization/add/y").is_none());
    }
}
