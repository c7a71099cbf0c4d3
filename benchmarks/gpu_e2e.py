#!/usr/bin/env python
"""End-to-end GPU throughput: Mask2Former / SegFormer / CGRSeg inference and Mask2Former training.

    python benchmarks/gpu_e2e.py [--device cuda] [--cases infer,train,perpixel,compile] [--json PATH]
    python benchmarks/gpu_e2e.py --dry-run [--json PATH]      # every code path on the CPU at tiny sizes

--dry-run runs every case on the CPU (bf16 autocast for AMP) at 128-pixel inputs, batch 1 and 2, one warm-up and
one timed iteration, with the Mask2Former cases on configs/mini/panoptic/m2f_r18.yaml (same code, CPU-sized; pass
--m2f-config configs/coco/panoptic/m2f_r50.yaml for the R50 one) and torch.compile's aot_eager backend (dynamo
tracing and AOT autograd without the CPU C++ code generation): it checks the code paths, its timings mean nothing.

Case groups (``--cases``, comma list; default ``all`` = all four, run in this order):

- ``infer``: Mask2Former R50 COCO panoptic (configs/coco/panoptic/m2f_r50.yaml, semantic + instance + panoptic
  post-processing as configured), 800x1333 (H x W) inputs, batch 1 and 8, fp32 and AMP: images/s.
- ``perpixel``: SegFormer-B0 and CGRSeg-T (ADE20K configs), 512x512, batch 1 and 8, fp32 and AMP: images/s.
- ``train``: the Mask2Former R50 config at batch 2 and 8 on 1024x1024 LSJ-like crops (the exact dict format of the
  ``coco_panoptic_lsj`` mapper: image uint8 [3, S, S], sem_seg, instances with gt_classes / gt_masks [n, S, S] bool /
  gt_boxes, 15-30 non-overlapping rectangles and ellipses per image), fp32 and AMP: iterations/s, images/s and peak
  memory. One iteration = forward + sum of the losses + backward + optimizer step, as detectron2's
  SimpleTrainer / AMPTrainer (v0.6) run it: the optimizer is the project's ``build_optimizer`` (AdamW with the
  config's per-parameter groups, LR 1e-4, backbone x0.1, full-model gradient clipping at 0.01); AMP training uses
  a GradScaler when the AMP dtype is fp16. No LR scheduler, no data loader (the batch is built once, on the host,
  as a data loader would hand it over; its copy to the GPU is part of the timed forward, as in training).
- ``compile`` (also switched on by ``--compile``): the ``infer`` case, AMP, batch 1 and 8, with ``torch.compile``
  applied to the Mask2Former transformer decoder (``model.sem_seg_head.predictor``: the masked-attention layers
  and prediction heads; the pixel decoder and the post-processing stay eager). The first call (tracing and
  compilation) is reported separately as ``compile_s``; a compile failure is recorded as a string.

AMP: ``torch.autocast`` with fp16 on CUDA (``--amp-dtype``; fp16 is what the configs' ``SOLVER.AMP`` runs through
detectron2 v0.6's AMPTrainer, and what benchmarks/m2f_inference.py uses) and bf16 on the CPU.

Weights are random (``MODEL.WEIGHTS ""``) and inputs synthetic. With untrained weights no panoptic segment passes
the 0.8 score threshold, so the panoptic part of the post-processing does less work than with a trained model;
the instance top-k and the semantic product do the same work either way.

Each case runs ``warmup`` untimed and ``iters`` timed iterations (torch.cuda.synchronize before and after each;
perf_counter); the table and the JSON give the median and min / max seconds per iteration. Every case is wrapped
in try/except: an OOM is recorded as "OOM", any other exception as its message, and the suite goes on. Each line
is printed (flushed) and the JSON rewritten as soon as its case ends, so partial results survive a timeout; cases
that would start after ``--time-budget`` seconds (default 225; a compile case needs 60 s of it left) are recorded
as skipped.
"""

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

import universal_seg.data  # noqa: E402,F401  (dataset metadata: thing classes)
import universal_seg.modeling  # noqa: E402,F401
from universal_seg.config import load_config  # noqa: E402
from universal_seg.data.mappers.panoptic import semantic_from_compact  # noqa: E402
from universal_seg.data.mappers.targets import instances_from_panoptic  # noqa: E402
from universal_seg.engine.optimizer import build_optimizer  # noqa: E402

GROUPS = ("infer", "perpixel", "train", "compile")
M2F_CONFIG = "configs/coco/panoptic/m2f_r50.yaml"
M2F_DRY_CONFIG = "configs/mini/panoptic/m2f_r18.yaml"  # the R50 config's CPU training step alone takes ~10 s
SEGFORMER_CONFIG = "configs/ade20k/semantic/segformer_b0.yaml"
CGRSEG_CONFIG = "configs/ade20k/semantic/cgrseg_t.yaml"

# Per group: input size (H, W), [(batch, warmup, timed iterations)]. The GPU plan keeps the whole suite within
# about 4 minutes on one H100; the dry-run plan only checks the code paths on the CPU.
GPU_PLAN = {
    "infer": ((800, 1333), [(1, 3, 10), (8, 2, 6)]),
    "perpixel": ((512, 512), [(1, 3, 10), (8, 3, 10)]),
    "train": ((1024, 1024), [(2, 2, 6), (8, 1, 3)]),
    "compile": ((800, 1333), [(1, 3, 10), (8, 2, 6)]),
}
DRY_PLAN = {
    "infer": ((128, 200), [(1, 1, 1), (2, 1, 1)]),  # not square and not a multiple of 32: crop / resize paths
    "perpixel": ((128, 128), [(1, 1, 1), (2, 1, 1)]),
    "train": ((128, 128), [(1, 1, 1), (2, 1, 1)]),
    "compile": ((128, 200), [(1, 1, 1), (2, 1, 1)]),
}
SEGMENTS_PER_IMAGE = (15, 30)


# --------------------------------------------------------------------------------------------------- inputs
def build_cfg(config_file: str, device: str, opts=()):
    return load_config(os.path.join(ROOT, config_file), ["MODEL.WEIGHTS", "", "MODEL.DEVICE", device, *opts])


def inference_inputs(batch: int, size: tuple[int, int], seed: int = 0) -> list[dict]:
    """detectron2 test-time dicts: image uint8 [3, H, W] (host memory, as a data loader gives it), height, width."""
    gen = torch.Generator().manual_seed(seed)
    h, w = size
    return [
        {"image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen), "height": h, "width": w}
        for _ in range(batch)
    ]


def synthetic_compact_panoptic(size: tuple[int, int], num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """A panoptic map in the mappers' "compact" form: uint8 [H, W], segment k+1 painted over earlier ones (so
    segments do not overlap, as in panoptic annotations), 0 = void. Rectangles and ellipses, 3-45% of each side."""
    h, w = size
    compact = np.zeros((h, w), dtype=np.uint8)
    yy, xx = np.arange(h)[:, None], np.arange(w)[None, :]
    for k in range(1, num_segments + 1):
        bh = max(2, int(h * rng.uniform(0.03, 0.45)))
        bw = max(2, int(w * rng.uniform(0.03, 0.45)))
        y0, x0 = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
        if rng.random() < 0.5:
            compact[y0 : y0 + bh, x0 : x0 + bw] = k
        else:
            cy, cx, ry, rx = y0 + bh / 2, x0 + bw / 2, bh / 2, bw / 2
            blob = ((yy[y0 : y0 + bh] - cy) / ry) ** 2 + ((xx[:, x0 : x0 + bw] - cx) / rx) ** 2 <= 1.0
            compact[y0 : y0 + bh, x0 : x0 + bw][blob] = k
    return compact


def synthetic_lsj_batch(
    batch: int, size: tuple[int, int], num_classes: int, ignore_label: int = 255, seed: int = 0
) -> list[dict]:
    """Training dicts exactly as the ``coco_panoptic_lsj`` mapper returns them (universal_seg/data/mappers/
    lsj_panoptic.py): image uint8 [3, H, W], sem_seg long [H, W] (void -> ignore), instances with gt_classes long
    [n], gt_masks bool [n, H, W], gt_boxes; built with the mapper's own helpers from a synthetic panoptic map of
    15-30 segments with random contiguous category ids."""
    rng = np.random.default_rng(seed)
    h, w = size
    out = []
    for i in range(batch):
        n = int(rng.integers(SEGMENTS_PER_IMAGE[0], SEGMENTS_PER_IMAGE[1] + 1))
        compact = synthetic_compact_panoptic(size, n, rng)
        segments = [{"id": k + 1, "category_id": int(rng.integers(0, num_classes)), "iscrowd": 0} for k in range(n)]
        image = torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8))
        out.append(
            {
                "file_name": f"synthetic_{i}.jpg",
                "image_id": i,
                "height": h,
                "width": w,
                "image": image,
                "sem_seg": torch.from_numpy(semantic_from_compact(compact, segments, ignore_label)),
                "instances": instances_from_panoptic(compact, segments),
            }
        )
    return out


# -------------------------------------------------------------------------------------------------- helpers
def autocast_ctx(device: str, amp_dtype):
    """torch.autocast for ``device`` with ``amp_dtype``, or a null context for fp32 (amp_dtype None)."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=amp_dtype)


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_iterations(fn, warmup: int, iters: int, device: str) -> list[float]:
    """Seconds of each of ``iters`` timed calls of ``fn`` after ``warmup`` untimed ones (synchronized)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def reset_peak(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: str):
    if torch.device(device).type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return None


def free_memory(device: str) -> None:
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def dtype_name(amp_dtype) -> str:
    return {None: "fp32", torch.float16: "amp-fp16", torch.bfloat16: "amp-bf16"}[amp_dtype]


def is_oom(err: BaseException) -> bool:
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom_type is not None and isinstance(err, oom_type)) or "out of memory" in str(err).lower()


# ---------------------------------------------------------------------------------------------------- cases
class Suite:
    """Runs the cases, keeps one inference model per config, prints and records every result."""

    def __init__(self, args):
        self.args = args
        self.device = "cpu" if args.dry_run else args.device
        self.plan = DRY_PLAN if args.dry_run else GPU_PLAN
        if torch.device(self.device).type == "cpu":
            self.amp_dtype = torch.bfloat16
        else:
            self.amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[args.amp_dtype]
        self.m2f_config = args.m2f_config or (M2F_DRY_CONFIG if args.dry_run else M2F_CONFIG)
        self.start = time.perf_counter()
        self.results = []
        self.env = environment(self.device)
        self._models = {}

    # ------------------------------------------------------------------------------------------ bookkeeping
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def write_json(self) -> None:
        if not self.args.json:
            return
        payload = {
            "environment": self.env,
            "settings": self.settings(),
            "elapsed_s": round(self.elapsed(), 2),
            "cases": self.results,
        }
        tmp = self.args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(payload, f, indent=1)
        os.replace(tmp, self.args.json)

    def settings(self) -> dict:
        return {
            "device": self.device,
            "dry_run": self.args.dry_run,
            "amp_dtype": dtype_name(self.amp_dtype),
            "groups": self.groups,
            "time_budget_s": self.args.time_budget,
            "compile_backend": self.args.compile_backend,
            "compile_mode": self.args.compile_mode,
            "timing": "perf_counter around each iteration, synchronized before and after",
            "train_step": "forward + sum(losses) + backward + optimizer step (project build_optimizer: AdamW, "
            "param groups, full-model grad clipping as configured); GradScaler with fp16 AMP",
        }

    def record(self, case: dict) -> None:
        self.results.append(case)
        print(format_row(case), flush=True)
        self.write_json()

    def run_case(self, base: dict, fn, reserve_s: float = 0.0) -> None:
        """Runs ``fn(case)`` (which fills in timings) with the bookkeeping and error handling around it; skips it
        when fewer than ``reserve_s`` seconds of the time budget are left."""
        case = {"status": "ok", "error": None, **base}
        if self.args.time_budget and self.elapsed() + reserve_s > self.args.time_budget:
            case.update(status="skipped", error=f"time budget of {self.args.time_budget:.0f} s spent")
            self.record(case)
            return
        failed = None
        t0 = time.perf_counter()
        try:
            reset_peak(self.device)
            fn(case)
        except Exception as err:  # noqa: BLE001 -- every failure is recorded and the suite goes on
            failed = err
            if is_oom(err):
                case.update(status="OOM", error=f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:300]}")
            else:
                case.update(status="error", error=f"{type(err).__name__}: {str(err)[:2000]}")
                if self.args.verbose:
                    traceback.print_exc()
        case["peak_mem_mib"] = case.get("peak_mem_mib") or peak_mib(self.device)
        case["case_wall_s"] = round(time.perf_counter() - t0, 2)
        del failed  # drop the traceback (and the frames' tensors) before emptying the cache
        free_memory(self.device)
        self.record(case)

    # ------------------------------------------------------------------------------------------------- models
    def inference_model(self, config_file: str):
        if config_file not in self._models:
            model = build_model(build_cfg(config_file, self.device)).eval()
            self._models[config_file] = model
        return self._models[config_file]

    # -------------------------------------------------------------------------------------------------- cases
    def fill_timings(self, case: dict, times: list[float], per: str) -> None:
        med = statistics.median(times)
        case.update(
            median_s=med,
            min_s=min(times),
            max_s=max(times),
            times_s=[round(t, 6) for t in times],
            images_per_s=case["batch"] / med,
        )
        if per == "it":
            case["it_per_s"] = 1.0 / med
        case["peak_mem_mib"] = peak_mib(self.device)

    def infer_case(self, config_file: str, batch: int, size, amp_dtype, warmup: int, iters: int):
        def fn(case):
            model = self.inference_model(config_file)
            inputs = inference_inputs(batch, size)

            def step():
                with torch.no_grad(), autocast_ctx(self.device, amp_dtype):
                    return model(inputs)

            out = step()
            case["outputs"] = sorted(out[0].keys())
            self.fill_timings(case, time_iterations(step, max(warmup - 1, 0), iters, self.device), "image")

        return fn

    def train_case(self, config_file: str, batch: int, size, amp_dtype, warmup: int, iters: int):
        def fn(case):
            free_memory(self.device)
            cfg = build_cfg(config_file, self.device)
            data = synthetic_lsj_batch(
                batch, size, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
            )
            case["segments_per_image"] = [len(x["instances"]) for x in data]
            model = build_model(cfg).train()
            optimizer = build_optimizer(cfg, model)
            case["optimizer"] = type(optimizer).__name__
            use_scaler = amp_dtype == torch.float16
            scaler = torch.amp.GradScaler(torch.device(self.device).type) if use_scaler else None
            case["grad_scaler"] = use_scaler
            last = {}

            def step():
                with autocast_ctx(self.device, amp_dtype):
                    loss_dict = model(data)
                    losses = sum(loss_dict.values())
                optimizer.zero_grad()
                if scaler is not None:
                    scaler.scale(losses).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    losses.backward()
                    optimizer.step()
                last["losses"], last["loss_dict"] = losses, loss_dict

            reset_peak(self.device)
            self.fill_timings(case, time_iterations(step, warmup, iters, self.device), "it")
            case["loss_total"] = float(last["losses"].detach())
            case["num_loss_terms"] = len(last["loss_dict"])
            case["losses_finite"] = bool(all(torch.isfinite(v.detach()).item() for v in last["loss_dict"].values()))

        return fn

    def compile_case(self, batch: int, size, warmup: int, iters: int):
        def fn(case):
            model = self.inference_model(self.m2f_config)
            predictor = model.sem_seg_head.predictor
            inputs = inference_inputs(batch, size)
            torch._dynamo.reset()
            from torch._dynamo.utils import counters

            counters.clear()
            compiled = torch.compile(
                predictor, backend=self.args.compile_backend, mode=self.args.compile_mode, dynamic=False
            )

            def step():
                with torch.no_grad(), autocast_ctx(self.device, self.amp_dtype):
                    return model(inputs)

            model.sem_seg_head.predictor = compiled
            try:
                synchronize(self.device)
                t0 = time.perf_counter()
                try:
                    step()
                except Exception as err:  # noqa: BLE001
                    case["compile_error"] = f"{type(err).__name__}: {str(err)[:2000]}"
                    raise RuntimeError(f"torch.compile of sem_seg_head.predictor failed: {case['compile_error']}")
                synchronize(self.device)
                case["compile_s"] = time.perf_counter() - t0
                case["graph_breaks"] = int(sum(counters["graph_break"].values()))
                graphs = int(counters["stats"]["unique_graphs"])
                case["graphs_compiled"] = graphs
                self.fill_timings(case, time_iterations(step, max(warmup - 1, 0), iters, self.device), "image")
                case["graphs_compiled_after_first_call"] = int(counters["stats"]["unique_graphs"]) - graphs
            finally:
                model.sem_seg_head.predictor = predictor
                torch._dynamo.reset()

        return fn

    # --------------------------------------------------------------------------------------------------- run
    def run(self, groups: list[str]) -> None:
        self.groups = groups
        print(header(self.env, self.settings()), flush=True)
        for group in groups:
            size, plan = self.plan[group]
            if group in ("infer", "perpixel"):
                configs = [self.m2f_config] if group == "infer" else [SEGFORMER_CONFIG, CGRSEG_CONFIG]
                for config_file in configs:
                    for batch, warmup, iters in plan:
                        for amp_dtype in (None, self.amp_dtype):
                            base = self.base(group, config_file, "inference", batch, size, amp_dtype, warmup, iters)
                            self.run_case(base, self.infer_case(config_file, batch, size, amp_dtype, warmup, iters))
                    if group == "perpixel":  # the Mask2Former model stays for the compile group
                        self._models.pop(config_file, None)
                        free_memory(self.device)
            elif group == "train":
                for batch, warmup, iters in plan:
                    for amp_dtype in (None, self.amp_dtype):
                        base = self.base(group, self.m2f_config, "training", batch, size, amp_dtype, warmup, iters)
                        self.run_case(base, self.train_case(self.m2f_config, batch, size, amp_dtype, warmup, iters))
            elif group == "compile":
                for batch, warmup, iters in plan:
                    base = self.base(
                        group,
                        self.m2f_config,
                        "inference (compiled decoder)",
                        batch,
                        size,
                        self.amp_dtype,
                        warmup,
                        iters,
                    )
                    base["compiled_module"] = "sem_seg_head.predictor"
                    # a compilation cannot be cut short: start one only with a minute of the budget left
                    self.run_case(
                        base,
                        self.compile_case(batch, size, warmup, iters),
                        reserve_s=0.0 if self.args.dry_run else 60.0,
                    )
        self._models.clear()
        free_memory(self.device)
        print(f"total {self.elapsed():.1f} s", flush=True)
        self.write_json()

    def base(self, group, config_file, mode, batch, size, amp_dtype, warmup, iters) -> dict:
        return {
            "group": group,
            "config": config_file,
            "mode": mode,
            "batch": batch,
            "size": list(size),
            "dtype": dtype_name(amp_dtype),
            "warmup": warmup,
            "iters": iters,
        }


# ------------------------------------------------------------------------------------------------ reporting
def environment(device: str) -> dict:
    from universal_seg.ops import cuda_kernels_compiled, load_extension

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": device,
        "cpu_threads": torch.get_num_threads(),
        "msdeformattn_extension": load_extension() is not None,
        "msdeformattn_cuda_kernels": cuda_kernels_compiled(),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }
    try:
        import detectron2

        env["detectron2"] = detectron2.__version__
    except Exception:  # noqa: BLE001
        env["detectron2"] = None
    if torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            device_name=props.name,
            device_memory_mib=round(props.total_memory / 2**20),
            capability=f"{props.major}.{props.minor}",
        )
    else:
        env["device_name"] = _cpu_name()
    try:
        env["git_commit"] = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5
            ).stdout.strip()
            or None
        )
    except Exception:  # noqa: BLE001
        env["git_commit"] = None
    return env


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


COLUMNS = (
    f"{'group':<9} {'config':<22} {'batch':>5} {'size':>9} {'dtype':<9} {'median s':>9} {'min s':>8} "
    f"{'max s':>8} {'img/s':>8} {'it/s':>7} {'peak MiB':>9}  note"
)


def header(env: dict, settings: dict) -> str:
    lines = [
        f"device {env['device_name']} ({env['device']}), torch {env['torch']}, CUDA {env['cuda']}, "
        f"detectron2 {env['detectron2']}, AMP = {settings['amp_dtype']}"
        + (" [DRY RUN: CPU, tiny sizes]" if settings["dry_run"] else "")
    ]
    if env["device"].startswith("cuda") and not env["msdeformattn_cuda_kernels"]:
        lines.append("WARNING: universal_seg._C has no CUDA kernels: MSDeformAttn runs its slow reference.")
    lines += [COLUMNS, "-" * len(COLUMNS)]
    return "\n".join(lines)


def _fmt(x, spec):
    """``x`` formatted with ``spec`` ("9.4f"), or "-" right-aligned to the same width when None."""
    width = spec.split(".")[0].rstrip("f")
    return format(x, spec) if x is not None else "-".rjust(int(width) if width else 1)


def format_row(c: dict) -> str:
    name = (
        os.path.splitext(os.path.relpath(c["config"], "configs"))[0].replace("/semantic", "").replace("/panoptic", "")
    )
    size = "x".join(str(s) for s in c["size"])
    if c["status"] != "ok":
        note = c["status"] if c["status"] != "error" else f"error: {c['error'].splitlines()[0][:100]}"
    else:
        note = []
        if "compile_s" in c:
            note.append(f"compile {c['compile_s']:.1f} s, {c.get('graph_breaks', 0)} graph breaks")
        if "loss_total" in c:
            note.append(f"loss {c['loss_total']:.2f}")
        note = "; ".join(note)
    return (
        f"{c['group']:<9} {name:<22} {c['batch']:>5} {size:>9} {c['dtype']:<9} {_fmt(c.get('median_s'), '9.4f')} "
        f"{_fmt(c.get('min_s'), '8.4f')} {_fmt(c.get('max_s'), '8.4f')} {_fmt(c.get('images_per_s'), '8.2f')} "
        f"{_fmt(c.get('it_per_s'), '7.2f')} {_fmt(c.get('peak_mem_mib'), '9.0f')}  {note}"
    )


# ------------------------------------------------------------------------------------------------------ main
def parse_groups(text: str, compile_flag: bool) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    if names == ["all"]:
        names = list(GROUPS)
    unknown = sorted(set(names) - set(GROUPS))
    if unknown:
        raise SystemExit(f"--cases: unknown group(s) {unknown}; choose from {', '.join(GROUPS)} or 'all'.")
    if compile_flag and "compile" not in names:
        names.append("compile")
    return [g for g in GROUPS if g in names]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--cases", default="all", help=f"comma list of {', '.join(GROUPS)} (or 'all')")
    parser.add_argument("--compile", action="store_true", help="add the compile group to --cases")
    parser.add_argument("--json", default=None, help="write the results here (rewritten after every case)")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="CPU, tiny sizes (128 px, batch 1 and 2, 1 warm-up + 1 timed iteration): checks the code paths only",
    )
    parser.add_argument("--amp-dtype", choices=("fp16", "bf16"), default="fp16", help="autocast dtype on CUDA")
    parser.add_argument(
        "--m2f-config",
        default=None,
        help=f"Mask2Former config of the infer / train / compile groups (default {M2F_CONFIG}; "
        f"{M2F_DRY_CONFIG} in --dry-run)",
    )
    parser.add_argument(
        "--compile-backend",
        default=None,
        help="torch.compile backend (default inductor; aot_eager in --dry-run, which checks "
        "tracing without the CPU C++ code generation)",
    )
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode (default: the default mode)")
    parser.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help="cases that would start after this many seconds are recorded as skipped "
        "(default 225 on the GPU, none in --dry-run; 0 = none)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--verbose", action="store_true", help="print the traceback of failed cases")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compile_backend is None:
        args.compile_backend = "aot_eager" if args.dry_run else "inductor"
    if args.time_budget is None:
        args.time_budget = 0.0 if args.dry_run else 225.0
    groups = parse_groups(args.cases, args.compile)
    if not args.dry_run and torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available here (use --dry-run for a CPU check).")
    suite = Suite(args)
    suite.run(groups)
    return suite


if __name__ == "__main__":
    main()
