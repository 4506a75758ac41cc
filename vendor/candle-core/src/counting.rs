//! runner's patch (PATCH.md): what a sequence of ops would issue on candle's CUDA backend,
//! counted while the same ops run on the CPU.
//!
//! Between [`start`] and [`stop`], on the thread that called them, every op on a CPU
//! storage is recorded with the cost its
//! CUDA twin has in `cuda_backend/` (this crate's own code, read op by op): kernel launches,
//! memsets, device-to-device copies, host-to-device copies (data, and the dims/strides
//! that a kernel over a non-contiguous layout uploads), device-to-host reads (each a host
//! sync) and device allocations. Off (the default), each op pays one relaxed atomic load.
//!
//! The model is of f32 tensors on one stream, candle's kernels without cuDNN. It counts
//! calls, not time: a launch of 16 elements and one of 16 million count the same.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

use crate::Layout;

static CACHE_PARAMS: AtomicBool = AtomicBool::new(false);

/// What each custom op issues on a GPU, by name, as its owner declared it ([`declare`]).
static DECLARED: RwLock<Option<HashMap<&'static str, Cost>>> = RwLock::new(None);

thread_local! {
    // Per thread: a count on one thread leaves the ops of every other thread (other tests
    // of the same process) on their usual path.
    static ON: Cell<bool> = const { Cell::new(false) };
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
}

/// What one op (or a sum of ops) issues on the GPU.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    /// Kernel launches, cuBLAS calls included (one each).
    pub launches: u64,
    /// `cuMemsetD8Async` calls (zeroed allocations).
    pub memsets: u64,
    /// Device-to-device copies (`cuMemcpyDtoDAsync`).
    pub dtod: u64,
    /// Host-to-device copies: tensor data and uploaded dims/strides.
    pub h2d: u64,
    /// Of `h2d`, the dims/strides uploads (what [`cache_params`] removes after first use).
    pub h2d_params: u64,
    /// Device-to-host reads; each waits for the stream (a host sync).
    pub d2h: u64,
    /// Device allocations (`cuMemAllocAsync`), uploads' buffers included.
    pub allocs: u64,
}

impl Cost {
    /// `launches` kernels writing `allocs` new buffers.
    pub const fn launch(launches: u64, allocs: u64) -> Cost {
        Cost { launches, memsets: 0, dtod: 0, h2d: 0, h2d_params: 0, d2h: 0, allocs }
    }
}

impl std::ops::AddAssign for Cost {
    fn add_assign(&mut self, o: Cost) {
        self.launches += o.launches;
        self.memsets += o.memsets;
        self.dtod += o.dtod;
        self.h2d += o.h2d;
        self.h2d_params += o.h2d_params;
        self.d2h += o.d2h;
        self.allocs += o.allocs;
    }
}

/// The counts of a window, by op name (`unary:relu`, `matmul`, `reduce:sum`, ...).
#[derive(Debug, Default, Clone)]
pub struct Counts {
    pub by_op: BTreeMap<String, (u64, Cost)>,
}

impl Counts {
    /// The sum over all ops.
    pub fn total(&self) -> Cost {
        let mut t = Cost::default();
        for (_, c) in self.by_op.values() {
            t += *c;
        }
        t
    }
}

struct State {
    counts: Counts,
    /// The dims/strides vectors uploaded so far, when they are cached.
    params_seen: HashSet<Vec<usize>>,
}

/// Starts counting on this thread (from zero). Its ops on CPU storages are recorded until
/// [`stop`].
pub fn start() {
    STATE.with(|s| *s.borrow_mut() = Some(State { counts: Counts::default(), params_seen: HashSet::new() }));
    ON.with(|on| on.set(true));
}

/// Whether this thread counts: runner's ops then take the path they take on a GPU.
#[inline]
pub fn enabled() -> bool {
    ON.with(|on| on.get())
}

/// The counts since the last [`start`] or [`take`], which starts the next window; counting
/// goes on.
pub fn take() -> Counts {
    STATE.with(|s| s.borrow_mut().as_mut().map(|st| std::mem::take(&mut st.counts)).unwrap_or_default())
}

/// Stops counting on this thread and returns the counts of the last window.
pub fn stop() -> Counts {
    ON.with(|on| on.set(false));
    STATE.with(|s| s.borrow_mut().take().map(|s| s.counts).unwrap_or_default())
}

/// Whether the dims/strides a kernel over a non-contiguous layout needs are uploaded once per
/// distinct vector and kept (`SlicePtrOrNull::params_from_vec`), instead of on every launch.
/// Off by default, as upstream.
pub fn cache_params(on: bool) {
    CACHE_PARAMS.store(on, Ordering::SeqCst);
}

pub fn params_cached() -> bool {
    CACHE_PARAMS.load(Ordering::Relaxed)
}

/// Declares what the custom op `name` issues on a GPU per call (its CUDA forward), where it
/// differs from one launch and one output: its CPU forward, which a count runs, says
/// nothing of its GPU twin.
pub fn declare(name: &'static str, cost: Cost) {
    // A poisoned lock still holds a whole map: a declaration is one insert.
    let mut declared = DECLARED.write().unwrap_or_else(|e| e.into_inner());
    declared.get_or_insert_with(HashMap::new).insert(name, cost);
}

/// Records `cost` for `op` when this thread counts: for work that reaches the GPU without
/// a candle op (a kernel launched on storages directly).
pub fn add_op(op: &str, cost: Cost) {
    if enabled() {
        add(op.to_string(), cost)
    }
}

/// Runs `f` with counting off on this thread: a CPU reference computing what a counted
/// kernel computes (its cost recorded with [`add_op`]).
pub fn paused<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            ON.with(|on| on.set(self.0));
        }
    }
    let _restore = Restore(ON.with(|on| on.replace(false)));
    f()
}

/// Records what `f` gives (the op's name and cost) when counting is on and `cpu` (the op
/// ran on a CPU storage).
#[inline]
pub(crate) fn record(cpu: bool, f: impl FnOnce() -> (String, Cost)) {
    if cpu && enabled() {
        let (op, cost) = f();
        add(op, cost)
    }
}

fn add(op: String, cost: Cost) {
    STATE.with(|s| {
        if let Some(st) = s.borrow_mut().as_mut() {
            let e = st.counts.by_op.entry(op).or_default();
            e.0 += 1;
            e.1 += cost;
        }
    })
}

/// The upload of one dims/strides vector (`params_from_vec`): an allocation and a copy,
/// or nothing when it is cached and was seen.
fn params_upload(params: Vec<usize>) -> Cost {
    if params_cached() {
        let seen = STATE.with(|s| s.borrow_mut().as_mut().is_some_and(|st| !st.params_seen.insert(params)));
        if seen {
            return Cost::default();
        }
    }
    Cost { h2d: 1, h2d_params: 1, allocs: 1, ..Cost::default() }
}

/// `params_from_layout`: nothing for a contiguous layout, else its dims and strides.
fn layout_params(l: &Layout) -> Cost {
    if l.is_contiguous() {
        Cost::default()
    } else {
        params_upload([l.dims(), l.stride()].concat())
    }
}

/// One element-wise kernel over `layouts` (unary, affine, powf, elu, to_dtype, const_set:
/// one layout; binary and cmp: two), writing a fresh output unless `in_place`. Binary
/// kernels upload both layouts together when either is strided (`[dims, lhs strides, rhs
/// strides]`): a broadcast operand always is.
pub(crate) fn elementwise(layouts: &[&Layout], in_place: bool) -> Cost {
    let mut c = Cost::launch(1, if in_place { 0 } else { 1 });
    match layouts {
        [l] => c += layout_params(l),
        [first, ..] => {
            if !layouts.iter().all(|l| l.is_contiguous()) {
                let mut p = first.dims().to_vec();
                for l in layouts {
                    p.extend_from_slice(l.stride());
                }
                c += params_upload(p);
            }
        }
        [] => {}
    }
    c
}

/// `where_cond`: one launch, its output, and `[dims, three strides]` uploaded even when all
/// three are contiguous.
pub(crate) fn where_cond(layouts: [&Layout; 3]) -> Cost {
    let mut p = layouts[0].dims().to_vec();
    for l in layouts {
        p.extend_from_slice(l.stride());
    }
    let mut c = Cost::launch(1, 1);
    c += params_upload(p);
    c
}

/// A reduction (`FastReduce`): its dims and strides are always uploaded (the reduced dims
/// moved last), one launch, one output.
pub(crate) fn reduce(l: &Layout, sum_dims: &[usize]) -> Cost {
    let (mut dims, mut strides) = (Vec::new(), Vec::new());
    for (i, (&d, &s)) in l.dims().iter().zip(l.stride()).enumerate() {
        if !sum_dims.contains(&i) {
            dims.push(d);
            strides.push(s);
        }
    }
    for &i in sum_dims {
        dims.push(l.dims()[i]);
        strides.push(l.stride()[i]);
    }
    let mut c = Cost::launch(1, 1);
    c += params_upload([dims, strides].concat());
    c
}

/// A strided copy into an existing buffer (`copy_strided_src`): a dtod copy when the source
/// is contiguous, else one launch over its layout.
pub(crate) fn copy_strided(l: &Layout) -> Cost {
    if l.is_contiguous() {
        Cost { dtod: 1, ..Cost::default() }
    } else {
        let mut c = Cost::launch(1, 0);
        c += layout_params(l);
        c
    }
}

/// `copy2d`: one launch, no upload.
pub(crate) fn copy2d() -> Cost {
    Cost::launch(1, 0)
}

/// A gather-like kernel (gather, scatter, index_add): one launch, an output unless it
/// writes in place; no upload (its operands must be contiguous).
pub(crate) fn indexed(in_place: bool) -> Cost {
    Cost::launch(1, if in_place { 0 } else { 1 })
}

/// `index_select`: one launch, its output, the index's dims and strides always uploaded.
pub(crate) fn index_select(ids: &Layout) -> Cost {
    let mut c = Cost::launch(1, 1);
    c += params_upload([ids.dims(), ids.stride()].concat());
    c
}

/// `try_clone`: a new buffer and a device-to-device copy of the whole source.
pub(crate) fn clone() -> Cost {
    Cost { dtod: 1, allocs: 1, ..Cost::default() }
}

/// `index_add`: a copy of the destination into a new buffer, then the indexed kernel.
pub(crate) fn index_add(dst: &Layout) -> Cost {
    let mut c = Cost::launch(0, 1);
    c += copy_strided(dst);
    c += indexed(true);
    c
}

/// `matmul`: one cuBLAS strided-batched call and its output (candle errors on layouts
/// cuBLAS cannot take rather than copying).
pub(crate) fn matmul() -> Cost {
    Cost::launch(1, 1)
}

/// conv2d without cuDNN: im2col (one launch, the column buffer, the input's dims and
/// strides always uploaded), the product, and the `[b, h, w, c]` -> `[b, c, h, w]` copy into a fresh
/// output (a strided copy, its layout uploaded); a non-contiguous kernel is copied first.
pub(crate) fn conv2d_im2col(input: &Layout, kernel: &Layout, out_dims: [usize; 4]) -> Cost {
    let mut c = Cost::launch(1, 1); // im2col
    c += params_upload([input.dims(), input.stride()].concat());
    if !kernel.is_contiguous() {
        c += Cost::launch(0, 1);
        c += copy_strided(kernel);
    }
    c += matmul();
    let [b, n, h, w] = out_dims;
    let res_l = Layout::contiguous((b, h, w, n)).transpose(1, 2).and_then(|l| l.transpose(1, 3));
    c += Cost::launch(0, 1);
    if let Ok(l) = res_l {
        c += copy_strided(&l);
    }
    c
}

/// A direct-loop kernel with its layout uploaded (conv_transpose2d, pooling, upsampling).
pub(crate) fn direct(input: &Layout) -> Cost {
    let mut c = Cost::launch(1, 1);
    c += params_upload([input.dims(), input.stride()].concat());
    c
}

/// A custom op: what [`declare`] says of `name`, else one launch and an output.
pub(crate) fn custom(name: &str) -> Cost {
    let declared = DECLARED.read().unwrap_or_else(|e| e.into_inner());
    declared.as_ref().and_then(|d| d.get(name).copied()).unwrap_or(Cost::launch(1, 1))
}

/// A new device buffer: `zeroed` with a memset after the allocation.
pub(crate) fn alloc(zeroed: bool) -> Cost {
    Cost { allocs: 1, memsets: zeroed as u64, ..Cost::default() }
}

/// A host-to-device upload of tensor data: an allocation and a copy.
pub(crate) fn upload() -> Cost {
    Cost { h2d: 1, allocs: 1, ..Cost::default() }
}

/// A device-to-host read: a copy, which waits for the stream.
pub(crate) fn read() -> Cost {
    Cost { d2h: 1, ..Cost::default() }
}
