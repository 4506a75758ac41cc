//! `runner data stats`: per-channel mean and standard deviation of a split's pixels (scaled
//! to [0, 1], population statistics, exact in f64), and for RGB data the eigenvalues and
//! eigenvectors of the pixel colour covariance, as AlexNet's PCA colour augmentation uses.

use super::Split;

#[derive(Debug, Clone, PartialEq)]
pub struct PixelStats {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    /// For 3 channels: eigenvalues (descending) and eigenvectors as columns, `eigvec[c][j]`.
    pub pca: Option<([f64; 3], [[f64; 3]; 3])>,
}

/// Streams over the split once; sums of pixels and of pixel products per channel pair.
/// Images in memory have the dataset's `shape`; image files (folders, VOC) are decoded one
/// by one into `shape[0]` channels, each with its own size.
pub fn pixel_stats(split: &Split, shape: [usize; 3]) -> anyhow::Result<PixelStats> {
    let c = shape[0];
    let mut n = 0usize;
    let mut sum = vec![0f64; c];
    let mut prod = vec![vec![0f64; c]; c];
    let mut add = |img: &[u8], hw: usize| {
        n += hw;
        for p in 0..hw {
            let px: Vec<f64> = (0..c).map(|ch| img[ch * hw + p] as f64 / 255.0).collect();
            for a in 0..c {
                sum[a] += px[a];
                for b in a..c {
                    prod[a][b] += px[a] * px[b];
                }
            }
        }
    };
    if split.files.is_empty() {
        let hw = shape[1] * shape[2];
        for img in split.pixels.chunks(c * hw).take(split.len) {
            add(img, hw);
        }
    } else {
        for path in split.files.iter().take(split.len) {
            let (img, h, w) = super::folder::decode(path, c)?;
            add(&img, h * w);
        }
    }
    if n == 0 {
        anyhow::bail!("the training split has no pixels");
    }
    let n = n as f64;
    let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
    let cov = |a: usize, b: usize| prod[a.min(b)][a.max(b)] / n - mean[a] * mean[b];
    let std = (0..c).map(|a| cov(a, a).max(0.0).sqrt()).collect();
    let pca = (c == 3).then(|| {
        let m =
            [[cov(0, 0), cov(0, 1), cov(0, 2)], [cov(1, 0), cov(1, 1), cov(1, 2)], [cov(2, 0), cov(2, 1), cov(2, 2)]];
        symmetric_eigen(m)
    });
    Ok(PixelStats { mean, std, pca })
}

/// Eigen-decomposition of a symmetric 3x3 matrix by cyclic Jacobi rotations: eigenvalues in
/// descending order, eigenvectors as columns (`v[i][j]` is component `i` of vector `j`).
pub fn symmetric_eigen(mut a: [[f64; 3]; 3]) -> ([f64; 3], [[f64; 3]; 3]) {
    let mut v = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    for _ in 0..100 {
        let off = a[0][1].powi(2) + a[0][2].powi(2) + a[1][2].powi(2);
        if off < 1e-30 {
            break;
        }
        for (p, q) in [(0, 1), (0, 2), (1, 2)] {
            if a[p][q].abs() < 1e-300 {
                continue;
            }
            // The rotation that zeroes a[p][q] (Golub and Van Loan, Algorithm 8.4.1).
            let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
            let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
            let t = if theta == 0.0 { 1.0 } else { t };
            let c = 1.0 / (t * t + 1.0).sqrt();
            let s = t * c;
            // A <- A J (columns p, q), then A <- J^T A (rows p, q).
            for row in a.iter_mut() {
                let (akp, akq) = (row[p], row[q]);
                row[p] = c * akp - s * akq;
                row[q] = s * akp + c * akq;
            }
            let (rp, rq) = (a[p], a[q]);
            for k in 0..3 {
                a[p][k] = c * rp[k] - s * rq[k];
                a[q][k] = s * rp[k] + c * rq[k];
            }
            for row in v.iter_mut() {
                let (vp, vq) = (row[p], row[q]);
                row[p] = c * vp - s * vq;
                row[q] = s * vp + c * vq;
            }
        }
    }
    let mut order = [0, 1, 2];
    order.sort_by(|&i, &j| a[j][j].total_cmp(&a[i][i]));
    let vals = order.map(|i| a[i][i]);
    let vecs = [0, 1, 2].map(|r| order.map(|j| v[r][j]));
    (vals, vecs)
}

/// The statistics as TOML to paste into `[[augment.train]]` / `[[augment.test]]`.
pub fn to_toml(s: &PixelStats, dataset: &str, images: usize) -> String {
    let list = |v: &[f64]| v.iter().map(|x| format!("{x:.4}")).collect::<Vec<_>>().join(", ");
    let mut out = format!("# runner data stats: {dataset}, training split, {images} images, pixels scaled to [0, 1]\n");
    out += &format!("[[augment.train]]\nnormalize = {{ mean = [{}], std = [{}] }}\n", list(&s.mean), list(&s.std));
    if let Some((val, vec)) = &s.pca {
        let rows: Vec<String> = vec.iter().map(|r| format!("[{}]", list(r))).collect();
        out += &format!(
            "\n# AlexNet's PCA colour jitter with this data's colour covariance (eigvec columns are components)\n[[augment.train]]\npca_color_jitter = {{ std = 0.1, eigval = [{}], eigvec = [{}] }}\n",
            val.iter().map(|x| format!("{x:.6}")).collect::<Vec<_>>().join(", "),
            rows.join(", ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_std_by_hand() {
        // Two 1x1x2 images with pixels 0, 255 and 255, 255: values 0, 1, 1, 1;
        // mean 0.75, population variance 0.1875, std 0.4330.
        let split = Split { pixels: vec![0, 255, 255, 255], labels: vec![0, 0], len: 2, ..Default::default() };
        let s = pixel_stats(&split, [1, 1, 2]).unwrap();
        assert!((s.mean[0] - 0.75).abs() < 1e-12);
        assert!((s.std[0] - 0.1875f64.sqrt()).abs() < 1e-12);
        assert!(s.pca.is_none());
    }

    #[test]
    fn jacobi_eigen_of_a_known_matrix() {
        // [[4,1,0],[1,3,0],[0,0,1]]: eigenvalues (7 +- sqrt 5) / 2 and 1 (by hand).
        let m = [[4.0, 1.0, 0.0], [1.0, 3.0, 0.0], [0.0, 0.0, 1.0]];
        let (val, vec) = symmetric_eigen(m);
        let r5 = 5f64.sqrt();
        for (got, want) in val.iter().zip([(7.0 + r5) / 2.0, (7.0 - r5) / 2.0, 1.0]) {
            assert!((got - want).abs() < 1e-12, "{val:?}");
        }
        // A v = lambda v for each column.
        for j in 0..3 {
            for i in 0..3 {
                let av: f64 = (0..3).map(|k| m[i][k] * vec[k][j]).sum();
                assert!((av - val[j] * vec[i][j]).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn pca_of_colours_on_a_line() {
        // Pixels (t, t, t) for t in {0, 1}: all variance along (1,1,1)/sqrt 3 with
        // eigenvalue 3 * var(t) = 3 * 0.25; the others are 0.
        let split = Split { pixels: vec![0, 0, 0, 255, 255, 255], labels: vec![0, 0], len: 2, ..Default::default() };
        let s = pixel_stats(&split, [3, 1, 1]).unwrap();
        let (val, vec) = s.pca.unwrap();
        assert!((val[0] - 0.75).abs() < 1e-12 && val[1].abs() < 1e-12 && val[2].abs() < 1e-12, "{val:?}");
        for row in vec {
            assert!((row[0].abs() - 1.0 / 3f64.sqrt()).abs() < 1e-9);
        }
    }
}
