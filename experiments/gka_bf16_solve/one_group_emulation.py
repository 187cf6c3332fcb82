"""The accuracy GKA's one-warpgroup bf16 solve should have (experiments/kernels/prepared/gka_solve_one_group.diff),
emulated on the CPU: the test's random chunk systems (tests/test_kernels_gka_util.h's random_system: q, keys and
H_0 rounded to bf16, the decays and ||H_t||_F from them), the form's roundings (x split hi + lo for X K^T,
bf16(W o P) for P K, bf16(e^{G} o x) for X H_0, fp32 everywhere else), against the float64 iteration on the same
operands. The kernel's test bounds are set from what this prints.
    python3 experiments/gka_bf16_solve/one_group_emulation.py
"""
import torch


def bf16(x):
    return x.to(torch.bfloat16).to(x.dtype)


def random_system(chunks, C=64, D=128):
    f = torch.float64

    def unit(*sizes):
        x = torch.randn(*sizes, dtype=f)
        return x / x.norm(dim=-1, keepdim=True)

    q, keys = unit(chunks, C, D), unit(chunks, C, D) * (torch.rand(chunks, C, 1, dtype=f) * 0.9 + 0.1)
    history = unit(chunks, 3 * D, D) * 0.5
    h0 = history.transpose(-1, -2) @ history
    G = (-torch.rand(chunks, C, dtype=f) * 0.2 - 0.005).cumsum(-1)
    lower = torch.ones(C, C, dtype=f).tril()
    W = torch.exp((G.unsqueeze(-1) - G.unsqueeze(-2)) * lower) * lower
    e = torch.exp(G).unsqueeze(-1)
    q, keys, h0 = bf16(q), bf16(keys), bf16(h0)
    H_t = e.unsqueeze(-1) * h0.unsqueeze(1) + torch.einsum("mtj,mjab->mtab", W, keys.unsqueeze(-1) * keys.unsqueeze(-2))
    frob = H_t.pow(2).sum((-2, -1)).sqrt().unsqueeze(-1)
    return q, keys, h0, W, e, frob


def solve(q, keys, h0, W, e, frob, iterations, emulate, ridge=0.02):
    dtype = torch.float32 if emulate else torch.float64
    q, keys, h0, W, e, frob = (t.to(dtype) for t in (q, keys, h0, W, e, frob))
    lam = frob * ridge
    eta = 2 / (2 * lam + frob)
    keep = 1 - eta * lam
    c, omega = (1 / (2 * (2 * ridge + 1))) ** 2, 2.0
    x, x_prev = eta * q, None
    for _ in range(iterations):
        omega = 1 / (1 - c * omega)
        w = torch.tensor(omega, dtype=dtype)
        if emulate:
            hi = bf16(x)
            lo = bf16(x - hi)
            P = lo @ keys.transpose(-1, -2) + hi @ keys.transpose(-1, -2)
            Y = bf16(e * x) @ h0 + bf16(P * W) @ keys
        else:
            Y = e * (x @ h0) + (W * (x @ keys.transpose(-1, -2))) @ keys
        eta_q = eta * q
        base = eta_q * w if x_prev is None else eta_q - (eta_q - x_prev) * (1 - w)
        x_prev, x = x, base + keep * w * x - eta * w * Y
    return x


for iterations in (30, 7, 1):
    for seed in (3, 5, 9):
        torch.manual_seed(seed)
        system = random_system(6)
        x64, x = solve(*system, iterations, False), solve(*system, iterations, True)
        error = ((x.double() - x64).norm() / x64.norm()).item()
        print(f"N = {iterations:2d}, seed {seed}: x vs float64 {error:.2e}")
