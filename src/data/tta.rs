//! Test-time augmentation: the course's ten crops (AlexNet's: the four corners and the centre,
//! and the same of the mirrored image), whose softmax outputs are averaged.

/// torchvision's `five_crop` offsets `(top, left)`: top-left, top-right, bottom-left,
/// bottom-right, centre (rounded half to even, as `center_crop`).
pub fn five_crop_offsets(h: usize, w: usize, size: usize) -> [(usize, usize); 5] {
    let centre = |d: usize| (d as f64 / 2.0).round_ties_even() as usize;
    [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size), (centre(h - size), centre(w - size))]
}

/// `n` images `[c, h, w]` -> `10 n` crops `[c, size, size]`, image by image, in torchvision's
/// `TenCrop` order: the five crops of the image, then the five crops of its mirror image.
pub fn ten_crop(images: &[f32], n: usize, [c, h, w]: [usize; 3], size: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n * 10 * c * size * size);
    let offsets = five_crop_offsets(h, w, size);
    for img in images.chunks(c * h * w).take(n) {
        for mirrored in [false, true] {
            for &(top, left) in &offsets {
                for ch in 0..c {
                    for y in top..top + size {
                        let row = &img[(ch * h + y) * w..(ch * h + y + 1) * w];
                        if mirrored {
                            // Column x of the mirror image is column w - 1 - x of the image.
                            out.extend((left..left + size).map(|x| row[w - 1 - x]));
                        } else {
                            out.extend_from_slice(&row[left..left + size]);
                        }
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_crops_of_a_3x3_by_hand() {
        // [[1,2,3],[4,5,6],[7,8,9]], size 2. Five crops: tl [1,2,4,5], tr [2,3,5,6],
        // bl [4,5,7,8], br [5,6,8,9], centre (offset round(0.5) = 0) [1,2,4,5]. The mirror
        // image is [[3,2,1],[6,5,4],[9,8,7]]: tl [3,2,6,5], tr [2,1,5,4], bl [6,5,9,8],
        // br [5,4,8,7], centre [3,2,6,5].
        let img: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let out = ten_crop(&img, 1, [1, 3, 3], 2);
        let crops: Vec<Vec<f32>> = out.chunks(4).map(|c| c.to_vec()).collect();
        let want: [[f32; 4]; 10] = [
            [1., 2., 4., 5.],
            [2., 3., 5., 6.],
            [4., 5., 7., 8.],
            [5., 6., 8., 9.],
            [1., 2., 4., 5.],
            [3., 2., 6., 5.],
            [2., 1., 5., 4.],
            [6., 5., 9., 8.],
            [5., 4., 8., 7.],
            [3., 2., 6., 5.],
        ];
        for (got, want) in crops.iter().zip(want) {
            assert_eq!(got.as_slice(), want.as_slice());
        }
        // AlexNet's 256 -> 224: centre offset 16.
        assert_eq!(five_crop_offsets(256, 256, 224)[4], (16, 16));
    }
}
