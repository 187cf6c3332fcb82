// How fast Hopper's warpgroup MMAs run at the shapes GKA's one-group solve issues (m64n64k16, bf16 in, fp32
// accumulators, A from registers or shared memory), and whether one block's MMAs overlap another block's ALU work
// on the same multiprocessor. The solve's iteration takes about the sum of its MMA time and its update's issue
// time per pair of chunks (kernels/README.md, gka_solve), where two chunks a multiprocessor taking turns would
// give about the larger of the two; this probe times the pieces apart and together:
//   - a block issuing batches of MMAs (each batch one accumulator's chain, then a wait), alone on the
//     multiprocessor or beside a second such block, at n64 and n128, A from registers (RS) or shared memory (SS);
//   - a block of FFMAs alone (64 independent chains a thread, as the update's elements), and beside a block of MMAs;
//   - a block running a batch of MMAs then its FFMAs (a chunk's iteration in miniature), one or two a
//     multiprocessor; and one issuing its FFMAs between a batch's commit and its wait.
// Each block finds its place on its multiprocessor by arriving (the first takes role A, the second role B) and
// records its cycles (clock64); the kernel's time by events gives the clock. Figures per multiprocessor: cycles a
// batch, MMA rate as a share of the dense bf16 peak (4,096 flops a cycle on an H100 or H200), FFMA issue per
// scheduler. Standalone (no torch; the repository root on the include path):
//   nvcc -O3 -std=c++17 -arch=sm_90a -I. experiments/kernels/wgmma_rate.cu -o wgmma_rate && ./wgmma_rate
// What it is for and what it gave: kernels/README.md (gka_solve).
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "kernels/common/wgmma.cuh"

#define CK(x)                                                                     \
  do {                                                                            \
    cudaError_t e = (x);                                                          \
    if (e != cudaSuccess) {                                                       \
      std::printf("%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e));       \
      std::exit(1);                                                               \
    }                                                                             \
  } while (0)

namespace wg = prime::kernels::detail::wgmma;

// m64n128k16's 64 accumulators a thread (wgmma.cuh spells out the n64 shape the kernels use).
#define PROBE_D64_LIST                                                                                  \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, "   \
  "%21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, "    \
  "%40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, "    \
  "%59, %60, %61, %62, %63}, "
#define PROBE_D64                                                                                         \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),         \
      "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
      "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]),          \
      "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),          \
      "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]),          \
      "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]),          \
      "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]),          \
      "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]),          \
      "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])

__device__ __forceinline__ void mma_n128_rs(float (&d)[64], const uint32_t (&a)[4], uint64_t b, bool accumulate) {
#if PRIME_WGMMA_ENABLED
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " PROBE_D64_LIST
               "{%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"
               : PROBE_D64
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(static_cast<int>(accumulate)));
#else
  __trap();
#endif
}

__device__ __forceinline__ void mma_n128_ss(float (&d)[64], uint64_t a, uint64_t b, bool accumulate) {
#if PRIME_WGMMA_ENABLED
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " PROBE_D64_LIST
               "%64, %65, p, 1, 1, 0, 0;\n}\n"
               : PROBE_D64
               : "l"(a), "l"(b), "r"(static_cast<int>(accumulate)));
#else
  __trap();
#endif
}

enum Role : int { kIdle = 0, kMma = 1, kAlu = 2, kMmaThenAlu = 3, kAluInsideBatch = 4 };
const char* role_name(int role) {
  static const char* names[] = {"idle", "mma", "ffma", "mma, then ffma", "ffma inside the batch"};
  return names[role];
}

struct Params {
  int roles[2];   // the first block on a multiprocessor, the second
  int batches;    // timed batches
  int ffma_rounds;  // rounds of 64 FFMAs a thread a batch
  unsigned* arrivals;  // per multiprocessor, zeroed before the launch
  long long* cycles;   // per block
  int* places;         // per block: multiprocessor * 2 + arrival
  float* sink;
};

constexpr int kAOffset = 0, kBOffset = 8192;  // A [64][64] bf16 swizzled, B [N][64] bf16 swizzled

// Mmas: a batch's MMAs, fixed when compiling: a loop ptxas cannot unroll serialises them (its warning C7520).
template <int N, bool RS, int Mmas>
__global__ void __launch_bounds__(128, 1) rate_kernel(Params p) {
  extern __shared__ unsigned char raw[];
  unsigned char* shared = wg::align_1024(raw);
  // Small values everywhere (their bits do not change the MMAs' time).
  for (int i = threadIdx.x; i < (8192 + N * 128) / 4; i += 128)
    reinterpret_cast<uint32_t*>(shared)[i] = 0x3c003c00u ^ ((i * 2654435761u) & 0x007f007fu);
  wg::fence_proxy_async();
  __syncthreads();
  __shared__ int role_shared;
  if (threadIdx.x == 0) {
    unsigned sm;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
    const unsigned arrival = atomicAdd(&p.arrivals[sm], 1u);
    role_shared = arrival < 2 ? p.roles[arrival] : kIdle;
    p.places[blockIdx.x] = static_cast<int>(sm * 2 + (arrival < 2 ? arrival : 1));
  }
  __syncthreads();
  // Read by lane 0 and broadcast: ptxas then takes it as uniform, so no branch on it serialises the MMAs.
  const int role = __shfl_sync(0xffffffffu, role_shared, 0);
  const uint32_t base = static_cast<uint32_t>(__cvta_generic_to_shared(shared));
  // Depth step s % 4 of A and B (the batch's length is not known when compiling, so the descriptors are formed
  // where they are used instead of held in an array the loop would index).
  auto a_desc = [&](int s) { return wg::k_major(base + kAOffset, 64, 0, 16 * (s % 4)); };
  auto b_desc = [&](int s) { return wg::k_major(base + kBOffset, N, 0, 16 * (s % 4)); };
  uint32_t a[4];
#pragma unroll
  for (int r = 0; r < 4; ++r) a[r] = 0x3c003c00u ^ ((threadIdx.x * 4 + r) & 0x3fu);
  float d[N / 2];
#pragma unroll
  for (int e = 0; e < N / 2; ++e) d[e] = 0.0f;
  float f[64];
#pragma unroll
  for (int e = 0; e < 64; ++e) f[e] = 1.0f + 1e-3f * (threadIdx.x + e);
  const bool mma = role == kMma || role == kMmaThenAlu || role == kAluInsideBatch;
  const bool alu = role == kAlu || role == kMmaThenAlu || role == kAluInsideBatch;

  auto ffma = [&]() {
    for (int r = 0; r < p.ffma_rounds; ++r) {
#pragma unroll
      for (int e = 0; e < 64; ++e) f[e] = fmaf(f[e], 0.9999f, 1e-4f);
    }
  };
  __syncthreads();
  const long long start = clock64();
  for (int batch = 0; batch < p.batches; ++batch) {
    if (mma) {
      wg::fence();
#pragma unroll
      for (int s = 0; s < Mmas; ++s) {
        const bool accumulate = batch > 0 || s > 0;
        if constexpr (N == 64) {
          if constexpr (RS) wg::mma_rs<false>(d, a, b_desc(s), accumulate);
          else wg::mma_ss<false>(d, a_desc(s), b_desc(s), accumulate);
        } else {
          if constexpr (RS) mma_n128_rs(d, a, b_desc(s), accumulate);
          else mma_n128_ss(d, a_desc(s), b_desc(s), accumulate);
        }
      }
      wg::commit();
      if (role == kAluInsideBatch) ffma();
      wg::wait<0>();
      wg::fence_operands(d);
    }
    if (alu && role != kAluInsideBatch) ffma();
  }
  const long long stop = clock64();
  float sum = 0.0f;
#pragma unroll
  for (int e = 0; e < N / 2; ++e) sum += d[e];
#pragma unroll
  for (int e = 0; e < 64; ++e) sum += f[e];
  p.sink[blockIdx.x * 128 + threadIdx.x] = sum;
  if (threadIdx.x == 0) p.cycles[blockIdx.x] = stop - start;
}

struct Case {
  const char* what;
  int n;
  bool rs;
  int per_sm;  // blocks a multiprocessor (1 or 2; the shared memory a block asks for enforces it)
  int role_a, role_b;
  int mmas, ffma_rounds;
};

template <int N, bool RS, int Mmas>
void run_case(const Case& c, int sms, int batches, Params p, float* ms_out, std::vector<long long>& cycles,
              std::vector<int>& places) {
  const int shared_bytes = c.per_sm == 1 ? 160 * 1024 : 100 * 1024;
  CK(cudaFuncSetAttribute(rate_kernel<N, RS, Mmas>, cudaFuncAttributeMaxDynamicSharedMemorySize, shared_bytes));
  p.roles[0] = c.role_a;
  p.roles[1] = c.role_b;
  p.ffma_rounds = c.ffma_rounds;
  const int blocks = sms * c.per_sm;
  cudaEvent_t begin, end;
  CK(cudaEventCreate(&begin));
  CK(cudaEventCreate(&end));
  for (int round = 0; round < 2; ++round) {  // a warm-up, then the timed launch
    p.batches = round == 0 ? batches / 8 : batches;
    CK(cudaMemset(p.arrivals, 0, sms * 4 * sizeof(unsigned)));
    CK(cudaEventRecord(begin));
    rate_kernel<N, RS, Mmas><<<blocks, 128, shared_bytes>>>(p);
    CK(cudaEventRecord(end));
    CK(cudaGetLastError());
    CK(cudaEventSynchronize(end));
  }
  CK(cudaEventElapsedTime(ms_out, begin, end));
  cycles.resize(blocks);
  places.resize(blocks);
  CK(cudaMemcpy(cycles.data(), p.cycles, blocks * sizeof(long long), cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(places.data(), p.places, blocks * sizeof(int), cudaMemcpyDeviceToHost));
  CK(cudaEventDestroy(begin));
  CK(cudaEventDestroy(end));
}

template <int N, bool RS>
void dispatch_mmas(const Case& c, int sms, int batches, const Params& p, float* ms, std::vector<long long>& cycles,
                   std::vector<int>& places) {
  switch (c.mmas) {
    case 1: return run_case<N, RS, 1>(c, sms, batches, p, ms, cycles, places);
    case 4: return run_case<N, RS, 4>(c, sms, batches, p, ms, cycles, places);
    case 16: return run_case<N, RS, 16>(c, sms, batches, p, ms, cycles, places);
    case 20: return run_case<N, RS, 20>(c, sms, batches, p, ms, cycles, places);
    case 0:  // no MMAs: FFMA blocks alone
    case 40: return run_case<N, RS, 40>(c, sms, batches, p, ms, cycles, places);
    default: std::printf("no kernel for %d MMAs a batch\n", c.mmas); std::exit(1);
  }
}

void dispatch(const Case& c, int sms, int batches, const Params& p, float* ms, std::vector<long long>& cycles,
              std::vector<int>& places) {
  if (c.n == 64 && c.rs) return dispatch_mmas<64, true>(c, sms, batches, p, ms, cycles, places);
  if (c.n == 64) return dispatch_mmas<64, false>(c, sms, batches, p, ms, cycles, places);
  if (c.rs) return dispatch_mmas<128, true>(c, sms, batches, p, ms, cycles, places);
  return dispatch_mmas<128, false>(c, sms, batches, p, ms, cycles, places);
}

int main(int argc, char** argv) {
  const int batches = argc > 1 ? std::atoi(argv[1]) : 2000;
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  const int sms = prop.multiProcessorCount;
  std::printf("%s, %d multiprocessors; %d batches a block\n", prop.name, sms, batches);
  Params p{};
  CK(cudaMalloc(&p.arrivals, sms * 4 * sizeof(unsigned)));
  CK(cudaMalloc(&p.cycles, sms * 2 * sizeof(long long)));
  CK(cudaMalloc(&p.places, sms * 2 * sizeof(int)));
  CK(cudaMalloc(&p.sink, sms * 2 * 128 * sizeof(float)));
  // 40 n64 MMAs is a chunk's iteration in the solve; 12 rounds of 64 FFMAs is about its update's issue a warp.
  const Case cases[] = {
      {"n64 RS, one block", 64, true, 1, kMma, kIdle, 40, 0},
      {"n64 SS, one block", 64, false, 1, kMma, kIdle, 40, 0},
      {"n128 RS, one block (the same flops)", 128, true, 1, kMma, kIdle, 20, 0},
      {"n128 SS, one block (the same flops)", 128, false, 1, kMma, kIdle, 20, 0},
      {"n64 RS, chains of 16", 64, true, 1, kMma, kIdle, 16, 0},
      {"n64 RS, chains of 4", 64, true, 1, kMma, kIdle, 4, 0},
      {"n64 RS, chains of 1", 64, true, 1, kMma, kIdle, 1, 0},
      {"n64 RS, two blocks", 64, true, 2, kMma, kMma, 40, 0},
      {"n64 SS, two blocks", 64, false, 2, kMma, kMma, 40, 0},
      {"n128 RS, two blocks", 128, true, 2, kMma, kMma, 20, 0},
      {"ffma, one block", 64, true, 1, kAlu, kIdle, 0, 12},
      {"ffma, two blocks", 64, true, 2, kAlu, kAlu, 0, 12},
      {"n64 RS mma beside ffma", 64, true, 2, kMma, kAlu, 40, 12},
      {"n64 SS mma beside ffma", 64, false, 2, kMma, kAlu, 40, 12},
      {"n64 RS mma then ffma, one block", 64, true, 1, kMmaThenAlu, kIdle, 40, 12},
      {"n64 RS mma then ffma, two blocks", 64, true, 2, kMmaThenAlu, kMmaThenAlu, 40, 12},
      {"n64 SS mma then ffma, two blocks", 64, false, 2, kMmaThenAlu, kMmaThenAlu, 40, 12},
      {"n64 RS ffma inside the batch, one block", 64, true, 1, kAluInsideBatch, kIdle, 40, 12},
      {"n64 RS ffma inside the batch, two blocks", 64, true, 2, kAluInsideBatch, kAluInsideBatch, 40, 12},
  };
  std::printf("%-44s %9s %7s | %-22s %10s %8s | %-22s %10s %8s\n", "case", "ms", "GHz", "role A", "cyc/batch",
              "mma %pk", "role B", "cyc/batch", "mma %pk");
  for (const Case& c : cases) {
    float ms = 0.0f;
    std::vector<long long> cycles;
    std::vector<int> places;
    dispatch(c, sms, batches, p, &ms, cycles, places);
    // Mean cycles a batch by role (arrival on the multiprocessor), and the longest block's for the clock.
    double sum[2] = {0, 0};
    int count[2] = {0, 0};
    long long longest = 0;
    for (size_t b = 0; b < cycles.size(); ++b) {
      const int arrival = places[b] % 2;
      sum[arrival] += static_cast<double>(cycles[b]) / batches;
      ++count[arrival];
      if (cycles[b] > longest) longest = cycles[b];
    }
    const double ghz = longest / (ms * 1e6);
    const double mma_flops = 64.0 * c.n * 16 * 2 * c.mmas;  // a batch's
    std::printf("%-44s %9.3f %7.3f", c.what, ms, ghz);
    for (int r = 0; r < 2; ++r) {
      const int role = r == 0 ? c.role_a : c.role_b;
      if (count[r] == 0 || role == kIdle) {
        std::printf(" | %-22s %10s %8s", role_name(role), "-", "-");
        continue;
      }
      const double per_batch = sum[r] / count[r];
      const bool mma = role == kMma || role == kMmaThenAlu || role == kAluInsideBatch;
      std::printf(" | %-22s %10.0f", role_name(role), per_batch);
      if (mma) std::printf(" %7.1f%%", 100.0 * mma_flops / per_batch / 4096.0);
      else std::printf(" %8s", "-");
    }
    std::printf("\n");
  }
  std::printf("cyc/batch: a block's cycles a batch (mean over the blocks of that arrival); mma %%pk: that block's MMA\n"
              "flops a cycle over the multiprocessor's dense bf16 peak (4,096); a batch of FFMAs is %d rounds of 64 a\n"
              "thread, one warp a scheduler a block: 768 issue cycles at one a cycle.\n", 12);
  return 0;
}
