//! ImageNet-style image folders: JPEG and PNG, colour and greyscale, varying sizes, through
//! resize and crops into a tiny training run; corrupt files and empty class folders.

use std::path::Path;

use crate::common::runner;

/// Class 0 ("cat") images are reddish, class 1 ("dog") bluish, of varying sizes and formats.
fn write_images(dir: &Path, per_class: usize, seed: u64) {
    let mut rng = runner::rng::Rng::new(seed);
    for (k, class) in ["cat", "dog"].iter().enumerate() {
        let folder = dir.join(class);
        std::fs::create_dir_all(&folder).unwrap();
        for i in 0..per_class {
            let (w, h) = (36 + (i % 3) as u32 * 6, 34 + (i % 2) as u32 * 8);
            let img = image::RgbImage::from_fn(w, h, |_, _| {
                let noise = (rng.next_f64() * 60.0) as u8;
                if k == 0 {
                    image::Rgb([180 + noise, noise, noise])
                } else {
                    image::Rgb([noise, noise, 180 + noise])
                }
            });
            match i % 3 {
                0 => img.save(folder.join(format!("{i}.png"))).unwrap(),
                1 => img.save(folder.join(format!("{i}.JPG"))).unwrap(),
                // Greyscale PNG: decoded to RGB (equal channels); carries less signal.
                _ => image::DynamicImage::ImageRgb8(img).to_luma8().save(folder.join(format!("{i}.png"))).unwrap(),
            }
        }
    }
}

const EXP: &str = r#"
[experiment]
name = "folder"
[data]
dataset = "image_folder"
root = "images"
batch_size = 10
num_workers = 2
[[augment.train]]
resize = { shorter = 32 }
[[augment.train]]
random_crop = { size = 32 }
[[augment.train]]
hflip = { p = 0.5 }
[[augment.test]]
resize = { shorter = 32 }
[[augment.test]]
center_crop = { size = 32 }
[model]
input = [3, 32, 32]
[[model.groups]]
name = "features"
layers = [{ conv2d = { out = 4, kernel = 3, padding = 1 } }, "relu", { maxpool = { kernel = 4 } }]
[[model.groups]]
name = "classifier"
layers = ["flatten", { linear = { out = 2 } }]
[train]
epochs = 3
optimizer = { adam = { lr = 0.01 } }
"#;

#[test]
fn image_folder_trains_and_reports_bad_files() {
    let d = tempfile::tempdir().unwrap();
    write_images(&d.path().join("images/train"), 30, 1);
    write_images(&d.path().join("images/val"), 12, 2);
    std::fs::write(d.path().join("folder.toml"), EXP).unwrap();

    let out = runner(d.path(), &["check", "folder.toml"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("image_folder (2 classes)"), "{}", out.stdout);

    let out = runner(d.path(), &["folder.toml"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let acc = crate::common::test_accuracy(&out);
    // Colour alone separates the classes except on the greyscale third; chance is 0.5.
    assert!(acc >= 0.6, "image folder test accuracy {acc}");

    // Without a crop or exact resize the images keep their varying sizes: a plan error.
    let no_crop = EXP.replace("[[augment.test]]\ncenter_crop = { size = 32 }\n", "");
    std::fs::write(d.path().join("nocrop.toml"), no_crop).unwrap();
    let out = runner(d.path(), &["check", "nocrop.toml"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("augment.test") && out.stderr.contains("vary in size"), "{}", out.stderr);

    // A truncated JPEG is an error naming the file, and the run exits 2 without a panic.
    let victim = d.path().join("images/val/dog/1.JPG");
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &bytes[..bytes.len() / 3]).unwrap();
    let out = runner(d.path(), &["folder.toml"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("images/val/dog/1.JPG") && !out.stderr.contains("panicked"), "{}", out.stderr);

    // With on_error = "skip" the run goes on without it, and the count is in the tables:
    // one test sample per epoch.
    let out = runner(d.path(), &["folder.toml", "--set", "data.on_error=\"skip\""]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("skipped") && out.stderr.contains("1.JPG"), "{}", out.stderr);
    let metrics = crate::common::run_folder(d.path(), &out).join("metrics.parquet");
    let f = std::fs::File::open(metrics).unwrap();
    let batch = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .build()
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let col = |n: &str| batch.column_by_name(n).unwrap().clone();
    let (split, metric, value) = (col("split"), col("metric"), col("value"));
    let split = split.as_any().downcast_ref::<arrow_array::StringArray>().unwrap();
    let metric = metric.as_any().downcast_ref::<arrow_array::StringArray>().unwrap();
    let value = value.as_any().downcast_ref::<arrow_array::Float64Array>().unwrap();
    let skipped: Vec<f64> = (0..batch.num_rows())
        .filter(|&i| split.value(i) == "test" && metric.value(i) == "skipped_samples")
        .map(|i| value.value(i))
        .collect();
    assert_eq!(skipped, vec![1.0, 1.0, 1.0]);

    // An empty class folder is named at plan time.
    std::fs::create_dir_all(d.path().join("images/train/zebra")).unwrap();
    let out = runner(d.path(), &["check", "folder.toml"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("zebra") && out.stderr.contains("no .jpg"), "{}", out.stderr);
}

#[test]
fn alexnet_pipeline_config_runs_on_an_image_folder() {
    // configs/data/imagenet_alexnet.toml end to end on a tiny folder: resize 256, crops,
    // flips, PCA jitter, normalize, and ten-crop evaluation.
    let d = tempfile::tempdir().unwrap();
    write_images(&d.path().join("images/train"), 6, 3);
    write_images(&d.path().join("images/val"), 3, 4);
    let cfg = crate::common::repo().join("configs/data/imagenet_alexnet.toml");
    let exp = format!(
        r#"extends = [{:?}]
[experiment]
name = "alexnet_pipeline"
[data]
root = "images"
batch_size = 4
eval_batch_size = 3
[model]
input = [3, 224, 224]
[[model.groups]]
name = "features"
layers = [{{ conv2d = {{ out = 4, kernel = 8, stride = 8 }} }}, "relu", "global_avgpool"]
[[model.groups]]
name = "classifier"
layers = ["flatten", {{ linear = {{ out = 2 }} }}]
[train]
epochs = 1
optimizer = {{ sgd = {{ lr = 0.01 }} }}
"#,
        cfg.display().to_string()
    );
    std::fs::write(d.path().join("a.toml"), exp).unwrap();
    let out = runner(d.path(), &["a.toml"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("test.accuracy = "), "{}", out.stdout);
    // The statistics AlexNet's PCA jitter needs, from the folder's training images.
    let out = runner(d.path(), &["data", "stats", "a.toml"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("mean = [") && out.stdout.contains("eigval"), "{}", out.stdout);
}
