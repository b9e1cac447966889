//! Concrete tensors: graph constants and the values an executor computes.

use super::types::DType;

/// Element storage, one variant per `DType`.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I32(Vec<i32>),
    Bool(Vec<bool>),
}

/// A dense row-major tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Data,
}

impl Tensor {
    pub fn f64(shape: Vec<usize>, v: Vec<f64>) -> Tensor {
        debug_assert_eq!(shape.iter().product::<usize>(), v.len());
        Tensor {
            shape,
            data: Data::F64(v),
        }
    }

    pub fn f32(shape: Vec<usize>, v: Vec<f32>) -> Tensor {
        debug_assert_eq!(shape.iter().product::<usize>(), v.len());
        Tensor {
            shape,
            data: Data::F32(v),
        }
    }

    pub fn i32(shape: Vec<usize>, v: Vec<i32>) -> Tensor {
        debug_assert_eq!(shape.iter().product::<usize>(), v.len());
        Tensor {
            shape,
            data: Data::I32(v),
        }
    }

    pub fn bool(shape: Vec<usize>, v: Vec<bool>) -> Tensor {
        debug_assert_eq!(shape.iter().product::<usize>(), v.len());
        Tensor {
            shape,
            data: Data::Bool(v),
        }
    }

    /// A rank-0 float of the given dtype.
    pub fn scalar(dtype: DType, v: f64) -> Tensor {
        match dtype {
            DType::F64 => Tensor::f64(vec![], vec![v]),
            DType::F32 => Tensor::f32(vec![], vec![v as f32]),
            DType::I32 => Tensor::i32(vec![], vec![v as i32]),
            DType::Bool => Tensor::bool(vec![], vec![v != 0.0]),
        }
    }

    pub fn zeros(dtype: DType, shape: Vec<usize>) -> Tensor {
        let n = shape.iter().product();
        match dtype {
            DType::F64 => Tensor::f64(shape, vec![0.0; n]),
            DType::F32 => Tensor::f32(shape, vec![0.0; n]),
            DType::I32 => Tensor::i32(shape, vec![0; n]),
            DType::Bool => Tensor::bool(shape, vec![false; n]),
        }
    }

    pub fn dtype(&self) -> DType {
        match self.data {
            Data::F32(_) => DType::F32,
            Data::F64(_) => DType::F64,
            Data::I32(_) => DType::I32,
            Data::Bool(_) => DType::Bool,
        }
    }

    pub fn len(&self) -> usize {
        match &self.data {
            Data::F32(v) => v.len(),
            Data::F64(v) => v.len(),
            Data::I32(v) => v.len(),
            Data::Bool(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn as_f64(&self) -> Option<&[f64]> {
        match &self.data {
            Data::F64(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_i32(&self) -> Option<&[i32]> {
        match &self.data {
            Data::I32(v) => Some(v),
            _ => None,
        }
    }

    /// Element `i` widened to f64 (for printing and tests).
    pub fn get_f64(&self, i: usize) -> f64 {
        match &self.data {
            Data::F32(v) => v[i] as f64,
            Data::F64(v) => v[i],
            Data::I32(v) => v[i] as f64,
            Data::Bool(v) => v[i] as u8 as f64,
        }
    }

    /// All elements widened to f64.
    /// The elements as little-endian bytes in their own type (a bool is one byte), the
    /// layout of TorchScript storages and TensorFlow's `tensor_content`.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match &self.data {
            Data::F64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::Bool(v) => v.iter().map(|&x| x as u8).collect(),
        }
    }

    pub fn to_f64_vec(&self) -> Vec<f64> {
        (0..self.len()).map(|i| self.get_f64(i)).collect()
    }
}
