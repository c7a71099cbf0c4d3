#!/usr/bin/env python
"""MSDeformAttn on a GPU: compiled CUDA kernels against the pure-PyTorch (grid_sample) reference.

Shapes are Mask2Former's pixel decoder at 800x1333 (padded to 800x1344): 8 heads x 32 channels, 4 points, 3 levels
at strides 8 / 16 / 32 (100x168, 50x84, 25x42), one query per position (Lq = S = 22050), batch 2 and 8. Queries
sample a few pixels around their own position, as in the real encoder.

For each (batch, dtype) it reports the median (and min-max) over --repeats CUDA-event-timed calls after --warmup
calls of the forward and of forward + backward, the speed-up over the reference, and the achieved bandwidth as
a fraction of the device's peak, measured in the same run as a device-to-device copy (bytes read + written).
Each call is timed alone (events around one call, then a synchronisation), so the host's launch latency before
the first kernel counts. Two diagnostics of the compiled op say where the time goes:
- "queued": the same calls issued back to back, --repeats per pair of events (the host runs ahead of the GPU, as
  in a training loop), time per call: what is left of a call once the host's latency is hidden;
- "kernels": the device time of each kernel of one call (torch.profiler over --repeats calls, per call), e.g. the
  forward and backward kernels, the gradient buffer's zero fill and its cast; their sum against the event time
  is the share of the call the GPU spends idle. In --dry-run, the CPU self time of each operator instead.
Two byte counts are given, because the op is a gather whose traffic mostly hits the L2 cache:
- "min bytes": every input read once and every output written once (what DRAM must move at the least);
- "gather bytes": every bilinear corner's channel vector read (4 per sample), plus the same inputs / outputs.

    python benchmarks/gpu_op.py [--json out.json] [--repeats 10] [--batches 2 8] [--dtypes float32 float16 bfloat16]
    python benchmarks/gpu_op.py --dry-run     # CPU, small shapes: checks the code paths without a GPU
"""

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from universal_seg.ops import ms_deform_attn, ms_deform_attn_reference  # noqa: E402
from universal_seg.ops.ms_deform_attn_function import opmath_dtype  # noqa: E402

LEVELS = ((100, 168), (50, 84), (25, 42))
DRY_LEVELS = ((8, 12), (4, 6), (2, 3))
HEADS, CHANNELS, POINTS = 8, 32, 4


def make_inputs(levels, batch, dtype, device, seed=0):
    """value [B, S, 8, 32], CPU level table, locations [B, S, 8, 3, 4, 2] and weights [B, S, 8, 3, 4] (opmath)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    shapes = torch.tensor(levels)
    areas = shapes.prod(1)
    starts = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    S, L = int(areas.sum()), len(levels)
    refs = []
    for h, w in levels:
        ys, xs = torch.meshgrid(
            (torch.arange(h, device=device) + 0.5) / h, (torch.arange(w, device=device) + 0.5) / w, indexing="ij"
        )
        refs.append(torch.stack([xs.flatten(), ys.flatten()], -1))
    ref = torch.cat(refs)[None, :, None, None, None, :]
    offsets = torch.randn(batch, S, HEADS, L, POINTS, 2, generator=gen, device=device) * 2.0
    normalizer = shapes.flip(-1).float().to(device)[None, None, None, :, None, :]
    op = opmath_dtype(dtype)
    loc = (ref + offsets / normalizer).to(op)
    weights = torch.randn(batch, S, HEADS, L * POINTS, generator=gen, device=device).softmax(-1)
    weights = weights.view(batch, S, HEADS, L, POINTS).to(op)
    value = torch.randn(batch, S, HEADS, CHANNELS, generator=gen, device=device).to(dtype)
    return value, shapes, starts, loc, weights


def timed(fn, repeats, warmup, device, calls=1):
    """Seconds per call: (median, min, max) over `repeats` timings (CUDA events on a GPU) of `calls` calls issued
    back to back, after `warmup` calls. calls=1 times each call alone (a synchronisation after it)."""
    import time

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / calls)
        else:
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            times.append((time.perf_counter() - t0) / calls)
    return statistics.median(times), min(times), max(times)


def timed_queued(fn, repeats, warmup, device, rounds=5):
    """Seconds per call with `repeats` calls issued back to back between two events (the host runs ahead of the
    GPU): (median, min, max) of `rounds` such batches."""
    return timed(fn, rounds, warmup, device, calls=repeats)


def short_kernel_name(name):
    """'void ns::(anonymous namespace)::backward_kernel<float, float, 4, 8>(float const*, ...)' ->
    'ns::backward_kernel<float, float, 4, 8>' (at most 90 characters)."""
    name = name.replace("(anonymous namespace)::", "")
    name = name[5:] if name.startswith("void ") else name
    name = name.split("(", 1)[0] if "(" in name else name
    return name if len(name) <= 90 else name[:87] + "..."


def kernel_breakdown(fn, repeats, device):
    """[(kernel name, seconds per call)] largest first: each CUDA kernel's (and memset's / memcpy's) device time
    over `repeats` profiled calls, divided by `repeats`; on the CPU, each operator's self time instead."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    fn()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(repeats):
            fn()
        if device == "cuda":
            torch.cuda.synchronize()
    rows = []
    for avg in prof.key_averages():
        if device == "cuda":
            if avg.device_type != DeviceType.CUDA or avg.self_device_time_total <= 0:
                continue
            seconds = avg.self_device_time_total / 1e6 / repeats
        else:
            if avg.self_cpu_time_total <= 0:
                continue
            seconds = avg.self_cpu_time_total / 1e6 / repeats
        rows.append((short_kernel_name(avg.key), seconds))
    return sorted(rows, key=lambda r: -r[1])


def copy_bandwidth(device, repeats, warmup):
    """Device-to-device copy bandwidth in bytes/s (read + write), the practical peak of this device's memory."""
    n = (1 << 30) if device == "cuda" else (1 << 24)
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    med, _, _ = timed(lambda: dst.copy_(src), repeats, warmup, device)
    return 2 * n / med


def byte_counts(value, loc, backward):
    """(min bytes, gather bytes) of one forward (or forward + backward) call.

    min: inputs read once, outputs written once (forward: value, locations, weights in; output out; backward:
    value, locations, weights, grad_output in; grad_value, grad locations, grad weights out).
    gather: the same, with the value read replaced by 4 corners x D channels per sample, and in the backward the
    value-gradient writes replaced by one opmath atomic add per corner and channel (4-byte fp32 for fp16 / bf16).
    """
    B, S, M, D = value.shape
    es, ops = value.element_size(), loc.element_size()
    samples = loc.numel() // 2
    table = 3 * samples * ops  # locations (2 per sample) + weights
    out = B * loc.shape[1] * M * D * es
    v = value.numel() * es
    corners = samples * 4 * D
    fwd_min, fwd_gather = v + table + out, corners * es + table + out
    if not backward:
        return fwd_min, fwd_gather
    bwd_min = v + 2 * table + out + v  # value, loc/weights, grad_output in; grad loc/weights, grad_value out
    bwd_gather = corners * es + 2 * table + out + corners * ops
    return fwd_min + bwd_min, fwd_gather + bwd_gather


def run_case(levels, batch, dtype, device, repeats, warmup, peak, with_reference):
    value, shapes, starts, loc, weights = make_inputs(levels, batch, dtype, device)
    grad_out = torch.randn(batch, value.shape[1], HEADS * CHANNELS, device=device).to(dtype)
    leaves = [t.detach().clone().requires_grad_() for t in (value, loc, weights)]
    results = {
        "batch": batch,
        "dtype": str(dtype).replace("torch.", ""),
        "levels": [list(lv) for lv in levels],
        "queries": value.shape[1],
    }
    impls = {"compiled": ms_deform_attn}
    if with_reference:
        impls["reference"] = ms_deform_attn_reference
    for name, fn in impls.items():

        def forward():
            with torch.no_grad():
                fn(value, shapes, starts, loc, weights)

        def forward_backward():
            out = fn(leaves[0], shapes, starts, leaves[1], leaves[2])
            torch.autograd.grad(out, leaves, grad_out)

        for phase, call in (("fwd", forward), ("fwd_bwd", forward_backward)):
            try:
                results[f"{name}_{phase}_s"] = timed(call, repeats, warmup, device)
                if name == "compiled":
                    results[f"{name}_{phase}_queued_s"] = timed_queued(call, repeats, warmup, device)
                    kernels = kernel_breakdown(call, repeats, device)
                    results[f"{name}_{phase}_kernels"] = kernels
                    results[f"{name}_{phase}_kernel_sum_s"] = sum(seconds for _, seconds in kernels)
            except torch.cuda.OutOfMemoryError:
                results[f"{name}_{phase}_s"] = "OOM"
                torch.cuda.empty_cache()
    for phase, backward in (("fwd", False), ("fwd_bwd", True)):
        ours = results[f"compiled_{phase}_s"]
        ref = results.get(f"reference_{phase}_s")
        if isinstance(ours, tuple):
            if isinstance(ref, tuple):
                results[f"speedup_{phase}"] = ref[0] / ours[0]
            minimum, gather = byte_counts(value, loc, backward)
            results[f"min_bw_{phase}_fraction"] = minimum / ours[0] / peak
            results[f"gather_bw_{phase}_fraction"] = gather / ours[0] / peak
            results[f"gather_bw_{phase}_GBps"] = gather / ours[0] / 1e9
    return results


def fmt_time(t):
    return t if isinstance(t, str) else f"{t[0] * 1e3:.3f} ({t[1] * 1e3:.3f}-{t[2] * 1e3:.3f})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float16", "bfloat16"])
    parser.add_argument("--no-reference", action="store_true", help="skip the grid_sample reference")
    parser.add_argument("--dry-run", action="store_true", help="CPU, small shapes, 1 repeat")
    args = parser.parse_args()
    device = "cpu" if args.dry_run else "cuda"
    levels = DRY_LEVELS if args.dry_run else LEVELS
    repeats, warmup = (1, 1) if args.dry_run else (args.repeats, args.warmup)
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_op.py: no CUDA device is visible; use --dry-run to check the script on the CPU.")
    peak = copy_bandwidth(device, repeats, warmup)
    info = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "copy_bandwidth_GBps": peak / 1e9,
        "cases": [],
    }
    print(
        f"# MSDeformAttn on {info['device']}: Mask2Former shapes {levels}, 8 heads x 32 ch, 4 points; "
        f"device copy bandwidth {peak / 1e9:.0f} GB/s (read + write)",
        flush=True,
    )
    print(
        "| batch | dtype | fwd ms (min-max) | ref fwd ms | x | fwd+bwd ms | ref fwd+bwd ms | x | "
        "BW fwd+bwd (gather / min bytes, of peak) |",
        flush=True,
    )
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    for batch in args.batches:
        for name in args.dtypes:
            try:
                r = run_case(levels, batch, getattr(torch, name), device, repeats, warmup, peak, not args.no_reference)
            except Exception as err:  # report and go on: the suite prints what it can in one run
                r = {"batch": batch, "dtype": name, "error": f"{type(err).__name__}: {err}"}
                print(f"| {batch} | {name} | error: {r['error']} |", flush=True)
                info["cases"].append(r)
                continue
            info["cases"].append(r)
            print(
                f"| {batch} | {name} | {fmt_time(r['compiled_fwd_s'])} | {fmt_time(r.get('reference_fwd_s', '-'))} "
                f"| {r.get('speedup_fwd', float('nan')):.1f} | {fmt_time(r['compiled_fwd_bwd_s'])} "
                f"| {fmt_time(r.get('reference_fwd_bwd_s', '-'))} | {r.get('speedup_fwd_bwd', float('nan')):.1f} "
                f"| {r.get('gather_bw_fwd_bwd_fraction', float('nan')):.0%} / "
                f"{r.get('min_bw_fwd_bwd_fraction', float('nan')):.0%} |",
                flush=True,
            )
    print_breakdown(info["cases"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(info, f, indent=1)


def print_breakdown(cases, top=4):
    """Where the compiled op's time goes: event-timed call, back-to-back ("queued") call, the kernels' sum, and
    the largest kernels (ms per call)."""
    print("\n| batch | dtype | phase | call ms | queued ms | kernels ms | largest kernels (ms per call) |", flush=True)
    print("|---|---|---|---|---|---|---|", flush=True)
    for r in cases:
        for phase in ("fwd", "fwd_bwd"):
            if not isinstance(r.get(f"compiled_{phase}_kernels"), list):
                continue
            largest = "; ".join(f"{name} {seconds * 1e3:.3f}" for name, seconds in r[f"compiled_{phase}_kernels"][:top])
            print(
                f"| {r['batch']} | {r['dtype']} | {phase} | {r[f'compiled_{phase}_s'][0] * 1e3:.3f} "
                f"| {r[f'compiled_{phase}_queued_s'][0] * 1e3:.3f} | {r[f'compiled_{phase}_kernel_sum_s'] * 1e3:.3f} "
                f"| {largest} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
