#!/usr/bin/env python3
"""Validation table of the layer-selection study (standard library only).

Reads RESULTS/scores_<scorer>.csv (prime-select --out) and RESULTS/hybrids.tsv (one primed hybrid
per line: kept attention layers as "1,4", then its final validation PPL) and prints, as Markdown:
  1. per scorer, Spearman and Kendall (tau-b) rank correlation of its per-layer scores with
     kl-restore's;
  2. per scorer, the rank correlation of its predicted damage of each hybrid (the summed cost of
     the layers that hybrid replaces; cost = -score) with the hybrid's final PPL;
  3. the PPL of the hybrid each scorer chooses at the study's ratio (its lowest-scoring layers
     kept), against uniform, middle and the best and worst placement trained;
  4. each scorer's cost (seconds, device).
swa-sensitivity's two measured terms (NLL increase, recall drop) and linearization-error's error
carried to the output (kl_alone) get rows of their own.
usage: analyze.py RESULTS_DIR KEPT_COUNT
"""
import itertools
import math
import os
import sys


def read_scores(path):
    meta, scores = {}, {}
    for line in open(path):
        line = line.strip()
        if line.startswith("#"):
            for part in line[1:].split():
                if "=" in part:
                    key, value = part.split("=", 1)
                    meta[key] = value
            continue
        if not line or line.startswith("layer"):
            continue
        layer, score = line.split(",")
        scores[int(layer)] = float(score)
    return [scores[i] for i in range(len(scores))], meta


TERMS = {"swa-sensitivity": [("cost", "nll"), ("recall_drop", "recall")],
         "linearization-error": [("kl_alone", "kl_alone")],
         "linearization-error-aligned": [("kl_alone", "kl_alone")]}


def ranks(values):
    order = sorted(range(len(values)), key=lambda i: values[i])
    result = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            result[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return result


def pearson(x, y):
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else float("nan")


def spearman(x, y):
    return pearson(ranks(x), ranks(y))


def kendall(x, y):  # tau-b
    concordant = discordant = ties_x = ties_y = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        dx, dy = x[i] - x[j], y[i] - y[j]
        if dx == 0 and dy == 0:
            continue
        if dx == 0:
            ties_x += 1
        elif dy == 0:
            ties_y += 1
        elif (dx > 0) == (dy > 0):
            concordant += 1
        else:
            discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return (concordant - discordant) / denominator if denominator else float("nan")


def lowest(scores, count):  # prime-convert --scores: lowest scores kept, ties to the lower index
    return sorted(sorted(range(len(scores)), key=lambda i: (scores[i], i))[:count])


def fmt(value):
    return "n/a" if value is None or value != value else "%+.2f" % value


def main():
    results, kept_count = sys.argv[1], int(sys.argv[2])
    scorers = {}
    for name in sorted(os.listdir(results)):
        if name.startswith("scores_") and name.endswith(".csv"):
            scorers[name[len("scores_"):-len(".csv")]] = read_scores(os.path.join(results, name))
    # Measured terms ('#' lines of a CSV) are ranked on their own too, each as score = -term, so
    # the table shows what every term says.
    for name, terms in TERMS.items():
        if name not in scorers:
            continue
        meta = scorers[name][1]
        for term, label in terms:
            if term in meta:
                scorers["%s/%s" % (name, label)] = ([-float(v) for v in meta[term].split(",")], meta)
    hybrids = []
    path = os.path.join(results, "hybrids.tsv")
    if os.path.exists(path):
        for line in open(path):
            parts = line.split()
            if len(parts) >= 2 and parts[1] not in ("failed", "nan"):
                hybrids.append((tuple(int(x) for x in parts[0].split(",")), float(parts[1])))
    ppl_of = dict(hybrids)
    layers = len(next(iter(scorers.values()))[0]) if scorers else 0
    truth = scorers.get("kl-restore", (None, None))[0]
    measured = lambda meta: meta.get("total_increase", "none") != "none"

    print("| scorer | vs kl-restore: Spearman | Kendall | vs hybrid PPL (%d hybrids): Spearman | Kendall | chosen %d attention layers | its PPL | cost |" % (len(hybrids), kept_count))
    print("|---|---|---|---|---|---|---|---|")
    for name, (scores, meta) in scorers.items():
        s_truth = k_truth = s_ppl = k_ppl = None
        if truth is not None and measured(meta) and name != "kl-restore":
            s_truth, k_truth = spearman(scores, truth), kendall(scores, truth)
        if hybrids and measured(meta):
            damage = [sum(-scores[l] for l in range(layers) if l not in kept) for kept, _ in hybrids]
            ppls = [p for _, p in hybrids]
            s_ppl, k_ppl = spearman(damage, ppls), kendall(damage, ppls)
        chosen = tuple(lowest(scores, kept_count))
        ppl = ppl_of.get(chosen)
        cost = "%s s (%s)" % (meta.get("cost_seconds", "?"), meta.get("device", "?"))
        print("| %s | %s | %s | %s | %s | %s | %s | %s |" % (name, fmt(s_truth), fmt(k_truth), fmt(s_ppl), fmt(k_ppl),
              ",".join(map(str, chosen)), "%.2f" % ppl if ppl else "not trained", cost))
    if hybrids:
        ordered = sorted(hybrids, key=lambda h: h[1])
        print()
        print("Hybrids (kept attention layers -> final val PPL), best first: " +
              "; ".join("%s: %.2f" % (",".join(map(str, k)), p) for k, p in ordered))


if __name__ == "__main__":
    main()
