"""The README's "Train on your own data" guide, command by command as written there, with a short schedule appended
to the training commands (a few iterations at 128 pixels, on the CPU), in a fresh folder holding only the
bundled datasets/mini."""

import os
import re
import shlex
import subprocess
import sys

from conftest import ROOT

SHORT_TRAIN = [
    "SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "(1,)", "SOLVER.WARMUP_ITERS", "1", "SOLVER.IMS_PER_BATCH", "1",
    "SOLVER.CHECKPOINT_PERIOD", "1000", "DATALOADER.NUM_WORKERS", "0", "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "512",
]  # fmt: skip
SHORT_TEST = [
    "INPUT.IMAGE_SIZE",
    "128",
    "INPUT.MIN_SIZE_TEST",
    "128",
    "INPUT.MAX_SIZE_TEST",
    "228",
    "MODEL.DEVICE",
    "cpu",
]


def guide_commands():
    """The commands of the guide's first bash block (comments and `source` dropped)."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Train on your own data") :]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [
        shlex.split(line)
        for line in block.replace("\\\n", " ").splitlines()
        if line.strip() and not line.lstrip().startswith(("#", "source"))
    ]


def runnable(argv):
    """python -> this interpreter; repository scripts and configs -> absolute paths; short schedule appended."""
    assert argv[0] == "python", argv
    out = [sys.executable]
    for arg in argv[1:]:
        out.append(str(ROOT / arg) if arg.startswith(("tools/", "demo/", "configs/", "datasets/convert_")) else arg)
    if argv[1] == "tools/train_net.py":
        out += SHORT_TEST + ([] if "--eval-only" in argv else SHORT_TRAIN)
    elif argv[1] == "demo/demo.py":
        out += SHORT_TEST
    return out


def test_guide_commands_run_as_written_on_the_bundled_data(tmp_path):
    commands = guide_commands()
    assert [c[1] for c in commands] == [
        "datasets/convert_labelme.py",
        "tools/check_dataset.py",
        "tools/train_net.py",
        "tools/train_net.py",
        "tools/train_net.py",
        "demo/demo.py",
    ]
    (tmp_path / "datasets").mkdir()
    os.symlink(ROOT / "datasets" / "mini", tmp_path / "datasets" / "mini")
    env = {k: v for k, v in os.environ.items() if k != "DETECTRON2_DATASETS"}
    env["PYTHONPATH"] = str(ROOT)
    logs = []
    for argv in commands:
        result = subprocess.run(runnable(argv), cwd=tmp_path, env=env, capture_output=True, text=True)
        logs.append(result.stdout + result.stderr)
        assert result.returncode == 0, f"{shlex.join(argv)} failed:\n{logs[-1][-3000:]}"
    convert, check, _, fine_tune, evaluate, _ = logs
    assert "5 images {'train': 3, 'val': 2}" in convert
    assert "== street_panoptic_val_with_sem_seg: 2 images, 0 errors" in check
    assert (
        "Re-initialised the class head (the checkpoint was trained with another class count): "
        "sem_seg_head.predictor.class_embed.bias: checkpoint [22], model [4]; "
        "sem_seg_head.predictor.class_embed.weight: checkpoint [22, 128], model [4, 128]." in fine_tune
    )
    for log in (fine_tune, evaluate):
        assert "are on held-out images: none of its 2 images is in DATASETS.TRAIN" in log
        assert re.search(r"copypaste: PQ,SQ,RQ", log) and "mIoU" in log
    assert (tmp_path / "output" / "street" / "demo").exists() or (tmp_path / "output" / "street" / "demo.jpg").exists()
