#!/usr/bin/env python
"""Speed and memory of the compiled MSDeformAttn op against the pure-PyTorch (grid_sample) reference.

Shapes are those of Mask2Former's pixel decoder on a 1024x1024 input: batch 2, 8 heads x 32 channels, 4 points,
3 levels at 1/8, 1/16, 1/32 (128x128, 64x64, 32x32), one query per position (Lq = S = 21504). Queries sample
around their own position with Deformable-DETR-like offsets (a few pixels), as in the real encoder.

Each (device, dtype, implementation) runs in a fresh subprocess so that CPU peak memory (max RSS) is its own.
Reported: median over --repeats timed runs after --warmup runs, of the forward and of forward + backward, the
extra peak memory above the inputs, and the compiled / reference ratios. Usage:

    python benchmarks/ms_deform_attn.py [--device cpu|cuda|all] [--threads 2] [--repeats 5]
    python benchmarks/ms_deform_attn.py --compare-cpu-isas [--rounds 5]

--compare-cpu-isas times the compiled CPU kernels (float32) once per instruction-set variant this CPU supports
(UNIVERSAL_SEG_CPU_ISA=default / avx2 / avx512, each in its own process), in alternating rounds, and prints each
variant's median and spread over the rounds and its ratio to "default".
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

LEVELS = ((128, 128), (64, 64), (32, 32))
BATCH, HEADS, CHANNELS, POINTS = 2, 8, 32, 4


def make_inputs(device, dtype, seed=0):
    """value [2, S, 8, 32], shapes, starts, locations [2, S, 8, 3, 4, 2] (fp32 / fp64), weights [2, S, 8, 3, 4]."""
    import torch

    from universal_seg.ops.ms_deform_attn_function import opmath_dtype

    gen = torch.Generator().manual_seed(seed)
    shapes = torch.tensor(LEVELS)
    areas = shapes[:, 0] * shapes[:, 1]
    starts = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    S, L = int(areas.sum()), len(LEVELS)
    # reference point of each query: the centre of its own pixel, in [0, 1]
    refs = []
    for h, w in LEVELS:
        ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
        refs.append(torch.stack([xs.flatten(), ys.flatten()], -1))
    ref = torch.cat(refs)[None, :, None, None, None, :]  # [1, S, 1, 1, 1, 2]
    offsets = torch.randn(BATCH, S, HEADS, L, POINTS, 2, generator=gen) * 2.0  # pixels of each level
    normalizer = shapes.flip(-1).float()[None, None, None, :, None, :]
    op = opmath_dtype(dtype)
    loc = (ref + offsets / normalizer).to(device=device, dtype=op)
    weights = torch.randn(BATCH, S, HEADS, L * POINTS, generator=gen).softmax(-1)
    weights = weights.view(BATCH, S, HEADS, L, POINTS).to(device=device, dtype=op)
    value = torch.randn(BATCH, S, HEADS, CHANNELS, generator=gen).to(device=device, dtype=dtype)
    return value, shapes.to(device), starts.to(device), loc, weights


def current_rss_kib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def worker(impl, device, dtype_name, repeats, warmup, threads):
    """Times one implementation; prints one JSON line."""
    import torch

    from universal_seg.ops import ms_deform_attn, ms_deform_attn_reference

    torch.set_num_threads(threads)
    dtype = getattr(torch, dtype_name)
    fn = ms_deform_attn if impl == "compiled" else ms_deform_attn_reference
    value, shapes, starts, loc, weights = make_inputs(device, dtype)
    for t in (value, loc, weights):
        t.requires_grad_(True)
    grad_out = torch.randn(BATCH, value.shape[1], HEADS * CHANNELS, device=device, dtype=dtype)
    cuda = device == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def forward():
        with torch.no_grad():
            return fn(value, shapes, starts, loc, weights)

    def forward_backward():
        out = fn(value, shapes, starts, loc, weights)
        torch.autograd.grad(out, (value, loc, weights), grad_out)

    result = {"impl": impl, "device": device, "dtype": dtype_name}
    if cuda:
        torch.cuda.synchronize()
        base_mem = torch.cuda.memory_allocated()
    else:
        base_mem = current_rss_kib() * 1024
    for name, step in (("forward", forward), ("forward_backward", forward_backward)):
        for _ in range(warmup):
            step()
        sync()
        times = []
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - start)
        result[name + "_s"] = statistics.median(times)
        if cuda:
            result[name + "_peak_mib"] = (torch.cuda.max_memory_allocated() - base_mem) / 2**20
    if not cuda:  # max RSS over the whole run (forward + backward) above the inputs
        result["forward_backward_peak_mib"] = (
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base_mem
        ) / 2**20
    out = forward().double()
    result["checksum"] = [float(out.abs().sum()), float(out.abs().max())]
    print(json.dumps(result))


def run_case(args, impl, device, dtype, cpu_isa=None):
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        impl,
        device,
        dtype,
        "--repeats",
        str(args.repeats),
        "--warmup",
        str(args.warmup),
        "--threads",
        str(args.threads),
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    if cpu_isa is not None:
        env["UNIVERSAL_SEG_CPU_ISA"] = cpu_isa
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"benchmark case {impl}/{device}/{dtype} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def accuracy(device, dtype_name):
    """Max |compiled - float64 reference| of the forward, relative to max |reference|."""
    import torch

    from universal_seg.ops import ms_deform_attn, ms_deform_attn_reference

    inputs = make_inputs(device, getattr(torch, dtype_name))
    exact = ms_deform_attn_reference(*[t.double() if t.is_floating_point() else t for t in inputs])
    ours = ms_deform_attn(*inputs).double()
    return float((ours - exact).abs().max() / exact.abs().max())


def compare_cpu_isas(args, isas):
    """Median and spread per variant over args.rounds alternating rounds (the order rotates every round)."""
    times = {isa: {"forward_s": [], "forward_backward_s": []} for isa in isas}
    for r in range(args.rounds):
        for isa in isas[r % len(isas) :] + isas[: r % len(isas)]:
            res = run_case(args, "compiled", "cpu", "float32", cpu_isa=isa)
            for key in times[isa]:
                times[isa][key].append(res[key])
    base = {key: statistics.median(v) for key, v in times["default"].items()}
    print(
        f"{'isa':8} {'fwd ms (spread)':>24} {'fwd+bwd ms (spread)':>24} {'fwd vs default':>15} {'f+b vs default':>15}"
    )
    for isa in isas:
        cols = []
        for key in ("forward_s", "forward_backward_s"):
            v = [t * 1e3 for t in times[isa][key]]
            cols.append(f"{statistics.median(v):8.1f} ({min(v):6.1f}-{max(v):6.1f})")
        ratios = [base[key] / statistics.median(times[isa][key]) for key in ("forward_s", "forward_backward_s")]
        print(f"{isa:8} {cols[0]:>24} {cols[1]:>24} {ratios[0]:14.2f}x {ratios[1]:14.2f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--compare-cpu-isas", action="store_true", help="time each CPU instruction-set variant")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of --compare-cpu-isas")
    parser.add_argument("--worker", nargs=3, metavar=("IMPL", "DEVICE", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker, args.repeats, args.warmup, args.threads)
        return

    import torch

    from universal_seg.ops import cuda_kernels_compiled, load_extension

    if load_extension() is None:
        sys.exit("universal_seg._C is not built: run `bash scripts/setup.sh` first.")
    torch.set_num_threads(args.threads)
    if args.compare_cpu_isas:
        isas = load_extension().supported_cpu_isas()
        print(
            f"compiled CPU kernels, float32, {args.threads} threads, variants {isas}, {args.rounds} rounds of "
            f"(median of {args.repeats} after {args.warmup} warm-up)"
        )
        compare_cpu_isas(args, isas)
        return
    cases = []
    if args.device in ("cpu", "all"):
        cases.append(("cpu", "float32"))
    if args.device in ("cuda", "all"):
        if torch.cuda.is_available() and cuda_kernels_compiled():
            cases += [("cuda", "float32"), ("cuda", "bfloat16")]
        elif args.device == "cuda":
            sys.exit("no CUDA device, or universal_seg._C has no CUDA kernels.")
        else:
            print("(no CUDA device or no CUDA kernels: GPU cases skipped)")
    S = sum(h * w for h, w in LEVELS)
    print(
        f"MSDeformAttn at Mask2Former shapes: batch {BATCH}, {HEADS} heads x {CHANNELS} ch, {POINTS} points, "
        f"levels {LEVELS}, Lq = S = {S}; CPU threads {args.threads}; "
        f"median of {args.repeats} after {args.warmup} warm-up"
    )
    header = f"{'device':6} {'dtype':9} {'impl':10} {'fwd ms':>9} {'fwd+bwd ms':>11} {'peak MiB':>9}"
    for device, dtype in cases:
        res = {impl: run_case(args, impl, device, dtype) for impl in ("compiled", "reference")}
        print(header)
        for impl, r in res.items():
            print(
                f"{device:6} {dtype:9} {impl:10} {r['forward_s'] * 1e3:9.1f} {r['forward_backward_s'] * 1e3:11.1f} "
                f"{r['forward_backward_peak_mib']:9.0f}"
            )
        c, r = res["compiled"], res["reference"]
        print(
            f"  speed-up (reference / compiled): forward {r['forward_s'] / c['forward_s']:.2f}x, "
            f"forward+backward {r['forward_backward_s'] / c['forward_backward_s']:.2f}x; "
            f"peak memory ratio {r['forward_backward_peak_mib'] / max(c['forward_backward_peak_mib'], 1e-9):.2f}x"
        )
        print(f"  forward relative error of compiled {dtype} vs float64 reference: {accuracy(device, dtype):.2e}")


if __name__ == "__main__":
    main()
