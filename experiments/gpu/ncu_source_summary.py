#!/usr/bin/env python3
"""Where a kernel's warps wait, by SASS line: reads ncu's source page as CSV (`ncu --import REPORT
--page source --print-source sass --csv`) and prints the warp-stall samples summed per opcode, the
stall reasons summed over the kernel, and the LINES lines with the most samples, each with its top
three reasons.

    python3 experiments/gpu/ncu_source_summary.py SOURCE_CSV [LINES]
"""
import csv
import io
import sys
from collections import Counter

SAMPLES = "Warp Stall Sampling (All Samples)"


def number(text):
    try:
        return float(text.replace(",", ""))
    except (AttributeError, ValueError):
        return 0.0


def rows_of(path):
    text = open(path, errors="replace").read()
    start = text.find('"Address"')  # ncu prints its own lines before the table
    if start < 0:
        sys.exit(f"{path}: no source table (column Address)")
    return list(csv.DictReader(io.StringIO(text[start:])))


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    rows = rows_of(sys.argv[1])
    lines = int(sys.argv[2]) if len(sys.argv) > 2 else 25
    if not rows or SAMPLES not in rows[0]:
        sys.exit(f"{sys.argv[1]}: no column '{SAMPLES}'")
    reasons = [c for c in rows[0] if c.startswith("stall_") and not c.endswith("(Not Issued)")]
    total = sum(number(r[SAMPLES]) for r in rows) or 1.0
    print(f"{len(rows)} SASS lines, {total:.0f} warp-stall samples")
    opcodes = Counter()
    for r in rows:
        words = [w for w in r["Source"].split() if not w.startswith("@")]  # the predicate is not the opcode
        opcodes[words[0] if words else "?"] += number(r[SAMPLES])
    print("by opcode:")
    for opcode, samples in opcodes.most_common(16):
        print(f"  {100 * samples / total:6.2f}%  {opcode}")
    print("by reason:")
    by_reason = Counter({reason: sum(number(r[reason]) for r in rows) for reason in reasons})
    for reason, samples in by_reason.most_common(10):
        print(f"  {100 * samples / total:6.2f}%  {reason}")
    print(f"the {lines} lines with the most samples:")
    for r in sorted(rows, key=lambda r: -number(r[SAMPLES]))[:lines]:
        top = Counter({reason: number(r[reason]) for reason in reasons}).most_common(3)
        why = ", ".join(f"{reason[6:]} {100 * s / total:.2f}%" for reason, s in top if s > 0)
        print(f"  {100 * number(r[SAMPLES]) / total:6.2f}%  {r['Address']}  {r['Source'][:60]:60}  {why}")


if __name__ == "__main__":
    main()
