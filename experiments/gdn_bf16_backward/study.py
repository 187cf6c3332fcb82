"""What would a bf16 backward of GDN's chunked form keep? A CPU study before the kernels.

GDN's written-out backward (kernels/gdn_chunk/gdn_chunk_backward.h; the fp32 kernels' math) is ~20
batched products per 64-step chunk, one reverse walk over the chunks and elementwise chain rule. This
emulates it in torch with each product's operands rounded as a bf16 tensor-core kernel would round
them (fp32 accumulation; a split operand carried as hi + lo, two or three MMAs), the intermediates a
kernel would store rounded to bf16 or fp32, and compares every gradient (q, k, v, g, beta, the
initial state) with the float64 gradient of the same bf16 inputs, beside each gradient's sensitivity
to bf16-sized rounding of q, k, v and dO (each element times 1 + 2^-9 xi): the bound the bf16 kernel
tests hold gradients to is max(1e-2, 4 x that sensitivity).

The saved forward results are what GDN's bf16 forward writes, with its arithmetic emulated
(kernels/gdn_chunk/gdn_forward_bf16_kernels.cu, split walk): T = (I + A)^-1 with its off-diagonal blocks
on TF32 MMAs; W = T diag(beta e^G) K and U' = T diag(beta) V on bf16 operands (T rounded to bf16, or for
training split into hi + lo), stored in bf16; U_n = bf16(U' - W bf16(S)); the carried state S
fp32, updated with bf16 K_d and U_n; the states entering each chunk stored in bf16. The reverse walk's
state G stays fp32 between chunks as the forward's S does. Where a design returns q's, k's and v's
gradients in bf16 (bf16 leaves) they are rounded so.

Usage: python3 study.py [--seq 1024] [--dim 128] [--heads 2] [--seed 0] [--slow] [--designs a,b,...]
Prints one line per design and gradient: error vs float64, the sensitivity, and the ratio.
"""
import argparse
import math

import torch

C = 64  # the kernels' chunk

GRADIENTS = ["q", "k", "v", "g", "beta", "state", "sum(dg g)"]


def bf16(x):
    return x.to(torch.bfloat16).to(x.dtype)


def fp32(x):
    return x.to(torch.float32).to(x.dtype)


def split(x):
    hi = bf16(x)
    return hi, bf16(x - hi)


# A product a @ b in a kernel's arithmetic: "f64" exact; "fp32" fp32 operands (3xTF32 or SIMT fp32);
# "bf16" one MMA on bf16 operands; "left" / "right" that operand split (two MMAs); "x3" both split,
# the lo x lo term dropped (three MMAs). Accumulation in fp32: the result rounded to fp32.
def product(a, b, mode):
    if mode == "f64":
        return a @ b
    if mode == "fp32":
        return fp32(fp32(a) @ fp32(b))
    if mode == "bf16":
        return fp32(bf16(a) @ bf16(b))
    if mode == "left":
        hi, lo = split(a)
        b = bf16(b)
        return fp32(lo @ b + hi @ b)
    if mode == "right":
        hi, lo = split(b)
        a = bf16(a)
        return fp32(a @ lo + a @ hi)
    if mode == "x3":
        a_hi, a_lo = split(a)
        b_hi, b_lo = split(b)
        return fp32(a_lo @ b_hi + a_hi @ b_lo + a_hi @ b_hi)
    raise ValueError(mode)


def tf32(x):
    """x (fp32 values held in float64) rounded to TF32 as the kernels' split does: nearest, ties away, 10
    explicit significand bits."""
    bits = x.to(torch.float32).contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32).to(x.dtype)


def inverse_tf32(A):
    """(I + A)^-1 as the bf16 prep forms it (gdn_forward_common.cuh, unit_lower_inverse_64_tf32): the
    16 x 16 diagonal blocks by substitution in fp32 (here the exact solve rounded to fp32), the blocks
    below by distance from the diagonal on TF32 MMAs with fp32 accumulation: X_ij = sum_k A_ik T_kj,
    T_ij = -T_ii X_ij."""
    eye = torch.eye(C, dtype=A.dtype)
    exact = torch.linalg.solve_triangular(eye + A, eye.expand_as(A), upper=False, unitriangular=True)
    T = torch.zeros_like(exact)
    block = lambda x, i, j: x[..., 16 * i:16 * i + 16, 16 * j:16 * j + 16]  # noqa: E731
    for i in range(4):
        block(T, i, i)[...] = fp32(block(exact, i, i))
    for distance in range(1, 4):
        for j in range(4 - distance):
            i = j + distance
            X = sum(tf32(block(A, i, m)) @ tf32(block(T, m, j)) for m in range(j, i))
            block(T, i, j)[...] = fp32(-(tf32(block(T, i, i)) @ tf32(fp32(X))))
    return T


def store(x, mode):
    return {"f64": lambda t: t, "fp32": fp32, "bf16": bf16}[mode](x)


def make_inputs(heads, seq, dim, seed, slow=False):
    """GDN's core inputs as the kernels' tests make them (tests/test_kernels_gdn.cpp), float64; slow: log
    decays in (-0.0031, -0.0001] instead of (-0.31, -0.01], a memory of thousands of steps where the tests'
    forget within a chunk or two (the reverse walk's rounding then carries over many chunks)."""
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    q = torch.randn(heads, seq, dim, generator=g, dtype=f64)
    q = q / q.norm(dim=-1, keepdim=True) / math.sqrt(dim)
    k = torch.randn(heads, seq, dim, generator=g, dtype=f64)
    k = k / k.norm(dim=-1, keepdim=True)
    v = torch.randn(heads, seq, dim, generator=g, dtype=f64)
    gates = -torch.rand(heads, seq, generator=g, dtype=f64) * 0.3 - 0.01
    if slow:
        gates = gates / 100
    beta = torch.rand(heads, seq, generator=g, dtype=f64) * 0.9 + 0.05
    state = torch.randn(heads, dim, dim, generator=g, dtype=f64) * 0.1
    d_out = torch.randn(heads, seq, dim, generator=g, dtype=f64)
    d_final = torch.randn(heads, dim, dim, generator=g, dtype=f64) * 0.1
    return [bf16(q), bf16(k), bf16(v), fp32(gates), fp32(beta), fp32(state)], bf16(d_out), fp32(d_final)


def chunks(x):  # [h, T, ...] -> [h, N, C, ...]
    h, t = x.shape[:2]
    return x.reshape(h, t // C, C, *x.shape[2:])


def forward(q, k, v, g, beta, state):
    """The chunked form in float64 (lib/model/gdn_rule.cpp's gated_delta_rule_chunked): o, the final
    state, and what the fused forward saves for its backward."""
    qc, kc, vc, gc, bc = chunks(q), chunks(k), chunks(v), chunks(g), chunks(beta)
    gamma = torch.cumsum(gc, -1)
    decay = torch.exp(gamma.unsqueeze(-1) - gamma.unsqueeze(-2)).tril()
    A = (bc.unsqueeze(-1) * (kc @ kc.transpose(-1, -2)) * decay).tril(-1)
    eye = torch.eye(C, dtype=q.dtype)
    T = torch.linalg.solve_triangular(eye + A, eye.expand_as(A), upper=False, unitriangular=True)
    u_local = T @ (bc.unsqueeze(-1) * vc)
    w = T @ ((bc * torch.exp(gamma)).unsqueeze(-1) * kc)
    k_decayed = kc * torch.exp(gamma[..., -1:] - gamma).unsqueeze(-1)
    chunk_decay = torch.exp(gamma[..., -1])
    scores = (qc @ kc.transpose(-1, -2)) * decay
    S = state
    states, us, outs = [], [], []
    for n in range(qc.shape[1]):
        states.append(S)
        U = u_local[:, n] - w[:, n] @ S
        us.append(U)
        outs.append(torch.exp(gamma[:, n]).unsqueeze(-1) * (qc[:, n] @ S) + scores[:, n] @ U)
        S = chunk_decay[:, n, None, None] * S + k_decayed[:, n].transpose(-1, -2) @ U
    o = torch.stack(outs, 1).reshape(q.shape)
    saved = dict(w=w, u=torch.stack(us, 1), k_decayed=k_decayed, decay=chunk_decay, states=torch.stack(states, 1), T=T)
    return o, S, saved


def forward_bf16(q, k, v, g, beta, state, t_products="bf16"):
    """What GDN's bf16 forward (split walk) saves, its arithmetic emulated (see the module's doc);
    t_products "left": W's and U''s products with T split into hi + lo (two MMAs) instead of T rounded."""
    qc, kc, vc, gc, bc = chunks(q), chunks(k), chunks(v), chunks(g), chunks(beta)
    gamma = torch.cumsum(gc, -1)
    decay = fp32(torch.exp(gamma.unsqueeze(-1) - gamma.unsqueeze(-2)).tril(-1))
    A = fp32((bc.unsqueeze(-1) * product(kc, kc.transpose(-1, -2), "bf16") * decay).tril(-1))
    T = inverse_tf32(A)
    w = bf16(product(T, (bc * torch.exp(gamma)).unsqueeze(-1) * kc, t_products))
    u_local = bf16(product(T, bc.unsqueeze(-1) * vc, t_products))
    k_decayed = bf16(kc * torch.exp(gamma[..., -1:] - gamma).unsqueeze(-1))
    chunk_decay = fp32(torch.exp(gamma[..., -1]))
    S = fp32(state)
    states, us = [], []
    for n in range(qc.shape[1]):
        states.append(bf16(S))
        U = bf16(u_local[:, n] - product(w[:, n], S, "bf16"))
        us.append(U)
        S = fp32(chunk_decay[:, n, None, None] * S + product(k_decayed[:, n].transpose(-1, -2), U, "bf16"))
    return dict(w=w, u=torch.stack(us, 1), k_decayed=k_decayed, decay=chunk_decay, states=torch.stack(states, 1), T=T)


def backward(inputs, saved, d_out, d_final, design):
    """gdn_chunk_backward's math with the design's arithmetic (see DESIGNS)."""
    q, k, v, g, beta, _ = inputs
    P = design.get
    qc, kc, vc, gc, bc, d_o = chunks(q), chunks(k), chunks(v), chunks(g), chunks(beta), chunks(d_out)
    W = store(saved["w"], P("saved", "bf16"))
    U = store(saved["u"], P("saved", "bf16"))
    K_d = store(saved["k_decayed"], P("saved", "bf16"))
    S = store(saved["states"], P("states", "bf16"))
    chunk_decay = fp32(saved["decay"])
    gamma = torch.cumsum(gc, -1)  # float64, as the kernels form it
    e_gamma = fp32(torch.exp(gamma))
    decay = fp32(torch.exp(gamma.unsqueeze(-1) - gamma.unsqueeze(-2)).tril())
    mm = lambda name, a, b: product(a, b, P(name, P("default", "bf16")))  # noqa: E731
    t = lambda x: x.transpose(-1, -2)  # noqa: E731

    qk = mm("qk", qc, t(kc))
    scores = fp32(qk * decay)
    G = fp32(d_final)
    grads_after = [None] * qc.shape[1]
    if P("walk", "split") == "fused":
        # The fused reverse walk (kernels/gdn_chunk/gdn_backward_bf16_walk_kernels.cu): per chunk, from
        # bf16 q, k, dO, W and the fp32 G it carries, dU = bf16(scores)^T dO + diag(e^{G_C - G}) (K bf16(G))
        # and G <- e^{G_C} G + Q^T bf16(diag(e^G) dO) + W^T bf16(-dU), every product one bf16 MMA; G and dU
        # leave it in fp32.
        to_end = fp32(torch.exp(gamma[..., -1:] - gamma))
        d_o_decayed = store(fp32(d_o * e_gamma.unsqueeze(-1)), P("walk_operand", "bf16"))
        scores_operand = store(scores, P("walk_operand", "bf16"))
        d_us = [None] * qc.shape[1]
        for n in reversed(range(qc.shape[1])):
            grads_after[n] = G
            KG = mm("walk_kg", kc[:, n], store(G, P("walk_operand", "bf16")))
            d_u_n = fp32(mm("d_u_scores", t(scores_operand[:, n]), d_o[:, n]) + to_end[:, n].unsqueeze(-1) * KG)
            d_us[n] = d_u_n
            G = fp32(chunk_decay[:, n, None, None] * G + fp32(mm("d_states", t(qc[:, n]), d_o_decayed[:, n]) +
                                                             mm("walk_wkg", t(W[:, n]), -d_u_n)))
        d_u = torch.stack(d_us, 1)
        d_initial = G
        Gs = torch.stack(grads_after, 1)
        G_operand = store(Gs, P("g_operand", "bf16"))
    else:
        q_state = fp32(qc * e_gamma.unsqueeze(-1) - mm("scores_w", scores, W))
        d_states = mm("d_states", t(q_state), d_o)  # [h,N,D,D]
        # The reverse walk: G (fp32) the gradient reaching the state after chunk n.
        for n in reversed(range(qc.shape[1])):
            grads_after[n] = G
            KG = mm("walk_kg", K_d[:, n], store(G, P("walk_operand", "bf16")))
            G = fp32(chunk_decay[:, n, None, None] * G + d_states[:, n] - mm("walk_wkg", t(W[:, n]), KG))
        d_initial = G
        Gs = torch.stack(grads_after, 1)
        G_operand = store(Gs, P("g_operand", "bf16"))  # what the per-chunk products read
        d_u = fp32(mm("d_u_scores", t(scores), d_o) + mm("d_u_walk", K_d, G_operand))
    d_w = -mm("d_w", d_u, t(S))
    d_q_decayed = mm("d_q_decayed", d_o, t(S))
    d_k_decayed = mm("d_k_decayed", U, t(G_operand))
    d_chunk_decay = fp32((S * Gs).sum((-1, -2)))
    d_scores = mm("d_scores", d_o, t(U))
    kk = mm("kk", kc, t(kc))
    if P("inverse", "recompute") == "recompute":  # from A in fp32, as the fp32 kernel's inverse does
        A = fp32((bc.unsqueeze(-1) * kk * decay).tril(-1))
        eye = torch.eye(C, dtype=q.dtype)
        T = fp32(torch.linalg.solve_triangular(eye + A, eye.expand_as(A), upper=False, unitriangular=True))
    else:
        T = store(saved["T"], P("inverse", "bf16"))
    d_inverse = fp32(mm("d_inverse_v", d_u, t(bc.unsqueeze(-1) * vc)) +
                     mm("d_inverse_k", d_w, t((bc * e_gamma).unsqueeze(-1) * kc)))
    d_v_in = mm("d_v_in", t(T), d_u)
    d_k_in = mm("d_k_in", t(T), d_w)
    p = mm("p_right", mm("p_left", t(T), d_inverse), t(T))

    # The chain rule (chain_rule_aten), elementwise in fp32.
    to_end = fp32(torch.exp(gamma[..., -1:] - gamma))
    d_qk = fp32(d_scores * decay)
    e = fp32(d_scores * qk * decay)
    dq = fp32(mm("dq_qk", d_qk, kc) + d_q_decayed * e_gamma.unsqueeze(-1))
    dk = mm("dk_qk", t(d_qk), qc)
    d_a = fp32((-p).tril(-1) * decay)
    d_kk = fp32(d_a * bc.unsqueeze(-1))
    dk = fp32(dk + mm("dk_kk", d_kk, kc) + mm("dk_kk_t", t(d_kk), kc))
    d_a_kk = fp32(d_a * kk)
    d_beta = d_a_kk.sum(-1)
    e = fp32(e + d_a_kk * bc.unsqueeze(-1))
    k_scale = bc * e_gamma
    dv = fp32(d_v_in * bc.unsqueeze(-1))
    d_beta = d_beta + (d_v_in * vc).sum(-1)
    k_in_dot = (d_k_in * kc).sum(-1)
    dk = fp32(dk + d_k_in * k_scale.unsqueeze(-1))
    d_beta = fp32(d_beta + k_in_dot * e_gamma)
    d_gamma = k_in_dot * k_scale + (d_q_decayed * qc).sum(-1) * e_gamma
    dg = torch.flip(torch.cumsum(torch.flip(d_gamma, [-1]), -1), [-1])
    dg = dg + torch.flip(torch.cumsum(torch.flip(e, [-2]), -2), [-2]).tril(-1).sum(-1)
    k_decayed_dot = (d_k_decayed * kc).sum(-1) * to_end
    dk = fp32(dk + d_k_decayed * to_end.unsqueeze(-1))
    dg[..., 1:] = dg[..., 1:] + torch.cumsum(k_decayed_dot[..., :-1], -1)
    dg = fp32(dg + (d_chunk_decay * chunk_decay).unsqueeze(-1))
    h, n = qc.shape[:2]
    flat = lambda x: x.reshape(h, n * C, *x.shape[3:])  # noqa: E731
    out = store(flat(dq), P("grads", "fp32")), store(flat(dk), P("grads", "fp32")), store(flat(dv), P("grads", "fp32"))
    return [*out, flat(dg), flat(d_beta), d_initial]


def reference_gradients(inputs, d_out, d_final):
    leaves = [x.clone().requires_grad_(True) for x in inputs]
    o, final, _ = forward(*leaves)
    torch.autograd.backward([o, final], [d_out, d_final])
    return [x.grad for x in leaves]


def relative(a, b):
    return ((a - b).norm() / b.norm()).item()


def with_decay_gradient(grads, g):
    """The gradients and, last, sum_t dg_t g_t per head: what a decay parameter's gradient sums (g =
    -e^{A_log} softplus(...): dA_log = sum dg g), where the steps with strong decays, whose small dg the
    norm of dg hardly sees, weigh most."""
    return [*grads, (grads[3] * g).sum(-1)]


# Each design: the arithmetic of the backward's products and stored intermediates (default for every
# product not named). Names: the products in backward() (mm's first argument), "saved" (W, U_n, K_d),
# "states" (S_n), "walk_operand" (G as the walk's MMA operand), "g_operand" (G as the per-chunk
# products' operand), "walk" ("split": the reverse walk on the addend formed first, as the fp32 backward does;
# "fused": the fused reverse walk's arithmetic, which forms dU too), "inverse" ("recompute" in fp32 from A, or the stored T's rounding), "grads" (the
# gradients of q, k, v returned: fp32, or bf16 for bf16 leaves), "forward" ("bf16": the saved results
# from the emulated bf16 forward; "bf16, T split": the same with W's and U''s products taking T as hi +
# lo; "f64": the float64 forward's, unrounded).
DESIGNS = {
    "f64": dict(default="f64", saved="f64", states="f64", walk_operand="f64", g_operand="f64", inverse="f64",
                forward="f64"),
    "fp32 kernels on the bf16 forward's results": dict(default="fp32", walk_operand="fp32", g_operand="fp32"),
    "the same, q's, k's and v's gradients in bf16": dict(default="fp32", walk_operand="fp32", g_operand="fp32",
                                                          grads="bf16"),
    "all bf16": dict(default="bf16"),
    "all bf16, gradients in bf16": dict(default="bf16", grads="bf16"),
    "bf16, the walk's G split": dict(default="bf16", walk_kg="right"),
    "bf16, the inverse's products split": dict(default="bf16", d_v_in="left", d_k_in="left", p_left="left",
                                               p_right="right"),
    "bf16, G split in the walk and the chunk products": dict(default="bf16", walk_kg="right", d_u_walk="right",
                                                             d_k_decayed="right"),
    "bf16, dW's and dT's products split": dict(default="bf16", d_w="left", d_inverse_v="left", d_inverse_k="left"),
    "bf16, every gradient operand split": dict(default="left", qk="bf16", kk="bf16", scores_w="bf16",
                                               walk_kg="right", d_u_walk="right", d_k_decayed="right",
                                               d_w="left", d_q_decayed="bf16"),
    "bf16x3 everywhere": dict(default="x3"),
    "fp32 products on a forward with T's products split": dict(default="fp32", walk_operand="fp32",
                                                                g_operand="fp32", forward="bf16, T split"),
    "all bf16 on a forward with T's products split": dict(default="bf16", forward="bf16, T split"),
    "f64 with the fused reverse walk": dict(default="f64", saved="f64", states="f64", walk_operand="f64", g_operand="f64",
                                        inverse="f64", forward="f64", walk="fused"),
    "the same with the fused reverse walk": dict(default="bf16", forward="bf16, T split", walk="fused"),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--slow", action="store_true", help="slowly decaying gates (see make_inputs)")
    parser.add_argument("--designs", default="", help="comma-separated names (default: all)")
    args = parser.parse_args()
    assert args.seq % C == 0
    inputs, d_out, d_final = make_inputs(args.heads, args.seq, args.dim, args.seed, args.slow)
    reference = with_decay_gradient(reference_gradients(inputs, d_out, d_final), inputs[3])
    # Sensitivity: the float64 gradients after q, k, v and dO carry bf16-sized rounding.
    g = torch.Generator().manual_seed(args.seed + 1000)
    nudge = lambda x: x * (1 + 2.0 ** -9 * torch.randn(x.shape, generator=g, dtype=x.dtype))  # noqa: E731
    nudged = [nudge(x) if i < 3 else x for i, x in enumerate(inputs)]
    moved = with_decay_gradient(reference_gradients(nudged, nudge(d_out), d_final), inputs[3])
    sensitivity = [relative(m, r) for m, r in zip(moved, reference)]
    _, _, exact = forward(*inputs)
    forwards = {"f64": exact, "bf16": forward_bf16(*inputs), "bf16, T split": forward_bf16(*inputs, t_products="left")}
    print(f"T={args.seq} D={args.dim} H={args.heads} seed={args.seed}{' slow gates' if args.slow else ''}; sensitivity " +
          " ".join(f"{n} {s:.2e}" for n, s in zip(GRADIENTS, sensitivity)))
    names = [n for n in args.designs.split(",") if n] or list(DESIGNS)
    for name in names:
        design = DESIGNS[name]
        grads = backward(inputs, forwards[design.get("forward", "bf16")], d_out, d_final, design)
        grads = with_decay_gradient(grads, inputs[3])
        errors = [relative(a, b) for a, b in zip(grads, reference)]
        worst = max(e / max(1e-2, 4 * s) for e, s in zip(errors, sensitivity))
        print(f"{name}: " + " ".join(f"{n} {e:.2e} ({e / s:.1f}x)" for n, e, s in zip(GRADIENTS, errors, sensitivity)) +
              f"; worst / bound {worst:.2f}" + ("" if worst <= 1 else " OVER"))


if __name__ == "__main__":
    main()
