//! The `variables/` checkpoint of a SavedModel whose functions hold their weights as
//! constants: a TensorBundle (tensorflow/core/util/tensor_bundle) with no variables, only
//! the `_CHECKPOINTABLE_OBJECT_GRAPH` string. Python's `tf.saved_model.load` always
//! restores a checkpoint and fails without one; the C++ loader skips it when the
//! MetaGraphDef has no `saver_def`.
//!
//! Layout: the data file holds the string tensor; the index is a LevelDB table (one data
//! block, an empty metaindex block, an index block, the footer), uncompressed, every
//! block followed by a type byte and a masked CRC-32C.

use prost::Message;

use super::graph_def::dtype;
use super::saved_object_graph::{TrackableObject, TrackableObjectGraph};

/// `variables.index`'s and `variables.data-00000-of-00001`'s bytes for a checkpoint of no
/// variables.
pub fn empty_checkpoint() -> (Vec<u8>, Vec<u8>) {
    let graph = TrackableObjectGraph {
        nodes: vec![TrackableObject {}],
    }
    .encode_to_vec();
    let (data, entry_crc) = string_tensor(&graph);
    let header = BundleHeader {
        num_shards: 1,
        version: Some(Version { producer: 1 }),
    };
    let entry = BundleEntry {
        dtype: dtype::STRING,
        shape: Some(Shape {}),
        size: data.len() as i64,
        crc32c: entry_crc,
    };
    let index = table(&[
        (b"", header.encode_to_vec()),
        (b"_CHECKPOINTABLE_OBJECT_GRAPH", entry.encode_to_vec()),
    ]);
    (index, data)
}

/// A DT_STRING scalar as the bundle stores it (length varint, masked CRC of the lengths,
/// bytes), and the entry's masked CRC of everything hashed.
fn string_tensor(s: &[u8]) -> (Vec<u8>, u32) {
    let mut data = Vec::new();
    varint(&mut data, s.len() as u64);
    let len32 = (s.len() as u32).to_le_bytes();
    let len_crc = mask(crc32c(0, &len32)).to_le_bytes();
    data.extend_from_slice(&len_crc);
    data.extend_from_slice(s);
    let crc = crc32c(crc32c(crc32c(0, &len32), &len_crc), s);
    (data, mask(crc))
}

/// A LevelDB table of sorted `(key, value)` entries in one data block.
fn table(entries: &[(&[u8], Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let data = block(entries);
    let data_handle = (0u64, data.len() as u64);
    push_block(&mut out, &data);
    let meta = block(&[]);
    let meta_handle = (out.len() as u64, meta.len() as u64);
    push_block(&mut out, &meta);
    // The index key only has to sort at or after the block's last key.
    let last = entries.last().map_or(&b""[..], |e| e.0);
    let mut handle = Vec::new();
    varint(&mut handle, data_handle.0);
    varint(&mut handle, data_handle.1);
    let index = block(&[(short_successor(last).as_slice(), handle)]);
    let index_handle = (out.len() as u64, index.len() as u64);
    push_block(&mut out, &index);
    let mut footer = Vec::new();
    for v in [meta_handle.0, meta_handle.1, index_handle.0, index_handle.1] {
        varint(&mut footer, v);
    }
    footer.resize(40, 0);
    footer.extend_from_slice(&0xdb47_7524_8b80_fb57u64.to_le_bytes());
    out.extend_from_slice(&footer);
    out
}

/// Entries without prefix sharing, one restart point.
fn block(entries: &[(&[u8], Vec<u8>)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (k, v) in entries {
        varint(&mut b, 0);
        varint(&mut b, k.len() as u64);
        varint(&mut b, v.len() as u64);
        b.extend_from_slice(k);
        b.extend_from_slice(v);
    }
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes());
    b
}

/// The block, then its trailer: type 0 (uncompressed) and the masked CRC of both.
fn push_block(out: &mut Vec<u8>, block: &[u8]) {
    out.extend_from_slice(block);
    out.push(0);
    let crc = crc32c(crc32c(0, block), &[0]);
    out.extend_from_slice(&mask(crc).to_le_bytes());
}

/// LevelDB's `FindShortSuccessor`: the first byte that can be incremented, incremented,
/// the rest dropped.
fn short_successor(key: &[u8]) -> Vec<u8> {
    for (i, &b) in key.iter().enumerate() {
        if b != 0xff {
            let mut k = key[..=i].to_vec();
            k[i] += 1;
            return k;
        }
    }
    key.to_vec()
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// CRC-32C (Castagnoli), continuing from `crc`.
fn crc32c(crc: u32, bytes: &[u8]) -> u32 {
    let mut c = !crc;
    for &b in bytes {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82f6_3b78
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// LevelDB's stored form of a CRC (so a CRC of data holding CRCs stays well spread).
fn mask(c: u32) -> u32 {
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// tensor_bundle.proto's `BundleHeaderProto` (endianness: little, the default).
#[derive(Clone, PartialEq, prost::Message)]
struct BundleHeader {
    #[prost(int32, tag = "1")]
    num_shards: i32,
    #[prost(message, optional, tag = "3")]
    version: Option<Version>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Version {
    #[prost(int32, tag = "1")]
    producer: i32,
}

/// `BundleEntryProto` of a tensor at offset 0 of shard 0.
#[derive(Clone, PartialEq, prost::Message)]
struct BundleEntry {
    #[prost(int32, tag = "1")]
    dtype: i32,
    /// A scalar: present and empty.
    #[prost(message, optional, tag = "2")]
    shape: Option<Shape>,
    #[prost(int64, tag = "5")]
    size: i64,
    #[prost(fixed32, tag = "6")]
    crc32c: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Shape {}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn crc32c_check_value() {
        assert_eq!(crc32c(0, b"123456789"), 0xe306_9283);
    }

    /// Bytes TensorFlow 2.21's reader accepts (checked with `tf.saved_model.load` and
    /// DeePMD-kit's `DeepPot`; the same table code reproduces a TF-written index exactly).
    #[test]
    fn matches_tensorflows_empty_checkpoint() {
        let (index, data) = empty_checkpoint();
        assert_eq!(data, hex("02d8d810730a00"));
        let want = hex(concat!(
            "00000608011a020801001c0b5f434845434b504f494e5441424c455f4f424a4543545f4752415048080712002807354368c96a",
            "000000000100000000faf8c37b000000000100000000c0f2a1b000010260003b00000000010000000044f6c14940084d0e0000",
            "0000000000000000000000000000000000000000000000000000000000000000000057fb808b247547db"
        ));
        assert_eq!(index, want);
    }
}
