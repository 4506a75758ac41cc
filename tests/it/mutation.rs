//! Mutation test: valid inputs of every kind runner reads (an experiment TOML through the
//! loader and the plan, IDX images and labels plain and gzipped, CIFAR records, a JPEG and
//! a PNG through the image-folder decoder, a VOC annotation, a palette mask, a safetensors
//! file, a PyTorch state dict, a checkpoint sidecar, a sweep list), changed by seeded random
//! byte flips, truncations, insertions and 0xFF runs (huge sizes in headers), a fixed number
//! of times each. Every reader must answer with a value or an error: no panic.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use runner::rng::Rng;

/// Iterations per input kind.
const ROUNDS: usize = 1000;

/// What text inputs are changed with: TOML and XML syntax, digits (9s make huge numbers),
/// letters, spaces and newlines. Binary inputs take any byte.
const TEXT: &[u8] = b"[]{}=\".,-+_#<>/&;:'0123456789999999eExyz \n";

/// One random change of `bytes`; `text`: new bytes are from [`TEXT`], so that most changes
/// still reach the parser past its UTF-8 check.
fn mutate(bytes: &[u8], rng: &mut Rng, text: bool) -> Vec<u8> {
    let mut b = bytes.to_vec();
    let pick = |rng: &mut Rng, n: usize| (rng.next_f64() * n as f64) as usize % n.max(1);
    let byte = |rng: &mut Rng| if text { TEXT[pick(rng, TEXT.len())] } else { pick(rng, 256) as u8 };
    for _ in 0..1 + pick(rng, 3) {
        let n = b.len();
        match pick(rng, 5) {
            // Change one byte.
            0 if n > 0 => {
                let i = pick(rng, n);
                b[i] = if text { byte(rng) } else { b[i] ^ (1 + pick(rng, 255) as u8) };
            }
            // Cut the end off.
            1 => b.truncate(pick(rng, n + 1)),
            // Insert a few bytes.
            2 => {
                let i = pick(rng, n + 1);
                let extra: Vec<u8> = (0..1 + pick(rng, 8)).map(|_| byte(rng)).collect();
                b.splice(i..i, extra);
            }
            // Four 0xFF bytes (a size field near 2^32), or four 9s in text.
            3 if n >= 4 => {
                let i = pick(rng, n - 3);
                b[i..i + 4].fill(if text { b'9' } else { 0xFF });
            }
            // Repeat a slice.
            _ if n > 0 => {
                let (i, len) = (pick(rng, n), 1 + pick(rng, 16));
                let slice = b[i..(i + len).min(n)].to_vec();
                b.splice(i..i, slice);
            }
            _ => {}
        }
    }
    b
}

/// Runs `read` on `ROUNDS` mutations of `valid` written to `path`; returns the rounds that
/// panicked and how many gave an error.
fn fuzz(kind: &str, path: &Path, valid: &[u8], seed: u64, read: impl Fn(&Path) -> bool) -> (Vec<String>, usize) {
    let text = std::str::from_utf8(valid).is_ok();
    let mut rng = Rng::new(seed);
    let (mut panics, mut errors) = (Vec::new(), 0);
    // The valid input first: it must read.
    std::fs::write(path, valid).unwrap();
    assert!(read(path), "{kind}: the unchanged input does not read");
    for round in 0..ROUNDS {
        std::fs::write(path, mutate(valid, &mut rng, text)).unwrap();
        match catch_unwind(AssertUnwindSafe(|| read(path))) {
            Ok(true) => {}
            Ok(false) => errors += 1,
            Err(_) => panics.push(format!("{kind} round {round} (seed {seed})")),
        }
    }
    (panics, errors)
}

fn jpeg(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 13) as u8, (y * 7) as u8, ((x + y) * 5) as u8]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::GrayImage::from_fn(w, h, |x, y| image::Luma([(x * 16 + y) as u8]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

const ANNOTATION: &str = r#"<annotation>
  <folder>VOC2007</folder><filename>000001.jpg</filename>
  <size><width>353</width><height>500</height><depth>3</depth></size>
  <object><name>dog</name><pose>Left</pose><truncated>1</truncated><difficult>0</difficult>
    <bndbox><xmin>48</xmin><ymin>240</ymin><xmax>195</xmax><ymax>371</ymax></bndbox></object>
  <object><name>person</name><truncated>0</truncated><difficult>1</difficult>
    <bndbox><xmin>8</xmin><ymin>12</ymin><xmax>352</xmax><ymax>498</ymax></bndbox></object>
</annotation>
"#;

const SIDECAR: &str = r#"epoch = 2
step = 16
bad_epochs = 0
config_hash = "0123456789abcdef"
threads = 2
best = [0.91, 2]

[optimizer_steps]
"features.0.weight" = 16
"#;

#[test]
fn mutated_inputs_give_errors_not_panics() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let cpu = candle_core::Device::Cpu;
    let mut panics = Vec::new();
    let mut summary = Vec::new();
    let mut record = |kind: &str, (p, e): (Vec<String>, usize)| {
        summary.push(format!("{kind}: {e} errors"));
        panics.extend(p);
    };

    // The experiment TOML, through the loader and, where it loads, the plan.
    let exp = crate::end_to_end::setup(dir, 2);
    // The data root as an absolute path: the plan looks for the data (the test's working
    // directory is the repository).
    let text = std::fs::read_to_string(&exp).unwrap().replace("\"data/toy\"", &format!("{:?}", dir.join("data/toy")));
    let valid = text.into_bytes();

    let opts = runner::config::LoadOptions { sets: vec![], env: false };
    record(
        "experiment toml",
        fuzz("experiment toml", &exp, &valid, 1, |p| match runner::config::load(p, &opts) {
            Ok(loaded) => runner::plan::plan(&loaded).is_ok(),
            Err(_) => false,
        }),
    );

    // IDX images and labels, plain and gzipped.
    let pixels: Vec<u8> = (0..3 * 28 * 28).map(|i| (i % 251) as u8).collect();
    let images = runner::data::idx::encode_images(3, 28, 28, &pixels);
    let labels = runner::data::idx::encode_labels(&[1, 2, 3]);
    let p = dir.join("images-idx3-ubyte");
    record(
        "idx images",
        fuzz("idx images", &p, &images, 2, |p| {
            runner::data::idx::read_maybe_gz(p).and_then(|b| runner::data::idx::parse_images(&b, p)).is_ok()
        }),
    );
    let p = dir.join("labels-idx1-ubyte");
    record(
        "idx labels",
        fuzz("idx labels", &p, &labels, 3, |p| {
            runner::data::idx::read_maybe_gz(p).and_then(|b| runner::data::idx::parse_labels(&b, p)).is_ok()
        }),
    );
    let p = dir.join("images-idx3-ubyte.gz");
    record(
        "idx gz",
        fuzz("idx gz", &p, &gzip(&images), 4, |p| {
            runner::data::idx::read_maybe_gz(p).and_then(|b| runner::data::idx::parse_images(&b, p)).is_ok()
        }),
    );

    // CIFAR-10 binary records.
    let records: Vec<(u8, Vec<u8>)> = (0..2).map(|i| (i as u8, (0..3072).map(|j| (j % 256) as u8).collect())).collect();
    let p = dir.join("data_batch_1.bin");
    record(
        "cifar",
        fuzz("cifar", &p, &runner::data::cifar::encode(&records), 5, |p| {
            runner::data::cifar::read_split(&[p.to_path_buf()], 10).is_ok()
        }),
    );

    // Images through the image-folder decoder.
    let p = dir.join("photo.jpg");
    record("jpeg", fuzz("jpeg", &p, &jpeg(24, 16), 6, |p| runner::data::folder::decode(p, 3).is_ok()));
    let p = dir.join("photo.png");
    record("png", fuzz("png", &p, &png(16, 12), 7, |p| runner::data::folder::decode(p, 1).is_ok()));

    // A VOC annotation and a palette mask.
    let classes: Vec<String> = ["dog", "person"].iter().map(|s| s.to_string()).collect();
    let p = dir.join("000001.xml");
    record(
        "voc xml",
        fuzz("voc xml", &p, ANNOTATION.as_bytes(), 8, |p| {
            runner::data::voc::parse_annotation(p, &classes, false).is_ok()
        }),
    );
    let mask: Vec<u8> = (0..12 * 16).map(|i| if i % 7 == 0 { 255 } else { (i % 3) as u8 }).collect();
    let mask_png = runner::data::synth::encode_mask_png(&mask, [12, 16], &runner::plots::voc_palette()).unwrap();
    let p = dir.join("000001.png");
    record("mask png", fuzz("mask png", &p, &mask_png, 9, |p| runner::data::voc::read_mask(p, 3, 255).is_ok()));

    // Weights: safetensors and a PyTorch state dict (tests/fixtures/make_tiny_pth.py).
    let tensors = std::collections::HashMap::from([
        ("fc.weight".to_string(), candle_core::Tensor::arange(0f32, 6., &cpu).unwrap().reshape((2, 3)).unwrap()),
        ("fc.bias".to_string(), candle_core::Tensor::new(&[0.5f32, -1., 2.], &cpu).unwrap()),
    ]);
    let p = dir.join("w.safetensors");
    candle_core::safetensors::save(&tensors, &p).unwrap();
    let valid = std::fs::read(&p).unwrap();
    record("safetensors", fuzz("safetensors", &p, &valid, 10, |p| runner::model::weights::read(p, &cpu).is_ok()));
    let valid = std::fs::read(crate::common::repo().join("tests/fixtures/tiny_state_dict.pth")).unwrap();
    let p = dir.join("w.pth");
    record("pth", fuzz("pth", &p, &valid, 11, |p| runner::model::weights::read(p, &cpu).is_ok()));

    // A checkpoint's sidecar, found and read by `latest`.
    let ck = dir.join("checkpoints");
    std::fs::create_dir_all(&ck).unwrap();
    std::fs::write(ck.join("epoch_0002.safetensors"), b"").unwrap();
    let p = ck.join("epoch_0002.toml");
    record(
        "checkpoint sidecar",
        fuzz("checkpoint sidecar", &p, SIDECAR.as_bytes(), 12, |_| runner::checkpoint::latest(&ck).is_ok()),
    );

    // A sweep's value list, as given on the command line.
    let p = dir.join("sweep.txt");
    record(
        "sweep list",
        fuzz("sweep list", &p, b"optimizer.sgd.lr=[0.1, 0.01, 1e-3]", 13, |p| {
            let raw = String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned();
            runner::sweep::parse_list(&raw, "--grid").is_ok()
        }),
    );

    assert!(panics.is_empty(), "{} panics: {}", panics.len(), panics.join(", "));
    eprintln!("mutation: {ROUNDS} rounds per kind, no panic; {}", summary.join("; "));
}
