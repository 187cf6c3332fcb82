// The split-K decode attention for bf16 caches on the tensor cores (see attention_decode.h for the
// op, attention_decode_common.cuh for what the fp32 kernel shares).
//
// Each key is read once for the G <= 8 query heads of its KV head. On the CUDA cores that costs
// ~2,000 lane instructions per key (conversions, 8 multiply-adds per head for the score and as
// many for the weighted value, the softmax rescales), which on 12 warps per multiprocessor held
// the fp32-style kernel at 2 TB/s whatever its memory pipeline. Here the G heads are the rows of
// an m16n8k16 bf16 MMA tile (rows G..15 zero): per 16 keys a warp runs D/8 MMAs for the scores
// (Q Kᵀ, keys as the n dimension) and D/4 for the weighted values (P V), as flash attention does.
//
// Layout: a block (4 warps) takes one (sequence, KV head, range of slots); a trip is 64 keys, 16
// per warp. Keys and values reach shared memory through a kStages-deep cp.async pipeline (unseen
// slots zero-filled, not read), each row's 16-byte chunks XOR-swizzled so that the ldmatrix reads
// of 8 rows hit distinct banks. The scores stay fp32 (q unscaled in the MMA, scale * log2 e applied
// to the fp32 scores); the softmax weights are rounded to bf16 for the P V MMA (as the torch form
// rounds its probabilities), their fp32 values summed for the normaliser. Each warp keeps an
// online softmax per head row (a quad of lanes per row); at the end the warps merge through
// shared memory (store_block_result) and, with several ranges, attention_decode_combine merges
// the ranges.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "kernels/attention_decode/attention_decode_common.cuh"
#include "kernels/attention_decode/attention_decode_launch.h"
#include "kernels/common/ldmatrix.cuh"

namespace prime::kernels::detail {

namespace {

using bf16 = __nv_bfloat16;

constexpr int kRows = 8;                           // query heads per KV head served (tile rows used)
constexpr int kWarpKeys = 16;                      // keys per warp per trip
constexpr int kTripKeys = kWarps * kWarpKeys;      // keys per block per trip

// Trips in flight: 3 stages (two trips loading while one computes) keep 2 blocks of D = 128 on a
// multiprocessor; smaller heads afford 4.
template <int D>
constexpr int stages() { return D <= 64 ? 4 : 3; }
template <int D>
constexpr int stage_bytes() { return 2 * kTripKeys * D * static_cast<int>(sizeof(bf16)) + kTripKeys; }
// Dynamic shared memory: the stages, reused after the loop for the warps' merge.
template <int D>
constexpr int shared_bytes() {
  constexpr int pipeline = stages<D>() * stage_bytes<D>();
  constexpr int merge = (2 * kWarps * kRows + kWarps * kRows * D) * static_cast<int>(sizeof(float));
  return pipeline > merge ? pipeline : merge;
}

// 16-byte chunk `chunk` of key row `row` sits at chunk chunk ^ (row % 8) (D >= 64; row % 4 at
// D = 32, whose 4-chunk rows leave 2-way conflicts).
template <int D>
__device__ __forceinline__ int swizzled(int row, int chunk) {
  constexpr int kChunks = D / 8;
  return chunk ^ (row & ((kChunks < 8 ? kChunks : 8) - 1));
}

// c += A B for one m16n8k16 tile; A's rows 8..15 (a1, a3) are zero here.
__device__ __forceinline__ void mma_upper_rows(float (&c)[4], unsigned a0, unsigned a2, unsigned b0, unsigned b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(0u), "r"(a2), "r"(0u), "r"(b0), "r"(b1));
}

__device__ __forceinline__ unsigned pack_bf16(float low, float high) {
  const __nv_bfloat162 pair = __floats2bfloat162_rn(low, high);
  return *reinterpret_cast<const unsigned*>(&pair);
}

template <int D>
__global__ void __launch_bounds__(kThreads, D <= 128 ? 2 : 1)
    attention_decode_mma_kernel(const bf16* __restrict__ q, const bf16* __restrict__ keys,
                                const bf16* __restrict__ values, const bool* __restrict__ visible,
                                float* __restrict__ part_acc, float* __restrict__ part_ml,
                                bf16* __restrict__ out, int kv_heads, int groups, int slots,
                                int keys_per_split, int splits, float scale_log2) {
  static_assert(D % 16 == 0 && D >= 32, "head dim not served");
  pdl_wait();  // q and the cache's new slot come from the kernels before (pdl.cuh)
  pdl_launch_dependents();
  constexpr int kStages = stages<D>();
  constexpr int kChunks = D / 8;  // 16-byte chunks per key row
  extern __shared__ __align__(16) unsigned char shared[];

  const int split = blockIdx.x, kv_head = blockIdx.y, b = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row = lane / 4, column = lane % 4;  // this lane's head row and column pair of a tile
  const long long sequence_head = static_cast<long long>(b) * kv_heads + kv_head;

  // The head row's query as A fragments (a0: columns 2c, 2c+1 of each 16-dim step; a2: + 8).
  unsigned query[D / 16][2];
#pragma unroll
  for (int step = 0; step < D / 16; ++step) {
    if (row < groups) {
      const bf16* from = q + (sequence_head * groups + row) * D + step * 16 + 2 * column;
      query[step][0] = *reinterpret_cast<const unsigned*>(from);
      query[step][1] = *reinterpret_cast<const unsigned*>(from + 8);
    } else {
      query[step][0] = query[step][1] = 0u;
    }
  }
  float m = -INFINITY, l = 0.0f;  // the row's running max (log2 units) and this lane's part of its sum
  float acc[D / 8][4];            // output tile columns 8i + 2c, 8i + 2c + 1 of rows row (0, 1), row + 8 (2, 3)
#pragma unroll
  for (int i = 0; i < D / 8; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;

  const int begin = split * keys_per_split;
  const int end = min(slots, begin + keys_per_split);
  const int trips = (end - begin + kTripKeys - 1) / kTripKeys;
  const bf16* key_rows = keys + sequence_head * slots * D;
  const bf16* value_rows = values + sequence_head * slots * D;
  const auto stage_keys = [&](int buffer) { return reinterpret_cast<bf16*>(shared + buffer * stage_bytes<D>()); };
  const auto stage_values = [&](int buffer) { return stage_keys(buffer) + kTripKeys * D; };
  const auto stage_seen = [&](int buffer) {
    return reinterpret_cast<unsigned char*>(stage_keys(buffer) + 2 * kTripKeys * D);
  };

  const auto issue = [&](int trip) {
    const int buffer = trip % kStages, base = begin + trip * kTripKeys;
    bf16* to_keys = stage_keys(buffer);
    bf16* to_values = stage_values(buffer);
    for (int c = threadIdx.x; c < kTripKeys * kChunks; c += kThreads) {
      const int key = c / kChunks, chunk = c % kChunks, s = base + key;
      const bool seen = trip < trips && s < end && visible[s];
      const long long from = static_cast<long long>(seen ? s : 0) * D + chunk * 8;
      const int to = key * D + swizzled<D>(key, chunk) * 8;
      copy_async16(to_keys + to, key_rows + from, seen);
      copy_async16(to_values + to, value_rows + from, seen);
      if (chunk == 0) stage_seen(buffer)[key] = seen;
    }
    copy_async_commit();  // empty groups too: the wait below counts groups
  };
#pragma unroll
  for (int t = 0; t < kStages - 1; ++t) issue(t);

  // ldmatrix row addresses: lane supplies row lane % 8 of matrix lane / 8.
  const int matrix = lane / 8, matrix_row = lane % 8;
  for (int trip = 0; trip < trips; ++trip) {
    copy_async_wait<kStages - 2>();
    __syncthreads();  // trip's stage landed for all threads; the stage of trip - 1 is free
    issue(trip + kStages - 1);
    const int buffer = trip % kStages;
    const bf16* tile_keys = stage_keys(buffer) + warp * kWarpKeys * D;
    const bf16* tile_values = stage_values(buffer) + warp * kWarpKeys * D;
    const unsigned char* seen = stage_seen(buffer) + warp * kWarpKeys;

    // Scores of the warp's 16 keys: n-tile 0 keys 0..7, n-tile 1 keys 8..15. Matrices of the x4
    // load: (keys 0-7, dims lo), (keys 0-7, dims hi), (keys 8-15, lo), (keys 8-15, hi).
    float score[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
    {
      const int key = (matrix / 2) * 8 + matrix_row;
#pragma unroll
      for (int step = 0; step < D / 16; ++step) {
        unsigned k[4];
        ldmatrix_x4(k, shared_address(tile_keys + key * D + swizzled<D>(key, 2 * step + matrix % 2) * 8));
        mma_upper_rows(score[0], query[step][0], query[step][1], k[0], k[1]);
        mma_upper_rows(score[1], query[step][0], query[step][1], k[2], k[3]);
      }
    }
    // This lane's keys: 2c, 2c + 1, 8 + 2c, 9 + 2c of the warp's 16.
    float x[4] = {score[0][0], score[0][1], score[1][0], score[1][1]};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int key = (i / 2) * 8 + 2 * column + i % 2;
      x[i] = seen[key] ? x[i] * scale_log2 : -INFINITY;
    }
    float top = fmaxf(fmaxf(x[0], x[1]), fmaxf(x[2], x[3]));
    top = fmaxf(top, __shfl_xor_sync(0xffffffffu, top, 1));
    top = fmaxf(top, __shfl_xor_sync(0xffffffffu, top, 2));
    top = fmaxf(top, m);
    const float ref = reference(top);
    const float rescale = exp2f(m - ref);
    m = top;
    float p[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) p[i] = exp2f(x[i] - ref);
    l = l * rescale + ((p[0] + p[1]) + (p[2] + p[3]));
#pragma unroll
    for (int i = 0; i < D / 8; ++i) {
      acc[i][0] *= rescale;
      acc[i][1] *= rescale;
    }
    // P as the A fragment of the 16-key step (the score tiles' layout is A's), times V: matrices
    // (keys 0-7, dims 8i..), (keys 8-15, dims 8i..), (keys 0-7, dims 8i + 8..), (keys 8-15, ..).
    const unsigned p_low = pack_bf16(p[0], p[1]), p_high = pack_bf16(p[2], p[3]);
    const int key = (matrix % 2) * 8 + matrix_row;
#pragma unroll
    for (int pair = 0; pair < D / 16; ++pair) {
      unsigned v[4];
      ldmatrix_x4_transposed(v, shared_address(tile_values + key * D + swizzled<D>(key, 2 * pair + matrix / 2) * 8));
      mma_upper_rows(acc[2 * pair], p_low, p_high, v[0], v[1]);
      mma_upper_rows(acc[2 * pair + 1], p_low, p_high, v[2], v[3]);
    }
  }
  copy_async_wait<0>();
  __syncthreads();  // every stage read and landed: the shared memory is reused for the merge

  l += __shfl_xor_sync(0xffffffffu, l, 1);
  l += __shfl_xor_sync(0xffffffffu, l, 2);
  float* merge_m = reinterpret_cast<float*>(shared);
  float* merge_l = merge_m + kWarps * kRows;
  float* merge_acc = merge_l + kWarps * kRows;  // [kWarps][kRows][D]
  if (row < groups) {
    if (column == 0) {
      merge_m[warp * kRows + row] = m;
      merge_l[warp * kRows + row] = l;
    }
    float* to = merge_acc + (warp * kRows + row) * D + 2 * column;
#pragma unroll
    for (int i = 0; i < D / 8; ++i) {
      to[8 * i] = acc[i][0];
      to[8 * i + 1] = acc[i][1];
    }
  }
  __syncthreads();
  store_block_result<bf16, D, kRows>(merge_m, merge_l, merge_acc, groups, sequence_head, split, splits,
                                     part_acc, part_ml, out);
}

}  // namespace

void launch_attention_decode_mma(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values,
                                 const at::Tensor& visible, double scale, const at::Tensor& out) {
  const int64_t B = keys.size(0), Hkv = keys.size(1), S = keys.size(2), D = keys.size(3);
  const int64_t groups = q.size(1) / Hkv;
  PRIME_CHECK(groups <= kRows, "attention_decode: ", groups, " query heads per KV head (at most ", kRows, ")");
  // Several blocks per multiprocessor's worth of ranges: the last wave's idle tail stays small.
  const Ranges ranges = plan_ranges(q, B, Hkv, S, D, kTripKeys, /*blocks_per_sm=*/8);
  const dim3 grid(static_cast<unsigned>(ranges.splits), static_cast<unsigned>(Hkv), static_cast<unsigned>(B));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const float scale_log2 = static_cast<float>(scale) * kLog2e;
  const auto launch = [&](auto dim) {
    constexpr int kD = decltype(dim)::value;
    constexpr int kBytes = shared_bytes<kD>();
    PRIME_CUDA_CHECK(cudaFuncSetAttribute(attention_decode_mma_kernel<kD>,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize, kBytes));
    launch_kernel(
        "attention_decode_mma_kernel", attention_decode_mma_kernel<kD>, grid, kThreads, kBytes, stream,
        reinterpret_cast<const bf16*>(q.const_data_ptr()), reinterpret_cast<const bf16*>(keys.const_data_ptr()),
        reinterpret_cast<const bf16*>(values.const_data_ptr()), visible.const_data_ptr<bool>(),
        ranges.splits > 1 ? ranges.part_acc.mutable_data_ptr<float>() : nullptr,
        ranges.splits > 1 ? ranges.part_ml.mutable_data_ptr<float>() : nullptr,
        reinterpret_cast<bf16*>(out.mutable_data_ptr()), static_cast<int>(Hkv), static_cast<int>(groups),
        static_cast<int>(S), static_cast<int>(ranges.keys_per_split), static_cast<int>(ranges.splits), scale_log2);
  };
  switch (D) {
    case 32: launch(std::integral_constant<int, 32>{}); break;
    case 64: launch(std::integral_constant<int, 64>{}); break;
    case 128: launch(std::integral_constant<int, 128>{}); break;
    case 256: launch(std::integral_constant<int, 256>{}); break;
    default: PRIME_CHECK(false, "attention_decode: head dim ", D, " not served for bf16");
  }
  combine_ranges<bf16>(ranges, out, B * q.size(1), D, stream);
}

}  // namespace prime::kernels::detail
