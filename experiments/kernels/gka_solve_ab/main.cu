// A/B harness for kernels/gka_solve's mma kernels: the forward (writing the iterates) and the
// reverse sweep on random chunk systems of the 8B step's shape (C = 64, D = 128, N = 30), each
// launch timed (median of 5) and every output hashed. Two builds of it from two trees (build.sh)
// give the two versions' times side by side and, where the hashes agree, show that a change left
// every output bit for bit as it was.
//   main [M chunks, default 2048 = (1, 4096) tokens x 32 heads] [both|fwd|bwd]
#include <cuda_runtime.h>
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <vector>
#include <algorithm>
#include <string>
void h_bwd(int, int, int, int, double, const float*, const float*, const float*, const float*, const float*, const float*,
           const float*, const float*, float**);
void h_fwd(int, int, int, int, double, const float*, const float*, const float*, const float*, const float*, const float*,
           float*, float*);
#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e)); exit(1);} } while (0)
static float* dev_random(size_t n, float lo, float hi, unsigned seed, int mode = 0, int C = 0, int D = 0) {
  std::vector<float> h(n); srand(seed);
  for (size_t i = 0; i < n; ++i) h[i] = lo + (hi - lo) * (rand() / (float)RAND_MAX);
  if (mode == 1) for (size_t i = 0; i < n; ++i) { size_t r = (i / C) % C, c = i % C; if (c > r) h[i] = 0.f; }
  if (mode == 2) for (size_t m = 0; m < n / ((size_t)D * D); ++m) for (int a = 0; a < D; ++a) for (int b = 0; b < a; ++b) h[m * D * D + (size_t)b * D + a] = h[m * D * D + (size_t)a * D + b];
  float* d; CK(cudaMalloc(&d, n * 4)); CK(cudaMemcpy(d, h.data(), n * 4, cudaMemcpyHostToDevice)); return d;
}
static float* dev_zero(size_t n) { float* d; CK(cudaMalloc(&d, n * 4)); CK(cudaMemset(d, 0, n * 4)); return d; }
static uint64_t hash(const float* d, size_t n) {
  std::vector<uint32_t> h(n); CK(cudaMemcpy(h.data(), d, n * 4, cudaMemcpyDeviceToHost));
  uint64_t x = 1469598103934665603ull; for (uint32_t v : h) { x ^= v; x *= 1099511628211ull; } return x;
}
template <class F> static float time_ms(F f) {
  cudaEvent_t a, b; cudaEventCreate(&a); cudaEventCreate(&b);
  f(); CK(cudaDeviceSynchronize());
  std::vector<float> ts;
  for (int i = 0; i < 5; ++i) { cudaEventRecord(a); f(); cudaEventRecord(b); CK(cudaEventSynchronize(b)); float ms; cudaEventElapsedTime(&ms, a, b); ts.push_back(ms); }
  std::sort(ts.begin(), ts.end()); return ts[2];
}
int main(int argc, char** argv) {
  const int M = argc > 1 ? atoi(argv[1]) : 2048, C = 64, D = 128, N = 30, Cp = 64;
  const char* which = argc > 2 ? argv[2] : "both";
  const double r = 0.02;
  float* q = dev_random((size_t)M * C * D, -0.1f, 0.1f, 1);
  float* keys = dev_random((size_t)M * C * D, -0.1f, 0.1f, 2);
  float* start = dev_random((size_t)M * D * D, -0.01f, 0.01f, 3, 2, C, D);
  float* weights = dev_random((size_t)M * C * C, 0.f, 0.5f, 4, 1, C, D);
  float* from_start = dev_random((size_t)M * C, 0.5f, 1.f, 5);
  float* frob = dev_random((size_t)M * C, 1.f, 2.f, 6);
  float* grad = dev_random((size_t)M * C * D, -1.f, 1.f, 8);
  float* x = dev_zero((size_t)M * C * D);
  float* iterates = dev_zero((size_t)N * M * C * D);
  size_t sizes[6] = {(size_t)M * C * D, (size_t)M * Cp * D, (size_t)M * D * D, (size_t)M * C * C, (size_t)M * C, (size_t)M * C};
  float* g[6]; for (int i = 0; i < 6; ++i) g[i] = dev_zero(sizes[i]);
  if (std::string(which) != "bwd") {
    float t = time_ms([&] { h_fwd(M, C, D, N, r, q, keys, start, weights, from_start, frob, x, iterates); });
    printf("M=%d forward kernel (iterates written) %.3f ms  hash x %016llx iterates %016llx\n", M, t,
           (unsigned long long)hash(x, (size_t)M * C * D), (unsigned long long)hash(iterates, (size_t)N * M * C * D));
  } else {
    h_fwd(M, C, D, N, r, q, keys, start, weights, from_start, frob, x, iterates); CK(cudaDeviceSynchronize());
  }
  if (std::string(which) != "fwd") {
    float t = time_ms([&] { h_bwd(M, C, D, N, r, q, keys, start, weights, from_start, frob, iterates, grad, g); });
    printf("M=%d reverse sweep %.3f ms  hashes", M, t);
    for (int i = 0; i < 6; ++i) printf(" %016llx", (unsigned long long)hash(g[i], sizes[i]));
    printf("\n");
  }
  CK(cudaGetLastError());
  return 0;
}
