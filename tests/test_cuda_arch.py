"""Build-time selection of CUDA architectures and the run-time check of a device against the build (no GPU needed:
the rules are CUDA's binary-compatibility rules, written out case by case)."""

import pytest
import torch

from universal_seg.ops import _extension
from universal_seg.ops.cuda_arch import (
    format_targets,
    kernel_image_for,
    parse_arch_list,
    parse_targets,
    select_arch_list,
)

CUDA12 = {(5, 0), (6, 0), (7, 0), (7, 5), (8, 0), (8, 6), (8, 9), (9, 0)}
CUDA13 = {(7, 5), (8, 0), (8, 6), (8, 7), (8, 9), (9, 0), (10, 0), (12, 0)}


def test_user_list_wins():
    assert select_arch_list("8.6", [(9, 0)], CUDA13) == "8.6"


def test_visible_gpus_are_built_for_newest_with_ptx():
    assert select_arch_list(None, [(8, 6), (8, 6)], CUDA13) == "8.6+PTX"
    assert select_arch_list("", [(9, 0), (7, 5)], CUDA13) == "7.5;9.0+PTX"


def test_default_covers_common_gpus_and_drops_what_the_toolkit_cannot_build():
    assert select_arch_list(None, [], CUDA12) == "7.0;7.5;8.0;8.6;8.9;9.0+PTX"
    assert select_arch_list(None, [], CUDA13) == "7.5;8.0;8.6;8.9;9.0+PTX"  # CUDA 13 has no Volta target
    assert select_arch_list(None, [], None) == "7.0;7.5;8.0;8.6;8.9;9.0+PTX"


def test_gpu_newer_than_the_toolkit_gets_the_newest_target_as_ptx():
    assert select_arch_list(None, [(12, 0)], CUDA12) == "9.0+PTX"


def test_gpu_older_than_the_toolkit_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA_HOME"):
        select_arch_list(None, [(7, 0)], CUDA13)


def test_parse_and_format_targets():
    targets = parse_arch_list("7.5;8.6 9.0a,Hopper")
    assert format_targets(targets) == "sm_75;sm_86;sm_90a;sm_90;compute_90"
    assert parse_targets(format_targets(targets)) == targets
    assert parse_targets("sm_100;compute_120") == [("sm", 10, 0, ""), ("compute", 12, 0, "")]
    with pytest.raises(ValueError, match="TORCH_CUDA_ARCH_LIST"):
        parse_arch_list("8.6;sm86")


@pytest.mark.parametrize(
    "capability,expected",
    [
        ((7, 5), "sm_75"),  # exact machine code
        ((8, 6), "sm_86"),
        ((8, 7), "sm_86"),  # same major, newer minor: 8.6 code runs
        ((8, 0), "sm_80"),
        ((9, 0), "sm_90"),
        ((10, 0), "compute_90"),  # Blackwell: the 9.0 PTX, compiled by the driver
        ((12, 0), "compute_90"),
        ((7, 0), None),  # V100: 7.5 code does not run on 7.0, and no PTX is old enough
        ((6, 1), None),
    ],
)
def test_kernel_image_rules(capability, expected):
    built = parse_targets("sm_75;sm_80;sm_86;sm_89;sm_90;compute_90")
    assert kernel_image_for(capability, built) == expected


def test_arch_specific_code_runs_only_on_its_own_capability():
    assert kernel_image_for((9, 0), parse_targets("sm_90a")) == "sm_90a"
    assert kernel_image_for((10, 0), parse_targets("sm_90a")) is None
    assert kernel_image_for((8, 0), parse_targets("sm_75;compute_75")) == "compute_75"


def test_build_records_its_targets():
    ext = _extension.load_extension()
    assert ext is not None
    if ext.cuda_version() == 0:
        assert ext.cuda_targets() == ""
    else:
        targets = parse_targets(ext.cuda_targets())
        assert targets and all(kind in ("sm", "compute") for kind, *_ in targets)


def test_unsupported_device_raises_one_sentence_naming_the_rebuild(monkeypatch):
    ext = _extension.load_extension()

    class FakeExtension:
        def cuda_targets(self):
            return "sm_80;sm_90;compute_90"

    monkeypatch.setattr(_extension, "load_extension", lambda: FakeExtension())
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "Tesla T4")
    _extension._check_cuda_device.cache_clear()
    try:
        with pytest.raises(RuntimeError) as err:
            _extension.check_cuda_device(torch.device("cuda", 0))
        message = str(err.value)
        assert "Tesla T4" in message and "7.5" in message
        assert 'TORCH_CUDA_ARCH_LIST="7.5" bash scripts/setup.sh' in message
        assert message.count(". ") == 0 and message.endswith(".")  # one sentence
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (12, 0))
        assert _extension.check_cuda_device(torch.device("cuda", 0)) == "compute_90"  # the PTX serves
    finally:
        _extension._check_cuda_device.cache_clear()
    assert ext is not None
