"""Tests of scripts/install_detectron2.py and of the detectron2 it installs.

The first group tests the script's substitution engine and generated files on tiny fake trees (no
detectron2 needed). The second group runs against the detectron2 importable here: the paths that numpy 2,
Pillow >= 10, Python 3.11 and torch 2 broke in v0.6 must work. Assertions about our own build (marker,
pure-Python ``_C``, patched sources) are skipped when the detectron2 found is another one (e.g. upstream
built from source).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import types
import uuid
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "install_detectron2.py"


def load_script() -> types.ModuleType:
    """Import scripts/install_detectron2.py as a module (importing it has no side effects)."""
    spec = importlib.util.spec_from_file_location("install_detectron2", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


inst = load_script()


def test_gpu_wheel_list_names_the_version_this_script_builds():
    """benchmarks/gpu_wheels.txt ships our detectron2 wheel to the GPU machine by version; a patch set bumped here
    without the list would be refused only by gpu_suite_prepare.sh, when a GPU is already lent."""
    listed = re.search(r"^detectron2==(\S+)", (SCRIPT.parents[1] / "benchmarks" / "gpu_wheels.txt").read_text(), re.M)
    assert listed is not None and listed.group(1) == inst.DIST_VERSION


D2_DIR = inst.find_package_dir()
IS_OURS = D2_DIR is not None and (D2_DIR / inst.MARKER_NAME).is_file()

needs_d2 = pytest.mark.skipif(D2_DIR is None, reason="detectron2 is not installed (run scripts/install_detectron2.py)")
ours_only = pytest.mark.skipif(
    not IS_OURS,
    reason="detectron2 is not installed"
    if D2_DIR is None
    else "the detectron2 found is not universal_seg's build (e.g. upstream built from source)",
)


# ----------------------------------------------------------------------------- the substitution engine


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_substitution_applies_exactly_once(tmp_path):
    path = write(tmp_path, "pkg/a.py", "x = np.zeros(3, dtype=np.int)\ny = np.int64\n")
    table = [inst.Substitution("pkg/a.py", "dtype=np.int)", "dtype=int)")]
    assert inst.apply_substitutions(tmp_path, table) == 1
    assert path.read_text(encoding="utf-8") == "x = np.zeros(3, dtype=int)\ny = np.int64\n"


def test_rows_apply_in_order_to_the_same_file(tmp_path):
    path = write(tmp_path, "a.py", "a = np.bool\nb = x.astype(np.bool)\n")
    table = [
        inst.Substitution("a.py", "a = np.bool\n", "a = bool\n"),
        inst.Substitution("a.py", "astype(np.bool)", "astype(bool)"),
    ]
    inst.apply_substitutions(tmp_path, table)
    assert path.read_text(encoding="utf-8") == "a = bool\nb = x.astype(bool)\n"


def test_substitution_with_no_occurrence_names_file_text_and_count(tmp_path):
    path = write(tmp_path, "pkg/a.py", "x = 1\n")
    with pytest.raises(inst.InstallError) as error:
        inst.apply_substitutions(tmp_path, [inst.Substitution("pkg/a.py", "np.float", "float")])
    message = str(error.value)
    assert "pkg/a.py" in message and "'np.float'" in message and "found 0" in message
    assert path.read_text(encoding="utf-8") == "x = 1\n"


def test_substitution_with_two_occurrences_fails(tmp_path):
    write(tmp_path, "a.py", "p = np.int\nq = np.int\n")
    expected = r"a\.py: expected exactly 1 occurrence of 'np\.int', found 2"
    with pytest.raises(inst.InstallError, match=expected):
        inst.apply_substitutions(tmp_path, [inst.Substitution("a.py", "np.int", "int")])


def test_missing_file_fails(tmp_path):
    with pytest.raises(inst.InstallError, match="nothere.py: file not found"):
        inst.apply_substitutions(tmp_path, [inst.Substitution("nothere.py", "a", "b")])


def test_one_bad_row_writes_nothing(tmp_path):
    good = write(tmp_path, "good.py", "Image.LINEAR\n")
    write(tmp_path, "bad.py", "nothing\n")
    table = [
        inst.Substitution("good.py", "Image.LINEAR", "Image.BILINEAR"),
        inst.Substitution("bad.py", "np.str", "str"),
    ]
    with pytest.raises(inst.InstallError, match="bad.py"):
        inst.apply_substitutions(tmp_path, table)
    assert good.read_text(encoding="utf-8") == "Image.LINEAR\n"


def test_marker_round_trip():
    fields = inst.parse_marker(inst.marker_text())
    assert fields["sdist_sha256"] == inst.SDIST_SHA256
    assert fields["patch_set"] == inst.patch_set_id()
    assert fields["patch_set"].startswith(f"{inst.PATCH_SET_VERSION}.")


def test_importing_the_script_has_no_side_effects():
    assert inst.__name__ == "install_detectron2"
    assert callable(inst.main)


def load_c_module_source() -> types.ModuleType:
    """The generated detectron2/_C.py, loaded as a stand-alone module."""
    module = types.ModuleType("fake_C")
    exec(compile(inst.C_MODULE_SOURCE, "_C.py", "exec"), module.__dict__)
    return module


def test_generated_c_module_answers_env_queries_and_refuses_ops():
    c_module = load_c_module_source()
    assert isinstance(c_module.get_compiler_version(), str)
    assert isinstance(c_module.get_cuda_version(), str)
    assert c_module.has_cuda() is False
    with pytest.raises(AttributeError, match="deform_conv_forward"):
        c_module.deform_conv_forward
    assert not hasattr(c_module, "__wrapped__")  # dunder probes see a plain AttributeError
    assert not hasattr(c_module, "nms_rotated")


def fake_package(tmp_path, monkeypatch, marker=None, compiled=False, imports=True) -> Path:
    """A fake installed detectron2 dir that inspect_installed() will look at."""
    package = tmp_path / "detectron2"
    package.mkdir()
    if marker is not None:
        (package / inst.MARKER_NAME).write_text(marker, encoding="utf-8")
    if compiled:
        (package / "_C.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    monkeypatch.setattr(inst, "find_package_dir", lambda: package)
    monkeypatch.setattr(inst, "imports_cleanly", lambda: imports)
    return package


def test_inspect_installed_recognises_our_current_build(tmp_path, monkeypatch):
    fake_package(tmp_path, monkeypatch, marker=inst.marker_text())
    state = inst.inspect_installed()
    assert state.kind == "ours"
    assert "already installed" in inst.skip_reason(state)


def test_inspect_installed_sees_an_older_patch_set_as_stale(tmp_path, monkeypatch):
    fake_package(tmp_path, monkeypatch, marker=inst.marker_text().replace("patch_set=", "patch_set=0"))
    state = inst.inspect_installed()
    assert state.kind == "stale" and inst.skip_reason(state) is None


def test_inspect_installed_leaves_a_working_upstream_build_alone(tmp_path, monkeypatch):
    fake_package(tmp_path, monkeypatch, compiled=True)
    state = inst.inspect_installed()
    assert state.kind == "foreign" and "leaving it alone" in inst.skip_reason(state)


def test_inspect_installed_replaces_a_broken_or_unknown_build(tmp_path, monkeypatch):
    fake_package(tmp_path, monkeypatch, compiled=True, imports=False)
    assert inst.inspect_installed().kind == "unknown"


def test_inspect_installed_without_detectron2(monkeypatch):
    monkeypatch.setattr(inst, "find_package_dir", lambda: None)
    assert inst.inspect_installed().kind == "absent"


def test_cached_sdist_with_wrong_checksum_stops(tmp_path):
    (tmp_path / "pb1-detectron2-0.6.tar.gz").write_bytes(b"not the sdist")
    with pytest.raises(inst.InstallError, match="sha256 mismatch"):
        inst.fetch_sdist(tmp_path)


def test_pb1_distribution_is_uninstalled_first(monkeypatch):
    calls = []
    monkeypatch.setattr(inst.importlib.metadata, "distribution", lambda name: object())
    monkeypatch.setattr(inst, "run_pip", lambda *args: calls.append(args))
    inst.remove_pb1_distribution()
    assert calls == [("uninstall", "--yes", "pb1-detectron2")]


CACHED_SDIST = inst.find_cached_sdist(inst.DEFAULT_CACHE_DIR)


@pytest.mark.skipif(CACHED_SDIST is None, reason="no sdist in .cache/detectron2 (run the installer first)")
def test_whole_table_matches_the_real_sdist(tmp_path):
    root = inst.extract_sdist(CACHED_SDIST, tmp_path)
    texts = inst.plan_substitutions(root, inst.SUBSTITUTIONS)
    assert len(texts) == len({row.path for row in inst.SUBSTITUTIONS})
    for rel in inst.PROJECTS:
        assert (root / rel / "__init__.py").is_file()


@pytest.mark.skipif(CACHED_SDIST is None, reason="no sdist in .cache/detectron2 (run the installer first)")
def test_wheel_dir_builds_the_patched_tree_into_a_wheel(tmp_path):
    import zipfile

    stale = tmp_path / "detectron2-0.5-py3-none-any.whl"
    stale.write_bytes(b"an older build")
    argv = ["--wheel-dir", str(tmp_path), "--cache-dir", str(inst.DEFAULT_CACHE_DIR)]
    assert inst.main(argv) == 0
    wheels = sorted(tmp_path.glob("*.whl"))
    assert [w.name for w in wheels] == [inst.wheel_filename()]  # exactly one detectron2 version
    with zipfile.ZipFile(wheels[0]) as archive:
        names = set(archive.namelist())
        assert "detectron2/_C.py" in names and f"detectron2/{inst.MARKER_NAME}" in names
        assert "detectron2/projects/deeplab/__init__.py" in names
        assert "detectron2/projects/point_rend/__init__.py" in names
        assert not any(n.endswith((".so", ".pyd")) or n.startswith(("projects/", "tools/")) for n in names)
        for path in {row.path for row in inst.SUBSTITUTIONS}:
            text = archive.read(path).decode("utf-8")
            assert all(row.new in text for row in inst.SUBSTITUTIONS if row.path == path), path
        (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = archive.read(metadata_name).decode("utf-8")
    assert re.search(r"^Name: detectron2$", metadata, re.M)
    assert re.search(r"^Version: (.*)$", metadata, re.M).group(1) == inst.DIST_VERSION
    assert inst.wheel_is_current(wheels[0])
    mtime = wheels[0].stat().st_mtime_ns
    assert inst.main(argv) == 0  # a second run keeps the current wheel
    assert wheels[0].stat().st_mtime_ns == mtime


# ----------------------------------------------------------------------------- the installed detectron2


@needs_d2
def test_import_detectron2_and_projects():
    import detectron2
    import torch
    from detectron2.config import get_cfg
    from detectron2.projects.deeplab import add_deeplab_config
    from detectron2.projects.deeplab.lr_scheduler import WarmupPolyLR
    from detectron2.projects.point_rend.point_features import point_sample

    assert detectron2.__version__.startswith("0.6")
    cfg = get_cfg()
    add_deeplab_config(cfg)
    assert cfg.SOLVER.POLY_LR_POWER == 0.9

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = WarmupPolyLR(optimizer, max_iters=10, warmup_iters=0, power=1.0)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5)

    features = torch.arange(4.0).view(1, 1, 2, 2)
    sampled = point_sample(features, torch.tensor([[[0.5, 0.5]]]), align_corners=False)
    assert sampled.shape == (1, 1, 1) and sampled.item() == pytest.approx(1.5)


@needs_d2
def test_panoptic_deeplab_is_a_subpackage():
    # Importing it needs panopticapi, which is optional: only check that it is installed where expected.
    spec = importlib.util.find_spec("detectron2.projects.panoptic_deeplab")
    assert spec is not None and spec.origin.endswith("__init__.py")


@needs_d2
def test_c_environment_queries():
    from detectron2 import _C

    assert isinstance(_C.get_compiler_version(), str)
    assert isinstance(_C.get_cuda_version(), str)
    assert isinstance(_C.has_cuda(), bool)


@ours_only
def test_missing_compiled_op_names_the_op():
    import torch
    from detectron2 import _C
    from detectron2.layers.rotated_boxes import pairwise_iou_rotated

    assert _C.IS_PURE_PYTHON_BUILD and _C.has_cuda() is False
    with pytest.raises(NotImplementedError) as error:
        pairwise_iou_rotated(torch.zeros(1, 5), torch.zeros(1, 5))
    assert "box_iou_rotated" in str(error.value) and "build upstream detectron2" in str(error.value)
    with pytest.raises(AttributeError, match="COCOevalAccumulate.*use_fast_impl=False"):
        _C.COCOevalAccumulate
    assert not hasattr(_C, "__path__") and not hasattr(_C, "roi_align_rotated_forward")


@needs_d2
def test_collect_env_info_runs():
    from detectron2.utils.collect_env import collect_env_info

    info = collect_env_info()
    assert "detectron2" in info and "PyTorch" in info


@needs_d2
def test_model_zoo_config_file_and_get_cfg():
    from detectron2 import model_zoo
    from detectron2.config import get_cfg

    path = model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml")
    assert Path(path).is_file()
    cfg = get_cfg()
    cfg.merge_from_file(path)  # follows _BASE_ to Base-RCNN-FPN.yaml
    assert cfg.MODEL.MASK_ON and cfg.MODEL.RESNETS.DEPTH == 50


@needs_d2
def test_polygon_and_bit_masks():
    import numpy as np
    from detectron2.structures import BitMasks, PolygonMasks, polygons_to_bitmask

    square = [np.array([1.0, 1.0, 4.0, 1.0, 4.0, 4.0, 1.0, 4.0])]
    bitmask = polygons_to_bitmask(square, 6, 6)
    assert bitmask.dtype == bool and bitmask.shape == (6, 6)
    assert bitmask[2, 2] and not bitmask[0, 0] and not bitmask[5, 5]
    assert polygons_to_bitmask([], 3, 2).dtype == bool

    polygons = PolygonMasks([square, []])
    assert polygons.nonempty().tolist() == [True, False]
    bits = BitMasks.from_polygon_masks(polygons, 6, 6)
    assert bits.tensor.dtype.is_floating_point is False
    assert bits.tensor[0].numpy().tolist() == bitmask.tolist()
    assert int(bits.tensor[1].sum()) == 0


@needs_d2
def test_paste_mask_in_image_old_on_numpy2():
    import torch
    from detectron2.layers.mask_ops import paste_mask_in_image_old

    mask = torch.ones(4, 4)
    pasted = paste_mask_in_image_old(mask, torch.tensor([2, 2, 5, 5]), 8, 8, threshold=0.5)
    assert pasted.shape == (8, 8) and int(pasted.sum()) == 16


@needs_d2
def test_map_dataset_falls_back_to_another_index():
    from detectron2.data.common import MapDataset

    dataset = MapDataset([0, 1, 2], lambda x: None if x == 0 else x)
    assert dataset[0] in (1, 2)  # random.sample over the fallback set (a list since Python 3.11)


@needs_d2
def test_class_histogram(monkeypatch):
    import detectron2.data.build as build

    logged = []
    monkeypatch.setattr(build, "log_first_n", lambda level, message, **kwargs: logged.append(message))
    dicts = [
        {"annotations": [{"category_id": 0}, {"category_id": 1, "iscrowd": 0}, {"category_id": 0}]},
        {"annotations": [{"category_id": 1, "iscrowd": 1}]},  # crowd: not counted
        {"annotations": []},
        {"annotations": [{"category_id": 2}, {"category_id": 0}]},
    ]
    build.print_instances_class_histogram(dicts, ["a", "b", "c"])
    assert len(logged) == 1 and "among all 3 categories" in logged[0]
    # the table's cells pair up as (category, #instances): hand count a 3, b 1, c 1, total 5
    cells = [
        c.strip()
        for line in re.sub(r"\x1b\[[0-9;]*m", "", logged[0]).splitlines()[1:]
        for c in line.strip().strip("|").split("|")
    ]
    pairs = {name: int(count) for name, count in zip(cells[::2], cells[1::2]) if count.strip().isdigit()}
    assert pairs == {"a": 3, "b": 1, "c": 1, "total": 5}


@pytest.fixture
def sem_seg_dataset(tmp_path):
    """A throwaway dataset of two 2x3 label images (255 = ignore), with its name."""
    import numpy as np
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from PIL import Image

    labels = {
        "img1": [[0, 0, 1], [1, 2, 255]],
        "img2": [[2, 2, 2], [0, 255, 1]],
    }
    records = []
    for stem, label in labels.items():
        label_file = tmp_path / f"{stem}.png"
        Image.fromarray(np.array(label, dtype=np.uint8)).save(label_file)
        records.append({"file_name": f"{stem}.jpg", "sem_seg_file_name": str(label_file)})
    name = f"universal_seg_test_{uuid.uuid4().hex}"
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(
        stuff_classes=["a", "b", "c"],
        stuff_colors=[[255, 255, 0], [0, 0, 0], [255, 255, 255]],
        ignore_label=255,
    )
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def one_hot_logits(prediction, num_classes):
    import torch

    pred = torch.tensor(prediction)
    return torch.nn.functional.one_hot(pred, num_classes).permute(2, 0, 1).float()


@needs_d2
def test_sem_seg_evaluator_matches_hand_computed_iou(sem_seg_dataset):
    from detectron2.evaluation import SemSegEvaluator

    predictions = {
        "img1.jpg": [[0, 1, 1], [1, 2, 0]],
        "img2.jpg": [[2, 2, 0], [0, 1, 1]],
    }
    evaluator = SemSegEvaluator(sem_seg_dataset, distributed=False)
    evaluator.reset()
    for file_name, prediction in predictions.items():
        evaluator.process([{"file_name": file_name}], [{"sem_seg": one_hot_logits(prediction, 3)}])
    result = evaluator.evaluate()["sem_seg"]
    # Over the 10 non-ignored pixels (gt, pred):
    #   class a: tp 2, gt 3, pred 3 -> IoU 2 / (3 + 3 - 2) = 1/2
    #   class b: tp 3, gt 3, pred 4 -> IoU 3 / (3 + 4 - 3) = 3/4
    #   class c: tp 3, gt 4, pred 3 -> IoU 3 / (4 + 3 - 3) = 3/4
    assert result["IoU-a"] == pytest.approx(50.0)
    assert result["IoU-b"] == pytest.approx(75.0)
    assert result["IoU-c"] == pytest.approx(75.0)
    assert result["mIoU"] == pytest.approx(100 * 2 / 3)
    assert result["pACC"] == pytest.approx(80.0)


@needs_d2
def test_visualizer_draw_sem_seg(sem_seg_dataset):
    import numpy as np
    from detectron2.data import MetadataCatalog
    from detectron2.utils.visualizer import Visualizer

    image = np.full((40, 60, 3), 128, dtype=np.uint8)
    sem_seg = np.zeros((40, 60), dtype=np.int64)
    sem_seg[:, 20:40] = 1
    sem_seg[:, 40:] = 2
    visualizer = Visualizer(image, MetadataCatalog.get(sem_seg_dataset))
    output = visualizer.draw_sem_seg(sem_seg, area_threshold=0).get_image()
    assert output.shape == (40, 60, 3)
    for color in ([1.0, 1.0, 0.0], [0.0, 1.0, 1.0], [0.9, 0.5, 0.1]):
        for factor in (-0.7, 0.7, 1.0):
            changed = visualizer._change_color_brightness(color, brightness_factor=factor)
            assert isinstance(changed, tuple) and all(0.0 <= c <= 1.0 for c in changed)


@needs_d2
def test_resize_and_extent_transforms_on_pil_path():
    import numpy as np
    from detectron2.data.transforms import ExtentTransform, ResizeTransform
    from PIL import Image

    image = np.full((4, 6, 3), 77, dtype=np.uint8)  # uint8 -> resized with PIL
    resized = ResizeTransform(4, 6, 8, 12, interp=Image.BILINEAR).apply_image(image)
    assert resized.shape == (8, 12, 3) and resized.dtype == np.uint8 and (resized == 77).all()
    extent = ExtentTransform(src_rect=(0, 0, 6, 4), output_size=(2, 3))  # default interp was Image.LINEAR
    assert extent.apply_image(image).shape == (2, 3, 3)


@needs_d2
def test_export_and_analysis_import_without_caffe2():
    import detectron2.export
    import detectron2.utils.analysis  # noqa: F401

    assert hasattr(detectron2.export, "TracingAdapter")


OLD_PATTERNS = [
    r"np\.bool\b",
    r"np\.int\b",
    r"np\.float\b",
    r"np\.str\b",
    r"Image\.LINEAR\b",
    r"import pkg_resources",
    r"np\.array\(mask, copy=False\)",
]


@ours_only
def test_installed_files_contain_no_old_patterns():
    pattern = re.compile("|".join(OLD_PATTERNS))
    hits = [
        f"{path.relative_to(D2_DIR)}:{number}: {line.strip()}"
        for path in sorted(D2_DIR.rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert hits == []


@ours_only
def test_installed_distribution_metadata():
    import importlib.metadata

    assert importlib.metadata.version("detectron2") == inst.DIST_VERSION
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.distribution("pb1-detectron2")
    configs = D2_DIR / "model_zoo" / "configs"
    assert len(list(configs.rglob("*.yaml"))) > 50
    assert (D2_DIR / "projects" / "deeplab" / "__init__.py").is_file()


def _snapshot(folder: Path) -> dict:
    """path -> (size, mtime_ns) of every file under ``folder`` (byte-code caches aside: any import may write them)."""
    return {
        str(p): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


@pytest.mark.skipif(
    not IS_OURS or inst.inspect_installed().kind != "ours",
    reason="needs our current build installed (otherwise the script would install)",
)
def test_rerun_is_a_no_op(tmp_path, monkeypatch):
    """A second run over our current build downloads nothing, runs no pip and changes no installed file."""
    import importlib.metadata

    dist_info = Path(importlib.metadata.distribution("detectron2")._path)
    before = {**_snapshot(D2_DIR), **_snapshot(dist_info)}
    cache = tmp_path / "cache"
    # the command line, as users run it: succeeds, says so, and never creates the sdist cache
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--cache-dir", str(cache)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "already installed" in result.stdout
    assert not cache.exists()
    # in-process with every subprocess call recorded: nothing is run (no pip download / install / uninstall)
    calls = []
    monkeypatch.setattr(
        inst.subprocess,
        "run",
        lambda *args, **kwargs: calls.append(args) or pytest.fail(f"the no-op rerun ran a subprocess: {args}"),
    )
    assert inst.main(["--cache-dir", str(cache)]) == 0
    assert calls == [] and not cache.exists()
    assert {**_snapshot(D2_DIR), **_snapshot(dist_info)} == before


def _local_group_worker(rank, world_size, per_machine, init_file, out_dir):
    import json

    import torch
    import torch.distributed as dist
    from detectron2.utils import comm

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    comm.create_local_process_group(per_machine)
    ranks = torch.tensor([rank])
    dist.all_reduce(ranks, group=comm._LOCAL_PROCESS_GROUP)  # the sum of the ranks in this process's local group
    try:
        comm.create_local_process_group(per_machine)
        second = "no error"
    except AssertionError as err:
        second = str(err)
    result = {"local_rank": comm.get_local_rank(), "local_size": comm.get_local_size(), "sum": int(ranks)}
    (Path(out_dir) / f"{rank}.json").write_text(json.dumps({**result, "second": second}))
    dist.destroy_process_group()


@ours_only
def test_create_local_process_group_makes_one_group_per_machine(tmp_path):
    """The backport of upstream's comm.create_local_process_group (which universal_seg's launcher calls), in 4 gloo
    processes laid out as 2 machines of 2: ranks 0, 1 on machine 0 and 2, 3 on machine 1."""
    import json

    import torch.multiprocessing as mp

    mp.spawn(_local_group_worker, args=(4, 2, str(tmp_path / "init"), str(tmp_path)), nprocs=4)
    results = {r: json.loads((tmp_path / f"{r}.json").read_text()) for r in range(4)}
    assert {r: (v["local_rank"], v["local_size"]) for r, v in results.items()} == {
        0: (0, 2),
        1: (1, 2),
        2: (0, 2),
        3: (1, 2),
    }
    assert {r: v["sum"] for r, v in results.items()} == {0: 0 + 1, 1: 0 + 1, 2: 2 + 3, 3: 2 + 3}
    assert {v["second"] for v in results.values()} == {"the local process group was already created"}
