"""Multi-process launching: detectron2's process layout, on CUDA (NCCL) and on CPU-only machines (gloo).

detectron2 v0.6's ``launch`` asserts CUDA and uses NCCL. ``launch`` here spawns ``num_gpus_per_machine`` processes
per machine, joined with NCCL where CUDA is available and with gloo (CPU processes) otherwise, and sets up
detectron2's per-machine process group with ``comm.create_local_process_group`` (upstream's, added after v0.6 and
backported by scripts/install_detectron2.py), so ``detectron2.utils.comm`` works unchanged. Beyond
detectron2's launcher: the arguments are checked before any process starts (:func:`check_launch_args`), a process
group that does not form in time is one line naming the fix, a one-line error that several workers hit is printed
once, a worker killed by a signal is one line naming it, and a launcher stopped by SIGTERM or Ctrl-C stops its
workers instead of leaving them running.
"""

import functools
import logging
import multiprocessing.connection
import os
import pickle
import shutil
import signal
import socket
import sys
import tempfile
import threading
from datetime import timedelta
from urllib.parse import urlparse

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine.launch import DEFAULT_TIMEOUT, _find_free_port
from detectron2.utils import comm

from ..atomic import atomic_open
from ..config import set_error_handoff, usage_error

logger = logging.getLogger(__name__)

# seconds a worker has to exit after the launcher passed on SIGTERM / Ctrl-C (or another worker failed), before it
# is killed
STOP_GRACE_S = 30.0


def check_launch_args(num_gpus_per_machine: int, num_machines: int, machine_rank: int, dist_url: str | None) -> str:
    """The URL the processes meet at (``None`` or ``"auto"``: a free local port, one machine only); raises
    ValueError naming the fix for arguments that would fail or hang once processes are started: a machine rank out
    of range, more GPUs than the machine has, several machines without a ``tcp://HOST:PORT`` of machine 0, or, on
    machine 0, a port already in use."""
    if num_gpus_per_machine < 1 or num_machines < 1:
        raise ValueError(f"--num-gpus ({num_gpus_per_machine}) and --num-machines ({num_machines}) must be >= 1.")
    if not 0 <= machine_rank < num_machines:
        raise ValueError(
            f"--machine-rank {machine_rank} is out of range for --num-machines {num_machines}; give each machine "
            f"its own rank from 0 to {num_machines - 1}."
        )
    if torch.cuda.is_available() and num_gpus_per_machine > torch.cuda.device_count():
        raise ValueError(
            f"--num-gpus {num_gpus_per_machine} but this machine has {torch.cuda.device_count()} GPU(s); pass "
            "--num-gpus at most that."
        )
    if num_machines * num_gpus_per_machine == 1:
        return dist_url
    if dist_url in (None, "auto"):
        if num_machines != 1:
            raise ValueError(
                f"--num-machines {num_machines} needs --dist-url tcp://HOST:PORT with the address of machine rank 0, "
                "the same on every machine (auto picks a port on one machine only)."
            )
        return f"tcp://127.0.0.1:{_find_free_port()}"
    url = urlparse(dist_url)
    if url.scheme == "tcp" and machine_rank == 0:
        if url.port is None:
            raise ValueError(f"--dist-url {dist_url} has no port; pass tcp://HOST:PORT.")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:  # as torch's TCPStore server binds it
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("", url.port))
            except OSError as err:
                raise ValueError(
                    f"--dist-url {dist_url}: port {url.port} cannot be used on this machine ({err.strerror}; another "
                    f"training run?); pass another port"
                    + (", or --dist-url auto on one machine." if num_machines == 1 else ".")
                ) from None
    return dist_url


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
    requested CPU worker when CUDA is unavailable); ``dist_url`` None or ``"auto"`` picks a free local port (one
    machine). The first worker that fails stops the others (SIGTERM, then SIGKILL after STOP_GRACE_S). A worker that
    exits with a status ends the launcher with that status, without the launcher's own traceback; the workers'
    one-line errors (:func:`usage_error` or ``sys.exit("error: ...")`` in a worker) are printed by the launcher once
    the workers have stopped, each distinct line once, so an error that every process hits is one line. A worker
    killed by a signal (e.g. SIGKILL from the out-of-memory killer) is one line naming the signal and a likely cause,
    and exit status 128 + the signal number. SIGTERM or Ctrl-C to the launcher stops the workers and exits with
    128 + the signal number."""
    dist_url = check_launch_args(num_gpus_per_machine, num_machines, machine_rank, dist_url)
    world_size = num_machines * num_gpus_per_machine
    if world_size == 1:
        return main_func(*args)
    backend = "NCCL" if torch.cuda.is_available() else "gloo"
    if backend == "gloo":
        logger.info(f"no CUDA: launching {num_gpus_per_machine} CPU processes per machine with the gloo backend")
    if num_machines > 1 and machine_rank == 0:
        logger.info(
            f"waiting up to {timeout} for the other {num_machines - 1} machine(s) at {dist_url} (each runs this "
            f"command with its own --machine-rank 1..{num_machines - 1})"
        )
    _spawn(
        num_gpus_per_machine,
        machine_rank * num_gpus_per_machine,
        world_size,
        (main_func, backend, world_size, num_gpus_per_machine, machine_rank, dist_url, args, timeout),
    )


class _Stop(Exception):
    """SIGTERM reached the launcher."""


def _raise_stop(signum, frame):
    raise _Stop()


# likely causes of a worker's death by a signal, for its one-line error
_SIGNAL_CAUSES = {
    signal.SIGKILL: "often the kernel's out-of-memory killer (see dmesg): lower SOLVER.IMS_PER_BATCH or "
    "DATALOADER.NUM_WORKERS, or start fewer processes per machine",
    signal.SIGSEGV: "a crash in compiled code: run scripts/setup.sh again, which rebuilds universal_seg's compiled op "
    "for the installed torch, and report the command line if it happens again",
    signal.SIGBUS: "often a full /dev/shm, through which data-loader workers pass their batches: lower "
    "DATALOADER.NUM_WORKERS or give the machine (container) a larger /dev/shm",
    signal.SIGABRT: "a fatal error in compiled code; its message, if any, is above",
    signal.SIGTERM: "something outside this run stopped it, e.g. a job scheduler's time limit",
}


def _spawn(nprocs: int, first_rank: int, world_size: int, worker_args: tuple) -> None:
    """Starts the ``nprocs`` workers of this machine (global ranks ``first_rank`` on) and waits for them; see launch."""
    error_dir = tempfile.mkdtemp(prefix="universal_seg-launch-")
    try:
        context = mp.start_processes(
            _worker, nprocs=nprocs, args=(*worker_args, error_dir), daemon=False, start_method="spawn", join=False
        )
        _join(context, nprocs, first_rank, world_size, error_dir)
    finally:
        shutil.rmtree(error_dir, ignore_errors=True)


def _join(context, nprocs: int, first_rank: int, world_size: int, error_dir: str) -> None:
    processes = context.processes
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_stop) if main_thread else None
    try:
        try:
            failed = _wait_for_a_failure(processes)
        except (KeyboardInterrupt, _Stop) as err:
            signum = signal.SIGINT if isinstance(err, KeyboardInterrupt) else signal.SIGTERM
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            _stop_workers(processes)
            _print_worker_errors(error_dir)
            print(
                f"error: stopped by {signum.name}; the {nprocs} worker process(es) were stopped too. The checkpoints "
                "are written atomically: --resume continues from the last one.",
                file=sys.stderr,
            )
            raise SystemExit(128 + signum) from None
        if failed is None:
            return
        if main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the workers are being stopped anyway
        _stop_workers(processes)
        _print_worker_errors(error_dir)
        _raise_failure(context, failed, first_rank, world_size)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _raise_failure(context, failed: int, first_rank: int, world_size: int) -> None:
    """Ends the launcher as the failed worker ``failed`` (local index) ended: its exception, its exit status, or one
    line naming the signal that killed it and exit status 128 + the signal number."""
    process = context.processes[failed]
    error_file = context.error_files[failed]
    if os.path.isfile(error_file):  # an exception in the worker: torch's spawn wrapper left its traceback here
        with open(error_file, "rb") as f:
            trace = pickle.load(f)
        raise mp.ProcessRaisedException(
            f"\n\n-- Process {failed} terminated with the following error:\n{trace}", failed, process.pid
        )
    if process.exitcode > 0:
        raise SystemExit(process.exitcode)
    signum = -process.exitcode
    try:
        name = signal.Signals(signum).name
    except ValueError:  # a real-time signal
        name = f"signal {signum}"
    others = "; the other worker processes were stopped" if len(context.processes) > 1 else ""
    print(
        f"error: worker process {first_rank + failed} of {world_size} was killed by {name} "
        f"({_SIGNAL_CAUSES.get(signum, 'see the messages above')}){others}. --resume continues from the last "
        "checkpoint.",
        file=sys.stderr,
    )
    raise SystemExit(128 + signum)


def _wait_for_a_failure(processes) -> int | None:
    """Waits until every worker has exited with status 0 (returns None) or one has failed: returns its index, that of
    a worker killed by a signal when several have failed by then (the others often fail because it went away)."""
    while True:
        failed = [i for i, p in enumerate(processes) if p.exitcode not in (None, 0)]
        if failed:
            return min(failed, key=lambda i: (processes[i].exitcode >= 0, i))
        running = {p.sentinel: p for p in processes if p.exitcode is None}
        if not running:
            return None
        for sentinel in multiprocessing.connection.wait(list(running)):
            running[sentinel].join()  # it has exited: collect its status


def _stop_workers(processes) -> None:
    for p in processes:
        if p.is_alive():
            p.terminate()
    for p in processes:
        p.join(STOP_GRACE_S)
        if p.is_alive():
            p.kill()
            p.join()


def _leave_error(path: str, line: str) -> bool:
    """In a worker process started by :func:`launch`: leaves ``line``, the worker's one-line error, at ``path`` (its
    rank's file in the launch's folder) for the launcher, which prints each distinct line of its workers once when
    they have stopped, and returns True; False when the line cannot be left (the caller prints it itself)."""
    try:
        with atomic_open(path, "w", durable=False) as f:
            f.write(line)
    except OSError:
        return False
    return True


def _print_worker_errors(error_dir: str) -> None:
    """Prints the one-line errors the workers left (_leave_error), each distinct one once, by rank."""
    lines = []
    names = [n for n in os.listdir(error_dir) if n.endswith(".txt") and n[: -len(".txt")].isdigit()]
    for name in sorted(names, key=lambda n: int(n[: -len(".txt")])):
        with open(os.path.join(error_dir, name), encoding="utf-8") as f:
            line = f.read()
        if line not in lines:
            lines.append(line)
    for line in lines:
        print(line, file=sys.stderr)


def _worker(
    local_rank, main_func, backend, world_size, num_per_machine, machine_rank, dist_url, args, timeout, error_dir
):
    global_rank = machine_rank * num_per_machine + local_rank
    hand_off = functools.partial(_leave_error, os.path.join(error_dir, f"{global_rank}.txt"))
    set_error_handoff(hand_off)
    if backend == "NCCL":  # before the group forms, so that NCCL's communicators and barriers use this GPU
        torch.cuda.set_device(local_rank)
    try:
        dist.init_process_group(
            backend=backend, init_method=dist_url, world_size=world_size, rank=global_rank, timeout=timeout
        )
    except dist.DistError as err:
        num_machines = world_size // num_per_machine
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        usage_error(
            f"process {global_rank} of {world_size} could not join the process group at {dist_url} ({first}); "
            + (
                f"start every machine with the same --num-machines {num_machines}, --num-gpus {num_per_machine} "
                f"and --dist-url, each with its own --machine-rank 0..{num_machines - 1}, and check that machine "
                "rank 0 is reachable at that address."
                if num_machines > 1
                else "pass --dist-url auto or another port."
            )
        )
    comm.create_local_process_group(num_per_machine)  # the per-machine groups behind comm.get_local_rank()
    comm.synchronize()
    try:
        main_func(*args)
    except SystemExit as exit_:
        # sys.exit("error: ..."): Python would print the line here; the launcher prints it, once for all workers
        if isinstance(exit_.code, str) and hand_off(exit_.code):
            raise SystemExit(1) from None
        raise
