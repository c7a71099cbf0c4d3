"""The training data stream: exactly resumable, with a policy for missing and unreadable files.

Resumable by construction: batch ``b`` of a rank is a pure function of (seed, b). The sample indices come from an
infinite stream of seeded permutations (one per epoch, ``torch.randperm`` seeded with (seed, epoch)), grouped by
aspect ratio (landscape / portrait, as detectron2's AspectRatioGroupedDataset) into batches; the global batch
``g`` belongs to rank ``g % world_size``. Every sample is mapped with the global ``random`` / ``numpy`` / ``torch``
generators seeded from (seed, rank, b, position in batch, attempt), and the caller's generator states are restored
afterwards. So neither the number of loader workers nor an interruption changes what a batch holds: resuming at
iteration ``k`` only needs the seed and ``k`` (the trainer keeps both in its checkpoints).

Files: :func:`check_files_exist` refuses, before training, a dataset whose files are missing (listing them). An
unreadable file (truncated, corrupt, not an image) is skipped: its sample is replaced by a readable one drawn from a
seeded permutation (so the replacement too is reproducible); every skipped file is reported to the main process with
the batch it affected, counted once (across loader workers), and logged; training stops with a one-line error when
more than ``max_unreadable_fraction`` of the dataset is unreadable.
"""

import logging
import os
import random

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .mappers.image_io import AnnotationError, unreadable_reason

logger = logging.getLogger(__name__)

FILE_KEYS = ("file_name", "sem_seg_file_name", "pan_seg_file_name")


class MissingDataError(FileNotFoundError):
    """Files a dataset lists do not exist."""


class UnreadableDataError(ValueError):
    """Too many files of a dataset cannot be decoded."""


def check_files_exist(dataset_dicts: list[dict], dataset_names, limit: int = 10) -> None:
    """Raises MissingDataError listing (up to ``limit``) files named by ``dataset_dicts`` (their ``file_name``,
    ``sem_seg_file_name``, ``pan_seg_file_name``) that do not exist, with their count."""
    missing = []
    for d in dataset_dicts:
        for key in FILE_KEYS:
            path = d.get(key)
            if path and not os.path.isfile(path):
                missing.append(path)
    if missing:
        shown = ", ".join(missing[:limit]) + (f", ... ({len(missing) - limit} more)" if len(missing) > limit else "")
        raise MissingDataError(
            f"{len(missing)} file(s) listed by dataset(s) {', '.join(dataset_names)} do not exist: {shown}; restore "
            f"them or re-run the dataset's preparation script (datasets/README.md)."
        )


def derive_seed(*values: int) -> int:
    """A 32-bit seed from a tuple of non-negative integers (numpy's SeedSequence: well mixed, platform-independent)."""
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(1)[0])


class Batch(list):
    """A rank's batch (list of mapped dicts) plus ``unreadable``: [(file, reason)] skipped while making it, and
    ``fatal``: a message when the worker could not make it (too many unreadable files), ``error``: the message of
    an AnnotationError a sample raised (re-raised in the main process, so training stops with that one line)."""

    def __init__(self, items=(), unreadable=(), fatal=None, error=None):
        super().__init__(items)
        self.unreadable = list(unreadable)
        self.fatal = fatal
        self.error = error


def _identity(x):
    return x


class _SeededRNG:
    """Seeds the global random / numpy / torch (CPU) generators for one sample, restoring their states on exit."""

    def __init__(self, seed: int):
        self.seed = seed

    def __enter__(self):
        self.states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
        random.seed(self.seed)
        np.random.seed(self.seed)
        torch.default_generator.manual_seed(self.seed)

    def __exit__(self, *exc):
        random.setstate(self.states[0])
        np.random.set_state(self.states[1])
        torch.set_rng_state(self.states[2])
        return False


class TrainingStream(IterableDataset):
    """Infinite stream of one rank's batches (module docstring), from batch ``start_batch`` on.

    Args:
        dataset_dicts: detectron2 dataset dicts (``height`` / ``width`` used for aspect grouping when all have them).
        mapper: dict -> mapped dict (image uint8 [3, H, W], targets), or None when the image is unreadable.
        batch_size: images per batch of this rank.
        seed: the stream's seed.
        rank, world_size: this process and the number of training processes.
        aspect_grouping: batch landscape and portrait images separately.
        max_unreadable_fraction: a worker stops (``Batch.fatal``) once more than this fraction of the dataset has
            proved unreadable to it.
    """

    def __init__(
        self,
        dataset_dicts,
        mapper,
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        aspect_grouping: bool = True,
        max_unreadable_fraction: float = 0.01,
    ):
        if not dataset_dicts:
            raise ValueError("the training dataset is empty; check DATASETS.TRAIN and its files.")
        self.dataset_dicts = dataset_dicts
        self.mapper = mapper
        self.batch_size = batch_size
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.max_unreadable_fraction = max_unreadable_fraction
        sized = all("height" in d and "width" in d for d in dataset_dicts)
        self.groups = [int(d["width"] <= d["height"]) if aspect_grouping and sized else 0 for d in dataset_dicts]
        self.start_batch = 0

    def __len__(self):  # the stream is infinite; the dataset size is what the unreadable fraction refers to
        return len(self.dataset_dicts)

    def batch_indices(self):
        """Yields (b, [dataset indices]) for this rank's batches b = 0, 1, 2, ..."""
        n, size = len(self.dataset_dicts), self.batch_size
        buckets: dict[int, list[int]] = {}
        chunk, epoch = 0, 0
        while True:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(self.seed, epoch))).tolist()
            for i in order:
                bucket = buckets.setdefault(self.groups[i], [])
                bucket.append(i)
                if len(bucket) == size:
                    if chunk % self.world_size == self.rank:
                        yield chunk // self.world_size, bucket
                    buckets[self.groups[i]] = []
                    chunk += 1
            epoch += 1

    def __iter__(self):
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        self._bad = set()
        for b, indices in self.batch_indices():
            if b >= self.start_batch and (b - self.start_batch) % num_workers == worker:
                batch = self.make_batch(b, indices)
                yield batch
                if batch.fatal:
                    return

    def _map(self, index: int, seed: int):
        """(mapped dict, None) or (None, (file, reason)) for dataset index ``index``, mapped under ``seed``."""
        d = self.dataset_dicts[index]
        try:
            with _SeededRNG(seed):
                out = self.mapper(d)
        except (OSError, SyntaxError) as e:  # a label file that cannot be decoded (PIL raises these)
            return None, (getattr(e, "filename", None) or d["file_name"], f"{type(e).__name__}: {e}")
        if out is None:
            return None, (d["file_name"], unreadable_reason(d["file_name"]))
        return out, None

    def make_batch(self, b: int, indices: list[int]) -> Batch:
        """Batch ``b`` from its sample ``indices``; an unreadable sample is replaced by the first readable one of a
        permutation seeded from (seed, rank, b, position). An AnnotationError of a sample ends the batch with its
        message (re-raised in the main process)."""
        n = len(self.dataset_dicts)
        items, unreadable = [], []
        try:
            for j, index in enumerate(indices):
                out, bad = self._map(index, derive_seed(self.seed, self.rank, b, j, 0))
                fallback, attempt = None, 0
                while bad is not None:
                    unreadable.append(bad)
                    self._bad.add(bad[0])
                    if len(self._bad) > self.max_unreadable_fraction * n:
                        return Batch(items, unreadable, fatal="too many unreadable files")
                    if fallback is None:
                        seed = derive_seed(self.seed, self.rank, b, j, 1 << 20)
                        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
                        fallback = iter([i for i in order if i != index])
                    other = next(fallback, None)
                    if other is None:
                        return Batch(items, unreadable, fatal="no readable file")
                    attempt += 1
                    out, bad = self._map(other, derive_seed(self.seed, self.rank, b, j, attempt))
                items.append(out)
        except AnnotationError as e:
            return Batch(items, unreadable, fatal="bad annotation", error=str(e))
        return Batch(items, unreadable)


class _StreamIterator:
    """Iterates the DataLoader over a TrainingStream, accounting for the unreadable files each batch reports."""

    def __init__(self, loader: "TrainLoader"):
        self.loader = loader
        self._it = None

    def __iter__(self):
        return self

    def __next__(self) -> list[dict]:
        if self._it is None:  # created at the first batch, after a resume has set the stream's start
            self._it = iter(self.loader.make_dataloader())
        batch = next(self._it)
        self.loader.account(batch)
        return list(batch)


class TrainLoader:
    """What the trainer iterates: lists of mapped dicts (one rank's batch), from ``stream.start_batch`` on.

    The loader processes (``num_workers``; 0 maps in this process) start at the first ``next``, so a resume can set
    the stream's seed and start first. ``unreadable`` maps each skipped file to its reason (each file once, whichever
    worker met it); more than ``max_unreadable_fraction`` of the dataset raises UnreadableDataError.
    """

    def __init__(self, stream: TrainingStream, num_workers: int, max_unreadable_fraction: float = 0.01):
        self.dataset = stream
        self.num_workers = num_workers
        self.max_unreadable_fraction = max_unreadable_fraction
        self.unreadable: dict[str, str] = {}
        self.skipped_samples = 0

    def make_dataloader(self) -> DataLoader:
        return DataLoader(
            self.dataset,
            batch_size=None,
            num_workers=self.num_workers,
            collate_fn=_identity,
            generator=torch.Generator(),  # the worker base seed must not consume the trainer's global RNG
        )

    def __iter__(self):
        return _StreamIterator(self)

    def account(self, batch: Batch) -> None:
        """Counts the unreadable files ``batch`` reports; raises UnreadableDataError above the allowed fraction or
        when the worker could not fill the batch."""
        n = len(self.dataset)
        for path, reason in batch.unreadable:
            self.skipped_samples += 1
            if path not in self.unreadable:
                self.unreadable[path] = reason
                logger.warning(
                    f"skipping unreadable training file {path} ({reason}); {len(self.unreadable)} of {n} so far."
                )
        if batch.error:
            raise AnnotationError(batch.error)
        shown = ", ".join(list(self.unreadable)[:5])
        if batch.fatal == "no readable file":  # every file failed: possible only with a limit near 1
            raise UnreadableDataError(
                f"none of the {n} training files can be read, e.g. {shown}; check the files and their paths "
                "(python tools/check_dataset.py reads them all)."
            )
        if len(self.unreadable) > self.max_unreadable_fraction * n or batch.fatal:
            raise UnreadableDataError(
                f"{len(self.unreadable)} of {n} training files are unreadable ({100 * len(self.unreadable) / n:.1f}%, "
                f"more than DATALOADER.MAX_UNREADABLE_FRACTION = {self.max_unreadable_fraction}), e.g. {shown}; "
                f"replace or remove them (or raise the limit)."
            )

    def summary(self) -> str:
        """One line: how many files were skipped (and which, up to 10)."""
        if not self.unreadable:
            return f"unreadable training files: 0 of {len(self.dataset)}."
        names = list(self.unreadable)
        shown = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")
        return (
            f"unreadable training files: {len(names)} of {len(self.dataset)} skipped "
            f"({self.skipped_samples} failed reads, each replaced by another sample): {shown}"
        )
