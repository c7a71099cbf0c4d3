"""Shared pytest fixtures and helpers."""

import contextlib
import logging
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


class FixedMatcher(nn.Module):
    """Returns the given indices whatever the outputs, so the losses are tested apart from matching."""

    def __init__(self, indices):
        super().__init__()
        self.indices = [(torch.tensor(r, dtype=torch.long), torch.tensor(c, dtype=torch.long)) for r, c in indices]

    def forward(self, outputs, targets):
        return self.indices


class LoggedRecords(list):
    """The LogRecords :func:`logged_records` collected; ``messages``: their formatted messages."""

    @property
    def messages(self) -> list[str]:
        return [record.getMessage() for record in self]


@contextlib.contextmanager
def logged_records(name: str, level: int = logging.DEBUG):
    """The records logged to logger ``name`` (and its children) inside the block, at ``level`` and above: a handler
    on the logger itself, since caplog's on the root logger misses them once detectron2's setup_logger (which
    tools' main functions call) has turned the "universal_seg" logger's propagation off, and detectron2's own
    loggers do not propagate either."""
    records, logger = LoggedRecords(), logging.getLogger(name)
    handler = logging.Handler(level)
    handler.emit = records.append
    previous = logger.level
    logger.setLevel(min(level, logger.getEffectiveLevel()))
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def load_cfg(path, *opts):
    """A repository config (path relative to the repo root) with every universal_seg key, on the CPU, no weights,
    then ``opts`` (KEY VALUE ...) merged."""
    from universal_seg.config import load_config

    return load_config(str(ROOT / path), ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", *opts])


def make_ms_deform_attn_inputs(
    N=2,
    M=3,
    D=5,
    shapes=((7, 9), (4, 5), (2, 3)),
    Lq=11,
    P=3,
    dtype=torch.float64,
    device="cpu",
    loc_range=(-0.2, 1.2),
    requires_grad=False,
    seed=0,
):
    """Random MSDeformAttn inputs: value [N, S, M, D], spatial_shapes [L, 2], level_start_index [L],
    sampling_locations [N, Lq, M, L, P, 2] uniform in loc_range (so some points lie at or beyond the borders),
    attention_weights [N, Lq, M, L, P] softmaxed over (L, P)."""
    gen = torch.Generator().manual_seed(seed)
    ss = torch.tensor(shapes, dtype=torch.long)
    areas = ss[:, 0] * ss[:, 1]
    lsi = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    S, L = int(areas.sum()), len(shapes)
    lo, hi = loc_range
    value = torch.randn(N, S, M, D, generator=gen, dtype=torch.float64)
    loc = torch.rand(N, Lq, M, L, P, 2, generator=gen, dtype=torch.float64) * (hi - lo) + lo
    attn = torch.randn(N, Lq, M, L * P, generator=gen, dtype=torch.float64).softmax(-1).view(N, Lq, M, L, P)
    tensors = [t.to(device=device, dtype=dtype).requires_grad_(requires_grad) for t in (value, loc, attn)]
    return tensors[0], ss.to(device), lsi.to(device), tensors[1], tensors[2]


@pytest.fixture(autouse=True)
def _deterministic_threads():
    """Tests run with 2 intra-op threads (CI's core count) so the OpenMP code paths are exercised."""
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _no_log_handlers_on_closed_streams():
    """A tool's main() run in-process under capsys leaves detectron2's setup_logger handlers (cached by its
    lru_cache) writing to that test's capture stream, closed when the test ends; a later log record to them printed
    '--- Logging error ---' into another test's stderr. After each test such handlers are removed and the cache
    cleared, so the next setup_logger call makes new ones."""
    yield
    from detectron2.utils.logger import setup_logger

    removed = False
    for logger in [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]:
        for handler in list(logger.handlers):
            if getattr(getattr(handler, "stream", None), "closed", False):
                logger.removeHandler(handler)
                removed = True
    if removed:
        setup_logger.cache_clear()
