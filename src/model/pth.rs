//! Writes a state dict as `torch.save(state_dict, path)` does (PyTorch's zip format, read by
//! `torch.load` since PyTorch 1.6): `archive/data.pkl` (a pickle, protocol 2, of an
//! `OrderedDict` from names to tensors rebuilt by `torch._utils._rebuild_tensor_v2` from
//! persistent storages), each tensor's bytes in `archive/data/<key>` (little-endian,
//! contiguous), and `archive/version`. Members are stored uncompressed, as PyTorch's own
//! writer stores them.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};

/// A pickle being written: protocol 2's opcodes, no memo.
struct Pickle(Vec<u8>);

impl Pickle {
    fn global(&mut self, module: &str, name: &str) {
        self.0.push(b'c');
        self.0.extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    }
    fn string(&mut self, s: &str) {
        self.0.push(b'X'); // BINUNICODE
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }
    fn int(&mut self, v: u64) {
        if v < 256 {
            self.0.extend_from_slice(&[b'K', v as u8]); // BININT1
        } else if v <= i32::MAX as u64 {
            self.0.push(b'J'); // BININT
            self.0.extend_from_slice(&(v as i32).to_le_bytes());
        } else {
            self.0.extend_from_slice(&[0x8a, 8]); // LONG1, 8 bytes
            self.0.extend_from_slice(&(v as i64).to_le_bytes());
        }
    }
    fn tuple_of_ints(&mut self, v: &[usize]) {
        if v.is_empty() {
            self.0.push(b')'); // EMPTY_TUPLE
            return;
        }
        self.0.push(b'('); // MARK
        for &x in v {
            self.int(x as u64);
        }
        self.0.push(b't'); // TUPLE
    }
    fn empty_ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.0.extend_from_slice(b")R"); // EMPTY_TUPLE, REDUCE
    }
}

/// PyTorch's storage class of a dtype runner writes.
fn storage(dtype: DType) -> Result<&'static str> {
    Ok(match dtype {
        DType::F32 => "FloatStorage",
        DType::F64 => "DoubleStorage",
        DType::I64 => "LongStorage",
        other => bail!("a {other:?} tensor has no PyTorch storage runner writes"),
    })
}

/// Writes `tensors` (name, tensor on any device) in order as a PyTorch state dict at `path`.
pub fn save(tensors: &[(String, Tensor)], path: &Path) -> Result<()> {
    let mut p = Pickle(vec![0x80, 2]); // PROTO 2
    p.empty_ordered_dict();
    p.0.push(b'('); // MARK for SETITEMS
    let mut blobs: Vec<Vec<u8>> = Vec::new();
    for (key, (name, t)) in tensors.iter().enumerate() {
        let t = t.to_device(&candle_core::Device::Cpu)?.contiguous()?;
        let class = storage(t.dtype())?;
        let dims = t.dims().to_vec();
        let mut stride = vec![1usize; dims.len()];
        for i in (0..dims.len().saturating_sub(1)).rev() {
            stride[i] = stride[i + 1] * dims[i + 1];
        }
        p.string(name);
        p.global("torch._utils", "_rebuild_tensor_v2");
        p.0.push(b'('); // MARK: the arguments
        p.0.push(b'('); // MARK: the persistent id
        p.string("storage");
        p.global("torch", class);
        p.string(&key.to_string());
        p.string("cpu");
        p.int(t.elem_count() as u64);
        p.0.extend_from_slice(b"tQ"); // TUPLE, BINPERSID
        p.int(0); // storage offset
        p.tuple_of_ints(&dims);
        p.tuple_of_ints(&stride);
        p.0.push(0x89); // NEWFALSE: requires_grad
        p.empty_ordered_dict(); // backward hooks
        p.0.extend_from_slice(b"tR"); // TUPLE, REDUCE
        blobs.push(tensor_bytes(&t)?);
    }
    p.0.extend_from_slice(b"u."); // SETITEMS, STOP
    let tmp = path.with_extension("pth.part");
    let write = || -> Result<()> {
        let file = std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        let mut zip = zip::ZipWriter::new(std::io::BufWriter::new(file));
        let stored = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            // PyTorch aligns each member's data to 64 bytes (`torch.load(mmap=True)` needs it).
            .with_alignment(64)
            .large_file(blobs.iter().any(|b| b.len() as u64 >= u32::MAX as u64));
        zip.start_file("archive/data.pkl", stored)?;
        zip.write_all(&p.0)?;
        for (key, blob) in blobs.iter().enumerate() {
            zip.start_file(format!("archive/data/{key}"), stored)?;
            zip.write_all(blob)?;
        }
        zip.start_file("archive/version", stored)?;
        zip.write_all(b"3\n")?;
        zip.finish()?.flush()?;
        Ok(())
    };
    write().with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// A contiguous CPU tensor's elements as little-endian bytes.
fn tensor_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let flat = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F32 => flat.to_vec1::<f32>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F64 => flat.to_vec1::<f64>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::I64 => flat.to_vec1::<i64>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        other => bail!("a {other:?} tensor has no PyTorch storage runner writes"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// candle's own reader of PyTorch files reads back what was written (the tests of
    /// `runner export` load it with PyTorch itself).
    #[test]
    fn candle_reads_back_what_was_written() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("w.pth");
        let dev = candle_core::Device::Cpu;
        let a = Tensor::arange(0f32, 6.0, &dev).unwrap().reshape((2, 3)).unwrap();
        let n = Tensor::new(7i64, &dev).unwrap();
        save(&[("layer.weight".into(), a.clone()), ("bn.num_batches_tracked".into(), n)], &path).unwrap();
        let back = candle_core::pickle::read_all(&path).unwrap();
        let get = |k: &str| back.iter().find(|(n, _)| n == k).map(|(_, t)| t.clone()).unwrap();
        assert_eq!(get("layer.weight").to_vec2::<f32>().unwrap(), a.to_vec2::<f32>().unwrap());
        assert_eq!(get("bn.num_batches_tracked").dims(), &[] as &[usize]);
    }
}
