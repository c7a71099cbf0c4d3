"""Multi-process launching: detectron2's launcher on CUDA machines, the same layout over gloo on CPU-only ones.

detectron2 v0.6's ``launch`` asserts CUDA and uses NCCL. On a machine without CUDA, ``launch`` here spawns
``num_gpus_per_machine`` CPU processes per machine instead, joined with the gloo backend, and sets up
detectron2's local process group exactly as its launcher does, so ``detectron2.utils.comm`` works unchanged.
"""

import logging
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine.launch import DEFAULT_TIMEOUT, _find_free_port
from detectron2.engine.launch import launch as d2_launch
from detectron2.utils import comm

logger = logging.getLogger(__name__)


def launch(
    main_func,
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str | None = None,
    args: tuple = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
):
    """Runs ``main_func(*args)`` in ``num_machines * num_gpus_per_machine`` processes (one per GPU, or per
    requested CPU worker when CUDA is unavailable); ``dist_url="auto"`` picks a free local port (one machine).
    A worker that exits with a status (e.g. ``sys.exit("error: ...")`` after printing its one-line error) ends
    the launcher with that status, without the launcher's own traceback on top of the worker's message."""
    try:
        return _launch(main_func, num_gpus_per_machine, num_machines, machine_rank, dist_url, args, timeout)
    except mp.ProcessExitedException as err:
        raise SystemExit(err.exit_code or 1) from None


def _launch(main_func, num_gpus_per_machine, num_machines, machine_rank, dist_url, args, timeout):
    if torch.cuda.is_available():
        return d2_launch(main_func, num_gpus_per_machine, num_machines, machine_rank, dist_url, args, timeout)
    world_size = num_machines * num_gpus_per_machine
    if world_size <= 1:
        return main_func(*args)
    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError('dist_url="auto" works on one machine only; pass --dist-url tcp://HOST:PORT.')
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    if dist_url is None:
        raise ValueError("multi-process launching needs --dist-url (e.g. tcp://HOST:PORT, or auto on one machine).")
    logger.info(f"no CUDA: launching {num_gpus_per_machine} CPU processes per machine with the gloo backend")
    mp.start_processes(
        _cpu_worker,
        nprocs=num_gpus_per_machine,
        args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args, timeout),
        daemon=False,
        start_method="spawn",
    )


def _cpu_worker(local_rank, main_func, world_size, num_per_machine, machine_rank, dist_url, args, timeout):
    global_rank = machine_rank * num_per_machine + local_rank
    dist.init_process_group(
        backend="gloo", init_method=dist_url, world_size=world_size, rank=global_rank, timeout=timeout
    )
    for machine in range(world_size // num_per_machine):
        group = dist.new_group(list(range(machine * num_per_machine, (machine + 1) * num_per_machine)))
        if machine == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
    comm.synchronize()
    main_func(*args)
