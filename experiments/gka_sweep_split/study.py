"""GKA's reverse sweep split in two: the adjoint recurrence alone, then the gradients as stacked products.

CPU study (torch, float64 reference) for the next form of kernels/gka_solve's backward. The reverse sweep
(lib/model/gka_solve.cpp; the on-chip kernel does the same) runs i = N..1 with seven products per iteration:
  loop-carried:  UK = U K^T, U H_0, (W o UK) K          -> H U, the next adjoint
  gradients:     YK = y_i K^T, dK += (W o YK)^T U + (W o UK)^T y_i, dH_0 += y_i^T (e o U), dW += UK o YK
Only the first three feed the next iteration. The gradients are sums over i of products of y_i (the forward's
iterates) and U_i = -omega_i eta A_{i+1} (the row-scaled adjoints), so once the recurrence has written every U_i
they are three products over the stacked iterations, contraction length N C instead of C:
  dH_0 = [y_1 .. y_N]^T [e o U_1 .. e o U_N],  dK = [W o YK_i]_i^T [U_i]_i + [W o UK_i]_i^T [y_i]_i,
  dW = sum_i UK_i o YK_i  (YK_i for all i as one product of the stacked iterates with K^T).
This script checks that the split form is the same gradient (float64), and what each product's precision
costs: the recurrence's products stay as today's kernel forms them (fp32 accuracy), the stacked products are
formed in fp32, bf16x3, one TF32 MMA or one bf16 MMA (operands rounded, fp32 accumulation). Each gradient is
compared with the float64 sweep, beside the gradients' sensitivity to bf16 q and k (the float64 sweep on
bf16-rounded inputs), against the fp32 tests' 1e-4 and the bf16 bound max(1e-2, 4 x sensitivity).

Usage: python3 study.py [--seq 1024] [--dim 128] [--heads 2] [--iters 30] [--seed 0]
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "gka_bf16_solve"))
from study import bf16, chunk_systems, make_inputs, rel, split  # noqa: E402

CHUNK = 64
GRADIENTS = ("q", "K", "H0", "W", "e", "f")


def tf32(x):
    """Round an fp32 tensor to TF32 as the kernels do (kernels/common/tf32_split.cuh: add half an ulp, clear)."""
    bits = x.to(torch.float32).contiguous().view(torch.int32)
    return ((bits + 0x1000) & -0x2000).view(torch.float32).to(x.dtype)


def product(a, b, mode):
    """a @ b with the operands rounded as a kernel of the given mode rounds them, fp32 accumulation."""
    if mode == "fp64":
        return a.double() @ b.double()
    a, b = a.float(), b.float()
    if mode == "fp32":
        return a @ b
    if mode == "tf32x3":
        a_hi, b_hi = tf32(a), tf32(b)
        return tf32(a - a_hi) @ b_hi + a_hi @ tf32(b - b_hi) + a_hi @ b_hi
    if mode == "bf16x3":
        (a_hi, a_lo), (b_hi, b_lo) = split(a), split(b)
        return a_lo @ b_hi + a_hi @ b_lo + a_hi @ b_hi
    if mode == "tf32":
        return tf32(a) @ tf32(b)
    if mode == "bf16":
        return bf16(a) @ bf16(b)
    raise ValueError(mode)


def iterates(q, system, ridge, iters, mode):
    """The forward iteration (as chebyshev_iterate): y_1..y_N and the output, in fp32 (float64 for fp64)."""
    dtype = torch.float64 if mode == "fp64" else torch.float32
    K, H0, W, e, frob = (t.to(dtype) for t in system)
    q = q.to(dtype)
    Kt = K.transpose(-1, -2)
    lam = ridge * frob
    eta = 2.0 / (2.0 * lam + frob)
    spread = 1.0 / (2.0 * (2.0 * ridge + 1.0))
    ys, x, x_prev, omega = [], eta * q, None, 2.0
    for _ in range(iters):
        ys.append(x)
        omega = 1.0 / (1.0 - spread * spread * omega)
        base = eta * q * omega if x_prev is None else x_prev + omega * (eta * q - x_prev)
        x_prev = x
        hx = e * product(x, H0, mode).to(dtype) + product(W * product(x, Kt, mode).to(dtype), K, mode).to(dtype)
        x = base + (1.0 - eta * lam) * omega * x - eta * omega * hx
    return ys, x


def sweep(q, system, ridge, ys, dx, loop_mode, stacked_mode=None):
    """The reverse sweep of gka_solve.cpp. stacked_mode None: every gradient product inside the loop (today's
    form, in loop_mode); otherwise the loop keeps only its three products and the gradients are formed after it
    from the stacked U_i and y_i in stacked_mode."""
    dtype = torch.float64 if loop_mode == "fp64" else torch.float32
    K, H0, W, e, frob = (t.to(dtype) for t in system)
    q, dx = q.to(dtype), dx.to(dtype)
    Kt = K.transpose(-1, -2)
    eta = 2.0 / (2.0 * (frob * ridge) + frob)
    kappa = 1.0 - eta * (frob * ridge)
    spread = 1.0 / (2.0 * (2.0 * ridge + 1.0))
    omegas, omega = [], 2.0
    while len(omegas) < len(ys):
        omega = 1.0 / (1.0 - spread * spread * omega)
        omegas.append(omega)

    def p(a, b, mode=loop_mode):
        return product(a, b, mode).to(dtype)

    g = {name: 0.0 for name in GRADIENTS}
    hy, q_coeff = 0.0, 0.0
    stacked_u, stacked_uk = [], []
    nxt, cur, prev = dx, 0.0, 0.0
    for i in range(len(ys), 0, -1):
        omega, y = omegas[i - 1], ys[i - 1].to(dtype)
        U = nxt * (eta * -omega)
        UK = p(U, Kt)
        WUK = W * UK
        UH0 = p(U, H0)
        HU = p(WUK, K) + e * UH0
        g["e"] = g["e"] + (UH0 * y).sum(-1, keepdim=True)
        hy = hy + (HU * y).sum(-1, keepdim=True)
        if stacked_mode is None:
            YK = p(y, Kt)
            g["W"] = g["W"] + UK * YK
            g["K"] = g["K"] + p((W * YK).transpose(-1, -2), U) + p(WUK.transpose(-1, -2), y)
            g["H0"] = g["H0"] + p(y.transpose(-1, -2), U * e)
        else:
            stacked_u.append(U)
            stacked_uk.append(UK)
        q_coeff = q_coeff + nxt * omega
        cur = HU + kappa * omega * nxt + cur
        if i >= 2:
            prev = prev + nxt * (1.0 - omega)
        nxt, cur, prev = cur, prev, 0.0
    q_coeff = q_coeff + nxt
    if stacked_mode is not None:
        # Oldest first, as a kernel would lay the stacks out: [.., N C, D] and [.., N C, C].
        Us = torch.cat(stacked_u[::-1], dim=-2)
        UKs = torch.cat(stacked_uk[::-1], dim=-2)
        Ys = torch.cat([y.to(dtype) for y in ys], dim=-2)
        n = len(ys)
        Ws = W.repeat(*([1] * (W.dim() - 2)), n, 1)          # W for every stacked block
        es = e.repeat(*([1] * (e.dim() - 2)), n, 1)
        YKs = product(Ys, Kt, stacked_mode).to(dtype)       # [.., N C, C]
        g["W"] = (UKs * YKs).unflatten(-2, (n, -1)).sum(-3)
        g["K"] = (product((Ws * YKs).transpose(-1, -2), Us, stacked_mode).to(dtype) +
                  product((Ws * UKs).transpose(-1, -2), Ys, stacked_mode).to(dtype))
        g["H0"] = product(Ys.transpose(-1, -2), Us * es, stacked_mode).to(dtype)
    g["q"] = eta * q_coeff
    d_eta = (q_coeff * q).sum(-1, keepdim=True) + hy / eta
    g["f"] = d_eta * (-eta / frob)
    return g


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--ridge", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    shape = (args.heads, args.seq // CHUNK, CHUNK, args.dim)
    q, k, log_decay = make_inputs(args.seq, args.dim, args.heads, args.seed)
    q = q.view(shape)
    system = chunk_systems(k, log_decay, CHUNK)
    dx = torch.randn(shape, generator=torch.Generator().manual_seed(args.seed + 2), dtype=torch.float64)

    ys64, _ = iterates(q, system, args.ridge, args.iters, "fp64")
    ref = sweep(q, system, args.ridge, ys64, dx, "fp64")

    # The port against autograd through the unrolled float64 iteration (the sweep's own reference).
    leaves = [t.clone().requires_grad_(True) for t in (q, *system)]
    _, out = iterates(leaves[0], leaves[1:], args.ridge, args.iters, "fp64")
    (out * dx).sum().backward()
    autograd = dict(zip(GRADIENTS, (t.grad for t in leaves)))
    port = max(rel(ref[name], autograd[name]) for name in GRADIENTS)
    split64 = sweep(q, system, args.ridge, ys64, dx, "fp64", "fp64")
    same = max(rel(split64[name], ref[name]) for name in GRADIENTS)

    # The gradients' sensitivity to bf16 inputs: the float64 sweep on q, k times (1 + 2^-9 u), u in [-1, 1].
    gen = torch.Generator().manual_seed(args.seed + 1)
    wobble = lambda t: t * (1.0 + 2.0**-9 * (2.0 * torch.rand(t.shape, generator=gen, dtype=t.dtype) - 1.0))
    q_w, system_w = wobble(q), chunk_systems(wobble(k), log_decay, CHUNK)
    ys_w, _ = iterates(q_w, system_w, args.ridge, args.iters, "fp64")
    sens = sweep(q_w, system_w, args.ridge, ys_w, dx, "fp64")

    print(f"GKA reverse sweep, {args.heads} heads x {args.seq} tokens, D = {args.dim}, chunk {CHUNK}, "
          f"N = {args.iters}, r = {args.ridge}, seed {args.seed}")
    print(f"float64: the sweep vs autograd through the unrolled iteration {port:.1e}; "
          f"split vs in-loop {same:.1e}")
    print(f"{'variant (recurrence / gradient products)':44s}" + "".join(f"{'d' + n:>10s}" for n in GRADIENTS))
    print(f"{'float64, bf16-rounded q, k (sensitivity)':44s}" +
          "".join(f"{rel(sens[n], ref[n]):10.2e}" for n in GRADIENTS))
    ys32, _ = iterates(q, system, args.ridge, args.iters, "tf32x3")
    variants = (("in loop, 3xTF32 (today's kernel)", "tf32x3", None),
                ("split: 3xTF32 / fp32", "tf32x3", "fp32"),
                ("split: 3xTF32 / bf16x3", "tf32x3", "bf16x3"),
                ("split: 3xTF32 / one TF32 MMA", "tf32x3", "tf32"),
                ("split: 3xTF32 / one bf16 MMA", "tf32x3", "bf16"))
    for label, loop_mode, stacked_mode in variants:
        g = sweep(q, system, args.ridge, ys32, dx, loop_mode, stacked_mode)
        print(f"{label:44s}" + "".join(f"{rel(g[n], ref[n]):10.2e}" for n in GRADIENTS))
    ysb, _ = iterates(q, system, args.ridge, args.iters, "bf16x3")
    for label, ys, loop_mode, stacked_mode in (
            ("in loop, 3xTF32; iterates bf16x3", ysb, "tf32x3", None),
            ("in loop, bf16x3; iterates bf16x3", ysb, "bf16x3", None),
            ("split: bf16x3 / bf16x3; iterates bf16x3", ysb, "bf16x3", "bf16x3")):
        g = sweep(q, system, args.ridge, ys, dx, loop_mode, stacked_mode)
        print(f"{label:44s}" + "".join(f"{rel(g[n], ref[n]):10.2e}" for n in GRADIENTS))


if __name__ == "__main__":
    main()
