"""Times the public anchors of kernels/README.md on the GPU it runs on, at the shapes and with the inputs
`prime-bench kernels --dtype bf16` uses, so that they and prime's kernels land in one call:
  GDN  fla's chunk_gated_delta_rule (Triton);
  M2   mamba_ssm's mamba_chunk_scan_combined (Triton SSD, chunk 256);
  GKA  hybrid-model-factory's gka_chebyshev_gla (Triton Chebyshev solve + fla's chunk_simple_gla), N = 30.

None is a dependency: their sources are fetched into third_party_fetched/ (git-ignored, never committed) and
carried to the GPU machine: fla/ (github.com/fla-org/flash-linear-attention), mamba_ssm/ (github.com/state-spaces/
mamba; its __init__.py cut to the version line, so that importing the Triton ops needs no compiled extension),
hmf_gka/chebyshev/ (github.com/awslabs/hybrid-model-factory, training/src/hmf/model/hybrid_zoo/layers/
gated_kalmanet/ops/chebyshev, with an empty hmf_gka/__init__.py), and einops/ and packaging/ unpacked from their
wheels where the machine lacks them.

Inputs as prime's bench draws them (lib/eval/ssm_bench.cpp): q, k unit rows, v normal, bf16; log decays
-softplus(x) * 0.1, beta and alpha sigmoid(x), fp32. GDN: q scaled by 1/sqrt(D) (scale 1 given). M2: x = v,
B = k, C = q with one group per head (ngroups = H, as prime's core takes them), dt = sigmoid(10 log decay),
A = -1. GKA: k and v scaled by beta (in the timed call, as prime's row does), alpha in bf16 (as the layer's
sigmoid gives it), both forgetting gates the log decay, ridge 0.02, the GLA scale 1/sqrt(D).
    python3 experiments/kernels/time_anchors.py [--types GDN,M2,GKA] [--batch 4 --tokens 8192 --heads 32 --dim 128]
Each anchor's forward (no autograd) and forward + backward where its backward runs, medians of 5 after 2
warm-up calls; a failure prints its first line and the others go on.
"""
import argparse
import os
import statistics
import sys
import traceback

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


def inputs(args):
    shape = (args.batch, args.tokens, args.heads, args.dim)
    gates = shape[:3]
    torch.manual_seed(0)
    dev = "cuda"

    def unit():
        x = torch.randn(shape, device=dev)
        return (x / x.norm(dim=-1, keepdim=True)).to(torch.bfloat16)

    q, k = unit(), unit()
    v = torch.randn(shape, device=dev).to(torch.bfloat16)
    log_decay = -torch.nn.functional.softplus(torch.randn(gates, device=dev)) * 0.1
    beta = torch.sigmoid(torch.randn(gates, device=dev))
    alpha = torch.sigmoid(torch.randn(gates, device=dev))
    return q, k, v, log_decay, beta, alpha


def gdn(args, q, k, v, log_decay, beta, alpha):
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

    q_scaled = (q.float() * args.dim ** -0.5).to(torch.bfloat16)
    beta16 = beta.to(torch.bfloat16)

    def run(q_, k_, v_):
        return chunk_gated_delta_rule(q_, k_, v_, log_decay, beta16, scale=1.0)[0]

    return "fla chunk_gated_delta_rule", run, (q_scaled, k, v)


def m2(args, q, k, v, log_decay, beta, alpha):
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    dt = torch.sigmoid(log_decay * 10)
    A = -torch.ones(args.heads, device=q.device)

    def run(x_, b_, c_):
        return mamba_chunk_scan_combined(x_, dt, A, b_, c_, chunk_size=256)

    return "mamba_ssm mamba_chunk_scan_combined, chunk 256, ngroups = H", run, (v, k, q)


def gka(args, q, k, v, log_decay, beta, alpha):
    from hmf_gka.chebyshev import gka_chebyshev_gla

    beta_ = beta.unsqueeze(-1)
    alpha16 = alpha.to(torch.bfloat16)  # as the layer's sigmoid gives it in bf16 (q stays bf16)

    def run(q_, k_, v_):
        return gka_chebyshev_gla(q_, (k_ * beta_).to(torch.bfloat16), (v_ * beta_).to(torch.bfloat16), alpha16,
                                 log_decay, log_decay, args.dim ** -0.5, ridge_strength=0.02, num_iter=30,
                                 chunk_size=64)[0]

    return "hybrid-model-factory gka_chebyshev_gla, N = 30", run, (q, k, v)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--types", default="GDN,M2,GKA")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--dim", type=int, default=128)
    args = parser.parse_args()
    print("%s, torch %s" % (torch.cuda.get_device_name(), torch.__version__))
    data = inputs(args)
    flops = 4.0 * args.dim * args.dim * args.batch * args.tokens * args.heads
    shape = "(%d,%d,%d,%d) bf16" % (args.batch, args.tokens, args.heads, args.dim)
    for name in args.types.split(","):
        try:
            label, run, leaves = {"GDN": gdn, "M2": m2, "GKA": gka}[name](args, *data)
            with torch.no_grad():
                fwd = median_ms(lambda: run(*leaves))
            print("%-4s %s %s: fwd %.3f ms (%.1f TFLOP/s at 4 K V)" % (name, label, shape, fwd,
                                                                      flops / (fwd * 1e-3) / 1e12), flush=True)
        except Exception as error:
            print("%-4s %s: fwd did not run: %s" % (name, shape, str(error).splitlines()[0][:300]), flush=True)
            traceback.print_exc(limit=3)
            continue
        try:
            grads = [t.detach().clone().requires_grad_(True) for t in leaves]
            out_grad = torch.randn_like(run(*grads).float()).to(torch.bfloat16)
            both = median_ms(lambda: run(*grads).backward(out_grad))
            print("%-4s %s %s: fwd+bwd %.3f ms" % (name, label, shape, both), flush=True)
        except Exception as error:
            print("%-4s %s %s: fwd+bwd did not run: %s" % (name, label, shape, str(error).splitlines()[0][:300]),
                  flush=True)


if __name__ == "__main__":
    main()
