//! The few pieces of protobuf's wire format that runner writes by hand: TensorBoard's
//! `Event` messages (`runlog::tensorboard`) and ONNX's `ModelProto` (`model::onnx`). A
//! message is its fields in order, each a key (field number and wire type) and a value;
//! nested messages and bytes are length-prefixed.

/// A protobuf message being written: fields by number and wire type.
#[derive(Default)]
pub struct Proto(pub Vec<u8>);

impl Proto {
    pub fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    pub fn key(&mut self, field: u32, wire: u8) {
        self.varint(((field as u64) << 3) | wire as u64);
    }
    /// An `int32`/`int64`/enum field (negative numbers take ten bytes, as protobuf's).
    pub fn int(&mut self, field: u32, v: i64) {
        self.key(field, 0);
        self.varint(v as u64);
    }
    pub fn double(&mut self, field: u32, v: f64) {
        self.key(field, 1);
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn float(&mut self, field: u32, v: f32) {
        self.key(field, 5);
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    pub fn string(&mut self, field: u32, s: &str) {
        self.bytes(field, s.as_bytes());
    }
    pub fn message(&mut self, field: u32, m: Proto) {
        self.bytes(field, &m.0);
    }
    /// A `repeated int64` field, one key per value (proto2's encoding, which ONNX's
    /// `.proto` files use; parsers read it and the packed form alike).
    pub fn ints(&mut self, field: u32, vs: &[i64]) {
        for &v in vs {
            self.int(field, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_fields_encode_as_protobuf_does() {
        // Protobuf's encoding guide: 150 in field 1 is 08 96 01.
        let mut p = Proto::default();
        p.int(1, 150);
        assert_eq!(p.0, [0x08, 0x96, 0x01]);
        // Unpacked repeated values: field 4 holding 3 and 270 is 20 03 20 8E 02.
        let mut p = Proto::default();
        p.ints(4, &[3, 270]);
        assert_eq!(p.0, [0x20, 0x03, 0x20, 0x8e, 0x02]);
        // A negative int64 is its two's complement in ten bytes.
        let mut p = Proto::default();
        p.int(1, -1);
        assert_eq!(p.0.len(), 11);
    }
}
