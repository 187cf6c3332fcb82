// Layout variants of the SSM decode steps (kernels/ssm_decode) at B = 64, 128, 256 of the 8B shape
// (H = 32, 128 x 128 fp32 state), timed beside what the GPU gives a plain read-once-write-once
// stream of the same size (in-place scale and copy kernels, cudaMemcpy): the columns per thread
// (W), the rows per warp (R; Mamba-2: rows per warp and warps per block) and the evict-first
// cache hint (cs). Each variant's state and output are compared with the kernels' layout (W4 R16
// for GDN, W4 8r 8w for Mamba-2): only the summation order differs. Standalone (no torch):
//   nvcc -O3 -std=c++17 -arch=sm_90a experiments/kernels/decode_state_layouts.cu -o decode_state_layouts
// Results and what was kept: kernels/README.md (ssm_decode).
#include <cuda_runtime.h>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <cmath>
#include <cstdint>
#include <algorithm>

#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e)); exit(1);} } while (0)
constexpr int kWarp = 32;

template <int W> __device__ __forceinline__ void ld(const float* p, float (&o)[W]) {
  if constexpr (W == 4) { float4 v = *reinterpret_cast<const float4*>(p); o[0]=v.x; o[1]=v.y; o[2]=v.z; o[3]=v.w; }
  else if constexpr (W == 2) { float2 v = *reinterpret_cast<const float2*>(p); o[0]=v.x; o[1]=v.y; }
  else { o[0] = p[0]; }
}
template <int W> __device__ __forceinline__ void st(float* p, const float (&o)[W]) {
  if constexpr (W == 4) *reinterpret_cast<float4*>(p) = make_float4(o[0],o[1],o[2],o[3]);
  else if constexpr (W == 2) *reinterpret_cast<float2*>(p) = make_float2(o[0],o[1]);
  else p[0] = o[0];
}
template <int W> __device__ __forceinline__ void st_cs(float* p, const float (&o)[W]) {
  if constexpr (W == 4) __stcs(reinterpret_cast<float4*>(p), make_float4(o[0],o[1],o[2],o[3]));
  else if constexpr (W == 2) __stcs(reinterpret_cast<float2*>(p), make_float2(o[0],o[1]));
  else __stcs(p, o[0]);
}
template <int W> __device__ __forceinline__ void ld_cs(const float* p, float (&o)[W]) {
  if constexpr (W == 4) { float4 v = __ldcs(reinterpret_cast<const float4*>(p)); o[0]=v.x; o[1]=v.y; o[2]=v.z; o[3]=v.w; }
  else if constexpr (W == 2) { float2 v = __ldcs(reinterpret_cast<const float2*>(p)); o[0]=v.x; o[1]=v.y; }
  else { o[0] = __ldcs(p); }
}

// GDN: CTA per (bh, column tile of 32*W), warps of R rows (dk/R warps).
template <int W, int R, bool CS>
__global__ void gdn(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
                    const float* __restrict__ g, const float* __restrict__ beta, float* __restrict__ state,
                    float* __restrict__ o, int dk, int dv) {
  constexpr int kTile = kWarp * W;
  extern __shared__ __align__(16) float sh[];
  const int warps = blockDim.x / kWarp;
  float* pp = sh; float* op = pp + warps * kTile; float* ks = op + warps * kTile; float* qs = ks + dk;
  const int64_t bh = blockIdx.x;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int tc = lane * W, column = blockIdx.y * kTile + tc;
  const int row0 = warp * R;
  float* S = state + bh * dk * dv;
  float s[R][W];
#pragma unroll
  for (int r = 0; r < R; ++r) { if (CS) ld_cs<W>(S + (int64_t)(row0 + r) * dv + column, s[r]); else ld<W>(S + (int64_t)(row0 + r) * dv + column, s[r]); }
  for (int i = threadIdx.x; i < dk; i += blockDim.x) { ks[i] = k[bh * dk + i]; qs[i] = q[bh * dk + i]; }
  const float decay = expf(g[bh]), b = beta[bh];
  float vo[W];
#pragma unroll
  for (int c = 0; c < W; ++c) vo[c] = v[bh * dv + column + c];
  __syncthreads();
  float part[W] = {};
#pragma unroll
  for (int r = 0; r < R; ++r) { const float kr = ks[row0 + r];
#pragma unroll
    for (int c = 0; c < W; ++c) { s[r][c] *= decay; part[c] = fmaf(s[r][c], kr, part[c]); } }
  st<W>(pp + warp * kTile + tc, part);
  __syncthreads();
  float u[W] = {};
  for (int w = 0; w < warps; ++w) { float p[W]; ld<W>(pp + w * kTile + tc, p);
#pragma unroll
    for (int c = 0; c < W; ++c) u[c] += p[c]; }
#pragma unroll
  for (int c = 0; c < W; ++c) { u[c] = b * (vo[c] - u[c]); part[c] = 0.f; }
#pragma unroll
  for (int r = 0; r < R; ++r) { const float kr = ks[row0 + r], qr = qs[row0 + r];
#pragma unroll
    for (int c = 0; c < W; ++c) { s[r][c] = fmaf(kr, u[c], s[r][c]); part[c] = fmaf(s[r][c], qr, part[c]); }
    if (CS) st_cs<W>(S + (int64_t)(row0 + r) * dv + column, s[r]); else st<W>(S + (int64_t)(row0 + r) * dv + column, s[r]); }
  st<W>(op + warp * kTile + tc, part);
  __syncthreads();
  if (warp != 0) return;
  float out[W] = {};
  for (int w = 0; w < warps; ++w) { float p[W]; ld<W>(op + w * kTile + tc, p);
#pragma unroll
    for (int c = 0; c < W; ++c) out[c] += p[c]; }
#pragma unroll
  for (int c = 0; c < W; ++c) o[bh * dv + column + c] = out[c];
}

// Mamba-2: warp streams RW rows, CTA of NW warps.
template <int W, int RW, int NW, bool CS>
__global__ void m2(const float* __restrict__ x, const float* __restrict__ delta, const float* __restrict__ A,
                   const float* __restrict__ Bm, const float* __restrict__ Cm, float* __restrict__ state,
                   float* __restrict__ y, int heads, int p_dim, int n_dim) {
  const int64_t bh = blockIdx.x;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int row0 = blockIdx.y * (NW * RW) + warp * RW;
  if (row0 >= p_dim) return;
  const float dt = delta[bh];
  const float decay = expf(dt * A[bh % heads]);
  float* h = state + bh * p_dim * n_dim;
  float dx[RW], acc[RW];
#pragma unroll
  for (int r = 0; r < RW; ++r) { dx[r] = dt * x[bh * p_dim + row0 + r]; acc[r] = 0.f; }
  for (int column = lane * W; column < n_dim; column += kWarp * W) {
    float hv[RW][W];
#pragma unroll
    for (int r = 0; r < RW; ++r) { if (CS) ld_cs<W>(h + (int64_t)(row0 + r) * n_dim + column, hv[r]); else ld<W>(h + (int64_t)(row0 + r) * n_dim + column, hv[r]); }
    float bb[W], cc[W];
    ld<W>(Bm + bh * n_dim + column, bb); ld<W>(Cm + bh * n_dim + column, cc);
#pragma unroll
    for (int r = 0; r < RW; ++r) {
#pragma unroll
      for (int c = 0; c < W; ++c) { hv[r][c] = fmaf(dx[r], bb[c], decay * hv[r][c]); acc[r] = fmaf(hv[r][c], cc[c], acc[r]); }
      if (CS) st_cs<W>(h + (int64_t)(row0 + r) * n_dim + column, hv[r]); else st<W>(h + (int64_t)(row0 + r) * n_dim + column, hv[r]);
    }
  }
#pragma unroll
  for (int r = 0; r < RW; ++r)
#pragma unroll
    for (int off = 16; off > 0; off /= 2) acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], off);
  if (lane == 0)
#pragma unroll
    for (int r = 0; r < RW; ++r) y[bh * p_dim + row0 + r] = acc[r];
}

// Floors: in-place scale, float4, one CTA per 64 KB, or grid-stride.
__global__ void scale_tiles(float4* p, int per_block) {
  float4* b = p + (int64_t)blockIdx.x * per_block;
  for (int i = threadIdx.x; i < per_block; i += blockDim.x) { float4 v = b[i]; v.x *= 0.999f; v.y *= 0.999f; v.z *= 0.999f; v.w *= 0.999f; b[i] = v; }
}
__global__ void scale_stride(float4* p, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) { float4 v = p[i]; v.x *= 0.999f; v.y *= 0.999f; v.z *= 0.999f; v.w *= 0.999f; p[i] = v; }
}
__global__ void copy_stride(const float4* __restrict__ a, float4* __restrict__ b, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) b[i] = a[i];
}

template <class F> float time_us(F f, int iters = 40) {
  cudaEvent_t a, b; cudaEventCreate(&a); cudaEventCreate(&b);
  for (int i = 0; i < 5; ++i) f();
  std::vector<float> ts;
  for (int rep = 0; rep < 5; ++rep) {
    cudaEventRecord(a); for (int i = 0; i < iters; ++i) f(); cudaEventRecord(b); CK(cudaEventSynchronize(b));
    float ms; cudaEventElapsedTime(&ms, a, b); ts.push_back(ms * 1000.f / iters);
  }
  std::sort(ts.begin(), ts.end());
  CK(cudaGetLastError());
  return ts[2];
}

void fill(float* d, size_t n, float scale, unsigned seed) {
  std::vector<float> h(n); srand(seed);
  for (auto& x : h) x = scale * ((rand() / (float)RAND_MAX) * 2.f - 1.f);
  CK(cudaMemcpy(d, h.data(), n * 4, cudaMemcpyHostToDevice));
}
float maxdiff(const float* a, const float* b, size_t n) {
  std::vector<float> x(n), y(n); cudaMemcpy(x.data(), a, n * 4, cudaMemcpyDeviceToHost); cudaMemcpy(y.data(), b, n * 4, cudaMemcpyDeviceToHost);
  float m = 0; for (size_t i = 0; i < n; ++i) m = fmaxf(m, fabsf(x[i] - y[i])); return m;
}

int main() {
  const int H = 32, D = 128;
  for (int B : {64, 128, 256}) {
    const int64_t BH = (int64_t)B * H, sn = BH * D * D;
    float *q, *k, *v, *g, *be, *S, *S0, *Sref, *o, *oref;
    CK(cudaMalloc(&q, BH * D * 4)); CK(cudaMalloc(&k, BH * D * 4)); CK(cudaMalloc(&v, BH * D * 4));
    CK(cudaMalloc(&g, BH * 4)); CK(cudaMalloc(&be, BH * 4)); CK(cudaMalloc(&S, sn * 4)); CK(cudaMalloc(&S0, sn * 4));
    CK(cudaMalloc(&Sref, sn * 4)); CK(cudaMalloc(&o, BH * D * 4)); CK(cudaMalloc(&oref, BH * D * 4));
    fill(q, BH * D, 0.1f, 1); fill(k, BH * D, 0.09f, 2); fill(v, BH * D, 1.f, 3); fill(g, BH, 0.05f, 4); fill(be, BH, 0.5f, 5); fill(S0, sn, 0.1f, 6);
    const double bytes = 4.0 * BH * (2.0 * D * D + 4 * D + 2);
    const double sbytes = 8.0 * sn;
    // floors
    float t1 = time_us([&] { scale_tiles<<<BH, 256>>>((float4*)S, D * D / 4); });
    float t2 = time_us([&] { scale_stride<<<132 * 8, 256>>>((float4*)S, sn / 4); });
    float t3 = time_us([&] { copy_stride<<<132 * 8, 256>>>((const float4*)S0, (float4*)S, sn / 4); });
    float t4 = time_us([&] { cudaMemcpyAsync(S, S0, sn * 4, cudaMemcpyDeviceToDevice); });
    printf("B=%d state %.1f MB floors: scale/tile %.1f us %.2f TB/s | scale/stride %.1f us %.2f TB/s | copy kernel %.1f us %.2f TB/s | memcpy %.1f us %.2f TB/s\n",
           B, sn * 4 / 1e6, t1, sbytes / t1 / 1e6, t2, sbytes / t2 / 1e6, t3, sbytes / t3 / 1e6, t4, sbytes / t4 / 1e6);
    // reference GDN: W4 R16
    auto run_gdn = [&](auto Wc, auto Rc, auto Cc, float* out) {
      constexpr int W = decltype(Wc)::value, R = decltype(Rc)::value; constexpr bool C = decltype(Cc)::value;
      const int warps = D / R; const dim3 grid(BH, D / (32 * W));
      const size_t shb = (2 * warps * 32 * W + 2 * D) * 4;
      gdn<W, R, C><<<grid, warps * 32, shb>>>(q, k, v, g, be, S, out, D, D);
    };
    auto bench_gdn = [&](auto Wc, auto Rc, auto Cc, const char* name) {
      CK(cudaMemcpy(S, S0, sn * 4, cudaMemcpyDeviceToDevice));
      run_gdn(Wc, Rc, Cc, o); CK(cudaDeviceSynchronize());
      float ds = maxdiff(S, Sref, sn), dout = maxdiff(o, oref, BH * D);
      float t = time_us([&] { run_gdn(Wc, Rc, Cc, o); });
      printf("  GDN B=%d %-14s %7.1f us %.2f TB/s (%.1f%% of 4.8)  diff state %.1e out %.1e\n", B, name, t, bytes / t / 1e6, bytes / t / 1e6 / 4.8 * 100, ds, dout);
    };
    using std::integral_constant;
    CK(cudaMemcpy(S, S0, sn * 4, cudaMemcpyDeviceToDevice));
    run_gdn(integral_constant<int, 4>{}, integral_constant<int, 16>{}, integral_constant<bool, false>{}, oref);
    CK(cudaMemcpy(Sref, S, sn * 4, cudaMemcpyDeviceToDevice));
    bench_gdn(integral_constant<int, 4>{}, integral_constant<int, 16>{}, integral_constant<bool, false>{}, "W4 R16 (now)");
    bench_gdn(integral_constant<int, 4>{}, integral_constant<int, 16>{}, integral_constant<bool, true>{}, "W4 R16 cs");
    bench_gdn(integral_constant<int, 4>{}, integral_constant<int, 8>{}, integral_constant<bool, false>{}, "W4 R8");
    bench_gdn(integral_constant<int, 4>{}, integral_constant<int, 8>{}, integral_constant<bool, true>{}, "W4 R8 cs");
    bench_gdn(integral_constant<int, 2>{}, integral_constant<int, 16>{}, integral_constant<bool, false>{}, "W2 R16");
    bench_gdn(integral_constant<int, 2>{}, integral_constant<int, 16>{}, integral_constant<bool, true>{}, "W2 R16 cs");
    bench_gdn(integral_constant<int, 2>{}, integral_constant<int, 8>{}, integral_constant<bool, false>{}, "W2 R8");
    bench_gdn(integral_constant<int, 2>{}, integral_constant<int, 8>{}, integral_constant<bool, true>{}, "W2 R8 cs");
    bench_gdn(integral_constant<int, 1>{}, integral_constant<int, 16>{}, integral_constant<bool, false>{}, "W1 R16");
    bench_gdn(integral_constant<int, 1>{}, integral_constant<int, 8>{}, integral_constant<bool, false>{}, "W1 R8");
    bench_gdn(integral_constant<int, 4>{}, integral_constant<int, 32>{}, integral_constant<bool, false>{}, "W4 R32");
    bench_gdn(integral_constant<int, 2>{}, integral_constant<int, 32>{}, integral_constant<bool, false>{}, "W2 R32");

    // Mamba-2 (P = N = 128), Bm/Cm in q/k, x in v, delta in be (positive), A in g[0..H).
    auto run_m2 = [&](auto Wc, auto Rc, auto Nc, auto Cc, float* out) {
      constexpr int W = decltype(Wc)::value, RW = decltype(Rc)::value, NW = decltype(Nc)::value; constexpr bool C = decltype(Cc)::value;
      const dim3 grid(BH, (D + NW * RW - 1) / (NW * RW));
      m2<W, RW, NW, C><<<grid, NW * 32>>>(v, be, g, q, k, S, out, H, D, D);
    };
    auto bench_m2 = [&](auto Wc, auto Rc, auto Nc, auto Cc, const char* name) {
      CK(cudaMemcpy(S, S0, sn * 4, cudaMemcpyDeviceToDevice));
      run_m2(Wc, Rc, Nc, Cc, o); CK(cudaDeviceSynchronize());
      float ds = maxdiff(S, Sref, sn), dout = maxdiff(o, oref, BH * D);
      float t = time_us([&] { run_m2(Wc, Rc, Nc, Cc, o); });
      printf("  M2  B=%d %-14s %7.1f us %.2f TB/s (%.1f%% of 4.8)  diff state %.1e out %.1e\n", B, name, t, bytes / t / 1e6, bytes / t / 1e6 / 4.8 * 100, ds, dout);
    };
    CK(cudaMemcpy(S, S0, sn * 4, cudaMemcpyDeviceToDevice));
    run_m2(integral_constant<int, 4>{}, integral_constant<int, 8>{}, integral_constant<int, 8>{}, integral_constant<bool, false>{}, oref);
    CK(cudaMemcpy(Sref, S, sn * 4, cudaMemcpyDeviceToDevice));
    bench_m2(integral_constant<int, 4>{}, integral_constant<int, 8>{}, integral_constant<int, 8>{}, integral_constant<bool, false>{}, "W4 8r 8w (now)");
    bench_m2(integral_constant<int, 4>{}, integral_constant<int, 8>{}, integral_constant<int, 8>{}, integral_constant<bool, true>{}, "W4 8r 8w cs");
    bench_m2(integral_constant<int, 4>{}, integral_constant<int, 4>{}, integral_constant<int, 8>{}, integral_constant<bool, false>{}, "W4 4r 8w");
    bench_m2(integral_constant<int, 4>{}, integral_constant<int, 4>{}, integral_constant<int, 4>{}, integral_constant<bool, false>{}, "W4 4r 4w");
    bench_m2(integral_constant<int, 4>{}, integral_constant<int, 16>{}, integral_constant<int, 8>{}, integral_constant<bool, false>{}, "W4 16r 8w");
    bench_m2(integral_constant<int, 4>{}, integral_constant<int, 16>{}, integral_constant<int, 4>{}, integral_constant<bool, false>{}, "W4 16r 4w");
    bench_m2(integral_constant<int, 4>{}, integral_constant<int, 8>{}, integral_constant<int, 4>{}, integral_constant<bool, false>{}, "W4 8r 4w");
    bench_m2(integral_constant<int, 4>{}, integral_constant<int, 2>{}, integral_constant<int, 8>{}, integral_constant<bool, false>{}, "W4 2r 8w");
    bench_m2(integral_constant<int, 2>{}, integral_constant<int, 8>{}, integral_constant<int, 8>{}, integral_constant<bool, false>{}, "W2 8r 8w");
    bench_m2(integral_constant<int, 2>{}, integral_constant<int, 4>{}, integral_constant<int, 8>{}, integral_constant<bool, false>{}, "W2 4r 8w");
    cudaFree(q); cudaFree(k); cudaFree(v); cudaFree(g); cudaFree(be); cudaFree(S); cudaFree(S0); cudaFree(Sref); cudaFree(o); cudaFree(oref);
  }
  return 0;
}
