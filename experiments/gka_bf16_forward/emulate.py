"""How accurate would a bf16 GKA forward be as a whole? CPU emulation of a three-launch design.

The three launches are emulated with their operands rounded where bf16 kernels would round them, fp32 elsewhere:
  1. H's walk (kernels/ssd_chunk's bf16 walk, u = v = k): rows of k scaled by e^{G_end - G_t} and rounded to
     bf16, the state carried in fp32, stored in bf16 where it enters a chunk;
  2. per chunk: ||H_t||_F from the bf16 H_0 and bf16 keys (fp32 sums), the Chebyshev solve with each of its
     products' operands rounded one of two ways (experiments/gka_bf16_solve's modes: "bf16", one MMA per
     step on bf16 operands; "bf16_split_left", the iterate-side operand (X or P) as hi + lo parts against the
     bf16 keys or H_0, two MMAs), q~ = D^-1/2 (q + alpha (x - q)) either rounded to bf16 or kept (split);
  3. the gated linear attention: the S walk as (1) with u = v (the bf16 state entering each chunk), the chunk
     matrix (q~ K^T) o W rounded to bf16, e^{G_t} applied to q~_t S_0^T in fp32.
The result is compared with the float64 chunked form on the same inputs, beside that form's sensitivity to bf16
q, k, v (the float64 form on bf16-rounded q, k, v): the tests hold each output within max(1e-2, 4 x that).

Usage: python3 emulate.py [--seq 1024] [--dim 128] [--heads 2] [--iters 30] [--seed 0]
"""
import argparse
import math
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "gka_bf16_solve"))
from study import bf16, chunk_systems, make_inputs, product, rel, solve  # noqa: E402

CHUNK = 64


def solve_products(q, system, ridge, iters, modes):
    """study.solve in fp32 with each product's own rounding mode: modes = (X K^T, X H_0, P K)."""
    K, H0, W, e_start, frob = (t.to(torch.float32) for t in system)
    q = q.to(torch.float32)
    Kt = K.transpose(-1, -2)

    def apply_H(x):
        scores = W * product(x, Kt, modes[0])
        return e_start * product(x, H0, modes[1]) + product(scores, K, modes[2])

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


def walk(u, v, log_decay, emulate):
    """States entering each chunk and the final state of S = sum_t e^{G_end - G_t} u_t v_t^T per chunk, decayed.

    u, v [h, n*C, D]; emulate: rows of u scaled then rounded to bf16, fp32 state, bf16 states out."""
    heads, seq, dim = u.shape
    n = seq // CHUNK
    dtype = torch.float32 if emulate else torch.float64
    U = u.view(heads, n, CHUNK, dim).to(dtype)
    V = v.view(heads, n, CHUNK, dim).to(dtype)
    G = torch.cumsum(log_decay.view(heads, n, CHUNK), -1)
    state = torch.zeros(heads, dim, dim, dtype=dtype)
    entering = []
    for c in range(n):
        entering.append(bf16(state) if emulate else state)
        factor = torch.exp(G[:, c, -1:] - G[:, c]).unsqueeze(-1).to(dtype)
        rows = bf16(U[:, c] * factor) if emulate else U[:, c] * factor
        state = torch.exp(G[:, c, -1]).view(heads, 1, 1).to(dtype) * state + rows.transpose(-1, -2) @ V[:, c]
    return torch.stack(entering, 1), state


def forward(q, k, v, alpha, log_decay, iters, ridge, emulate, modes=("bf16_split_left",) * 3, round_q_tilde=False):
    heads, seq, dim = q.shape
    n = seq // CHUNK
    scale = 1.0 / math.sqrt(dim)
    shape = (heads, n, CHUNK, dim)
    G = torch.cumsum(log_decay.view(heads, n, CHUNK), -1)
    W = torch.exp(G.unsqueeze(-1) - G.unsqueeze(-2)).tril()
    e_start = torch.exp(G).unsqueeze(-1)
    if emulate:
        q, k, v = bf16(q), bf16(k), bf16(v)
        H0, H_final = walk(k, k, log_decay, True)
        K = k.view(shape).float()
        h0_norm2 = H0.pow(2).sum((-2, -1)).unsqueeze(-1).unsqueeze(-1)
        khk = ((bf16(K) @ H0) * K).sum(-1, keepdim=True)
        gram2 = (K @ K.transpose(-1, -2)).pow(2)
        Wf, ef = W.float(), e_start.float()
        frob = torch.sqrt(ef.pow(2) * h0_norm2 + 2.0 * ef * (Wf @ khk) + ((Wf @ gram2) * Wf).sum(-1, keepdim=True))
        x = solve_products(q.view(shape), (K, H0, Wf, ef, frob), ridge, iters, modes)
        a = alpha.view(heads, n, CHUNK, 1).float()
        qt = scale * (q.view(shape).float() + a * (x - q.view(shape).float()))
        if round_q_tilde:
            qt = bf16(qt)
        S0, S_final = walk(v, k, log_decay, True)  # the SSD state [v dim, k dim] = S^T
        # q~ enters its two products split (hi + lo: 2 MMAs against bf16 K and S_0), so as fp32 here.
        scores = bf16((qt @ K.transpose(-1, -2)) * Wf)
        o = ef * (qt @ S0.transpose(-1, -2)) + scores @ v.view(shape).float()
        return o.reshape(heads, seq, dim), H_final, S_final.transpose(-1, -2)
    system = chunk_systems(k, log_decay, CHUNK)
    x = solve(q.view(shape), system, ridge, iters, "fp32", torch.float64)
    qt = scale * (q.view(shape) + alpha.view(heads, n, CHUNK, 1) * (x - q.view(shape)))
    K = k.view(shape)
    S0, S_final = walk(v, k, log_decay, False)
    o = e_start * qt @ S0.transpose(-1, -2) + ((qt @ K.transpose(-1, -2)) * W) @ v.view(shape)
    _, H_final = walk(k, k, log_decay, False)
    return o.reshape(heads, seq, dim), H_final, S_final.transpose(-1, -2)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--ridge", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    q, k, log_decay = make_inputs(args.seq, args.dim, args.heads, args.seed)
    g = torch.Generator().manual_seed(args.seed + 7)
    v = torch.randn(q.shape, generator=g, dtype=torch.float64) * k.norm(dim=-1, keepdim=True)  # scaled by beta
    alpha = torch.sigmoid(torch.randn(args.heads, args.seq, generator=g, dtype=torch.float64))
    run = lambda q_, k_, v_, emulate: forward(q_, k_, v_, alpha, log_decay, args.iters, args.ridge, emulate)
    reference = run(q, k, v, False)
    rounded = run(bf16(q), bf16(k), bf16(v), False)
    print(f"GKA bf16 forward (emulated), {args.heads} heads x {args.seq} tokens, D = {args.dim}, "
          f"N = {args.iters}, seed {args.seed}")
    print(f"{'design':58s} {'output':>6s} {'vs float64':>11s} {'sensitivity':>12s} {'bound':>9s}")
    one, split = "bf16", "bf16_split_left"
    for label, modes, round_q_tilde in (("solve 1 bf16 MMA per product, q~ in bf16", (one,) * 3, True),
                                        ("solve 1 bf16 MMA per product, q~ split", (one,) * 3, False),
                                        ("solve X and P split (2 MMAs), q~ in bf16", (split,) * 3, True),
                                        ("solve X and P split (2 MMAs), q~ split", (split,) * 3, False),
                                        ("solve X split for X K^T only, q~ split", (split, one, one), False)):
        ours = forward(q, k, v, alpha, log_decay, args.iters, args.ridge, True, modes, round_q_tilde)
        for name, a, b, c in zip(("o", "H", "S"), ours, reference, rounded):
            error, sensitivity = rel(a, b), rel(c, b)
            bound = max(1e-2, 4 * sensitivity)
            print(f"{label if name == 'o' else '':58s} {name:>6s} {error:11.3e} {sensitivity:12.3e} {bound:9.2e}"
                  f"{'' if error <= bound else '  over'}")


if __name__ == "__main__":
    main()
