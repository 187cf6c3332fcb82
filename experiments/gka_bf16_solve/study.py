"""How accurate is GKA's chunked Chebyshev solve when its products run on bf16 tensor cores?

CPU study (torch, float64 reference). GKA's chunk system as the kernels apply it (design/ssm-layers.md,
step 6; lib/model/gka_chunked.cpp): per chunk of C positions, H_t x = e^{G_t} H_0 x + sum_{j<=t} w_tj k_j (k_j . x),
lambda_t = r ||H_t||_F, N Chebyshev iterations. The three products of an iteration (X H_0, X K^T, P K with
P = W o (X K^T)) are emulated with their operands rounded as a bf16 tensor-core kernel would round them,
accumulating in fp32; the iterate, the Chebyshev update and ||H||_F stay fp32. Each variant's solution x is
compared with the float64 solve of the same inputs, beside the solve's own sensitivity to bf16 inputs (how far
the float64 x moves when q and k carry bf16-sized rounding: what a bf16 model's inputs already cost).

With --backward, the same for the gradients of sum(x o w) (w random) with respect to q and k, by
autograd through each variant: every bf16 rounding point also rounds the gradient that flows back
through it, as a bf16 backward kernel's operands would be rounded.

Usage: python3 study.py [--seq 1024] [--dim 128] [--heads 2] [--chunk 64] [--iters 30] [--seed 0]
                        [--backward]
"""
import argparse
import math

import torch


def bf16(x):
    return x.to(torch.bfloat16).to(x.dtype)


def split(x):  # x = hi + lo, both bf16-representable
    hi = bf16(x)
    return hi, bf16(x - hi)


def product(a, b, mode):
    """a @ b as a kernel of the given mode would form it (fp32 accumulation)."""
    if mode == "fp32":
        return a @ b
    if mode == "bf16":  # one bf16 MMA: both operands rounded
        return bf16(a) @ bf16(b)
    if mode == "bf16_split_left":  # the left operand (the iterate side) as hi + lo: two MMAs
        a_hi, a_lo = split(a)
        b_r = bf16(b)
        return a_lo @ b_r + a_hi @ b_r
    if mode == "bf16x3":  # a_hi b_hi + a_hi b_lo + a_lo b_hi: three MMAs
        a_hi, a_lo = split(a)
        b_hi, b_lo = split(b)
        return a_lo @ b_hi + a_hi @ b_lo + a_hi @ b_hi
    raise ValueError(mode)


def make_inputs(seq, dim, heads, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(heads, seq, dim, generator=g, dtype=torch.float64)
    k = torch.randn(heads, seq, dim, generator=g, dtype=torch.float64)
    q = q / q.norm(dim=-1, keepdim=True)
    beta = torch.sigmoid(torch.randn(heads, seq, 1, generator=g, dtype=torch.float64))
    k = (beta + 1e-6) * k / k.norm(dim=-1, keepdim=True)
    # log decays in about [-0.3, -0.001]: -exp(U(-7, -1.2))
    log_decay = -torch.exp(-7.0 + 5.8 * torch.rand(heads, seq, generator=g, dtype=torch.float64))
    return q, k, log_decay


def chunk_systems(k, log_decay, chunk):
    """Per chunk: keys [h,n,C,D], H_0 [h,n,D,D], W [h,n,C,C], e^{G_t} [h,n,C,1], ||H_t||_F [h,n,C,1] (float64)."""
    heads, seq, dim = k.shape
    n = seq // chunk
    K = k.view(heads, n, chunk, dim)
    g = log_decay.view(heads, n, chunk)
    G = torch.cumsum(g, dim=-1)
    W = torch.exp(G.unsqueeze(-1) - G.unsqueeze(-2)).tril()  # e^{G_t - G_j}, j <= t
    H0 = torch.zeros(heads, n, dim, dim, dtype=k.dtype)
    state = torch.zeros(heads, dim, dim, dtype=k.dtype)
    for c in range(n):
        H0[:, c] = state
        to_end = torch.exp(G[:, c, -1:] - G[:, c]).unsqueeze(-1)  # [h,C,1]
        state = torch.exp(G[:, c, -1]).view(heads, 1, 1) * state + (K[:, c] * to_end).transpose(-1, -2) @ K[:, c]
    e_start = torch.exp(G).unsqueeze(-1)
    # ||H_t||_F^2 = e^{2G_t} ||H_0||^2 + 2 e^{G_t} sum_j w_tj k_j^T H_0 k_j + sum_{i,j} w_ti w_tj (k_i . k_j)^2
    h0_norm2 = H0.pow(2).sum((-2, -1)).unsqueeze(-1).unsqueeze(-1)
    khk = ((K @ H0) * K).sum(-1, keepdim=True)
    gram2 = (K @ K.transpose(-1, -2)).pow(2)
    frob = torch.sqrt(e_start.pow(2) * h0_norm2 + 2.0 * e_start * (W @ khk) + ((W @ gram2) * W).sum(-1, keepdim=True))
    return K, H0, W, e_start, frob


def solve(q, system, ridge, iters, mode, dtype):
    K, H0, W, e_start, frob = (t.to(dtype) for t in system)
    q = q.to(dtype)
    Kt = K.transpose(-1, -2)

    def apply_H(x):
        scores = W * product(x, Kt, mode)
        return e_start * product(x, H0, mode) + product(scores, K, mode)

    lam = ridge * frob
    eta = 2.0 / (2.0 * lam + frob)
    spread = 1.0 / (2.0 * (2.0 * ridge + 1.0))
    c = spread * spread
    eta_q = eta * q
    x, x_prev, omega = eta_q, None, 2.0
    for _ in range(iters):
        omega = 1.0 / (1.0 - c * omega)
        base = eta_q * omega if x_prev is None else x_prev + omega * (eta_q - x_prev)
        x_prev = x
        x = base + (1.0 - eta * lam) * omega * x - eta * omega * apply_H(x)
    return x


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--ridge", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backward", action="store_true")
    args = parser.parse_args()
    if args.backward:
        return backward_study(args)
    n = args.seq // args.chunk
    q, k, log_decay = make_inputs(args.seq, args.dim, args.heads, args.seed)
    shape = (args.heads, n, args.chunk, args.dim)
    system = chunk_systems(k, log_decay, args.chunk)
    x64 = solve(q.view(shape), system, args.ridge, args.iters, "fp32", torch.float64)
    # The solve's sensitivity to bf16-sized input rounding: q, k times (1 + 2^-9 u), u in [-1, 1].
    g = torch.Generator().manual_seed(args.seed + 1)
    wobble = lambda t: t * (1.0 + 2.0**-9 * (2.0 * torch.rand(t.shape, generator=g, dtype=t.dtype) - 1.0))
    x64_wobbled = solve(wobble(q).view(shape), chunk_systems(wobble(k), log_decay, args.chunk), args.ridge,
                        args.iters, "fp32", torch.float64)
    # The residual of the float64 solve, ||(H + lambda) x - q|| / ||q||, says how converged N iterations are.
    print(f"GKA chunked solve, {args.heads} heads x {args.seq} tokens, D = {args.dim}, chunk {args.chunk}, "
          f"N = {args.iters}, r = {args.ridge}, seed {args.seed}")
    print(f"{'variant':42s} {'x vs float64 (norm-relative)':>30s}")
    print(f"{'float64 with bf16-rounded q, k (sensitivity)':42s} {rel(x64_wobbled, x64):30.3e}")
    for mode, label in (("fp32", "fp32 products (the fp32 kernels' accuracy)"),
                        ("bf16x3", "bf16x3: a_hi b_hi + a_hi b_lo + a_lo b_hi"),
                        ("bf16_split_left", "bf16, iterate split hi + lo (2 MMAs)"),
                        ("bf16", "bf16 operands (1 MMA)")):
        x = solve(q.view(shape), system, args.ridge, args.iters, mode, torch.float32)
        print(f"{label:42s} {rel(x, x64):30.3e}")


def backward_study(args):
    n = args.seq // args.chunk
    shape = (args.heads, n, args.chunk, args.dim)
    q0, k0, log_decay = make_inputs(args.seq, args.dim, args.heads, args.seed)
    w = torch.randn(shape, generator=torch.Generator().manual_seed(args.seed + 2), dtype=torch.float64)

    def gradients(q_in, k_in, mode, dtype):
        q = q_in.clone().requires_grad_(True)
        k = k_in.clone().requires_grad_(True)
        x = solve(q.view(shape), chunk_systems(k, log_decay, args.chunk), args.ridge, args.iters, mode, dtype)
        (x.double() * w).sum().backward()
        return q.grad, k.grad

    dq64, dk64 = gradients(q0, k0, "fp32", torch.float64)
    g = torch.Generator().manual_seed(args.seed + 1)
    wobble = lambda t: t * (1.0 + 2.0**-9 * (2.0 * torch.rand(t.shape, generator=g, dtype=t.dtype) - 1.0))
    dq_w, dk_w = gradients(wobble(q0), wobble(k0), "fp32", torch.float64)
    print(f"GKA chunked solve, gradients of sum(x o w), {args.heads} heads x {args.seq} tokens, D = {args.dim}, "
          f"chunk {args.chunk}, N = {args.iters}, r = {args.ridge}, seed {args.seed}")
    print(f"{'variant':42s} {'dq vs float64':>14s} {'dk vs float64':>14s}")
    print(f"{'float64 with bf16-rounded q, k (sensitivity)':42s} {rel(dq_w, dq64):14.3e} {rel(dk_w, dk64):14.3e}")
    for mode, label in (("fp32", "fp32 products"), ("bf16x3", "bf16x3"), ("bf16", "bf16 operands (1 MMA)")):
        dq, dk = gradients(q0, k0, mode, torch.float32)
        print(f"{label:42s} {rel(dq, dq64):14.3e} {rel(dk, dk64):14.3e}")


if __name__ == "__main__":
    main()
