#!/usr/bin/env python3
"""Sums an `ncu --metrics gpu__time_duration.sum` log by kernel: one line per kernel name (prime's
kernels by name, chunk_gemm's instantiations together, torch's by their first words), the total first.

    python3 experiments/gpu/ncu_kernel_summary.py NCU_LOG [TITLE]
"""
import re
import sys

LAUNCH = re.compile(r"\n  (\S.*?) \((\d+), (\d+), (\d+)\)x\((\d+), (\d+), (\d+)\).*?"
                    r"gpu__time_duration\.sum\s+(\w+)\s+([\d.,]+)", re.S)
SCALE = {"ns": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}


def kernel_name(signature):
    ours = re.search(r"prime::(?:\w+::)*?(?:<unnamed>::)?(\w+_kernel)", signature)
    if ours:
        return "chunk_gemm_kernel" if ours.group(1).startswith("chunk_gemm") else ours.group(1)
    return "torch: " + re.sub(r"^void at::(native::)?", "", signature)[:48]


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    text = open(sys.argv[1], errors="replace").read()
    launches = LAUNCH.findall(text)
    if not launches:
        sys.exit(f"{sys.argv[1]}: no kernel with gpu__time_duration.sum")
    totals = {}
    for launch in launches:
        us = float(launch[8].replace(",", "")) * SCALE.get(launch[7], float("nan"))
        name = kernel_name(launch[0])
        time, count = totals.get(name, (0.0, 0))
        totals[name] = (time + us, count + 1)
    if len(sys.argv) > 2:
        print(sys.argv[2])
    print(f"total {sum(t for t, _ in totals.values()) / 1e3:.2f} ms over {len(launches)} launches")
    for name, (us, count) in sorted(totals.items(), key=lambda item: -item[1][0]):
        print(f"{us / 1e3:7.2f} ms  {count:3d} launches  {name}")


if __name__ == "__main__":
    main()
