#!/usr/bin/env python3
"""GDN's fused walk on the warpgroup MMAs (kernels/gdn_chunk/gdn_forward_bf16_walk_wgmma_kernels.cu)
emulated on the CPU: its index arithmetic ported line for line (the copies into the 128-byte swizzle,
accumulator_pair_offset, every descriptor as gdn_walk_wgmma_descriptors.h builds it, read back the way
the PTX ISA defines a descriptor's reading, the accumulator layout, the buffers' parities, the time < T
guard), bf16 rounding off, against the walk's math in float64 over three chunks with a partial last
chunk and an initial state. A wrong offset or descriptor shows as an error of order one; the port
matches to ~1e-14. The threads run one after another, so it checks addresses, not the barriers.

  python3 experiments/gdn_bf16_walk/emulate_wgmma_walk.py [--whole-scores] [--double-buffer-wu]

The scores are formed as the kernel forms them: columns 32 g .. by group g of 0 and 1 on the m64n32k16
shape (16 accumulators a thread). --whole-scores emulates the form before, group 0 forming all 64
columns; --double-buffer-wu emulates wgmma_wu_double_buffer.patch (written against that form): W and U'
double-buffered and fetched with Q and K a chunk ahead.
"""
import argparse

import numpy as np

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument('--double-buffer-wu', action='store_true', help="emulate wgmma_wu_double_buffer.patch")
parser.add_argument('--whole-scores', action='store_true', help="group 0 forms all of the scores (the form before)")
args = parser.parse_args()
args.split_scores = not args.whole_scores
rng = np.random.default_rng(1)
kChunk, D = 64, 128
kMatrix = kChunk * D * 2
if args.double_buffer_wu:
    kQ, kK, kW, kUp, kUb, kUd, kS = 0, 2*kMatrix, 4*kMatrix, 6*kMatrix, 8*kMatrix, 9*kMatrix, 10*kMatrix
else:
    kQ, kK, kW, kUp, kUb, kUd, kS = 0, 2*kMatrix, 4*kMatrix, 5*kMatrix, 6*kMatrix, 7*kMatrix, 8*kMatrix
wu_buffer = (lambda n: (n & 1) * kMatrix) if args.double_buffer_wu else (lambda n: 0)
kScores = kS + 2*kMatrix
kEnd = kScores + kChunk*kChunk*2
BASE = 1024 * 3  # base_at: some 1024-aligned shared address
def sw128_start(row, col, rows): return (col//64)*rows*128 + row*128 + (col%64)*2
def swz(x): return x ^ (((x >> 7) & 7) << 4)
def sw128_offset(row, col, rows): return swz(sw128_start(row, col, rows))
def descriptor(addr, lbo, sbo): return ((addr & 0x3FFFF) >> 4) | (((lbo & 0x3FFFF) >> 4) << 16) | (((sbo & 0x3FFFF) >> 4) << 32) | (1 << 62)
def k_major(base, rows, row, col): return descriptor(base + sw128_start(row, col, rows), 16, 1024)
def mn_major(base, rows, row, col): return descriptor(base + sw128_start(row, col, rows), rows*128, 1024)
def advance(d, b): return (d >> 32 << 32) | ((d & 0xFFFFFFFF) + (b >> 4))
def by_depth(at, t): return advance(k_major(at, 64, 0, 0), sw128_start(0, 16*t, 64))
def by_row(at, t, col): return advance(mn_major(at, 64, 0, col), sw128_start(16*t, 0, 64))
class Desc:
    def __init__(s, q, k, w, S, scores, ub, ud): s.q, s.k, s.w, s.S, s.scores, s.ub, s.ud = q, k, w, S, scores, ub, ud
    def w_by_depth(s, t): return by_depth(s.w, t)
    def q_by_depth(s, t): return by_depth(s.q, t)
    def s_by_depth(s, t, col): return advance(mn_major(s.S, 128, 0, col), sw128_start(16*t, 0, 128))
    def k_by_depth(s, t): return by_depth(s.k, t)
    def k_rows_by_depth(s, t, row): return advance(k_major(s.k, 64, row, 0), sw128_start(0, 16*t, 64))
    def scores_by_depth(s, t): return by_depth(s.scores, t)
    def ub_by_row(s, t, col): return by_row(s.ub, t, col)
    def kt_by_row(s, t, row): return by_row(s.k, t, row)
    def ud_by_row(s, t, col): return by_row(s.ud, t, col)
def fields(d): return (d & 0x3FFF) << 4, ((d >> 16) & 0x3FFF) << 4, ((d >> 32) & 0x3FFF) << 4
smem = np.full(300000 // 2, np.nan)  # bf16 slots by absolute shared byte address / 2
def read_k_major(d, n=64):  # [mn n][k 16]
    st, lbo, sbo = fields(d)
    return np.array([[smem[swz(st + (mn//8)*sbo + (mn%8)*128 + (k//8)*16 + (k%8)*2)//2] for k in range(16)] for mn in range(n)])
def read_mn_major(d):  # [k 16][mn 64]
    st, lbo, sbo = fields(d)
    return np.array([[smem[swz(st + (mn//64)*lbo + (mn%64)*2 + (k//8)*sbo + (k%8)*128)//2] for mn in range(64)] for k in range(16)])
def mma(acc, a, b, acc_flag, trans_b, trans_a=False):
    A = read_mn_major(a).T if trans_a else read_k_major(a)          # [64][16]
    B = read_mn_major(b) if trans_b else read_k_major(b).T          # [16][64]
    return (acc if acc_flag else 0) + A @ B
def acc_row(w, lane, e): return 16*(w%4) + lane//4 + 8*((e//2)%2)
def acc_col(lane, e): return 8*(e//4) + 2*(lane%4) + e%2
def pair_off(warp, lane, i, j, row_offset, col, rows):
    return ((col//64)*rows*128 + (row_offset + 16*(warp%4) + lane//4 + 8*i)*128) + (((j << 4) ^ ((lane//4) << 4)) | (4*(lane%4)))
# inputs for one (batch, head): N chunks of Q, K, W, U' [64][128], gamma [64]
N, T = 3, 3*64 - 11
Q = rng.standard_normal((N, 64, D)); K = rng.standard_normal((N, 64, D)) / 8
W = rng.standard_normal((N, 64, D)) / 8; Up = rng.standard_normal((N, 64, D))
for n in range(N):
    rows = T - 64*n
    if rows < 64: Q[n, rows:] = 0; K[n, rows:] = 0
G = -np.cumsum(rng.uniform(0, 0.1, (N, 64)), axis=1)
S0 = rng.standard_normal((D, D))
# reference
S = S0.copy(); O_ref = np.zeros((N*64, D))
for n in range(N):
    g = G[n]; U = Up[n] - W[n] @ S
    P = np.tril((Q[n] @ K[n].T) * np.exp(g[:, None] - g[None, :]))
    O_ref[64*n:64*n+64] = np.exp(g)[:, None] * (Q[n] @ S) + P @ U
    S = np.exp(g[-1]) * S + K[n].T @ (np.exp(g[-1] - g)[:, None] * U)
S_ref = S
# the kernel, 16 warps x 32 lanes; accumulators per thread as dicts
def copy(at, X):  # copy_matrix: thread (copy_row, copy_chunk) rows r and r+32
    for t in range(512):
        r0, c = t // 16, t % 16
        ca = sw128_offset(r0, 8*c, kChunk)
        for i in range(2):
            row = r0 + 32*i
            for x in range(8):
                smem[(BASE + at + ca + 32*128*i + 2*x)//2] = X[row, 8*c + x]
gam = {}
def fetch_qk(n):
    copy(kQ + (n & 1)*kMatrix, Q[n]); copy(kK + (n & 1)*kMatrix, K[n]); gam[n & 1] = G[n].copy()
def fetch_wu(n): copy(kW + wu_buffer(n), W[n]); copy(kUp + wu_buffer(n), Up[n])
s = np.zeros((512, 32)); acc = np.zeros((512, 32)); O = np.full((N*64, D), np.nan)
grp = lambda t: t // 128
for t in range(512):
    g_ = grp(t); w, lane = t//32, t%32
    r0, c0 = 64*(g_//2), 64*(g_%2)
    for e in range(32): s[t, e] = S0[r0 + acc_row(w, lane, e), c0 + acc_col(lane, e)]
def group_acc(arr, g_):  # gather a group's 64x64 accumulator from its threads
    M = np.zeros((64, 64))
    for t in range(128*g_, 128*g_ + 128):
        w, lane = t//32, t%32
        for e in range(32): M[acc_row(w, lane, e), acc_col(lane, e)] = arr[t, e]
    return M
def scatter_acc(arr, g_, M):
    for t in range(128*g_, 128*g_ + 128):
        w, lane = t//32, t%32
        for e in range(32): arr[t, e] = M[acc_row(w, lane, e), acc_col(lane, e)]
fetch_qk(0); fetch_wu(0)
for n in range(N):
    for t in range(512):
        g_ = grp(t); w, lane = t//32, t%32; r0, c0 = 64*(g_//2), 64*(g_%2)
        for e in range(0, 32, 2):
            off = pair_off(w, lane, (e//2)%2, e//4, r0, c0, D)
            smem[(BASE + kS + off)//2] = s[t, e]; smem[(BASE + kS + off + 2)//2] = s[t, e+1]
    gamma = gam[n & 1]; gend = gamma[63]
    if n + 1 < N:  # the other buffers
        fetch_qk(n + 1)
        if args.double_buffer_wu: fetch_wu(n + 1)
    desc = Desc(BASE + kQ + (n & 1)*kMatrix, BASE + kK + (n & 1)*kMatrix, BASE + kW + wu_buffer(n), BASE + kS, BASE + kScores, BASE + kUb, BASE + kUd)
    for g_ in range(4):
        M = np.zeros((64, 64))
        for k in range(8):
            if g_ < 2: M = mma(M, desc.w_by_depth(k), desc.s_by_depth(k, 64*g_), k > 0, True)
            else: M = mma(M, desc.q_by_depth(k), desc.s_by_depth(k, 64*(g_-2)), k > 0, True)
        scatter_acc(acc, g_, M)
    for t in range(512):
        g_ = grp(t); w, lane = t//32, t%32; row0 = acc_row(w, lane, 0)
        if g_ < 2:
            flo, fhi = np.exp(gend - gamma[row0]), np.exp(gend - gamma[row0 + 8])
            for e in range(0, 32, 2):
                at = pair_off(w, lane, (e//2)%2, e//4, 0, 64*g_, kChunk)
                u0 = smem[(BASE + kUp + wu_buffer(n) + at)//2] - acc[t, e]; u1 = smem[(BASE + kUp + wu_buffer(n) + at + 2)//2] - acc[t, e+1]
                f = fhi if (e & 2) else flo
                smem[(BASE + kUb + at)//2] = u0; smem[(BASE + kUb + at + 2)//2] = u1
                smem[(BASE + kUd + at)//2] = f*u0; smem[(BASE + kUd + at + 2)//2] = f*u1
        else:
            elo, ehi = np.exp(gamma[row0]), np.exp(gamma[row0 + 8])
            for e in range(32): acc[t, e] *= ehi if (e & 2) else elo
    if args.split_scores:  # group g: columns 32 g .., 16 accumulators a thread
        for g_ in range(2):
            M = np.zeros((64, 32))
            for k in range(8): M = M + read_k_major(desc.q_by_depth(k)) @ read_k_major(desc.k_rows_by_depth(k, 32*g_), 32).T
            for t in range(128*g_, 128*g_ + 128):
                w, lane = t//32, t%32; row0 = acc_row(w, lane, 0)
                for e in range(0, 16, 2):
                    i = row0 + 8*((e//2)%2); j = 32*g_ + acc_col(lane, e)
                    x = [np.exp(gamma[i] - gamma[j + q]) * M[i, acc_col(lane, e) + q] if j + q <= i else 0.0 for q in (0, 1)]
                    off = pair_off(w, lane, (e//2)%2, 4*g_ + e//4, 0, 0, kChunk)
                    smem[(BASE + kScores + off)//2] = x[0]; smem[(BASE + kScores + off + 2)//2] = x[1]
    M = np.zeros((64, 64))
    if not args.split_scores:
        for k in range(8): M = mma(M, desc.q_by_depth(k), desc.k_by_depth(k), k > 0, False)
        scatter_acc(acc, 0, M)
    for t in range(0 if args.split_scores else 128):
        w, lane = t//32, t%32; row0 = acc_row(w, lane, 0)
        for e in range(0, 32, 2):
            i = row0 + 8*((e//2)%2); j = acc_col(lane, e)
            x0 = np.exp(gamma[i] - gamma[j]) * acc[t, e] if j <= i else 0.0
            x1 = np.exp(gamma[i] - gamma[j+1]) * acc[t, e+1] if j + 1 <= i else 0.0
            off = pair_off(w, lane, (e//2)%2, e//4, 0, 0, kChunk)
            smem[(BASE + kScores + off)//2] = x0; smem[(BASE + kScores + off + 2)//2] = x1
    if n + 1 < N and not args.double_buffer_wu: fetch_wu(n + 1)
    s *= np.exp(gend)
    for g_ in range(4):
        r0, c0 = 64*(g_//2), 64*(g_%2)
        if g_ >= 2:
            M = group_acc(acc, g_)
            for k in range(4): M = mma(M, desc.scores_by_depth(k), desc.ub_by_row(k, 64*(g_-2)), True, True)
            scatter_acc(acc, g_, M)
        M = group_acc(s, g_)
        for k in range(4): M = mma(M, desc.kt_by_row(k, r0), desc.ud_by_row(k, c0), True, True, True)
        scatter_acc(s, g_, M)
    for t in range(256, 512):
        g_ = grp(t); w, lane = t//32, t%32; row0 = acc_row(w, lane, 0)
        col0 = 64*(g_-2) + 2*(lane%4)
        for e in range(0, 32, 2):
            time = n*64 + row0 + 8*((e//2)%2)
            if time < T: O[time, col0 + 8*(e//4)] = acc[t, e]; O[time, col0 + 8*(e//4) + 1] = acc[t, e+1]
Sfin = np.zeros((D, D))
for t in range(512):
    g_ = grp(t); w, lane = t//32, t%32; r0, c0 = 64*(g_//2), 64*(g_%2)
    for e in range(32): Sfin[r0 + acc_row(w, lane, e), c0 + acc_col(lane, e)] = s[t, e]
o_err = np.nanmax(np.abs(O[:T] - O_ref[:T]))
s_err = np.abs(Sfin - S_ref).max()
print("O max err", np.nanmax(np.abs(O[:T] - O_ref[:T])), "nan rows", np.isnan(O[:T]).sum(), "O scale", np.abs(O_ref).max())
print("S max err", np.abs(Sfin - S_ref).max(), "S scale", np.abs(S_ref).max())
if not (o_err < 1e-9 * np.abs(O_ref).max() and s_err < 1e-9 * np.abs(S_ref).max() and not np.isnan(O[:T]).any()):
    raise SystemExit("the emulated walk does not match the float64 walk")
