// The per-chunk kernel of GKA's bf16 forward (gka_forward_bf16.h): for one chunk of 64 steps of
// one batch and head, from bf16 q, k, v, the log decays, alpha and the bf16 states H_0 and S_0^T
// entering the chunk (the walks'), everything the chunked form (lib/model/gka_chunked.cpp)
// computes after its state scans, without leaving the chip:
//   G_t (float64 sums of the log decays), e^{G_t}, W_tj = e^{G_t - G_j} (j <= t);
//   ||H_t||_F^2 = e^{2 G_t} ||H_0||^2 + 2 e^{G_t} sum_j W_tj k_j^T H_0 k_j + sum_ij W_ti W_tj (k_i.k_j)^2
//   (K H_0 and K K^T on the tensor cores, the sums in fp32 in a fixed order);
//   the Chebyshev solve in gka_solve_bf16.cuh's bf16 form (X split for X K^T, one MMA per step for
//   X H_0 and P K), its iterate in registers (gka_solve_bf16_registers.cuh), in shared memory, or in
//   its warpgroups' registers on the warpgroup MMAs (gka_solve_bf16_wgmma.cuh, sm_90a);
//   q~ = scale (q + alpha (x - q)), kept split (hi + lo) for its two products: rounding it to bf16
//   would cost the output ~2x (x is up to 50x larger than q along H's small eigenvectors, where S
//   is small: experiments/gka_bf16_forward);
//   o = e^{G} o (q~ S_0) + ((q~ K^T) o W) V, the chunk matrix in bf16.
// One block per chunk: 2 (D / 32) warps with the iterate in registers (D = 64, 128), 4 (D / 64) on
// the warpgroup MMAs (D = 64, 128), 16 with it in shared memory (any D); D in {32, 64, 128}.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <type_traits>
#include <utility>

#include "kernels/common/cp_async.cuh"
#include "kernels/common/cuda_check.cuh"
#include "kernels/common/wgmma_device.h"
#include "kernels/gka_solve/gka_forward_bf16_launch.h"
#include "kernels/gka_solve/gka_forward_bf16_parts.cuh"
#include "kernels/gka_solve/gka_solve_bf16.cuh"
#include "kernels/gka_solve/gka_solve_bf16_registers.cuh"
#include "kernels/gka_solve/gka_solve_bf16_wgmma.cuh"
#include "kernels/ssd_chunk/ssd_chunk_common.cuh"

namespace prime::kernels::detail {

namespace {

using namespace gka_bf16;
using namespace gka_forward;

// Shared memory past the solve's (Layout(64, D, kBf16Form)): v's rows [64][ld_of(D)] bf16, gamma [64]
// double, W and the squared gram [64][65] fp32, k_j^T H_0 k_j per column group [64][4], the warps'
// parts of ||H_0||^2 [16], e^{G} and ||H_t||_F [64] each, the scan's scratch [64]. S_0^T takes H_0's
// place once the solve is done, q~ the iterate's, the chunk matrix P's. 184 KB at D = 128.
template <int D>
constexpr size_t extra_offset() {
  return (static_cast<size_t>(Layout(kChunk, D, kBf16Form).bytes) + 15) / 16 * 16;
}
template <int D>
constexpr size_t forward_shared_bytes() {
  return extra_offset<D>() + kChunk * ld_of(D) * sizeof(Bf16) + kChunk * sizeof(double) +
         (2 * kChunk * kLdW + kChunk * 4 + kWarps + 3 * kChunk) * 4;
}

// The warpgroup solve's operands fit the arrays the register form leaves unused (gka_forward_bf16_kernel):
// the keys and X_sw (and up to 1,023 bytes of alignment) the split iterate's, H_0 the fp32 iterate's,
// the exchange W's and the squared gram's, eta q H_0's rows' and P's (adjacent, free from the solve's
// start to its end).
template <int D>
constexpr bool wgmma_operands_fit() {
  constexpr Layout L(kChunk, D, kBf16Form);
  return 2 * kChunk * D * 2 + 1023 <= L.x_parts * L.x_size * 2 && D * D * 2 + 1023 <= kChunk * L.ld_f * 4 &&
         kExchangeFloats <= 2 * kChunk * kLdW && L.other_parts == 1 && L.p == L.h + L.h_size &&
         L.h * 2 % 16 == 0 && scaled_q_bytes<D>() <= (L.h_size + L.p_size) * 2 &&
         forward_shared_bytes<D>() + 1024 < (1u << 18);  // shared addresses fit a descriptor's start field
}
static_assert(wgmma_operands_fit<64>() && wgmma_operands_fit<128>(), "the warpgroup solve's operands fit");

// The per-chunk kernel's forms of the solve and their warps (launch_gka_forward_bf16's iterate).
template <int D>
constexpr int warps_of(int form) {
  return form == kIterateRegisters ? register_warps<D>() : form == kIterateWgmma ? wgmma_warps<D>() : kWarps;
}

// Form: kIterateShared (16 warps, gka_solve_bf16.cuh), kIterateRegisters (register_warps<D>(),
// gka_solve_bf16_registers.cuh) or kIterateWgmma (D / 64 warpgroups, gka_solve_bf16_wgmma.cuh: the
// keys and H_0 copied swizzled into the iterate's unused shared arrays, the partial products'
// exchange in W's and the squared gram's place, W formed again after the solve); everything else is
// the same.
template <int D, typename Out, int Form, int Warps = warps_of<D>(Form)>
__global__ void __launch_bounds__(32 * Warps, 1) gka_forward_bf16_kernel(const ForwardParams p) {
  constexpr int kBlockThreads = 32 * Warps;
  extern __shared__ __align__(1024) unsigned char smem_bytes[];
  const Shared s(smem_bytes, Layout(kChunk, D, kBf16Form));
  Bf16* vs = reinterpret_cast<Bf16*>(smem_bytes + extra_offset<D>());
  double* gamma = reinterpret_cast<double*>(vs + kChunk * ld_of(D));
  float* W = reinterpret_cast<float*>(gamma + kChunk);
  float* gram2 = W + kChunk * kLdW;
  float* khk = gram2 + kChunk * kLdW;  // [64][4]
  float* h0_parts = khk + kChunk * 4;  // [16]
  float* from_start = h0_parts + kWarps;
  float* frob = from_start + kChunk;
  float* scan_scratch = frob + kChunk;
  const int g = (threadIdx.x % 32) / 4;
  const ChunkPlace c(p, blockIdx.x, blockIdx.y, D);
  const int valid = c.valid;

  load_prologue<D, kBlockThreads>(p, c, s.K.hi, s.H.hi, gamma, scan_scratch, [&] {
    copy_async<kChunk, D, kBlockThreads>(vs, p.v + c.first_row, c.row_stride, valid);
  });
  fill_w<kBlockThreads>(W, gamma, valid);
  // The warpgroup solve's operands: K and X_sw in the split iterate's place, H_0 in the fp32
  // iterate's (neither form-2 array is used before q~), each 1024-byte aligned with room to spare.
  WgmmaOperands operands{};
  if constexpr (Form == kIterateWgmma) {
    operands.keys = align_1024(smem_bytes);
    operands.scaled = operands.keys + kChunk * D * sizeof(Bf16);
    operands.h0 = align_1024(reinterpret_cast<unsigned char*>(s.Xf));
    operands.exchange = W;
    operands.scaled_q = reinterpret_cast<float4*>(s.H.hi);
    copy_to_swizzled<kChunk, D, kBlockThreads>(operands.keys, s.K.hi, s.ld_d);
    copy_to_swizzled<D, D, kBlockThreads>(operands.h0, s.H.hi, s.ld_d);
    wgmma::fence_proxy_async();
  }
  fill_from_start(from_start, gamma, valid);
  prologue_products<D, Warps>(s.K, s.H, s.ld_d, gram2, khk, h0_parts);
  __syncthreads();

  // ||H_t||_F: the warpgroup form by the recurrences, the register and shared forms by the direct
  // sums.
  if constexpr (Form == kIterateWgmma)
    frob_by_recurrences<D, Warps>(W, gram2, khk, h0_parts, from_start, frob, valid);
  else
    frob_by_direct_sums<D, Warps>(W, gram2, khk, h0_parts, from_start, frob, valid);
  __syncthreads();

  const auto q_pair = [&](int row, int col) {
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p.q + c.first_row + row * c.row_stride + col));
  };
  const auto w_at = [&](int t, int u) { return W[t * kLdW + u]; };
  // q~ for a pair of the chunk's x, split in the iterate's place.
  const auto store_q_tilde = [&](int row, int col, float2 x) {
    const float2 mixed = q_tilde(p, c, row, col, x);
    store_split<true>(s.X, row * s.ld_d + col, mixed.x, mixed.y);
  };
  // After the solve every warp is past the last iteration's second barrier: H_0 and the bf16
  // iterate are read no more. S_0^T streams into H_0's place while each owner turns its block of x
  // into q~ (split, in the iterate's place).
  if constexpr (Form == kIterateWgmma) {
    WgmmaSolve<D> solve;
    solve.start(operands, valid, frob, from_start, p.ridge_strength, q_pair, w_at);  // H_0's rows read no more
    solve.run(operands, p.ridge_strength, p.num_iter);  // its first barrier: every thread holds its W
    __syncthreads();  // every group's last MMAs are done: the operands' and W's arrays are free
    fill_w<kBlockThreads>(W, gamma, valid);
    copy_async<D, D, kBlockThreads>(s.H.hi, p.s_states + c.state_at, D);
    cp_async_commit();
#pragma unroll
    for (int e = 0; e < WgmmaSolve<D>::kAcc; e += 2)
      store_q_tilde(accumulator_row(e), solve.col0 + accumulator_col(e), make_float2(solve.x[e], solve.x[e + 1]));
  } else if constexpr (Form == kIterateRegisters) {
    RegisterSolve<D> solve;
    solve.start(s, valid, frob, from_start, p.ridge_strength, q_pair, w_at);
    solve.run(s, p.ridge_strength, p.num_iter);
    copy_async<D, D, kBlockThreads>(s.H.hi, p.s_states + c.state_at, D);
    cp_async_commit();
    for_each_register_pair(solve.row0, solve.col0, [&](int mt, int t, int e, int row, int col) {
      store_q_tilde(row, col, make_float2(solve.x[mt][t].x[e], solve.x[mt][t].x[e + 1]));
    });
  } else {
    const Roles r(kChunk, D);
    WarpState state;
    for (int i = 0; i < 2; ++i)
      state.rows[i] = RowFactors(frob, from_start, 16 * r.rb + g + 8 * i, valid, p.ridge_strength);
    start_solve(s, r, state, valid, q_pair, w_at);
    run_solve<D, kBf16Form>(s, r, state, p.ridge_strength, p.num_iter, [](int, int, int, float2) {});
    copy_async<D, D, kBlockThreads>(s.H.hi, p.s_states + c.state_at, D);
    cp_async_commit();
    if (r.owner) {
      for_each_block_pair(16 * r.rb, r.c0, [&](int, int, int row, int col) {
        store_q_tilde(row, col, *reinterpret_cast<const float2*>(s.Xf + row * s.ld_f + col));
      });
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // q~ and S_0^T in place
  chunk_matrix<D, Warps>(s.X, s.K, s.ld_d, s.P, s.ld_p, w_at);
  __syncthreads();
  write_output<D, Warps, Out>(p, c, s.X, s.ld_d, s.H, s.P.hi, s.ld_p, vs, s.ld_d, from_start);
}

template <int D, typename Out, int Form>
void launch_form(const ForwardParams& p, int64_t M) {
  const size_t bytes = forward_shared_bytes<D>();
  const auto kernel = gka_forward_bf16_kernel<D, Out, Form>;
  PRIME_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  const dim3 grid(static_cast<unsigned>(p.num_chunks), static_cast<unsigned>(M));
  kernel<<<grid, 32 * warps_of<D>(Form), bytes, at::cuda::getCurrentCUDAStream()>>>(p);
  PRIME_CUDA_CHECK_LAUNCH("gka_forward_bf16_kernel");
}

// The iterate in registers or on the warpgroup MMAs at D = 64 and 128 where asked; D = 32 always in
// shared memory.
template <int D, typename Out>
void launch_typed(const ForwardParams& p, int64_t M, int iterate) {
  if constexpr (D >= 64) {
    if (iterate == kIterateRegisters) return launch_form<D, Out, kIterateRegisters>(p, M);
    if (iterate == kIterateWgmma) return launch_form<D, Out, kIterateWgmma>(p, M);
  }
  launch_form<D, Out, kIterateShared>(p, M);
}

}  // namespace

bool gka_forward_bf16_wgmma_device(const at::Device& device) { return wgmma_runs_on(device); }

bool gka_forward_bf16_fits_device(int64_t D, const at::Device& device) {
  return gka_forward_bf16_shared_bytes(D) <= at::cuda::getDeviceProperties(device.index())->sharedMemPerBlockOptin;
}

size_t gka_forward_bf16_shared_bytes(int64_t D) {
  return D == 32 ? forward_shared_bytes<32>() : D == 64 ? forward_shared_bytes<64>() : forward_shared_bytes<128>();
}

int launch_gka_forward_bf16(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& log_decay,
                             const at::Tensor& alpha, const at::Tensor& h_states, const at::Tensor& s_states,
                             double ridge_strength, int num_iter, double output_scale, int iterate,
                             const at::Tensor& o) {
  const char* op = "gka_forward_bf16";
  check_operand(q, op, "q", at::kBFloat16, 4);
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), D = q.size(3), M = B * H;
  const int64_t N = (T + kChunk - 1) / kChunk;
  PRIME_CHECK(D == 32 || D == 64 || D == 128, op, ": head dim ", D, " is not 32, 64 or 128");
  PRIME_CHECK(M <= 65535, op, ": batch * heads must be <= 65535");
  PRIME_CHECK(num_iter >= 1, op, ": num_iter ", num_iter);
  check_operand_sizes(k, op, "k", at::kBFloat16, q.sizes());
  check_operand_sizes(v, op, "v", at::kBFloat16, q.sizes());
  PRIME_CHECK(o.defined() && (o.scalar_type() == at::kFloat || o.scalar_type() == at::kBFloat16), op,
              ": o must be fp32 or bf16");
  check_operand_sizes(o, op, "o", o.scalar_type(), q.sizes());
  check_operand_sizes(log_decay, op, "log_decay", at::kFloat, {B, T, H});
  if (alpha.defined()) check_operand_sizes(alpha, op, "alpha", at::kFloat, {B, T, H});
  check_operand_sizes(h_states, op, "h_states", at::kBFloat16, {M, N, D, D});
  check_operand_sizes(s_states, op, "s_states", at::kBFloat16, {M, N, D, D});
  for (const auto& [tensor, name] : {std::pair{&q, "q"}, std::pair{&k, "k"}, std::pair{&v, "v"},
                                     std::pair{&h_states, "h_states"}, std::pair{&s_states, "s_states"}})
    check_aligned(*tensor, op, name, 16);
  for (const at::Tensor* operand : {&k, &v, &log_decay, &alpha, &h_states, &s_states, &o})
    PRIME_CHECK(!operand->defined() || operand->device() == q.device(), op, ": operands on different devices");
  PRIME_CHECK(iterate == kIterateShared || iterate == kIterateRegisters || iterate == kIterateWgmma ||
                  iterate == kIterateOneGroup,
              op, ": iterate form ", iterate);
  // What runs: D = 32 the shared form whatever is asked, D = 64 the warpgroup form for the one-group one.
  const int form = D == 32 ? kIterateShared : iterate == kIterateOneGroup && D != 128 ? kIterateWgmma : iterate;
  if (M == 0 || N == 0) return form;
  if ((form == kIterateWgmma || form == kIterateOneGroup) && !gka_forward_bf16_wgmma_device(q.device()))
    throw user_error("PRIME_GKA_FORWARD_ITERATE=", form == kIterateWgmma ? "wgmma" : "one-group",
                     ": the warpgroup-MMA solve needs a Hopper GPU (sm_90), ",
                     at::cuda::getDeviceProperties(q.get_device())->major == 9
                         ? "a build with sm_90a code (PRIME_CUDA_ARCHITECTURES) and its first use outside a CUDA-graph "
                           "capture"
                         : "which this GPU is not",
                     "; unset it here");
  PRIME_CHECK(gka_forward_bf16_shared_bytes(D) <=
                  at::cuda::getDeviceProperties(q.get_device())->sharedMemPerBlockOptin,
              op, ": ", gka_forward_bf16_shared_bytes(D), " bytes of shared memory exceed the device's limit");
  const at::cuda::CUDAGuard guard(q.device());
  ForwardParams p{};
  p.q = reinterpret_cast<const Bf16*>(q.data_ptr());
  p.k = reinterpret_cast<const Bf16*>(k.data_ptr());
  p.v = reinterpret_cast<const Bf16*>(v.data_ptr());
  p.log_decay = log_decay.data_ptr<float>();
  p.alpha = alpha.defined() ? alpha.data_ptr<float>() : nullptr;
  p.h_states = reinterpret_cast<const Bf16*>(h_states.data_ptr());
  p.s_states = reinterpret_cast<const Bf16*>(s_states.data_ptr());
  p.T = static_cast<int>(T);
  p.H = static_cast<int>(H);
  p.num_chunks = static_cast<int>(N);
  p.ridge_strength = ridge_strength;
  p.num_iter = num_iter;
  p.output_scale = static_cast<float>(output_scale);
  p.o = o.data_ptr();
  const bool fp32_out = o.scalar_type() == at::kFloat;
  if (form == kIterateOneGroup)
    launch_gka_forward_bf16_one_group(p, M, fp32_out, q.options());
  else if (D == 32)
    fp32_out ? launch_typed<32, float>(p, M, form) : launch_typed<32, Bf16>(p, M, form);
  else if (D == 64)
    fp32_out ? launch_typed<64, float>(p, M, form) : launch_typed<64, Bf16>(p, M, form);
  else
    fp32_out ? launch_typed<128, float>(p, M, form) : launch_typed<128, Bf16>(p, M, form);
  return form;
}

}  // namespace prime::kernels::detail
