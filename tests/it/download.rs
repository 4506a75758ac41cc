//! Downloads against a small HTTP server on 127.0.0.1 that serves files the test makes:
//! a good file, a corrupt one, and a 404. Nothing leaves the machine.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

use runner::data::download::{fetch, file_digest, Checksum};

/// Serves `files` (path -> body) for `requests` connections, then stops.
pub fn serve(files: BTreeMap<String, Vec<u8>>, requests: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(requests) {
            let mut stream = stream.unwrap();
            let mut line = String::new();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            reader.read_line(&mut line).unwrap();
            // Skip the headers.
            let mut h = String::new();
            while reader.read_line(&mut h).unwrap() > 2 {
                h.clear();
            }
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
            match files.get(&path) {
                Some(body) => {
                    write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())
                        .unwrap();
                    stream.write_all(body).unwrap();
                }
                None => {
                    write!(stream, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
                }
            }
        }
    });
    format!("http://{addr}")
}

fn sha256_hex(bytes: &[u8]) -> &'static str {
    use sha2::Digest;
    let hex: String = sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
    Box::leak(hex.into_boxed_str())
}

#[test]
fn good_corrupt_and_missing_files() {
    let good = runner::data::idx::encode_labels(&[1, 2, 3, 4]);
    let mut corrupt = good.clone();
    corrupt[9] ^= 0xff;
    let files = BTreeMap::from([("/good.idx".to_string(), good.clone()), ("/corrupt.idx".to_string(), corrupt)]);
    let base = serve(files, 3);
    let dir = tempfile::tempdir().unwrap();

    // A good file lands under its name with the right bytes, and no .part is left.
    let dest = dir.path().join("sub/good.idx");
    fetch(&format!("{base}/good.idx"), &dest, Checksum::Sha256(sha256_hex(&good))).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), good);
    assert!(!dir.path().join("sub/good.idx.part").exists());
    assert_eq!(file_digest(&dest, &Checksum::Sha256("")).unwrap(), sha256_hex(&good));

    // A corrupt file is rejected with both digests named and nothing kept.
    let dest = dir.path().join("corrupt.idx");
    let e = fetch(&format!("{base}/corrupt.idx"), &dest, Checksum::Sha256(sha256_hex(&good))).unwrap_err().to_string();
    assert!(e.contains("checksum mismatch") && e.contains(sha256_hex(&good)) && e.contains("corrupt.idx"), "{e}");
    assert!(!dest.exists() && !dir.path().join("corrupt.idx.part").exists());

    // A 404 names the URL and the status.
    let e = fetch(&format!("{base}/missing.idx"), &dir.path().join("m.idx"), Checksum::Sha256(sha256_hex(&good)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("/missing.idx") && e.contains("404"), "{e}");
}

#[test]
fn md5_of_a_known_string() {
    // RFC 1321's test suite: MD5("abc") = 900150983cd24fb0d6963f7d28e17f72.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("abc");
    std::fs::write(&p, "abc").unwrap();
    assert_eq!(file_digest(&p, &Checksum::Md5("")).unwrap(), "900150983cd24fb0d6963f7d28e17f72");
}

#[test]
fn dataset_download_through_a_mirror_checks_the_published_checksums() {
    // A mirror serving files that are not the official ones: the published MD5 rejects
    // them, the error names the file, and the dataset folder keeps no partial file.
    let d = tempfile::tempdir().unwrap();
    let toy = d.path().join("toy");
    crate::common::write_toy_mnist(&toy, 20, 10);
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(&toy).unwrap() {
        let p = entry.unwrap().path();
        files.insert(format!("/{}", p.file_name().unwrap().to_string_lossy()), std::fs::read(&p).unwrap());
    }
    let base = serve(files, 1);
    let cfg: runner::config::DataConfig = toml::from_str(&format!(
        "dataset = \"mnist\"\nroot = {:?}\ndownload = true\nmirror = \"{base}\"\nbatch_size = 4\n",
        d.path().join("mnist").display().to_string()
    ))
    .unwrap();
    let e = runner::data::load(&cfg).unwrap_err().to_string();
    assert!(e.contains("train-images-idx3-ubyte.gz") && e.contains("MD5 checksum mismatch"), "{e}");
    assert!(!d.path().join("mnist/train-images-idx3-ubyte.gz").exists());
    assert!(!d.path().join("mnist/train-images-idx3-ubyte.gz.part").exists());
}

/// A group's `init = { url = ... }`: fetched once into the cache (RUNNER_CACHE), checked
/// against the SHA-256 prefix its torchvision-style name carries; a wrong prefix or an
/// unnamed checksum is refused, keeping nothing.
#[test]
fn init_weights_from_an_address_are_fetched_once_and_checked() {
    use runner::model::{plan_model, Model};
    let d = tempfile::tempdir().unwrap();
    crate::common::write_toy_mnist(&d.path().join("data/toy"), 60, 20);
    // The weights: runner's LeNet5 with seed 5, as a safetensors file.
    #[derive(serde::Deserialize)]
    struct File {
        model: runner::config::ModelConfig,
    }
    let text = std::fs::read_to_string(crate::common::repo().join("configs/models/lenet5.toml")).unwrap();
    let cfg: File = toml::from_str(&text).unwrap();
    let model = Model::new(&plan_model(&cfg.model).unwrap(), 5, &candle_core::Device::Cpu).unwrap();
    let path = d.path().join("w.safetensors");
    runner::model::weights::save(&model, &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let digest = sha256_hex(&bytes);
    let name = format!("lenet5-{}.safetensors", &digest[..8]);
    let base =
        serve(BTreeMap::from([(format!("/{name}"), bytes.clone()), ("/lenet5-00000000.safetensors".into(), bytes)]), 2);
    let exp = |file_name: &str| {
        let model = text.replace(
            "name = \"features\"\n",
            &format!("name = \"features\"\ninit = {{ url = \"{base}/{file_name}\" }}\n"),
        );
        format!(
            "[experiment]\nname = \"url\"\n\n[data]\ndataset = \"mnist\"\nroot = \"data/toy\"\nbatch_size = 20\n\n\
             [train]\nepochs = 1\noptimizer = {{ sgd = {{ lr = 0.01 }} }}\n\n{model}"
        )
    };
    let write = |file: &str, body: String| std::fs::write(d.path().join(file), body).unwrap();
    write("good.toml", exp(&name));
    write("bad.toml", exp("lenet5-00000000.safetensors"));

    let out = crate::common::runner(d.path(), &["check", "good.toml"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains(&format!("{name} will be fetched into")), "{}", out.stderr);
    let cached = d.path().join("cache/weights").join(&name);
    for _ in 0..2 {
        // The second run finds the file in the cache: the server answers one request per name.
        let out = crate::common::runner(d.path(), &["good.toml"]);
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
        assert!(out.stderr.contains("group features: 4 tensors from"), "{}", out.stderr);
        assert!(cached.is_file());
    }
    // A file whose digest does not start with its name's prefix is refused and not kept.
    let out = crate::common::runner(d.path(), &["bad.toml"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("checksum mismatch"), "{}", out.stderr);
    assert!(!d.path().join("cache/weights/lenet5-00000000.safetensors").exists());
    // No checksum anywhere: check refuses.
    write("none.toml", exp("weights.safetensors"));
    let out = crate::common::runner(d.path(), &["check", "none.toml"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("init.sha256") && out.stderr.contains("is needed"), "{}", out.stderr);
}
