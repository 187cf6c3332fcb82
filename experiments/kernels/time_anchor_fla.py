"""Times fla's chunked gated delta rule (the anchor of kernels/README.md) on the GPU it runs on,
at the shape `prime-bench kernels` uses, so both land in one run.

fla is not a dependency: its sources are fetched into third_party_fetched/ (git-ignored, never
committed) and carried to the GPU machine. Inputs follow prime's benchmark: L2-normalised q and
k, log decays -softplus(x)*0.1, beta = sigmoid(x); bf16 as the anchor was measured.
    python3 experiments/kernels/time_anchor_fla.py [--batch 4 --tokens 8192 --heads 32 --dim 128]
"""
import argparse
import os
import statistics
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "third_party_fetched"))


def median_ms(fn, warmup=2, repeats=5):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    args = parser.parse_args()
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    shape = (args.batch, args.tokens, args.heads, args.dim)
    gates = shape[:3]
    torch.manual_seed(0)
    dev = "cuda"
    q = torch.nn.functional.normalize(torch.randn(shape, device=dev), dim=-1).to(dtype)
    k = torch.nn.functional.normalize(torch.randn(shape, device=dev), dim=-1).to(dtype)
    v = torch.randn(shape, device=dev).to(dtype)
    g = (-torch.nn.functional.softplus(torch.randn(gates, device=dev)) * 0.1).float()
    beta = torch.sigmoid(torch.randn(gates, device=dev)).to(dtype)
    label = "fla chunk_gated_delta_rule (%d,%d,%d,%d) %s" % (*shape, args.dtype)
    with torch.no_grad():
        fwd = median_ms(lambda: chunk_gated_delta_rule(q, k, v, g, beta, scale=args.dim ** -0.5))
    flops = 4.0 * args.dim * args.dim * args.batch * args.tokens * args.heads
    print("%s: fwd %.3f ms (%.1f TFLOP/s at 4 K V)" % (label, fwd, flops / (fwd * 1e-3) / 1e12))
    leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
    grad = torch.randn_like(v)
    try:
        both = median_ms(lambda: chunk_gated_delta_rule(*leaves, g, beta, scale=args.dim ** -0.5)[0]
                         .backward(grad))
        print("%s: fwd+bwd %.3f ms" % (label, both))
    except Exception as error:  # its backward refuses some Triton versions on Hopper
        print("%s: fwd+bwd did not run: %s" % (label, str(error).splitlines()[0][:200]))


if __name__ == "__main__":
    main()
