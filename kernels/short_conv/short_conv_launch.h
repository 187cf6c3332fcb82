// Launchers of kernels/short_conv (defined in short_conv_kernels.cu; called only by
// short_conv.cpp in CUDA builds). u, y and their gradients are contiguous [B,T,C] CUDA tensors
// of fp32 or bf16; weight is fp32 [C,K] with 2 <= K <= 4, bias fp32 [C] or undefined; history
// and state are contiguous [B,C,K-1] of fp32 or bf16 (any mix with u's dtype) or undefined
// (zeros before t = 0); starts a contiguous [B,T] bool CUDA tensor or undefined (packed documents:
// no window reaches back across a flagged step). The launchers check shapes, dtypes and the launch.
// bf16 operands with C a multiple of 8 and 16-byte aligned data pointers take kernels with
// 16-byte accesses (the same results, bit for bit); any other operands take the scalar kernels.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace prime::kernels::detail {

// Rows of the weight-gradient partials: one per (batch row, time tile of the backward kernel).
int64_t short_conv_partial_rows(int64_t batch, int64_t tokens);

// y = silu(bias + sum_j weight[:, j] x_{t-K+1+j}), x = [history, u] along time.
void launch_short_conv_forward(const at::Tensor& u, const at::Tensor& weight, const at::Tensor& bias,
                               const at::Tensor& history, const at::Tensor& starts,
                               const at::Tensor& y);

// From grad_y: writes grad_u, grad_history (skipped when undefined) and partials
// [short_conv_partial_rows(B, T), K+1, C] fp32, whose sum over rows is [dweight^T; dbias].
void launch_short_conv_backward(const at::Tensor& grad_y, const at::Tensor& u,
                                const at::Tensor& weight, const at::Tensor& bias,
                                const at::Tensor& history, const at::Tensor& starts,
                                const at::Tensor& grad_u, const at::Tensor& grad_history,
                                const at::Tensor& partials);

// state (in place) = the last K-1 steps of [state, u] along time.
void launch_short_conv_state_update(const at::Tensor& u, const at::Tensor& state);

// One decode step (u [B,1,C]): y from [state, u], then state (in place) shifted by u.
void launch_short_conv_decode(const at::Tensor& u, const at::Tensor& weight, const at::Tensor& bias,
                              const at::Tensor& state, const at::Tensor& y);

}  // namespace prime::kernels::detail
