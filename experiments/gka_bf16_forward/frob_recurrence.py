"""||H_t||_F's intra-chunk term two ways in fp32, against float64 (the CPU check behind
gka_forward_bf16_kernels.cu's recurrence; kernels/README.md, gka_solve v7).

intra_t = sum_{i,j<=t} W_ti W_tj (k_i . k_j)^2 with W_ti = e^{G_t - G_i} (i <= t). The direct sums
(what the kernel did: for each row t and key j, sum_i over i <= t, O(C^3)) against the recurrence it
does now: intra_t = d_t^2 intra_{t-1} + 2 sum_{i<t} W_ti (k_t . k_i)^2 + (k_t . k_t)^2 with
d_t = W_{t,t-1}, O(C^2), scanned the way one warp scans it (lane l: rows 2l and 2l+1, their two steps
composed, an inclusive scan over the 32 lanes, then each row from the lanes before). L2-normalised
random keys, log decays drawn from a range per case, rows past `valid` zero.

  python3 experiments/gka_bf16_forward/frob_recurrence.py    (seconds; results/frob_recurrence_cpu.txt)
"""
import torch
torch.manual_seed(0)
def warp_scan(a, b):
    """x_t = a_t x_{t-1} + b_t (x_{-1} = 0) for t < 64, in fp32 as one warp scans it: lane l holds rows 2l and
    2l+1, their two steps composed, an inclusive scan over the lanes, then each row from the lane before."""
    A = torch.zeros(32); B = torch.zeros(32)
    for l in range(32):
        A[l] = a[2*l+1] * a[2*l]; B[l] = a[2*l+1] * b[2*l] + b[2*l+1]
    off = 1
    while off < 32:
        An, Bn = A.clone(), B.clone()
        for l in range(off, 32):
            An[l] = A[l] * A[l-off]; Bn[l] = A[l] * B[l-off] + B[l]
        A, B = An, Bn; off *= 2
    x = torch.zeros(64)
    for l in range(32):
        prev = B[l-1] if l > 0 else torch.zeros(())
        x[2*l] = a[2*l] * prev + b[2*l]; x[2*l+1] = a[2*l+1] * x[2*l] + b[2*l+1]
    return x

def check(C=64, D=128, logd=(-0.01,-0.001), valid=64):
    k = torch.randn(C, D, dtype=torch.float64); k = k / k.norm(dim=1, keepdim=True)
    k[valid:] = 0
    g = torch.empty(C, dtype=torch.float64).uniform_(*logd); g[valid:] = 0
    G = torch.cumsum(g, 0)
    W64 = torch.exp(G[:, None] - G[None, :]).tril()
    W64[valid:] = 0
    G2_64 = (k @ k.T) ** 2
    intra64 = ((W64 @ G2_64) * W64).sum(1)
    # fp32 as the kernel: W from float(G_t - G_j), G2 from fp32 gram
    W = torch.exp((G[:, None] - G[None, :]).float()).tril(); W[valid:] = 0
    k32 = k.float()
    G2 = (k32 @ k32.T) ** 2
    # direct (the kernel before): per row t and key j, weighted = sum_{i<=t} G2[j,i] W[t,i] in order;
    # intra_t += W[t,j] weighted
    direct = torch.zeros(C)
    for t in range(C):
        acc = torch.zeros((), dtype=torch.float32)
        for j in range(C):
            wsum = torch.zeros((), dtype=torch.float32)
            for i in range(t + 1): wsum = wsum + G2[j, i] * W[t, i]
            acc = acc + W[t, j] * wsum
        direct[t] = acc
    # recurrence: row_terms_t = 2 sum_{i<t} W[t,i] G2[t,i] + G2[t,t]; d_t = W[t,t-1]
    rows = torch.zeros(C)
    for t in range(C):
        s = torch.zeros((), dtype=torch.float32)
        for i in range(t): s = s + W[t, i] * G2[t, i]
        rows[t] = 2 * s + G2[t, t]
    d = torch.zeros(C); d[1:] = torch.stack([W[t, t - 1] for t in range(1, C)])
    rec = warp_scan(d * d, rows)
    # cross_t = sum_{j<=t} W_tj k_j^T H_0 k_j (H_0 PSD): the same scan with a_t = d_t.
    R = torch.randn(D, D, dtype=torch.float64) / D ** 0.5
    khk64 = ((k @ (R @ R.T)) * k).sum(1)
    cross64 = W64 @ khk64
    cross = warp_scan(d, khk64.float())
    mc = cross64 > 0
    e_cross = ((cross.double() - cross64).abs() / cross64)[mc].max().item()
    m = intra64 > 0
    e_dir = ((direct.double() - intra64).abs() / intra64)[m].max().item()
    e_rec = ((rec.double() - intra64).abs() / intra64)[m].max().item()
    e_between = ((rec - direct).abs() / direct.clamp_min(1e-30))[m].max().item()
    past = max(rec[valid:].abs().max().item(), cross[valid:].abs().max().item()) if valid < C else 0.0
    print(f"log decays in {logd}, valid {valid}: intra, largest relative error from float64: direct {e_dir:.2e}, "
          f"recurrence {e_rec:.2e} (between them {e_between:.2e}); cross, recurrence {e_cross:.2e}; "
          f"rows past valid {past}")
for logd in [(-0.01,-0.001), (-0.3,-0.001), (-5.0,-0.5), (-60.0,-20.0)]:
    check(logd=logd)
check(logd=(-0.3,-0.001), valid=37)
