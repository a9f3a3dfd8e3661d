"""A work model of the HSTU attention kernels' block loops (no GPU): what a block walks, per mask.

The kernels wait on latency, not on throughput (attention_fwd.cu), so a block costs about the
number of sub-tile times on its critical path (per barrier step, the busiest warp's sub-tiles)
times the warps it holds. This script replays the forward's key-tile walk (block hull, the gap
jump, per-warp skipping) on the benchmark's inputs (bench/hstu_vs_peers.py: B = 32, num_targets
U{1..64}, SLA k1 = 256, k2 = 32) and prints the held warp slots per attended pair (one slot = a
16 x 32 warp sub-tile = 512 pairs) for the dense causal and SLA masks and several tile shapes.
A model to compare tile shapes, not a timing: the numbers it prints were never measured.

    python3 bench/hstu_block_model.py
"""
import torch

K1, K2 = 256, 32


def lengths_of(dist, batch, max_len, gen):  # as bench/hstu_vs_peers.py
    if dist == "uniform":
        x = torch.rand(batch, generator=gen) * 0.6 + 0.4
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(gen.initial_seed())
            x = torch.distributions.Beta(0.7, 0.3).sample((batch,))
    return (x * max_len).ceil().clamp(1, max_len).to(torch.int64)


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
