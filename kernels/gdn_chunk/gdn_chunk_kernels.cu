// CUDA kernels of GDN's chunked form: the unit lower triangular inverse per chunk and the
// chunk-state scan (see gdn_chunk.h for the math, gdn_chunk_launch.h for the operands).
// fp32 throughout: the scan is a chain of N dependent steps whose rounding adds up, and the
// reference it must match to 1e-4 is fp32.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/common/cuda_check.cuh"
#include "kernels/common/restart_segments.cuh"
#include "kernels/gdn_chunk/gdn_chunk_launch.h"

namespace prime::kernels::detail {

namespace {

constexpr int kMaxChunk = 64;

// ---- (I + A)^-1 -------------------------------------------------------------------------------
// One block per matrix, one thread per column c. Row i of T = e_i - sum_{j<i} A[i][j] T[j]:
// rows are produced in order (a barrier each), columns in parallel; T[j][c] = 0 for j < c, so
// column c's sum starts at j = c.
__global__ void unit_lower_inverse_kernel(const float* __restrict__ A, float* __restrict__ T,
                                          int chunk) {
  __shared__ float a[kMaxChunk][kMaxChunk + 1];
  __shared__ float t[kMaxChunk][kMaxChunk + 1];
  const int column = threadIdx.x;
  const size_t offset = static_cast<size_t>(blockIdx.x) * chunk * chunk;
  for (int index = column; index < chunk * chunk; index += blockDim.x)
    a[index / chunk][index % chunk] = A[offset + index];
  __syncthreads();
  for (int row = 0; row < chunk; ++row) {
    if (column < chunk) {
      float value = row == column ? 1.0f : 0.0f;
      if (column < row) {
        float sum = 0.0f;
        for (int j = column; j < row; ++j) sum = fmaf(a[row][j], t[j][column], sum);
        value = -sum;
      }
      t[row][column] = value;
    }
    __syncthreads();
  }
  for (int index = column; index < chunk * chunk; index += blockDim.x)
    T[offset + index] = t[index / chunk][index % chunk];
}

// ---- chunk-state scan ------------------------------------------------------------------------
// Block = (32 value columns of one (batch, head)), 256 threads. The state tile S [Dk][32] stays
// in registers (each thread owns key rows rg*KR..rg*KR+KR-1 and columns 4cg..4cg+3, where
// rg = thread/8 and cg = thread%8) and in shared memory for the probe product. Per step:
//   load probe_n (transposed) and writer_n into shared memory
//   Y [C][32] = target_n - probe_n S          (thread: rows 2rg, 2rg+1; columns 4cg..+3)
//   S = decay_n S + addend_n + writer_n^T Y   (thread: its own state elements)
constexpr int kThreads = 256;
constexpr int kColumns = 32;
constexpr int kProbeStride = kMaxChunk + 2;  // even (float2 reads), and breaks bank aliasing

template <int KR>
struct ScanShared {
  static constexpr int kKeys = 32 * KR;
  float probe_t[kKeys][kProbeStride];  // probe_n transposed: [key][chunk row]
  float writer[kMaxChunk][kKeys];
  float state[kKeys][kColumns];
  float y[kMaxChunk][kColumns];
};

template <int KR>
__global__ void __launch_bounds__(kThreads, KR <= 4 ? 2 : 1)  // two blocks per SM where their shared memory fits
chunk_scan_kernel(const float* __restrict__ probe, const float* __restrict__ writer,
                  const float* target, const float* __restrict__ addend,
                  const float* __restrict__ decay, const float* __restrict__ initial,
                  const bool* __restrict__ starts, const int* __restrict__ segment_begins,
                  float* __restrict__ states, float* __restrict__ final_state, float* y_out, int num_chunks,
                  int chunk, int value_dim, bool reverse) {
  constexpr int kKeys = 32 * KR;
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  auto& shared = *reinterpret_cast<ScanShared<KR>*>(shared_bytes);
  const int thread = threadIdx.x, row_group = thread / 8, column_group = thread % 8;
  const int column0 = blockIdx.x * kColumns + 4 * column_group;  // this thread's first column
  const size_t m = blockIdx.y;
  const size_t state_size = static_cast<size_t>(kKeys) * value_dim;

  // With document starts, the segments between them are walked independently (block slot
  // blockIdx.z takes its share; kernels/common/restart_segments.cuh).
  for_each_restart_segment(segment_begins, num_chunks, blockIdx.z, gridDim.z,
                           [&](int begin, int end, bool first, bool last) {
    // The thread's state elements: key rows row_group*KR + i, columns column0 + j.
    const bool from_initial = initial != nullptr && (reverse ? last : first);
    float s[KR][4];
    for (int i = 0; i < KR; ++i)
      for (int j = 0; j < 4; ++j) {
        const int key = row_group * KR + i, column = column0 + j;
        s[i][j] = from_initial && column < value_dim
                      ? initial[m * state_size + static_cast<size_t>(key) * value_dim + column]
                      : 0.0f;
      }

    for (int step = begin; step < end; ++step) {
      const int n = reverse ? begin + end - 1 - step : step;
      const size_t chunk_offset = (m * num_chunks + n) * static_cast<size_t>(chunk);
      const bool reset = starts != nullptr && starts[n];  // uniform over the block
      if (reset && !reverse)  // a document starts here: it enters from zero
        for (int i = 0; i < KR; ++i)
          for (int j = 0; j < 4; ++j) s[i][j] = 0.0f;
      const float* probe_n = probe + chunk_offset * kKeys;
      const float* writer_n = writer + chunk_offset * kKeys;
      // Eight elements of each per thread loaded before any is stored: the loads are in flight
      // together instead of one round trip to memory after another (the step's largest wait).
      constexpr int kPerThread = kMaxChunk * kKeys / kThreads;  // 8 KR
  #pragma unroll 1
      for (int base = 0; base < kPerThread; base += 8) {
        float p[8], w[8];
  #pragma unroll
        for (int u = 0; u < 8; ++u) {
          const int index = thread + (base + u) * kThreads;
          const bool inside = index / kKeys < chunk;
          p[u] = inside ? probe_n[index] : 0.0f;
          w[u] = inside ? writer_n[index] : 0.0f;
        }
  #pragma unroll
        for (int u = 0; u < 8; ++u) {
          const int index = thread + (base + u) * kThreads;
          const int row = index / kKeys, key = index % kKeys;
          shared.probe_t[key][row] = p[u];
          shared.writer[row][key] = w[u];
        }
      }
      // The state entering this step, to global and to shared memory for the probe product.
      float* states_n = states + (m * num_chunks + n) * state_size;
      for (int i = 0; i < KR; ++i) {
        const int key = row_group * KR + i;
        for (int j = 0; j < 4; ++j) {
          shared.state[key][4 * column_group + j] = s[i][j];
          if (column0 + j < value_dim) states_n[static_cast<size_t>(key) * value_dim + column0 + j] = s[i][j];
        }
      }
      __syncthreads();

      // Y = target_n - probe_n S for rows 2rg, 2rg+1.
      float x[2][4] = {{0, 0, 0, 0}, {0, 0, 0, 0}};
  #pragma unroll 8
      for (int key = 0; key < kKeys; ++key) {
        const float2 p = *reinterpret_cast<const float2*>(&shared.probe_t[key][2 * row_group]);
        const float4 v = *reinterpret_cast<const float4*>(&shared.state[key][4 * column_group]);
        x[0][0] = fmaf(p.x, v.x, x[0][0]); x[0][1] = fmaf(p.x, v.y, x[0][1]);
        x[0][2] = fmaf(p.x, v.z, x[0][2]); x[0][3] = fmaf(p.x, v.w, x[0][3]);
        x[1][0] = fmaf(p.y, v.x, x[1][0]); x[1][1] = fmaf(p.y, v.y, x[1][1]);
        x[1][2] = fmaf(p.y, v.z, x[1][2]); x[1][3] = fmaf(p.y, v.w, x[1][3]);
      }
      for (int r = 0; r < 2; ++r) {
        const int row = 2 * row_group + r;
        for (int j = 0; j < 4; ++j) {
          float value = 0.0f;
          if (row < chunk) {
            value = -x[r][j];
            if (target != nullptr && column0 + j < value_dim)
              value += target[(chunk_offset + row) * value_dim + column0 + j];
            // The thread that read the target element writes Y over it: y_out may be target.
            if (y_out != nullptr && column0 + j < value_dim)
              y_out[(chunk_offset + row) * value_dim + column0 + j] = value;
          }
          shared.y[row][4 * column_group + j] = value;
        }
      }
      __syncthreads();

      // S = decay_n S + addend_n + writer_n^T Y on the thread's own elements.
      const float d = decay[m * num_chunks + n];
      const float* addend_n = addend != nullptr ? addend + (m * num_chunks + n) * state_size : nullptr;
      for (int i = 0; i < KR; ++i) {
        const int key = row_group * KR + i;
        for (int j = 0; j < 4; ++j) {
          float value = d * s[i][j];
          if (addend_n != nullptr && column0 + j < value_dim)
            value += addend_n[static_cast<size_t>(key) * value_dim + column0 + j];
          s[i][j] = value;
        }
      }
      for (int row = 0; row < chunk; ++row) {
        const float4 y = *reinterpret_cast<const float4*>(&shared.y[row][4 * column_group]);
  #pragma unroll
        for (int i = 0; i < KR; ++i) {
          const float w = shared.writer[row][row_group * KR + i];
          s[i][0] = fmaf(w, y.x, s[i][0]); s[i][1] = fmaf(w, y.y, s[i][1]);
          s[i][2] = fmaf(w, y.z, s[i][2]); s[i][3] = fmaf(w, y.w, s[i][3]);
        }
      }
      if (reset && reverse)  // the forward reset's adjoint: nothing flows to the chunks before
        for (int i = 0; i < KR; ++i)
          for (int j = 0; j < 4; ++j) s[i][j] = 0.0f;
      __syncthreads();  // before the next step overwrites probe_t, writer and state
    }
    if (reverse ? first : last)
      for (int i = 0; i < KR; ++i)
        for (int j = 0; j < 4; ++j) {
          const int key = row_group * KR + i, column = column0 + j;
          if (column < value_dim) final_state[m * state_size + static_cast<size_t>(key) * value_dim + column] = s[i][j];
        }
  });
}

template <int KR>
void launch_scan_for(const float* probe, const float* writer, const float* target,
                     const float* addend, const float* decay, const float* initial,
                     const bool* starts, const RestartSegments& segments, float* states, float* final_state,
                     float* y_out, int64_t batch_heads, int64_t num_chunks, int64_t chunk, int64_t value_dim,
                     bool reverse) {
  const size_t shared = sizeof(ScanShared<KR>);
  PRIME_CUDA_CHECK(cudaFuncSetAttribute(chunk_scan_kernel<KR>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(shared)));
  const dim3 grid(static_cast<unsigned>((value_dim + kColumns - 1) / kColumns),
                  static_cast<unsigned>(batch_heads), static_cast<unsigned>(segments.slots));
  chunk_scan_kernel<KR><<<grid, kThreads, shared, at::cuda::getCurrentCUDAStream()>>>(
      probe, writer, target, addend, decay, initial, starts, segments.data(), states, final_state, y_out,
      static_cast<int>(num_chunks), static_cast<int>(chunk), static_cast<int>(value_dim), reverse);
  PRIME_CUDA_CHECK_LAUNCH("chunk_scan_kernel");
}

const float* optional_data(const at::Tensor& tensor) {
  return tensor.defined() ? tensor.data_ptr<float>() : nullptr;
}

}  // namespace

bool chunk_scan_fits_device(int64_t key_dim, int device) {
  const size_t shared = key_dim <= 32    ? sizeof(ScanShared<1>)
                        : key_dim <= 64  ? sizeof(ScanShared<2>)
                        : key_dim <= 128 ? sizeof(ScanShared<4>)
                                         : sizeof(ScanShared<8>);
  return shared <= at::cuda::getDeviceProperties(device)->sharedMemPerBlockOptin;
}

void launch_unit_lower_inverse(const at::Tensor& A, const at::Tensor& T) {
  const char* op = "unit_lower_inverse";
  check_operand(A, op, "A", at::kFloat, 3);
  check_operand(T, op, "T", at::kFloat, 3);
  const int64_t chunk = A.size(1);
  PRIME_CHECK(A.size(2) == chunk && chunk <= kMaxChunk && T.sizes() == A.sizes(), op,
              ": A must be [M, C, C] with C <= ", kMaxChunk, ", got ", A.sizes());
  if (A.size(0) == 0) return;
  const at::cuda::CUDAGuard guard(A.device());  // the stream and launch of the tensors' device
  unit_lower_inverse_kernel<<<static_cast<unsigned>(A.size(0)), kMaxChunk, 0,
                              at::cuda::getCurrentCUDAStream()>>>(
      A.data_ptr<float>(), T.data_ptr<float>(), static_cast<int>(chunk));
  PRIME_CUDA_CHECK_LAUNCH("unit_lower_inverse_kernel");
}

void launch_chunk_scan(const at::Tensor& probe, const at::Tensor& writer, const at::Tensor& target,
                       const at::Tensor& addend, const at::Tensor& decay, const at::Tensor& initial,
                       const at::Tensor& starts, bool reverse, const at::Tensor& states,
                       const at::Tensor& final_state, const at::Tensor& y_out) {
  const char* op = "chunk_scan";
  check_operand(probe, op, "probe", at::kFloat, 4);
  const int64_t M = probe.size(0), N = probe.size(1), C = probe.size(2), Dk = probe.size(3);
  check_operand(writer, op, "writer", at::kFloat, 4);
  check_operand(decay, op, "decay", at::kFloat, 2);
  check_operand(states, op, "states", at::kFloat, 4);
  check_operand(final_state, op, "final_state", at::kFloat, 3);
  const int64_t Dv = states.size(3);
  PRIME_CHECK(writer.sizes() == probe.sizes(), op, ": writer ", writer.sizes(), " vs probe ", probe.sizes());
  PRIME_CHECK(decay.size(0) == M && decay.size(1) == N, op, ": decay ", decay.sizes());
  PRIME_CHECK(states.size(0) == M && states.size(1) == N && states.size(2) == Dk, op, ": states ",
              states.sizes());
  PRIME_CHECK(final_state.size(0) == M && final_state.size(1) == Dk && final_state.size(2) == Dv,
              op, ": final_state ", final_state.sizes());
  PRIME_CHECK(C <= kMaxChunk && Dv % 4 == 0, op, ": chunk ", C, " (<= ", kMaxChunk,
              ") and value dim ", Dv, " (a multiple of 4)");
  if (target.defined()) {
    check_operand(target, op, "target", at::kFloat, 4);
    PRIME_CHECK(target.size(0) == M && target.size(1) == N && target.size(2) == C &&
                target.size(3) == Dv, op, ": target ", target.sizes());
  }
  if (addend.defined()) {
    check_operand(addend, op, "addend", at::kFloat, 4);
    PRIME_CHECK(addend.sizes() == states.sizes(), op, ": addend ", addend.sizes());
  }
  if (initial.defined()) {
    check_operand(initial, op, "initial", at::kFloat, 3);
    PRIME_CHECK(initial.sizes() == final_state.sizes(), op, ": initial ", initial.sizes());
  }
  if (starts.defined()) {
    check_operand(starts, op, "starts", at::kBool, 1);
    PRIME_CHECK(starts.size(0) == N, op, ": starts ", starts.sizes(), " for ", N, " chunks");
  }
  if (y_out.defined()) {
    check_operand(y_out, op, "y_out", at::kFloat, 4);
    PRIME_CHECK(y_out.size(0) == M && y_out.size(1) == N && y_out.size(2) == C && y_out.size(3) == Dv, op,
                ": y_out ", y_out.sizes());
  }
  if (M == 0 || Dv == 0) return;
  const at::cuda::CUDAGuard guard(probe.device());
  const RestartSegments segments = restart_segments(starts, N, M * ((Dv + kColumns - 1) / kColumns));
  const auto run = [&](auto launcher) {
    launcher(probe.data_ptr<float>(), writer.data_ptr<float>(), optional_data(target),
             optional_data(addend), decay.data_ptr<float>(), optional_data(initial),
             starts.defined() ? starts.data_ptr<bool>() : nullptr, segments, states.data_ptr<float>(),
             final_state.data_ptr<float>(), y_out.defined() ? y_out.data_ptr<float>() : nullptr, M, N, C, Dv,
             reverse);
  };
  switch (Dk) {
    case 32: run(launch_scan_for<1>); break;
    case 64: run(launch_scan_for<2>); break;
    case 128: run(launch_scan_for<4>); break;
    case 256: run(launch_scan_for<8>); break;
    default: PRIME_CHECK(false, op, ": key dim ", Dk, " is not 32, 64, 128 or 256");
  }
}

}  // namespace prime::kernels::detail
