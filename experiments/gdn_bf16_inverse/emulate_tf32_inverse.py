# A layout check of kernels/gdn_chunk/gdn_forward_common.cuh unit_lower_inverse_64_tf32 (step 2): the same
# index expressions per lane and the m16n8k8 fragment layouts of mma_tf32.cuh, in float64 arithmetic with
# exact diagonal blocks and warps run one after another; prints how far the result is from the exact
# inverse (~1e-15 if every index and fragment is right; swapping two fragment registers gives O(1)).
# It does not model the TF32 rounding: study.py in this folder measures what that costs W and U'.
import torch
torch.manual_seed(0)
ld = 68
# A strictly lower 64x64 with moderate entries
A = torch.tril(torch.randn(64, 64, dtype=torch.float64) * 0.2, diagonal=-1)
am = torch.zeros(64 * ld, dtype=torch.float64); tm = torch.zeros(64 * ld, dtype=torch.float64)
for r in range(64):
    am[r * ld: r * ld + 64] = A[r]
# phase 1 (diagonal blocks) exactly
Tex = torch.linalg.inv(torch.eye(64, dtype=torch.float64) + A)
for b in range(4):
    for r in range(16):
        for c in range(16):
            tm[(16 * b + r) * ld + 16 * b + c] = torch.linalg.inv(torch.eye(16, dtype=torch.float64) + A[16*b:16*b+16, 16*b:16*b+16])[r, c]
def block_product(acc, a, a_row0, a_col0, b, b_row0, b_col0):
    for k0 in (0, 8):
        Afr = torch.zeros(16, 8, dtype=torch.float64)
        frags = {}
        for lane in range(32):
            g, t = lane // 4, lane % 4
            pa = (a_row0 + g) * ld + a_col0 + k0 + t
            fa = [a[pa], a[pa + 8 * ld], a[pa + 4], a[pa + 8 * ld + 4]]
            Afr[g, t], Afr[g + 8, t], Afr[g, t + 4], Afr[g + 8, t + 4] = fa
        for u in (0, 1):
            Bfr = torch.zeros(8, 8, dtype=torch.float64)
            for lane in range(32):
                g, t = lane // 4, lane % 4
                pb = (b_row0 + k0 + t) * ld + b_col0 + 8 * u + g
                Bfr[t, g], Bfr[t + 4, g] = b[pb], b[pb + 4 * ld]
            D = Afr @ Bfr
            for lane in range(32):
                g, t = lane // 4, lane % 4
                acc[lane][u][0] += D[g, 2 * t]; acc[lane][u][1] += D[g, 2 * t + 1]
                acc[lane][u][2] += D[g + 8, 2 * t]; acc[lane][u][3] += D[g + 8, 2 * t + 1]
for distance in (1, 2, 3):
    for warp in range(8):
        j, i = warp, warp + distance
        if i >= 4: continue
        x = [[[0.0] * 4 for _ in range(2)] for _ in range(32)]
        for m in range(j, i): block_product(x, am, 16 * i, 16 * m, tm, 16 * m, 16 * j)
        for lane in range(32):
            g, t = lane // 4, lane % 4
            for u in (0, 1):
                for half in (0, 1):
                    p = (16 * j + g + 8 * half) * ld + 16 * i + 8 * u + 2 * t
                    am[p], am[p + 1] = x[lane][u][2 * half], x[lane][u][2 * half + 1]
        y = [[[0.0] * 4 for _ in range(2)] for _ in range(32)]
        block_product(y, tm, 16 * i, 16 * i, am, 16 * j, 16 * i)
        for lane in range(32):
            g, t = lane // 4, lane % 4
            for u in (0, 1):
                for half in (0, 1):
                    p = (16 * i + g + 8 * half) * ld + 16 * j + 8 * u + 2 * t
                    tm[p], tm[p + 1] = -y[lane][u][2 * half], -y[lane][u][2 * half + 1]
T = torch.stack([tm[r * ld: r * ld + 64] for r in range(64)])
print("max |T - inverse| over the lower triangle:", (torch.tril(T) - Tex).abs().max().item(), " |T| max", Tex.abs().max().item())
