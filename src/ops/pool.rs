//! Max pooling with an exact gradient.
//!
//! candle 0.11's `max_pool2d` scales its gradient by 1/(k*k) (see
//! `../shared/reference/findings.md`). Here a k x k pool with stride k is written as a
//! reshape and two `max` reductions, whose backward sends the gradient to the arg-max of
//! each window (to every element that ties for the maximum). Rows and columns that do not
//! fill a window are dropped, as PyTorch does with `ceil_mode = false`.

use candle_core::{Result, Tensor};

/// `[n, c, h, w]` -> `[n, c, h / k, w / k]`.
pub fn max_pool2d(x: &Tensor, k: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (oh, ow) = (h / k, w / k);
    let x = if oh * k != h || ow * k != w {
        x.narrow(2, 0, oh * k)?.narrow(3, 0, ow * k)?
    } else {
        x.clone()
    };
    x.reshape((n, c, oh, k, ow, k))?.max(5)?.max(3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn gradient_goes_to_the_argmax_with_weight_one() {
        // The findings' repro: input [[1,2],[3,4]], k = 2. d(max)/dx = [0,0,0,1] by hand.
        let x = Var::new(&[[[[1f32, 2.], [3., 4.]]]], &Device::Cpu).unwrap();
        let y = max_pool2d(&x, 2).unwrap();
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![4.0]
        );
        let grads = y.sum_all().unwrap().backward().unwrap();
        let g = grads
            .get(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(g, vec![0.0, 0.0, 0.0, 1.0]);
    }

    #[test]
    fn odd_sizes_drop_the_last_row_and_column() {
        // 3x3 input, k = 2: one window over the top-left 2x2 block (PyTorch floor mode).
        let x = Tensor::new(
            &[[[[1f32, 5., 9.], [2., 3., 9.], [9., 9., 9.]]]],
            &Device::Cpu,
        )
        .unwrap();
        let y = max_pool2d(&x, 2).unwrap();
        assert_eq!(y.dims(), &[1, 1, 1, 1]);
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![5.0]
        );
    }
}
