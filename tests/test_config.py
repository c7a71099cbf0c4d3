"""Configuration: load_config's errors (ValueError in the library, a one-line exit in the tools) and that every key
a YAML under configs/ sets (through its _BASE_ chain) is read by some code.

"Read" is decided from the source text, independently of the code paths that build models: every Python file of
universal_seg/, tools/, demo/ and the installed detectron2 is tokenized (comments and docstrings drop out), and a key
``A.B.C`` counts as read when one file has ``C`` as an attribute read (``.C`` not followed by ``=``) or as the exact
string ``"C"`` (not as a dict key: ``CN({"ENABLED": False})`` defines a key), and also names its parent node ``B`` the
same way (so MODEL.SWIN.OUT_FEATURES is not vouched for by
a file that only reads MODEL.RESNETS.OUT_FEATURES).
"""

import functools
import io
import subprocess
import sys
import tokenize
from pathlib import Path

import detectron2
import pytest
import torch
from detectron2.config import CfgNode

import universal_seg
from universal_seg.config import load_config

ROOT = Path(__file__).resolve().parents[1]
YAMLS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yaml"))
SOURCE_DIRS = [Path(universal_seg.__file__).parent, ROOT / "tools", ROOT / "demo", Path(detectron2.__file__).parent]


def _names_read(path: Path) -> set[str]:
    """Identifiers read as attributes (``.NAME`` not assigned) and string literals that are identifiers."""
    names = set()
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline))
    except (tokenize.TokenError, SyntaxError, UnicodeDecodeError):
        return names
    significant = [
        t
        for t in tokens
        if t.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT)
    ]
    for i, tok in enumerate(significant):
        if tok.type == tokenize.NAME and i > 0 and significant[i - 1].string == ".":
            following = significant[i + 1].string if i + 1 < len(significant) else ""
            if following != "=":  # `.NAME = value` sets a default; `==`, `+=`, ... are separate tokens
                names.add(tok.string)
        elif tok.type == tokenize.STRING and tok.string[:1] in "'\"":
            value = tok.string.strip("'\"")
            following = significant[i + 1].string if i + 1 < len(significant) else ""
            if value.isidentifier() and following != ":":  # `{"NAME": default}` defines a key
                names.add(value)
    return names


@functools.lru_cache(maxsize=None)
def _files_reading() -> dict[str, set[str]]:
    """identifier -> the source files that read it."""
    index: dict[str, set[str]] = {}
    for folder in SOURCE_DIRS:
        for path in folder.rglob("*.py"):
            for name in _names_read(path):
                index.setdefault(name, set()).add(str(path))
    return index


def _flatten(node: dict, prefix: tuple = ()) -> list[tuple]:
    keys = []
    for key, value in node.items():
        if isinstance(value, dict):
            keys += _flatten(value, prefix + (key,))
        else:
            keys.append(prefix + (key,))
    return keys


def _is_read(key: tuple) -> bool:
    index = _files_reading()
    files = index.get(key[-1], set())
    if len(key) == 1:
        return bool(files)
    return bool(files & index.get(key[-2], set()))


def test_load_config_missing_file_raises_value_error(tmp_path):
    with pytest.raises(ValueError, match=r"does not exist; pick one under configs/\.$"):
        load_config(str(tmp_path / "nope.yaml"))


def test_load_config_cuda_without_cuda_raises_value_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"no CUDA device is available: use --device cpu\.$"):
        load_config(str(ROOT / YAMLS[0]), ["MODEL.DEVICE", "cuda"], cpu_hint="use --device cpu")


def test_tool_turns_the_error_into_a_one_line_exit(tmp_path):
    cmd = [sys.executable, str(ROOT / "tools" / "analyze_model.py"), "--config-file", str(tmp_path / "nope.yaml")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (
        proc.stderr.strip().splitlines()[-1] == f"error: --config-file {str(tmp_path / 'nope.yaml')!r} does not "
        "exist; pick one under configs/."
    )


def test_unknown_key_names_the_closest_known_keys_in_a_file_and_on_the_command_line(tmp_path):
    """yacs raises a bare AssertionError (command line) or KeyError (file); load_config turns both into one
    sentence that says where the key came from and suggests the known keys it is closest to."""
    with pytest.raises(
        ValueError,
        match=r"^unknown config key SOLVER\.MAX_ITERS on the command line; did you mean "
        r"SOLVER\.MAX_ITER[ ?]",
    ):
        load_config(str(ROOT / YAMLS[0]), ["SOLVER.MAX_ITERS", "10"])
    path = tmp_path / "typo.yaml"
    path.write_text("MODEL:\n  SEM_SEG_HEAD:\n    NUM_CLASSE: 3\n")
    with pytest.raises(
        ValueError,
        match=rf"^unknown config key MODEL\.SEM_SEG_HEAD\.NUM_CLASSE in {path} \(or a "
        r"_BASE_ file it names\); did you mean MODEL\.SEM_SEG_HEAD\.NUM_CLASSES\?$",
    ):
        load_config(str(path))
    with pytest.raises(ValueError, match=r"^unknown config key ZZZ\.QQQ on the command line; check its spelling"):
        load_config(str(ROOT / YAMLS[0]), ["ZZZ.QQQ", "1"])


def test_odd_override_list_names_a_flag_after_the_overrides():
    with pytest.raises(
        ValueError,
        match=r"KEY VALUE pairs, got 3 words \(MODEL\.WEIGHTS x\.pth --eval-only\).*put "
        r"flags first",
    ):
        load_config(str(ROOT / YAMLS[0]), ["MODEL.WEIGHTS", "x.pth", "--eval-only"])


def test_train_net_exits_with_one_line_on_an_unknown_key():
    cmd = [
        sys.executable,
        str(ROOT / "tools" / "train_net.py"),
        "--config-file",
        str(ROOT / YAMLS[0]),
        "SOLVER.MAX_ITERS",
        "10",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith("error: unknown config key SOLVER.MAX_ITERS on the command line; did you mean SOLVER.MAX_ITER")
    )


def test_reader_sees_attribute_reads_and_strings_but_not_writes(tmp_path):
    src = tmp_path / "m.py"
    src.write_text(
        '"""Docstring naming cfg.MODEL.DOC_ONLY."""\n'
        "cfg.MODEL.WRITTEN = 1  # cfg.MODEL.COMMENT_ONLY\n"
        "x = cfg.MODEL.READ\n"
        'y = getattr(node, "BY_NAME")\n'
        'z = CN({"DICT_KEY": False})\n'
        "if cfg.MODEL.COMPARED == 2:\n    pass\n"
    )
    assert _names_read(src) == {"MODEL", "READ", "BY_NAME", "COMPARED"}


@pytest.mark.parametrize("yaml_path", YAMLS)
def test_every_yaml_key_is_read_by_some_code(yaml_path):
    cfg_dict = CfgNode.load_yaml_with_base(str(ROOT / yaml_path), allow_unsafe=False)
    keys = _flatten(cfg_dict)
    assert keys, f"{yaml_path} sets no keys"
    unread = [".".join(k) for k in keys if not _is_read(k)]
    assert not unread, f"{yaml_path} sets keys no code reads: {unread}; remove them or read them in the code."


def test_official_encoder_dropout_key_names_its_new_home(tmp_path):
    """The official Mask2Former key MODEL.MASK_FORMER.DROPOUT (read by its pixel decoder) is refused with the key
    that replaced it, instead of being ignored or failing as an unknown key."""
    path = tmp_path / "official.yaml"
    path.write_text("MODEL:\n  MASK_FORMER:\n    DROPOUT: 0.1\n")
    with pytest.raises(KeyError, match="renamed to MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_DROPOUT"):
        load_config(str(path))
    with pytest.raises(ValueError, match="renamed to MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_DROPOUT"):  # the tools' exit
        load_config(str(path))
    path.write_text('MODEL:\n  DEVICE: "cpu"\n  SEM_SEG_HEAD:\n    TRANSFORMER_ENC_DROPOUT: 0.1\n')
    assert load_config(str(path)).MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_DROPOUT == 0.1
