// runner's own CUDA kernels (src/ops/fused/mod.rs; launched by fused/gpu.rs): batch norm's
// training forward and backward with a fused (leaky) ReLU, ReLU and add + ReLU with their
// gradient, pooling, and the optimizers' updates, each one launch where candle's ops took several. Compiled to PTX by
// build.rs (nvcc, `--features cuda`); each has a CPU reference in fused/mod.rs, which the
// tests and runner-parity compare with. f32 tensors, contiguous, NCHW.

#include <stdint.h>

// Threads of a per-channel block (fused/gpu.rs's `per_channel` launches this many): one
// block per channel, so a layer of 16 channels keeps 16 SMs busy; 1024 threads each hide what
// latency they can.
#define CHANNEL_BLOCK 1024

// Sums `v` over the block (blockDim.x threads, a power of two, at most CHANNEL_BLOCK);
// every thread gets the total.
__device__ double block_sum(double v, double* shared) {
    int t = threadIdx.x;
    shared[t] = v;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) shared[t] += shared[t + s];
        __syncthreads();
    }
    double total = shared[0];
    __syncthreads();
    return total;
}

// Per channel (one block each): out[ch] = mean, out[c + ch] = biased variance over the
// n * hw values of channel ch, the variance of the deviations from the mean (two passes,
// double sums, kept in double), as the CPU's `stats`.
extern "C" __global__ void runner_bn_stats_f32(const float* x, double* out, int n, int c, int hw) {
    __shared__ double shared[CHANNEL_BLOCK];
    int ch = blockIdx.x;
    int m = n * hw;
    double s = 0.0;
    for (int i = threadIdx.x; i < m; i += blockDim.x) {
        int b = i / hw, p = i - b * hw;
        s += (double)x[((long)b * c + ch) * hw + p];
    }
    double mean = block_sum(s, shared) / (double)m;
    float meanf = (float)mean;
    double q = 0.0;
    for (int i = threadIdx.x; i < m; i += blockDim.x) {
        int b = i / hw, p = i - b * hw;
        float d = x[((long)b * c + ch) * hw + p] - meanf;
        q += (double)(d * d);
    }
    double var = block_sum(q, shared) / (double)m;
    if (threadIdx.x == 0) {
        out[ch] = mean;
        out[c + ch] = var;
    }
}

// y = scale * (x - mean) + beta with scale = gamma / sqrt(var + eps), then a ReLU
// (has_act, slope 0) or leaky ReLU (slope). `stats`: [mean (c), var (c)], double.
extern "C" __global__ void runner_bn_train_f32(const float* x, const double* stats, const float* gamma,
                                               const float* beta, float* y, long total, int c, int hw,
                                               double eps, int has_act, float slope) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        int ch = (int)((i / hw) % c);
        float scale = (float)((double)gamma[ch] / sqrt(stats[c + ch] + eps));
        float v = scale * (x[i] - (float)stats[ch]) + beta[ch];
        // As the CPU: a ReLU gives +0 (not v * 0: -0, or NaN for a NaN), leaky v * slope.
        if (has_act && !(v > 0.0f)) v = slope == 0.0f ? 0.0f : v * slope;
        y[i] = v;
    }
}

// dy through the fused activation: the normalised value recomputed as the forward did.
__device__ float through_act(float x, float dy, float mean, float scale, float beta, int has_act, float slope) {
    if (!has_act) return dy;
    float v = scale * (x - mean) + beta;
    if (v > 0.0f) return dy;
    return slope == 0.0f ? 0.0f : dy * slope;
}

// Backward, first pass (one block per channel): sdy = sum dy', sdyx = sum dy' (x - mean) /
// sqrt(var + eps) over the channel, dy' being dy through the activation. Writes
// dgamma = sdyx to out[total + ch] and dbeta = sdy to out[total + c + ch].
extern "C" __global__ void runner_bn_grad_sums_f32(const float* x, const float* dy, const double* stats,
                                                   const float* gamma, const float* beta, float* out,
                                                   int n, int c, int hw, double eps, int has_act, float slope) {
    __shared__ double shared[CHANNEL_BLOCK];
    int ch = blockIdx.x;
    int m = n * hw;
    float mean = (float)stats[ch];
    double inv = 1.0 / sqrt(stats[c + ch] + eps);
    float scale = (float)((double)gamma[ch] / sqrt(stats[c + ch] + eps));
    double s = 0.0, q = 0.0;
    for (int i = threadIdx.x; i < m; i += blockDim.x) {
        int b = i / hw, p = i - b * hw;
        long k = ((long)b * c + ch) * hw + p;
        float d = through_act(x[k], dy[k], mean, scale, beta[ch], has_act, slope);
        s += (double)d;
        q += (double)(d * (x[k] - mean));
    }
    double sdy = block_sum(s, shared);
    double sdyx = block_sum(q, shared) * inv;
    if (threadIdx.x == 0) {
        long total = (long)m * c;
        out[total + ch] = (float)sdyx;
        out[total + c + ch] = (float)sdy;
    }
}

// Backward, second pass: dx = k dy' + k1 (x - mean) + k0 with k = gamma / sqrt(var + eps),
// k1 = -k inv sdyx / m, k0 = -k sdy / m (the sums from the first pass, in out's tail, as
// f32: the CPU keeps them in f64 here, a rounding apart).
extern "C" __global__ void runner_bn_grad_dx_f32(const float* x, const float* dy, const double* stats,
                                                 const float* gamma, const float* beta, float* out, int n,
                                                 int c, int hw, double eps, int has_act, float slope) {
    long total = (long)n * c * hw;
    double m = (double)n * hw;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        int ch = (int)((i / hw) % c);
        float mean = (float)stats[ch];
        double inv = 1.0 / sqrt(stats[c + ch] + eps);
        double k = (double)gamma[ch] * inv;
        float k1 = (float)(-k * inv * (double)out[total + ch] / m);
        float k0 = (float)(-k * (double)out[total + c + ch] / m);
        float scale = (float)((double)gamma[ch] / sqrt(stats[c + ch] + eps));
        float d = through_act(x[i], dy[i], mean, scale, beta[ch], has_act, slope);
        out[i] = (float)k * d + k1 * (x[i] - mean) + k0;
    }
}

// PyTorch's running statistics, in place, one thread per channel (`mean`, `var`: the
// batch's in double, the variance biased): running_mean = running_mean keep + mean momentum,
// running_var = running_var keep + (var unbias) momentum, keep = 1 - momentum, unbias =
// n / (n - 1); the order of the CPU's candle ops (ops/batchnorm.rs).
extern "C" __global__ void runner_bn_running_f32(float* rm, float* rv, const double* mean, const double* var, int c,
                                                 float keep, float momentum, double unbias) {
    int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch < c) {
        rm[ch] = rm[ch] * keep + (float)mean[ch] * momentum;
        rv[ch] = rv[ch] * keep + (float)(var[ch] * unbias) * momentum;
    }
}

// Pooling's window of output (oy, ox), as pool/mod.rs's `Dims::window`: rows y0..y1 and
// columns x0..x1 inside the input, and average pooling's divisor (the window clipped to
// the padded input).
__device__ void pool_window(int oy, int ox, int h, int w, int k, int s, int p, int* y0, int* y1, int* x0, int* x1,
                            int* divisor) {
    int ys = oy * s - p, xs = ox * s - p;
    int ye = min(ys + k, h + p), xe = min(xs + k, w + p);
    *divisor = (ye - ys) * (xe - xs);
    *y0 = min(max(ys, 0), h);
    *y1 = min(max(ye, 0), h);
    *x0 = min(max(xs, 0), w);
    *x1 = min(max(xe, 0), w);
}

// The window's first maximum in row-major order (a NaN replaces the kept value), as the
// CPU kernel: its index in the plane.
__device__ int pool_argmax(const float* plane, int w, int y0, int y1, int x0, int x1) {
    int best = y0 * w + x0;
    for (int r = y0; r < y1; r++) {
        for (int j = r * w + x0; j < r * w + x1; j++) {
            float v = plane[j];
            if (v > plane[best] || v != v) best = j;
        }
    }
    return best;
}

// Max (is_max) or average pooling, one thread per output; the average sums in double.
extern "C" __global__ void runner_pool_f32(const float* x, float* y, long planes, int h, int w, int oh, int ow, int k,
                                           int s, int p, int is_max) {
    long total = planes * oh * ow;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        long pl = i / ((long)oh * ow);
        int oy = (int)((i / ow) % oh), ox = (int)(i % ow);
        const float* plane = x + pl * h * w;
        int y0, y1, x0, x1, divisor;
        pool_window(oy, ox, h, w, k, s, p, &y0, &y1, &x0, &x1, &divisor);
        if (is_max) {
            y[i] = plane[pool_argmax(plane, w, y0, y1, x0, x1)];
        } else {
            double sum = 0.0;
            for (int r = y0; r < y1; r++) {
                for (int j = x0; j < x1; j++) sum += (double)plane[r * w + j];
            }
            y[i] = (float)(sum / (double)divisor);
        }
    }
}

// Pooling's input gradient, one thread per input value (deterministic, no atomics): the
// sum over the windows that hold it, in the CPU kernel's order (outputs row-major), of dy
// where it is the window's first maximum (max) or dy / divisor (average).
extern "C" __global__ void runner_pool_grad_f32(const float* x, const float* dy, float* dx, long planes, int h, int w,
                                                int oh, int ow, int k, int s, int p, int is_max) {
    long total = planes * h * w;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        long pl = i / ((long)h * w);
        int iy = (int)((i / w) % h), ix = (int)(i % w);
        const float* plane = x + pl * h * w;
        const float* dys = dy + pl * oh * ow;
        // Outputs whose window (start o * s - p, length k) can hold row iy / column ix.
        int oy_lo = max(0, (iy + p - k + s) / s), oy_hi = min(oh - 1, (iy + p) / s);
        int ox_lo = max(0, (ix + p - k + s) / s), ox_hi = min(ow - 1, (ix + p) / s);
        float acc = 0.0f;
        for (int oy = oy_lo; oy <= oy_hi; oy++) {
            for (int ox = ox_lo; ox <= ox_hi; ox++) {
                int y0, y1, x0, x1, divisor;
                pool_window(oy, ox, h, w, k, s, p, &y0, &y1, &x0, &x1, &divisor);
                if (iy < y0 || iy >= y1 || ix < x0 || ix >= x1) continue;
                float g = dys[oy * ow + ox];
                if (is_max) {
                    if (pool_argmax(plane, w, y0, y1, x0, x1) == iy * w + ix) acc += g;
                } else {
                    acc += (float)((double)g / (double)divisor);
                }
            }
        }
        dx[i] = acc;
    }
}

// y = max(x, 0) (relu) or max(a + b, 0) (add_relu, b given).
extern "C" __global__ void runner_relu_f32(const float* a, const float* b, float* y, long total) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        float v = b ? a[i] + b[i] : a[i];
        y[i] = v > 0.0f ? v : 0.0f;
    }
}

// dx = dy where the ReLU's output y is positive, else 0.
extern "C" __global__ void runner_relu_grad_f32(const float* dy, const float* y, float* dx, long total) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
    }
}

// torch.optim.SGD on one parameter, in place: d = g + p wd; buf = d (first step) or
// buf momentum + d (1 - dampening); d = d + buf momentum (Nesterov) or buf; p -= d lr.
// Without momentum, p -= d lr. The CPU's update (optim.rs) in the same order.
extern "C" __global__ void runner_sgd_f32(float* p, const float* g, float* buf, long total, float lr, float momentum,
                                          float omd, float wd, int nesterov, int first) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        float d = g[i];
        if (wd != 0.0f) d = d + p[i] * wd;
        if (momentum != 0.0f) {
            float b;
            if (first) b = d;
            else if (omd == 1.0f) b = buf[i] * momentum + d;
            else b = buf[i] * momentum + d * omd;
            buf[i] = b;
            d = nesterov ? d + b * momentum : b;
        }
        p[i] = p[i] - d * lr;
    }
}

// torch.optim.Adam / AdamW on one parameter, in place (m, v: the moments, zero before the
// first step), in the order of the CPU's update (optim.rs, candle's f32 ops):
// p *= decay (AdamW: 1 - lr wd, else 1); d = g + wd_l2 p (Adam's L2 term);
// m = m b1 + d (1 - b1); v = v b2 + d d (1 - b2);
// p -= (m / (sqrt(v) inv_bc2_sqrt + eps)) step_size, step_size = lr / (1 - b1^t).
extern "C" __global__ void runner_adam_f32(float* p, const float* g, float* m, float* v, long total, float decay,
                                           float wd_l2, float b1, float omb1, float b2, float omb2,
                                           float inv_bc2_sqrt, float eps, float step_size) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        float pi = p[i];
        if (decay != 1.0f) pi = pi * decay;
        float d = g[i];
        if (wd_l2 != 0.0f) d = d + pi * wd_l2;
        float mi = m[i] * b1 + d * omb1;
        float vi = v[i] * b2 + (d * d) * omb2;
        m[i] = mi;
        v[i] = vi;
        float denom = sqrtf(vi) * inv_bc2_sqrt + eps;
        p[i] = pi - (mi / denom) * step_size;
    }
}
