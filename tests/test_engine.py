"""Engine: optimizer parameter groups, full-model clipping, poly schedule, resume, 2-process (gloo) training."""

import logging
import math
from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from torch import nn

import universal_seg.data  # noqa: F401
import universal_seg.modeling  # noqa: F401
from universal_seg.config import add_universal_seg_config
from universal_seg.engine import Trainer, build_optimizer, launch
from universal_seg.engine.optimizer import param_groups

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "datasets" / "mini" / "panoptic_train.json"
needs_mini = pytest.mark.skipif(not MINI.is_file(), reason="datasets/mini is built by scripts/setup.sh")


def tiny_cfg(output_dir=None, *opts):
    """The mini config shrunk to seconds per iteration (128-pixel crops, 6 queries, few points)."""
    cfg = get_cfg()
    add_universal_seg_config(cfg)
    cfg.merge_from_file(str(ROOT / "configs/mini/panoptic/m2f_r18.yaml"))
    cfg.merge_from_list(
        [
            "INPUT.IMAGE_SIZE",
            "128",
            "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES",
            "6",
            "MODEL.MASK_FORMER.TRAIN_NUM_POINTS",
            "256",
            "MODEL.MASK_FORMER.DEC_LAYERS",
            "3",
            "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS",
            "1",
            "DATALOADER.NUM_WORKERS",
            "0",
            "DATASETS.TEST",
            "()",
            "SOLVER.WARMUP_ITERS",
            "0",
            "SEED",
            "7",
            *opts,
        ]
    )
    if output_dir is not None:
        cfg.OUTPUT_DIR = str(output_dir)
    return cfg


def test_param_groups_follow_the_recipe():
    cfg = tiny_cfg(
        None,
        "SOLVER.BACKBONE_MULTIPLIER",
        "0.1",
        "SOLVER.WEIGHT_DECAY",
        "0.05",
        "SOLVER.WEIGHT_DECAY_NORM",
        "0.0",
        "SOLVER.WEIGHT_DECAY_EMBED",
        "0.0",
        "SOLVER.BASE_LR",
        "0.001",
    )
    model = build_model(cfg)
    groups = {id(g["params"][0]): g for g in param_groups(cfg, model)}
    assert len(groups) == sum(1 for p in model.parameters() if p.requires_grad)
    checked = 0
    for mod_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            g = groups[id(p)]
            expected_lr = 0.0001 if mod_name.startswith("backbone") else 0.001
            no_decay = isinstance(module, (nn.GroupNorm, nn.LayerNorm, nn.Embedding))
            assert math.isclose(g["lr"], expected_lr), f"{mod_name}.{name}"
            assert g["weight_decay"] == (0.0 if no_decay else 0.05), f"{mod_name}.{name}"
            checked += 1
    assert checked > 100
    # spot checks by name
    q = dict(model.named_parameters())["sem_seg_head.predictor.query_feat.weight"]
    assert groups[id(q)]["weight_decay"] == 0.0


def test_full_model_gradient_clipping_bounds_the_total_norm():
    cfg = tiny_cfg(
        None,
        "SOLVER.CLIP_GRADIENTS.ENABLED",
        "True",
        "SOLVER.CLIP_GRADIENTS.CLIP_TYPE",
        "full_model",
        "SOLVER.CLIP_GRADIENTS.CLIP_VALUE",
        "0.01",
        "SOLVER.BASE_LR",
        "0.0",
    )
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    opt = build_optimizer(cfg, model)
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    norm_before = math.sqrt(sum(p.numel() for p in model.parameters()) * 0.25)
    opt.step()
    norm_after = math.sqrt(sum(float((p.grad**2).sum()) for p in model.parameters()))
    assert norm_before > 0.01 and norm_after == pytest.approx(0.01, rel=1e-5)


def test_fused_cpu_adamw_with_full_model_clipping_equals_the_written_out_equations():
    """On CPU parameters AdamW is the fused one; 4 steps with full-model clipping equal the AdamW equations
    (decoupled weight decay, bias-corrected moments) and clip_grad_norm_'s rule computed by hand in float64."""
    lr, wd, clip, (b1, b2), eps = 0.01, 0.05, 0.5, (0.9, 0.999), 1e-8
    cfg = tiny_cfg(
        None,
        "SOLVER.CLIP_GRADIENTS.ENABLED",
        "True",
        "SOLVER.CLIP_GRADIENTS.CLIP_TYPE",
        "full_model",
        "SOLVER.CLIP_GRADIENTS.CLIP_VALUE",
        str(clip),
        "SOLVER.BASE_LR",
        str(lr),
        "SOLVER.WEIGHT_DECAY",
        str(wd),
    )
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 3))  # no norm layers: one weight decay for all
    opt = build_optimizer(cfg, model)
    assert all(g["fused"] is True for g in opt.param_groups)
    ref = [p.detach().double().clone() for p in model.parameters()]
    m = [torch.zeros_like(p) for p in ref]
    v = [torch.zeros_like(p) for p in ref]
    gen = torch.Generator().manual_seed(1)
    for step in range(1, 5):
        grads = [torch.randn(p.shape, generator=gen, dtype=torch.float64) * step for p in ref]
        for p, g in zip(model.parameters(), grads):
            p.grad = g.float()
        opt.step()
        total = math.sqrt(sum(float((g.float().double() ** 2).sum()) for g in grads))
        scale = min(1.0, clip / (total + 1e-6))
        for i, g in enumerate(grads):
            g = g.float().double() * scale
            ref[i] = ref[i] * (1 - lr * wd)
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            denom = (v[i] / (1 - b2**step)).sqrt() + eps
            ref[i] = ref[i] - lr * (m[i] / (1 - b1**step)) / denom
    for p, r in zip(model.parameters(), ref):
        torch.testing.assert_close(p.detach().double(), r, rtol=1e-5, atol=1e-6)


def test_resumed_optimizer_fuses_by_this_runs_devices():
    """A checkpoint's groups carry the saving run's ``fused`` flag (an older CPU run saved None): after loading,
    a CPU run's AdamW is fused, and the moments are the checkpoint's."""
    cfg = tiny_cfg(None)
    model = nn.Linear(3, 2)
    opt = build_optimizer(cfg, model)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    state = opt.state_dict()
    for group in state["param_groups"]:
        group["fused"] = None
    resumed = build_optimizer(cfg, model)
    resumed.load_state_dict(state)
    assert all(g["fused"] is True for g in resumed.param_groups)
    for p in model.parameters():
        assert torch.equal(resumed.state[p]["exp_avg"], opt.state[p]["exp_avg"])


def test_poly_schedule_matches_formula():
    cfg = tiny_cfg(
        None,
        "SOLVER.LR_SCHEDULER_NAME",
        "WarmupPolyLR",
        "SOLVER.MAX_ITER",
        "100",
        "SOLVER.BASE_LR",
        "0.01",
        "SOLVER.POLY_LR_POWER",
        "0.9",
    )
    model = nn.Linear(2, 2)
    opt = build_optimizer(cfg, model)
    sched = Trainer.build_lr_scheduler(cfg, opt)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    for t in (0, 10, 50, 99):
        assert lrs[t] == pytest.approx(0.01 * (1 - t / 100) ** 0.9, rel=1e-6)


def test_steps_at_or_after_max_iter_are_left_out_with_a_warning():
    """Before: a step equal to MAX_ITER stopped training with fvcore's "Milestone must be smaller than total number
    of updates: num_updates=3, milestone=3", naming no key (detectron2 drops only the steps after MAX_ITER)."""
    from conftest import logged_records

    cfg = tiny_cfg(None, "SOLVER.STEPS", "(1, 3, 5)", "SOLVER.MAX_ITER", "3", "SOLVER.BASE_LR", "0.1")
    opt = build_optimizer(cfg, nn.Linear(2, 2))
    with logged_records("universal_seg", logging.WARNING) as warnings:
        sched = Trainer.build_lr_scheduler(cfg, opt)
    assert any("SOLVER.STEPS 3, 5 at or after SOLVER.MAX_ITER 3 never take effect" in r.getMessage() for r in warnings)
    lrs = []
    for _ in range(3):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.1, 0.1 * cfg.SOLVER.GAMMA, 0.1 * cfg.SOLVER.GAMMA])  # the step at 1 only
    assert tuple(cfg.SOLVER.STEPS) == (1, 3, 5)  # the caller's config is unchanged


@needs_mini
def test_resume_restores_iteration_optimizer_and_scheduler(tmp_path):
    cfg = tiny_cfg(tmp_path, "SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.STEPS", "(1,)")
    first = Trainer(cfg)
    first.resume_or_load(resume=False)
    first.train()  # saves model_0001.pth (after iteration 1) and model_final.pth (after iteration 2)
    saved = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=True)
    cfg.SOLVER.MAX_ITER = 5
    second = Trainer(cfg)
    second.resume_or_load(resume=True)
    assert second.start_iter == saved["iteration"] + 1 == 3
    opt_state = second.optimizer.state_dict()["state"]
    saved_opt = saved["trainer"]["_trainer"]["optimizer"]["state"]
    assert len(saved_opt) == len(opt_state) > 0
    for key, state in saved_opt.items():
        torch.testing.assert_close(opt_state[key]["exp_avg"], state["exp_avg"], rtol=0, atol=0)
        assert int(opt_state[key]["step"]) == 3
    assert second.scheduler.last_epoch == saved["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == 3
    # the learning rate in force is the decayed one (STEPS (1,)), not the base rate of a fresh start
    lrs = [g["lr"] for g in second.optimizer.param_groups]
    assert lrs == pytest.approx([cfg.SOLVER.BASE_LR * cfg.SOLVER.GAMMA] * len(lrs))
    second.train()  # continues to the new MAX_ITER
    assert torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=True)["iteration"] == 4
    # a MAX_ITER below the checkpoint's iterations: before, fvcore's "where in ParamScheduler must be in [0, 1]"
    cfg.SOLVER.MAX_ITER = 4
    with pytest.raises(ValueError, match=r"has trained 5 iterations but SOLVER.MAX_ITER is 4; raise SOLVER.MAX_ITER"):
        Trainer(cfg).resume_or_load(resume=True)


def _distributed_worker(output_dir):
    from detectron2.utils import comm

    cfg = tiny_cfg(output_dir, "SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.CHECKPOINT_PERIOD", "100")
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, Path(output_dir) / f"init{comm.get_rank()}.pt")
    trainer.train()
    torch.save(model.state_dict(), Path(output_dir) / f"rank{comm.get_rank()}.pt")
    test_cfg = tiny_cfg(output_dir, "DATASETS.TEST", "('mini_panoptic_val',)", "INPUT.MIN_SIZE_TEST", "64")
    test_cfg.MODEL.MASK_FORMER.TEST.INSTANCE_ON = test_cfg.MODEL.MASK_FORMER.TEST.SEMANTIC_ON = False
    data = Trainer.test(test_cfg, trainer.model)["data"]  # each process evaluates its share of the 3 images
    torch.save(data, Path(output_dir) / f"data{comm.get_rank()}.pt")


def test_a_batch_that_does_not_split_over_the_processes_is_refused_before_the_model_is_built(monkeypatch):
    """Before: refused only once the model, the optimizer and the dataset were built, without naming a fix."""
    from detectron2.utils import comm

    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(Trainer, "build_model", classmethod(lambda cls, cfg: pytest.fail("the model was built")))
    with pytest.raises(
        ValueError,
        match=r"IMS_PER_BATCH 3 must be a multiple of the 2 training processes .*; set "
        r"SOLVER.IMS_PER_BATCH 2 or 4, or start a number of processes that divides 3\.",
    ):
        Trainer(tiny_cfg(None, "SOLVER.IMS_PER_BATCH", "3"))


def _resuming_worker(output_dir, resume):
    cfg = tiny_cfg(output_dir, "SOLVER.MAX_ITER", "4", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.CHECKPOINT_PERIOD", "2")
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=resume)
    trainer.train()


@needs_mini
def test_two_process_training_resumed_with_two_processes_ends_with_the_same_weights(tmp_path):
    """Before: only the main process's random generator states were saved and every process resumed with them, so
    process 1 continued with other random numbers (the loss's point sampling): weights off by about 1e-3."""
    import shutil

    first, resumed = tmp_path / "first", tmp_path / "resumed"
    launch(_resuming_worker, 2, dist_url="auto", args=(str(first), False))  # 4 iterations, saved after 2 and 4
    resumed.mkdir()
    shutil.copy(first / "model_0000001.pth", resumed)
    (resumed / "last_checkpoint").write_text("model_0000001.pth")
    launch(_resuming_worker, 2, dist_url="auto", args=(str(resumed), True))  # iterations 3 and 4 again
    a = torch.load(first / "model_final.pth", map_location="cpu", weights_only=True)["model"]
    b = torch.load(resumed / "model_final.pth", map_location="cpu", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)
    saved = torch.load(first / "model_0000001.pth", map_location="cpu", weights_only=True)["trainer"]
    assert saved["world_size"] == len(saved["rng_per_process"]) == 2  # each process's own generators
    assert not torch.equal(saved["rng_per_process"][0]["torch"], saved["rng_per_process"][1]["torch"])


def _exiting_worker():
    import sys

    sys.exit("error: a one-line error the worker printed")


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_a_worker_that_exits_with_an_error_ends_the_launch_with_its_status_not_a_traceback(capfd):
    """Before: the workers' one-line error was followed by torch's ProcessExitedException traceback; then each of the
    two workers printed the same line."""
    with pytest.raises(SystemExit) as exit_info:
        launch(_exiting_worker, 2, num_machines=1, machine_rank=0, dist_url="auto")
    assert exit_info.value.code == 1
    err = capfd.readouterr().err
    assert _error_lines(err) == ["error: a one-line error the worker printed"] and "Traceback" not in err


def _usage_error_worker(failing_ranks):
    import time

    from detectron2.utils import comm

    from universal_seg.config import usage_error

    rank = comm.get_rank()
    if rank in failing_ranks:
        usage_error(f"{'every process' if len(failing_ranks) > 1 else f'process {rank} alone'} hits this; fix it.")
    time.sleep(600)  # until the launcher stops it


def test_an_error_of_several_workers_is_one_line_and_one_of_a_single_worker_is_printed_too(capfd):
    """Before: a mistake that every process finds (the config, the data it names) was printed once per process."""
    with pytest.raises(SystemExit) as exit_info:
        launch(_usage_error_worker, 2, dist_url="auto", args=((0, 1),))
    assert exit_info.value.code == 2
    err = capfd.readouterr().err
    assert _error_lines(err) == ["error: every process hits this; fix it."] and "Traceback" not in err
    # a mistake only process 1 finds (e.g. in its share of the data) while process 0 goes on is still printed
    with pytest.raises(SystemExit) as exit_info:
        launch(_usage_error_worker, 2, dist_url="auto", args=((1,),))
    assert exit_info.value.code == 2
    err = capfd.readouterr().err
    assert _error_lines(err) == ["error: process 1 alone hits this; fix it."] and "Traceback" not in err


def _killed_worker(folder):
    import os
    import signal
    import time

    from detectron2.utils import comm

    open(os.path.join(folder, f"{os.getpid()}.pid"), "w").close()
    comm.synchronize()  # both pid files are written
    if comm.get_rank() == 1:
        os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's out-of-memory killer would
    time.sleep(600)  # until the launcher stops it


def test_a_worker_killed_by_a_signal_is_one_line_naming_it_and_exit_status_128_plus_the_signal(tmp_path, capfd):
    """Before: torch's ProcessExitedException became SystemExit(-9), exit status 247, with no word of the signal."""
    import os
    import signal

    with pytest.raises(SystemExit) as exit_info:
        launch(_killed_worker, 2, dist_url="auto", args=(str(tmp_path),))
    assert exit_info.value.code == 128 + signal.SIGKILL == 137
    err = capfd.readouterr().err
    (line,) = _error_lines(err)
    assert line.startswith("error: worker process 1 of 2 was killed by SIGKILL (often the kernel's out-of-memory ")
    assert "lower SOLVER.IMS_PER_BATCH" in line and "the other worker processes were stopped" in line
    assert "Traceback" not in err
    pids = [int(p.stem) for p in tmp_path.glob("*.pid")]
    assert len(pids) == 2
    for pid in pids:  # process 0 was stopped and joined before the launcher returned
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@needs_mini
def test_two_cpu_processes_with_gloo_end_with_identical_weights(tmp_path):
    launch(_distributed_worker, 2, num_machines=1, machine_rank=0, dist_url="auto", args=(str(tmp_path),))
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    init0 = torch.load(tmp_path / "init0.pt", weights_only=True)  # rank 0's own weights before its first step
    assert w0.keys() == w1.keys() == init0.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    floating = [k for k in w0 if w0[k].is_floating_point()]
    moved = [k for k in floating if not torch.equal(w0[k], init0[k])]
    assert len(moved) > len(floating) // 2  # training moved the weights from their start (and both ranks identically)
    # the evaluation counts the whole dataset's images, not one process's share (before: 2.0 for mini's 3)
    assert torch.load(tmp_path / "data0.pt")["images"] == 3.0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_launch_arguments_that_would_hang_or_collide_are_refused_before_any_process_starts():
    """Before: --dist-url auto with several machines was a traceback (an AssertionError on CUDA), a machine rank out
    of range or several machines at detectron2's default 127.0.0.1 URL waited 30 minutes, a port in use (a second
    run on the machine at detectron2's fixed default port) was torch's EADDRINUSE traceback from the worker."""
    import socket

    from universal_seg.engine.launch import check_launch_args

    assert check_launch_args(2, 1, 0, None).startswith("tcp://127.0.0.1:")  # one machine: a free port
    with pytest.raises(ValueError, match=r"--num-machines 2 needs --dist-url tcp://HOST:PORT with the address of"):
        check_launch_args(1, 2, 1, "auto")
    with pytest.raises(ValueError, match=r"--num-machines 2 needs --dist-url"):
        check_launch_args(1, 2, 0, None)
    with pytest.raises(ValueError, match=r"--machine-rank 2 is out of range for --num-machines 2; give each machine"):
        check_launch_args(1, 2, 2, "tcp://127.0.0.1:1234")
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ValueError, match=rf"port {port} cannot be used on this machine .*pass another port"):
            check_launch_args(2, 1, 0, f"tcp://127.0.0.1:{port}")
        with pytest.raises(ValueError, match="cannot be used"):  # launch checks too, before starting a process
            launch(_exiting_worker, 2, dist_url=f"tcp://127.0.0.1:{port}")
    assert check_launch_args(1, 2, 1, f"tcp://127.0.0.1:{port}")  # another machine's port is not probed


def test_a_machine_that_never_joins_ends_in_one_line_naming_the_fix(capfd):
    """Before: rank 0 of a two-machine run whose other machine never started waited (30 minutes by default), then
    ended in torch's DistStoreError traceback."""
    from datetime import timedelta

    with pytest.raises(SystemExit) as exit_info:
        launch(_exiting_worker, 1, 2, 0, f"tcp://127.0.0.1:{_free_port()}", timeout=timedelta(seconds=2))
    assert exit_info.value.code == 2
    err = capfd.readouterr().err
    assert "error: process 0 of 2 could not join the process group at tcp://127.0.0.1:" in err
    assert "each with its own --machine-rank 0..1" in err and "Traceback" not in err


_SLEEPING_LAUNCH = """
import os, sys, time
from universal_seg.engine import launch

def worker(folder):
    open(os.path.join(folder, f"{os.getpid()}.pid"), "w").close()
    time.sleep(600)

if __name__ == "__main__":
    launch(worker, 2, dist_url="auto", args=(sys.argv[1],))
"""


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_sigterm_or_ctrl_c_to_the_launcher_stops_its_workers(tmp_path, signum):
    """Before: SIGTERM killed the launcher alone and its workers went on training (saving checkpoints) as orphans;
    SIGINT to the launcher alone (``kill -INT``, ``timeout -s INT``) left it waiting for workers that never stop."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "sleeping_launch.py"
    script.write_text(_SLEEPING_LAUNCH)
    folder = tmp_path / "pids"
    folder.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(script), str(folder)], env=env, stderr=subprocess.PIPE, text=True)
    pids = []
    try:
        deadline = time.monotonic() + 300
        while len(pids) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            pids = [int(p.stem) for p in folder.glob("*.pid")]
        assert len(pids) == 2, proc.stderr.read() if proc.poll() is not None else "workers did not start"
        proc.send_signal(getattr(signal, signum))
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 128 + getattr(signal, signum), err[-2000:]
        assert f"stopped by {signum}; the 2 worker process(es) were stopped too" in err
        for pid in pids:  # the launcher joined its workers before exiting: none is left
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@needs_mini
def test_training_steps_lower_the_loss_on_a_fixed_batch():
    """Four optimizer steps (the project's optimizer, no schedule) on one fixed mapped 64-pixel crop lower its total
    loss by over 10% (about 35% when written); the seed is reset before every forward so the loss's random point
    sampling is the same each time."""
    from detectron2.data import DatasetCatalog

    from universal_seg.data.mappers.base import build_mapper

    cfg = tiny_cfg(None, "INPUT.IMAGE_SIZE", "64")
    torch.manual_seed(0)
    model = build_model(cfg).train()
    batch = [build_mapper(cfg, True)(DatasetCatalog.get(cfg.DATASETS.TRAIN[0])[0])]
    optimizer = build_optimizer(cfg, model)

    def total_loss():
        torch.manual_seed(0)
        return sum(model(batch).values())

    losses = []
    for _ in range(4):
        loss = total_loss()
        losses.append(float(loss))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        final = float(total_loss())
    assert all(math.isfinite(v) for v in losses) and final < 0.9 * losses[0], (losses, final)


def _loader_mapper(loader):
    """The mapper inside the trainer's training loader (universal_seg.data.loader: TrainLoader -> TrainingStream)."""
    from universal_seg.data.loader import TrainingStream, TrainLoader

    assert isinstance(loader, TrainLoader) and isinstance(loader.dataset, TrainingStream)
    return loader.dataset.mapper


@needs_mini
@pytest.mark.parametrize(
    "mapper_name,dataset,expected",
    [
        ("mask_former_panoptic", "mini_panoptic_train", "PanopticDatasetMapper"),
        ("mask_former_instance", "mini_instance_train", "InstanceDatasetMapper"),
        ("mask_former_semantic", "mini_sem_seg_train", "SemanticDatasetMapper"),
        ("coco_panoptic_lsj", "mini_panoptic_train", "COCOPanopticLSJDatasetMapper"),
        ("coco_instance_lsj", "mini_instance_train", "COCOInstanceLSJDatasetMapper"),
    ],
)
def test_train_loader_uses_the_mapper_build_mapper_chooses(mapper_name, dataset, expected):
    """The trainer's loader holds a mapper of the class build_mapper (the one dispatch, covered by test_mappers)
    gives for the config, with the same augmentations (building the loader maps no image)."""
    from universal_seg.data import mappers
    from universal_seg.data.mappers import build_mapper

    classes = "20" if "instance" in dataset else "21"  # the mini instance set has the 20 thing classes only
    cfg = tiny_cfg(
        None,
        "INPUT.DATASET_MAPPER_NAME",
        mapper_name,
        "DATASETS.TRAIN",
        f"('{dataset}',)",
        "SOLVER.IMS_PER_BATCH",
        "1",
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES",
        classes,
    )
    mapper = _loader_mapper(Trainer.build_train_loader(cfg))
    chosen = build_mapper(cfg, is_train=True)
    assert type(mapper) is type(chosen) is getattr(mappers, expected)
    assert repr(getattr(mapper, "augmentations", None)) == repr(getattr(chosen, "augmentations", None))


def test_train_loader_rejects_an_unknown_mapper_name():
    cfg = tiny_cfg(None, "INPUT.DATASET_MAPPER_NAME", "no_such_mapper")
    with pytest.raises(KeyError, match="DATASET_MAPPER_NAME='no_such_mapper' is unknown"):
        Trainer.build_train_loader(cfg)


@needs_mini
def test_test_time_augmentation_with_one_view_equals_plain_evaluation(tmp_path):
    """TEST.AUG with one size (the test size) and no flip is one view of the same image: its mIoU must equal the
    plain evaluation's (the flip itself is tested in test_evaluation_build.py); a model without semantic output
    is refused before any work, and TEST.AUG.ENABLED puts the TTA evaluation into the trainer's hooks."""
    from detectron2.engine import hooks

    from universal_seg.engine.trainer import check_tta_config

    cfg = tiny_cfg(
        tmp_path,
        "DATASETS.TEST",
        "('mini_panoptic_val_with_sem_seg',)",
        "INPUT.MIN_SIZE_TEST",
        "128",
        "INPUT.MAX_SIZE_TEST",
        "256",
        "TEST.AUG.MIN_SIZES",
        "(128,)",
        "TEST.AUG.MAX_SIZE",
        "256",
        "TEST.AUG.FLIP",
        "False",
        "MODEL.MASK_FORMER.TEST.PANOPTIC_ON",
        "False",
        "MODEL.MASK_FORMER.TEST.INSTANCE_ON",
        "False",
    )
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    plain = Trainer.test(cfg, model)
    tta = Trainer.test_with_TTA(cfg, model)
    assert set(tta) == {"sem_seg_TTA", "data"}
    assert tta["sem_seg_TTA"]["mIoU"] == pytest.approx(plain["sem_seg"]["mIoU"], abs=1e-9)

    cfg.MODEL.MASK_FORMER.TEST.SEMANTIC_ON, cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON = False, True
    with pytest.raises(ValueError, match="does not output it"):
        check_tta_config(cfg)
    cfg.MODEL.MASK_FORMER.TEST.SEMANTIC_ON, cfg.TEST.AUG.ENABLED, cfg.SOLVER.MAX_ITER = True, True, 1
    cfg.DATASETS.TRAIN = ("mini_panoptic_train",)
    trainer = Trainer(cfg)
    assert sum(isinstance(h, hooks.EvalHook) for h in trainer._hooks) == 2  # the plain one and the TTA one
