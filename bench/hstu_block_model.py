"""A work model of the HSTU attention kernels' block loops (no GPU): what a block walks, per mask.

The kernels wait on latency, not on throughput (attention_fwd.cu), so a block costs about the
number of sub-tile times on its critical path (per barrier step, the busiest warp's sub-tiles)
times the warps it holds. This script replays the forward's key-tile walk (block hull, the gap
jump, per-warp skipping) on the benchmark's inputs (bench/hstu_vs_peers.py: B = 32, num_targets
U{1..64}, SLA k1 = 256, k2 = 32) and prints the held warp slots per attended pair (one slot = a
16 x 32 warp sub-tile = 512 pairs) for the dense causal and SLA masks and two tile shapes, and the
same for the backward's dk-dv walk under SLA with and without its window-warp helpers.
A model to compare tile shapes, not a timing: the numbers it prints were never measured.

    python3 bench/hstu_block_model.py
"""
import torch

from hstu_vs_peers import lengths_of  # the benchmark's own length draw, same seeds

K1, K2 = 256, 32


def inputs(max_len, heads, dist):
    gen = torch.Generator().manual_seed(max_len * 31 + heads * 7 + (dist == "skewed"))
    lengths = lengths_of(dist, 32, max_len, gen)
    targets = torch.minimum(torch.randint(1, 65, (32,), generator=gen), lengths)
    return lengths.tolist(), targets.tolist()


def column_ranges(sla, n, t, i):  # Rule::column_ranges (no contextual prefix)
    history = n - t
    if sla:
        if i >= history:
            return [(0, history)]
        return [(0, min(K2, i + 1)), (max(K2, i - K1 + 1), i + 1)]
    return [(0, i + 1)]


def hull(sla, n, t, r0, r1):  # tile_columns
    b, e = [10**9, 10**9], [-(10**9), -(10**9)]
    for i in range(r0, r1):
        for r, (x, y) in enumerate(column_ranges(sla, n, t, i)):
            if x < y:
                b[r], e[r] = min(b[r], x), max(e[r], y)
    return b, e


def touches(h, j0, j1):
    b, e = h
    return (b[0] < j1 and j0 < e[0]) or (b[1] < j1 and j0 < e[1])


def pairs(sla, n, t):
    history = n - t
    if not sla:
        return history * (history + 1) // 2 + t * (history + 1)
    return sum(min(i + 1, K2) + max(0, i + 1 - max(i - K1 + 1, K2)) for i in range(history)) + t * history


def fwd_block(sla, n, t, i0, rows, warps, step, sub):
    """(critical sub-tile times, sub-tiles computed, barrier steps) of the forward block at row i0."""
    bh = hull(sla, n, t, i0, min(i0 + rows, n))
    wr = rows // warps
    wh = [hull(sla, n, t, min(i0 + w * wr, n), min(i0 + w * wr + wr, n)) for w in range(warps)]
    j0, j_end = min(bh[0]) // step * step, max(bh[1])
    crit = work = steps = 0
    while j0 < j_end:
        if j0 >= bh[1][0] and j0 + step <= bh[0][1]:
            j0 = bh[0][1] // step * step
        if touches(bh, j0, min(j0 + step, n)):
            per = [sum(1 for s in range(j0, min(j0 + step, n), sub) if touches(wh[w], s, min(s + sub, n)))
                   for w in range(warps)]
            crit, work, steps = crit + max(per), work + sum(per), steps + 1
        j0 += step
    return crit, work, steps


def row_ranges(sla, n, t, j0, j1):  # Rule::row_ranges (no contextual prefix)
    history = n - t
    if not sla:
        return [(j0, n)]
    ranges = [(j0, history if j0 < K2 else min(history, j1 - 1 + K1))]
    return ranges + [(history, n)] if j0 < history else ranges


def steps_of(lo, hi, step=64):
    return (lo // step, (hi + step - 1) // step) if lo < hi else (0, 0)


def dkdv_block(sla, n, t, j0, helpers, step=64, sub=32):
    """Critical sub-tile times of the dk-dv block at key j0 (4 warps x 16 keys, 64-row steps of two
    32-row sub-tiles); `helpers`: SLA window warps take sub-tile 1 of the prefix warps' keys once
    their own rows are done (the targets visited first), as attention_bwd.cu does."""
    j1 = min(j0 + 64, n)
    keys = [(min(j0 + 16 * w, n), min(j0 + 16 * w + 16, n)) for w in range(4)]
    ranges = [steps_of(max(b, 0), min(e, n), step) for b, e in row_ranges(sla, n, t, j0, j1)]
    if sla:  # (history run?, steps): the targets first
        targets = ranges[1] if len(ranges) == 2 else (0, 0)
        history_end = min(ranges[0][1], targets[0]) if targets[0] < targets[1] else ranges[0][1]
        runs = [(False, range(*targets)), (True, range(ranges[0][0], history_end))]
    else:
        runs = [(False, sorted(set(s for lo, hi in ranges for s in range(lo, hi))))]
    prefix = sum(1 for b, e in keys if b < e and b < K2) if sla else 0
    attended = sum(1 for b, e in keys if b < e and b < n - t) if sla else 0
    pairs = min(prefix, max(attended - prefix, 0)) if helpers else 0
    zone = {}
    for k in range(pairs):
        b, e = keys[prefix + k]
        zone[k] = zone[prefix + k] = (min(row_ranges(sla, n, t, b, e)[0][1], n) + step - 1) // step
    crit = 0
    for history, run_steps in runs:
        for s in run_steps:
            subs = [(s * step + u * sub, min(s * step + u * sub + sub, n)) for u in range(step // sub)
                    if s * step + u * sub < n]
            hulls = [hull(sla, n, t, lo, hi) for lo, hi in subs]
            if not any(touches(h, j0, j1) for h in hulls):
                continue
            per = []
            for w in range(4):
                in_zone = history and w in zone and s >= zone[w]
                helper = in_zone and w >= prefix
                k = keys[w - prefix] if helper else keys[w]
                per.append(sum(1 for u, h in enumerate(hulls)
                               if (not in_zone or u == (1 if helper else 0)) and k[0] < k[1] and touches(h, *k)))
            crit += max(per)
    return crit


def dkdv_slots_per_pair(max_len, dist, helpers):
    lengths, targets = inputs(max_len, 4, dist)
    held = total = 0
    for n, t in zip(lengths, targets):
        total += pairs(True, n, t)
        held += sum(dkdv_block(True, n, t, j0, helpers) * 4 for j0 in range(0, n, 64))
    return held * 512 / total


SHAPES = {"128 rows x 8 warps, 64-key steps (Tiles128)": (128, 8, 64, 32),
          "64 rows x 4 warps, 32-key steps (Tiles128Band)": (64, 4, 32, 32)}


def slots_per_pair(max_len, dist, sla, shape):
    rows, warps, step, sub = shape
    lengths, targets = inputs(max_len, 4, dist)
    held = total = 0
    for n, t in zip(lengths, targets):
        total += pairs(sla, n, t)
        for i0 in range(0, n, rows):
            held += fwd_block(sla, n, t, i0, rows, warps, step, sub)[0] * warps
    return held * 16 * sub / total


if __name__ == "__main__":
    for max_len in (1024, 4096, 8192):
        for dist in ("uniform", "skewed"):
            for name, shape in SHAPES.items():
                dense, sla = (slots_per_pair(max_len, dist, m, shape) for m in (False, True))
                print(f"max_len {max_len} {dist:7s} {name}: slots/pair dense causal {dense:.2f}, SLA {sla:.2f}")
            before, after = (dkdv_slots_per_pair(max_len, dist, h) for h in (False, True))
            print(f"max_len {max_len} {dist:7s} backward dk-dv pass, SLA: slots/pair {before:.2f} without the "
                  f"window warps' help to the prefix warps, {after:.2f} with it")
