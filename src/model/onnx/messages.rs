//! The ONNX messages (`onnx.proto`) that the export writes, field by field: the model's
//! IR version, `AttributeProto`, `TensorProto` and `ValueInfoProto`. Field numbers are
//! onnx.proto's; the dozen fields needed did not warrant a protobuf compiler in the build.

use super::Dim;
use crate::protobuf::Proto;

// TensorProto.DataType
pub const FLOAT: i64 = 1;
pub const INT64: i64 = 7;

/// The IR version that goes with an opset (onnx's versioning table).
pub fn ir_version(opset: i64) -> i64 {
    match opset {
        ..=14 => 7,
        15..=18 => 8,
        19..=20 => 9,
        _ => 10,
    }
}

/// An initializer whose little-endian bytes are `length` bytes at `offset` of the file
/// `location` (`data_location = EXTERNAL`, `external_data` as key-value entries).
pub fn tensor_external(
    name: &str,
    dims: &[usize],
    data_type: i64,
    location: &str,
    offset: usize,
    length: usize,
) -> Proto {
    let mut t = Proto::default();
    t.ints(1, &dims.iter().map(|&d| d as i64).collect::<Vec<_>>());
    t.int(2, data_type);
    t.string(8, name);
    for (k, v) in [("location", location.to_string()), ("offset", offset.to_string()), ("length", length.to_string())] {
        let mut e = Proto::default();
        e.string(1, k);
        e.string(2, &v);
        t.message(13, e);
    }
    t.int(14, 1);
    t
}

/// An initializer: `dims`, `data_type`, `name` and the little-endian `raw_data`.
pub fn tensor(name: &str, dims: &[usize], data_type: i64, raw: &[u8]) -> Proto {
    let mut t = Proto::default();
    t.ints(1, &dims.iter().map(|&d| d as i64).collect::<Vec<_>>());
    t.int(2, data_type);
    t.string(8, name);
    t.bytes(9, raw);
    t
}

fn attr(name: &str, kind: i64) -> Proto {
    let mut a = Proto::default();
    a.string(1, name);
    a.int(20, kind);
    a
}

pub fn attr_int(name: &str, v: i64) -> Proto {
    let mut a = attr(name, 2);
    a.int(3, v);
    a
}

pub fn attr_float(name: &str, v: f32) -> Proto {
    let mut a = attr(name, 1);
    a.float(2, v);
    a
}

pub fn attr_string(name: &str, v: &str) -> Proto {
    let mut a = attr(name, 3);
    a.string(4, v);
    a
}

pub fn attr_ints(name: &str, vs: &[i64]) -> Proto {
    let mut a = attr(name, 7);
    a.ints(8, vs);
    a
}

/// A float tensor's `ValueInfoProto`.
pub fn value_info(name: &str, dims: &[Dim]) -> Proto {
    let mut shape = Proto::default();
    for d in dims {
        let mut dim = Proto::default();
        match d {
            Dim::Fixed(n) => dim.int(1, *n as i64),
            Dim::Named(s) => dim.string(2, s),
        }
        shape.message(1, dim);
    }
    let mut tensor = Proto::default();
    tensor.int(1, FLOAT);
    tensor.message(2, shape);
    let mut ty = Proto::default();
    ty.message(1, tensor);
    let mut v = Proto::default();
    v.string(1, name);
    v.message(2, ty);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ir_versions_follow_onnx_releases() {
        // onnx/docs/Versioning.md: 1.8 (IR 7, opset 13), 1.10 (IR 8, opset 15),
        // 1.14 (IR 9, opset 19), 1.16 (IR 10, opset 21).
        assert_eq!([13, 14, 15, 17, 18, 19, 20, 21].map(ir_version), [7, 7, 8, 8, 8, 9, 9, 10]);
    }
}
