"""How accurate is GDN's chunk inverse (I + A)^-1 when its blockwise products run on tensor cores?

CPU study (torch, float64 reference). GDN's chunked form (design/ssm-layers.md; kernels/gdn_chunk) builds,
per chunk of 64 steps, A = strictly-lower(beta_i (k_i . k_j) e^{Gamma_i - Gamma_j}) and T = (I + A)^-1, then
W = T diag(beta e^Gamma) K and U' = T diag(beta) V, stored in bf16 by the bf16 forward. The kernels invert
blockwise over 16 x 16 blocks: each diagonal block T_ii by forward substitution, then by distance from the
diagonal X_ij = sum_{k=j}^{i-1} A_ik T_kj and T_ij = -T_ii X_ij, all in fp32 on the SIMT cores. This study runs
those off-diagonal products with their operands rounded as a tensor-core kernel would round them (bf16, TF32,
bf16x3; fp32 accumulation), the diagonal blocks as now, and compares T and the stored bf16 W with float64.

Keys are random directions mixed with one shared direction (--correlation c: k ~ c base + (1 - c) noise,
L2-normalised), so that K K^T ranges from near the identity (c = 0) to near all ones (c -> 1), where A is large
and T's entries alternate in sign.

Usage: python3 study.py [--chunks 256] [--dim 128] [--correlation 0] [--seed 0]
"""
import argparse

import torch


def bf16(x):
    return x.to(torch.bfloat16).to(x.dtype)


def tf32(x):  # round to 10 explicit mantissa bits (nearest, ties away), as cvt.rna.tf32.f32
    bits = x.float().view(torch.int32)
    bits = (bits + 0x1000) & ~0x1FFF
    return bits.view(torch.float32).to(x.dtype)


def product(a, b, mode):
    if mode == "fp32":
        return a @ b
    if mode == "bf16":
        return bf16(a) @ bf16(b)
    if mode == "tf32":
        return tf32(a) @ tf32(b)
    if mode == "bf16x3":
        a_hi = bf16(a); a_lo = bf16(a - a_hi)
        b_hi = bf16(b); b_lo = bf16(b - b_hi)
        return a_lo @ b_hi + a_hi @ b_lo + a_hi @ b_hi
    raise ValueError(mode)


def make_chunks(chunks, dim, correlation, seed):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(chunks, 1, dim, generator=g, dtype=torch.float64)
    base = base / base.norm(dim=-1, keepdim=True)
    noise = torch.randn(chunks, 64, dim, generator=g, dtype=torch.float64)
    k = correlation * base + (1.0 - correlation) * noise / noise.norm(dim=-1, keepdim=True)
    k = k / torch.sqrt((k * k).sum(-1, keepdim=True) + 1e-6)
    v = torch.randn(chunks, 64, dim, generator=g, dtype=torch.float64)
    beta = torch.sigmoid(torch.randn(chunks, 64, generator=g, dtype=torch.float64))
    log_decay = -torch.exp(-7.0 + 5.8 * torch.rand(chunks, 64, generator=g, dtype=torch.float64))
    gamma = torch.cumsum(log_decay, -1)
    decay = torch.exp(gamma.unsqueeze(-1) - gamma.unsqueeze(-2))
    A = torch.tril(beta.unsqueeze(-1) * (k @ k.transpose(-1, -2)) * decay, diagonal=-1)
    return A, k, v, beta, gamma


def block(M, i, j):  # the 16 x 16 block (i, j) of every chunk's matrix, a view
    return M[:, 16 * i:16 * i + 16, 16 * j:16 * j + 16]


def blockwise_inverse(A, mode, dtype):
    A = A.to(dtype)
    n = A.shape[0]
    T = torch.zeros_like(A)
    eye = torch.eye(16, dtype=dtype)
    for i in range(4):  # diagonal blocks: forward substitution in the working precision (as now)
        block(T, i, i)[:] = torch.linalg.solve_triangular(eye + block(A, i, i), eye.expand(n, 16, 16), upper=False,
                                                          unitriangular=True)
    for distance in range(1, 4):
        for j in range(4 - distance):
            i = j + distance
            X = sum(product(block(A, i, m), block(T, m, j), mode) for m in range(j, i))
            block(T, i, j)[:] = -product(block(T, i, i), X, mode)
    return T


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=256)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--correlation", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    A, k, v, beta, gamma = make_chunks(args.chunks, args.dim, args.correlation, args.seed)
    eye = torch.eye(64, dtype=torch.float64)
    T64 = torch.linalg.solve_triangular(eye + A, eye.expand_as(A), upper=False, unitriangular=True)
    rhs_w = (beta * torch.exp(gamma)).unsqueeze(-1) * k
    W64 = T64 @ rhs_w
    # What the bf16 forward stores already costs: W from the exact T, rounded to bf16 on the way out.
    print(f"GDN chunk inverse, {args.chunks} chunks of 64, D = {args.dim}, key correlation {args.correlation}, "
          f"seed {args.seed}; ||A||_F up to {A.norm(dim=(-2, -1)).max().item():.2f}, "
          f"||T||_F up to {T64.norm(dim=(-2, -1)).max().item():.2f}")
    print(f"{'off-diagonal products':34s} {'T vs float64':>14s} {'bf16 W vs float64':>18s}")
    print(f"{'(exact T; W stored as bf16)':34s} {0.0:14.3e} {rel(bf16(W64), W64):18.3e}")
    for mode in ("fp32", "bf16x3", "tf32", "bf16"):
        T = blockwise_inverse(A, mode, torch.float32)
        # W as the bf16 forward forms it: bf16(T) times the bf16 right-hand side, fp32 accumulation, bf16 out
        W = bf16(bf16(T) @ bf16(rhs_w.float()))
        print(f"{mode:34s} {rel(T, T64):14.3e} {rel(W, W64):18.3e}")


if __name__ == "__main__":
    main()
