//! Element types and symbolic shapes of graph values.
//!
//! A dimension is a constant or a constant multiple of one symbol: `nloc` (local atoms) or
//! `nall` (local + ghost atoms). That is all DeePMD-kit's models need (`nloc*nnei` appears
//! when an embedding net runs over every neighbour slot), and it keeps shape checks exact.

use std::fmt;

/// Element type of a graph value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F64,
    I32,
    Bool,
}

impl DType {
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64)
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::I32 => "i32",
            DType::Bool => "bool",
        }
    }

    pub fn from_name(s: &str) -> Option<DType> {
        Some(match s {
            "f32" => DType::F32,
            "f64" => DType::F64,
            "i32" => DType::I32,
            "bool" => DType::Bool,
            _ => return None,
        })
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A size symbol, bound to a number when the graph runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Sym {
    /// Number of local (centre) atoms.
    Nloc,
    /// Number of local plus ghost atoms.
    Nall,
}

impl Sym {
    pub fn name(self) -> &'static str {
        match self {
            Sym::Nloc => "nloc",
            Sym::Nall => "nall",
        }
    }
}

/// `factor` (times `sym`, when present).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Dim {
    pub sym: Option<Sym>,
    pub factor: usize,
}

impl Dim {
    pub const fn fixed(n: usize) -> Dim {
        Dim {
            sym: None,
            factor: n,
        }
    }

    pub const fn sym(s: Sym) -> Dim {
        Dim {
            sym: Some(s),
            factor: 1,
        }
    }

    pub const NLOC: Dim = Dim::sym(Sym::Nloc);
    pub const NALL: Dim = Dim::sym(Sym::Nall);
    pub const ONE: Dim = Dim::fixed(1);

    pub fn is_one(self) -> bool {
        self.sym.is_none() && self.factor == 1
    }

    /// The product, if it stays a multiple of at most one symbol.
    pub fn checked_mul(self, other: Dim) -> Option<Dim> {
        let sym = match (self.sym, other.sym) {
            (Some(_), Some(_)) => return None,
            (a, b) => a.or(b),
        };
        let factor = if self.factor == 0 || other.factor == 0 {
            0
        } else {
            self.factor * other.factor
        };
        Some(if factor == 0 {
            Dim::fixed(0)
        } else {
            Dim { sym, factor }
        })
    }

    /// The sum, if both are multiples of the same symbol (or both constant).
    pub fn checked_add(self, other: Dim) -> Option<Dim> {
        if self.factor == 0 {
            return Some(other);
        }
        if other.factor == 0 {
            return Some(self);
        }
        (self.sym == other.sym).then_some(Dim {
            sym: self.sym,
            factor: self.factor + other.factor,
        })
    }

    /// The difference, if non-negative and expressible.
    pub fn checked_sub(self, other: Dim) -> Option<Dim> {
        if other.factor == 0 {
            return Some(self);
        }
        if self.sym != other.sym || self.factor < other.factor {
            return None;
        }
        let factor = self.factor - other.factor;
        Some(if factor == 0 {
            Dim::fixed(0)
        } else {
            Dim {
                sym: self.sym,
                factor,
            }
        })
    }

    /// Whether `self <= other` for every binding (`nloc <= nall` always holds).
    pub fn le(self, other: Dim) -> bool {
        match (self.sym, other.sym) {
            _ if self.factor == 0 => true,
            (None, None) => self.factor <= other.factor,
            (Some(a), Some(b)) if a == b => self.factor <= other.factor,
            (Some(Sym::Nloc), Some(Sym::Nall)) => self.factor <= other.factor,
            _ => false,
        }
    }

    /// `self / other`, when exact.
    pub fn checked_div(self, other: Dim) -> Option<Dim> {
        if other.factor == 0 || !self.factor.is_multiple_of(other.factor) {
            return None;
        }
        let sym = match (self.sym, other.sym) {
            (s, None) => s,
            (Some(a), Some(b)) if a == b => None,
            _ => return None,
        };
        Some(Dim {
            sym,
            factor: self.factor / other.factor,
        })
    }

    /// The concrete size under a binding of the symbols.
    pub fn eval(self, bind: &Bindings) -> usize {
        match self.sym {
            None => self.factor,
            Some(s) => self.factor * bind.get(s),
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.sym, self.factor) {
            (None, n) => write!(f, "{n}"),
            (Some(s), 1) => f.write_str(s.name()),
            (Some(s), n) => write!(f, "{n}*{}", s.name()),
        }
    }
}

/// A shape: one `Dim` per axis, outermost first.
pub type Shape = Vec<Dim>;

/// The product of a shape's dims, if expressible as a `Dim`.
pub fn numel(shape: &[Dim]) -> Option<Dim> {
    shape
        .iter()
        .try_fold(Dim::ONE, |acc, d| acc.checked_mul(*d))
}

/// Type of a graph value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TensorType {
    pub dtype: DType,
    pub shape: Shape,
}

impl TensorType {
    pub fn new(dtype: DType, shape: Shape) -> Self {
        TensorType { dtype, shape }
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[", self.dtype)?;
        for (i, d) in self.shape.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

/// Concrete values of the size symbols for one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Bindings {
    pub nloc: usize,
    pub nall: usize,
}

impl Bindings {
    pub fn get(&self, s: Sym) -> usize {
        match s {
            Sym::Nloc => self.nloc,
            Sym::Nall => self.nall,
        }
    }

    pub fn shape(&self, shape: &[Dim]) -> Vec<usize> {
        shape.iter().map(|d| d.eval(self)).collect()
    }
}
