//! cuDNN's convolutions, with what a training loop needs kept between calls (the cuDNN
//! build, `--features cudnn`; [`super::conv_dev::ConvPath::Cudnn`]).
//!
//! candle's own cuDNN path, at every call, makes the descriptors, asks cuDNN's heuristics
//! for an algorithm and allocates and zeroes a fresh workspace, and it has no cuDNN
//! gradients (candle runs the input gradient as a direct-loop transposed convolution and the
//! weight gradient as a convolution with a transposed-view kernel, which its cuDNN call
//! hands to another direct loop). Here, per thread and device: one cuDNN handle; for each
//! convolution's shapes and direction, the descriptors and the algorithm, chosen once by
//! cuDNN's heuristics (what PyTorch does without `cudnn.benchmark`); one workspace that
//! grows to the largest any call needs and is never zeroed (cuDNN does not read it before
//! writing). The three directions are cuDNN's own calls:
//!
//! - forward `(x, w) -> y`, whose gradients are the two below;
//! - backward data `(dy, w) -> dx`, also the transposed convolution's forward, whose
//!   gradients are the forward (for `dy`) and backward filter (for `w`);
//! - backward filter `(x, dy) -> dw` (first-order gradients only).
//!
//! f32 or bf16 (`[experiment] precision`: bf16 tensors, f32 sums on tensor cores), groups
//! of 1 and contiguous operands (the callers check and fall back). The f32 math is
//! fp32 FMA (no TF32), though cuDNN may pick Winograd or FFT algorithms, whose rounding
//! differs more from the CPU's than a direct sum: runner-parity's tolerance (1e-4 relative)
//! is the check. Backward-data and backward-filter algorithms may add with atomics, so two
//! runs can differ in the last bits, as PyTorch's defaults do. `RUNNER_CUDNN_TF32=1` (read once)
//! lets cuDNN use TF32 tensor cores, PyTorch's default for convolutions, for measuring the
//! difference; not a user setting.

use candle_core::{bail, CpuStorage, CudaStorage, CustomOp2, Layout, Result, Shape, Tensor};

use super::conv::ConvGeom;

/// Which of cuDNN's three convolution calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Forward,
    BackwardData,
    BackwardFilter,
}

/// One convolution, `x [n, c, h, w]` by `w [o, c, kh, kw]` to `y [n, o, oh, ow]`, whichever
/// direction runs it: the key of the kept descriptors and algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConvShapes {
    pub x: [usize; 4],
    pub w: [usize; 4],
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
}

impl ConvShapes {
    /// The shapes of `x` by `w` with `g`; an error for groups, a channel mismatch or a
    /// kernel larger than the padded input.
    pub fn new(x: [usize; 4], w: [usize; 4], g: ConvGeom) -> Result<Self> {
        if x.contains(&0) || w.contains(&0) {
            bail!("runner cudnn conv2d: x {x:?}, w {w:?}: an empty dimension");
        }
        if g.groups != 1 || x[1] != w[1] || g.stride == 0 || g.dilation == 0 {
            bail!("runner cudnn conv2d: x {x:?}, w {w:?}, {g:?}: not a convolution of groups 1");
        }
        let s = Self { x, w, stride: g.stride, padding: g.padding, dilation: g.dilation };
        for (size, k) in [(x[2], w[2]), (x[3], w[3])] {
            if size + 2 * g.padding < g.dilation * (k - 1) + 1 {
                bail!("runner cudnn conv2d: x {x:?}, w {w:?}, {g:?}: the kernel is larger than the padded input");
            }
        }
        Ok(s)
    }

    /// `y`'s dims: `[n, o, (h + 2p - d (k - 1) - 1) / s + 1, ...]`, PyTorch's formula.
    pub fn y(&self) -> [usize; 4] {
        let out = |size: usize, k: usize| (size + 2 * self.padding - self.dilation * (k - 1) - 1) / self.stride + 1;
        [self.x[0], self.w[0], out(self.x[2], self.w[2]), out(self.x[3], self.w[3])]
    }

    /// The dims of a direction's two operands and its result.
    #[cfg_attr(not(feature = "cudnn"), allow(dead_code))] // the CUDA calls' and the tests'
    pub fn operands(&self, d: Direction) -> ([usize; 4], [usize; 4], [usize; 4]) {
        match d {
            Direction::Forward => (self.x, self.w, self.y()),
            Direction::BackwardData => (self.y(), self.w, self.x),
            Direction::BackwardFilter => (self.x, self.y(), self.w),
        }
    }
}

/// The cuDNN calls and the state kept between them (the cuDNN build only).
#[cfg(feature = "cudnn")]
mod dnn {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::sync::Arc;

    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::cudnn::{
        sys, ConvBackwardData, ConvBackwardFilter, ConvDescriptor, ConvForward, Cudnn, CudnnDataType, FilterDescriptor,
        TensorDescriptor,
    };
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr};
    use candle_core::cuda_backend::{CudaDType, CudaDevice, DeviceId};
    use candle_core::{bail, CudaStorage, DType, Layout, Result, Shape};

    use super::{ConvShapes, Direction};

    /// Whether `RUNNER_CUDNN_TF32=1` asked for TF32 math (above).
    fn tf32() -> bool {
        static TF32: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *TF32.get_or_init(|| std::env::var("RUNNER_CUDNN_TF32").as_deref() == Ok("1"))
    }

    /// The element types cuDNN runs here: f32, and bf16 (`[experiment] precision`) with f32
    /// sums on tensor cores (cuDNN's PSEUDO_BFLOAT16_CONFIG: bf16 tensors, an f32 convolution;
    /// compute capability 8.0 or newer).
    trait Elem: CudnnDataType + CudaDType + DeviceRepr {
        const ONE: Self;
        const ZERO: Self;
        /// FMA for f32 (TF32 only when asked); tensor cores for bf16.
        fn math() -> sys::cudnnMathType_t;
        fn plans(plans: &mut Plans) -> &mut HashMap<(Direction, ConvShapes), Plan<Self>>;
    }

    impl Elem for f32 {
        const ONE: Self = 1.0;
        const ZERO: Self = 0.0;
        fn math() -> sys::cudnnMathType_t {
            if tf32() {
                sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH
            } else {
                sys::cudnnMathType_t::CUDNN_FMA_MATH
            }
        }
        fn plans(plans: &mut Plans) -> &mut HashMap<(Direction, ConvShapes), Plan<Self>> {
            &mut plans.f32
        }
    }

    impl Elem for half::bf16 {
        const ONE: Self = half::bf16::ONE;
        const ZERO: Self = half::bf16::ZERO;
        fn math() -> sys::cudnnMathType_t {
            sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH
        }
        fn plans(plans: &mut Plans) -> &mut HashMap<(Direction, ConvShapes), Plan<Self>> {
            &mut plans.bf16
        }
    }

    /// Descriptors and the algorithm of one convolution in one direction, tensors of `T`.
    struct Plan<T: Elem> {
        x: TensorDescriptor<T>,
        w: FilterDescriptor<T>,
        y: TensorDescriptor<T>,
        conv: ConvDescriptor<f32>,
        algo: Algo,
        workspace: usize,
    }

    #[derive(Clone, Copy)]
    enum Algo {
        Forward(sys::cudnnConvolutionFwdAlgo_t),
        BackwardData(sys::cudnnConvolutionBwdDataAlgo_t),
        BackwardFilter(sys::cudnnConvolutionBwdFilterAlgo_t),
    }

    /// The kept plans by element type.
    #[derive(Default)]
    struct Plans {
        f32: HashMap<(Direction, ConvShapes), Plan<f32>>,
        bf16: HashMap<(Direction, ConvShapes), Plan<half::bf16>>,
    }

    /// One thread's cuDNN state for one device.
    struct State {
        handle: Arc<Cudnn>,
        plans: Plans,
        workspace: Option<CudaSlice<u8>>,
    }

    // cuDNN handles and descriptors are neither Send nor Sync: one set per thread, as candle's.
    thread_local! {
        static STATE: RefCell<HashMap<DeviceId, State>> = RefCell::new(HashMap::new());
    }

    fn as_i32(dims: [usize; 4]) -> Result<[i32; 4]> {
        let mut out = [0i32; 4];
        for (o, d) in out.iter_mut().zip(dims) {
            *o = i32::try_from(d).map_err(|_| candle_core::Error::Msg(format!("runner cudnn: dim {d} over i32")))?;
        }
        Ok(out)
    }

    impl<T: Elem> Plan<T> {
        fn new(handle: &Arc<Cudnn>, d: Direction, s: ConvShapes) -> Result<Self> {
            let nchw = sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
            let (p, st, dl) = (s.padding as i32, s.stride as i32, s.dilation as i32);
            let mut conv = handle.create_conv2d::<f32>(
                [p, p],
                [st, st],
                [dl, dl],
                sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
            )?;
            conv.set_math_type(T::math())?;
            let x = handle.create_4d_tensor::<T>(nchw, as_i32(s.x)?)?;
            let w = handle.create_4d_filter::<T>(nchw, as_i32(s.w)?)?;
            let y = handle.create_4d_tensor::<T>(nchw, as_i32(s.y())?)?;
            let (algo, workspace) = match d {
                Direction::Forward => {
                    let op = ConvForward { conv: &conv, x: &x, w: &w, y: &y };
                    let a = op.pick_algorithm()?;
                    (Algo::Forward(a), op.get_workspace_size(a)?)
                }
                Direction::BackwardData => {
                    let op = ConvBackwardData { conv: &conv, dx: &x, w: &w, dy: &y };
                    let a = op.pick_algorithm()?;
                    (Algo::BackwardData(a), op.get_workspace_size(a)?)
                }
                Direction::BackwardFilter => {
                    let op = ConvBackwardFilter { conv: &conv, x: &x, dw: &w, dy: &y };
                    let a = op.pick_algorithm()?;
                    (Algo::BackwardFilter(a), op.get_workspace_size(a)?)
                }
            };
            Ok(Self { x, w, y, conv, algo, workspace })
        }
    }

    /// Runs direction `d` of the convolution `s`: `out = op(a, b)` with the operands of
    /// [`ConvShapes::operands`], all contiguous `T` on `dev`.
    fn launch<T: Elem>(
        dev: &CudaDevice,
        d: Direction,
        s: ConvShapes,
        a: &CudaView<T>,
        b: &CudaView<T>,
        out: &mut CudaSlice<T>,
    ) -> Result<()> {
        STATE.with(|state| {
            let mut state = state.borrow_mut();
            let st = match state.entry(dev.id()) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(State { handle: Cudnn::new(dev.cuda_stream())?, plans: Plans::default(), workspace: None })
                }
            };
            let State { handle, plans, workspace } = st;
            let plan = match T::plans(plans).entry((d, s)) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(Plan::new(handle, d, s)?),
            };
            let needed = plan.workspace;
            if needed > 0 && workspace.as_ref().is_none_or(|w| w.len() < needed) {
                // Stream-ordered: the old one is freed after the calls already queued that use it.
                // SAFETY: cuDNN writes its workspace before reading it.
                *workspace = Some(unsafe { dev.alloc::<u8>(needed)? });
            }
            let ws = if needed > 0 { workspace.as_mut() } else { None };
            let one = (T::ONE, T::ZERO);
            // SAFETY: the descriptors were made from `s`, whose operand dims the caller checked
            // against the views' element counts, all `T` and contiguous.
            unsafe {
                match plan.algo {
                    Algo::Forward(algo) => ConvForward { conv: &plan.conv, x: &plan.x, w: &plan.w, y: &plan.y }
                        .launch(algo, ws, one, a, b, out)?,
                    Algo::BackwardData(algo) => {
                        ConvBackwardData { conv: &plan.conv, dx: &plan.x, w: &plan.w, dy: &plan.y }
                            .launch(algo, ws, one, out, b, a)?
                    }
                    Algo::BackwardFilter(algo) => {
                        ConvBackwardFilter { conv: &plan.conv, x: &plan.x, dw: &plan.w, dy: &plan.y }
                            .launch(algo, ws, one, a, out, b)?
                    }
                }
            }
            Ok(())
        })
    }

    /// A contiguous view of `s` as `T` from `l`'s offset, holding `dims`' elements.
    fn view<'a, T: Elem>(s: &'a CudaStorage, l: &Layout, dims: [usize; 4], what: &str) -> Result<CudaView<'a, T>> {
        if !l.is_contiguous() || l.dims() != dims {
            bail!(
                "runner cudnn: {what} is {:?} (contiguous: {}), expected contiguous {dims:?}",
                l.dims(),
                l.is_contiguous()
            );
        }
        let n: usize = dims.iter().product();
        Ok(s.as_cuda_slice::<T>()?.slice(l.start_offset()..l.start_offset() + n))
    }

    fn run<T: Elem>(
        d: Direction,
        s: ConvShapes,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (a, b, out) = s.operands(d);
        let dev = s1.device();
        let (a, b) = (view::<T>(s1, l1, a, "the first operand")?, view::<T>(s2, l2, b, "the second operand")?);
        // SAFETY: cuDNN writes every element of the result (beta = 0).
        let mut y = unsafe { dev.alloc::<T>(out.iter().product())? };
        launch(dev, d, s, &a, &b, &mut y)?;
        Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), Shape::from(out.to_vec())))
    }

    /// Direction `d` of `s` on two CUDA storages of one dtype, f32 or bf16: the result's
    /// storage and shape.
    pub(super) fn forward(
        d: Direction,
        s: ConvShapes,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        match (s1.dtype(), s2.dtype()) {
            (DType::F32, DType::F32) => run::<f32>(d, s, s1, l1, s2, l2),
            (DType::BF16, DType::BF16) => run::<half::bf16>(d, s, s1, l1, s2, l2),
            (a, b) => bail!("runner cudnn: operands of {a:?} and {b:?}; f32 or bf16, one dtype"),
        }
    }
}

/// The custom op of one direction: `apply_op2(a, b)` with [`ConvShapes::operands`]' order.
struct ConvOp(Direction, ConvShapes);

impl CustomOp2 for ConvOp {
    fn name(&self) -> &'static str {
        match self.0 {
            Direction::Forward => "runner-cudnn-conv2d",
            Direction::BackwardData => "runner-cudnn-conv2d-backward-data",
            Direction::BackwardFilter => "runner-cudnn-conv2d-backward-filter",
        }
    }

    /// cuDNN runs on CUDA tensors only; while `candle_core::counting` counts the cuDNN
    /// build's step on the CPU, runner's CPU kernels compute what the call computes (the
    /// count records one call and its output).
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        use super::conv::{Conv2dGradInput, Conv2dGradWeight, Conv2dOp};
        if !candle_core::counting::enabled() {
            bail!("{}: cuDNN runs on CUDA tensors only", self.name())
        }
        let s = self.1;
        let g = ConvGeom { stride: s.stride, padding: s.padding, dilation: s.dilation, groups: 1 };
        match self.0 {
            Direction::Forward => Conv2dOp(g).cpu_fwd(s1, l1, s2, l2),
            // (dy, w) -> dx: the CPU op takes (w, dy).
            Direction::BackwardData => Conv2dGradInput(g, Shape::from(s.x.to_vec())).cpu_fwd(s2, l2, s1, l1),
            Direction::BackwardFilter => Conv2dGradWeight(g, Shape::from(s.w.to_vec())).cpu_fwd(s1, l1, s2, l2),
        }
    }

    #[cfg(feature = "cudnn")]
    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> Result<(CudaStorage, Shape)> {
        dnn::forward(self.0, self.1, s1, l1, s2, l2)
    }

    #[cfg(not(feature = "cudnn"))]
    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        bail!("{}: this runner was built without cuDNN (--features cudnn)", self.name())
    }

    fn bwd(&self, a: &Tensor, b: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let s = self.1;
        match self.0 {
            // y = conv(x, w): dx = backward data (dy, w), dw = backward filter (x, dy).
            Direction::Forward => {
                let dx = if a.track_op() { Some(run(Direction::BackwardData, s, grad, b)?) } else { None };
                let dw = if b.track_op() { Some(run(Direction::BackwardFilter, s, a, grad)?) } else { None };
                Ok((dx, dw))
            }
            // dx = conv^T(dy, w), bilinear: d(dy) = conv(g, w), dw = backward filter (g, dy).
            Direction::BackwardData => {
                let ddy = if a.track_op() { Some(run(Direction::Forward, s, grad, b)?) } else { None };
                let dw = if b.track_op() { Some(run(Direction::BackwardFilter, s, grad, a)?) } else { None };
                Ok((ddy, dw))
            }
            Direction::BackwardFilter => bail!("runner-cudnn-conv2d-backward-filter: no second-order gradient"),
        }
    }
}

/// Direction `d` of the convolution `s` on `a` and `b` (contiguous copies where needed).
pub fn run(d: Direction, s: ConvShapes, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    a.contiguous()?.apply_op2(&b.contiguous()?, ConvOp(d, s))
}

/// Whether cuDNN can run this convolution here: a cuDNN build, f32 or bf16 CUDA tensors,
/// groups of 1.
/// While counting with `RUNNER_CONV_PATH=cudnn`, the cuDNN build's step is counted: its
/// calls run runner's CPU kernels.
pub fn applies(x: &Tensor, g: ConvGeom) -> bool {
    use candle_core::DType::{BF16, F32};
    let counted = candle_core::counting::enabled() && super::conv_dev::conv_path() == super::conv_dev::ConvPath::Cudnn;
    ((cfg!(feature = "cudnn") && x.device().is_cuda()) || counted) && matches!(x.dtype(), F32 | BF16) && g.groups == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Output sizes against PyTorch's formula worked by hand: 32 + 2 - 2 - 1 = 31, / 1 + 1
    /// = 32 (3x3 same); AlexNet's stem 224 + 4 - 10 - 1 = 217, / 4 + 1 = 55; 5x5 dilation 2
    /// on 9 with padding 4: 9 + 8 - 8 - 1 = 8, + 1 = 9; stride 2 on 9, 3x3 padding 1: 8 / 2 + 1 = 5.
    #[test]
    fn output_sizes() {
        let g = |stride, padding, dilation| ConvGeom { stride, padding, dilation, groups: 1 };
        let y = |x, w, geom| ConvShapes::new(x, w, geom).unwrap().y();
        assert_eq!(y([256, 64, 32, 32], [64, 64, 3, 3], g(1, 1, 1)), [256, 64, 32, 32]);
        assert_eq!(y([2, 3, 224, 224], [64, 3, 11, 11], g(4, 2, 1)), [2, 64, 55, 55]);
        assert_eq!(y([1, 2, 9, 9], [3, 2, 5, 5], g(1, 4, 2)), [1, 3, 9, 9]);
        assert_eq!(y([2, 3, 9, 9], [4, 3, 3, 3], g(2, 1, 1)), [2, 4, 5, 5]);
    }

    /// Each direction's operands and result: forward (x, w) -> y, backward data (dy, w) ->
    /// dx, backward filter (x, dy) -> dw.
    #[test]
    fn operands_by_direction() {
        let s = ConvShapes::new([2, 3, 9, 9], [4, 3, 3, 3], ConvGeom { stride: 2, padding: 1, ..Default::default() })
            .unwrap();
        let (x, w, y) = ([2, 3, 9, 9], [4, 3, 3, 3], [2, 4, 5, 5]);
        assert_eq!(s.operands(Direction::Forward), (x, w, y));
        assert_eq!(s.operands(Direction::BackwardData), (y, w, x));
        assert_eq!(s.operands(Direction::BackwardFilter), (x, y, w));
    }

    #[test]
    fn refuses_what_it_cannot_run() {
        let e = |x, w, g| ConvShapes::new(x, w, g).unwrap_err().to_string();
        assert!(e([1, 4, 8, 8], [4, 2, 3, 3], ConvGeom { groups: 2, ..Default::default() }).contains("groups 1"));
        assert!(e([1, 3, 8, 8], [4, 2, 3, 3], ConvGeom::default()).contains("groups 1"));
        assert!(e([1, 3, 4, 4], [4, 3, 7, 7], ConvGeom::default()).contains("larger than the padded input"));
        assert!(e([1, 3, 4, 4], [4, 3, 0, 0], ConvGeom::default()).contains("an empty dimension"));
        // The CPU refuses at once, naming the op.
        let x = Tensor::zeros((1, 3, 8, 8), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        let w = Tensor::zeros((4, 3, 3, 3), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        let s = ConvShapes::new([1, 3, 8, 8], [4, 3, 3, 3], ConvGeom::default()).unwrap();
        let err = run(Direction::Forward, s, &x, &w).unwrap_err().to_string();
        assert!(err.contains("runner-cudnn-conv2d: cuDNN runs on CUDA tensors only"), "{err}");
        assert!(!applies(&x, ConvGeom::default()));
    }
}
