#!/usr/bin/env python
"""Side-by-side timing of one benchmark script on two commits, in one run: the rounds alternate base and head so
that the shared machine's drift hits both alike.

    python benchmarks/compare_commits.py --base REV [--rounds 5] -- benchmarks/m2f_inference.py --size 512

The base commit is checked out in a temporary git worktree; its compiled op is copied from this checkout when
``universal_seg/ops/csrc`` and ``setup.py`` are unchanged between the commits, else built there (minutes; set
UNIVERSAL_SEG_CUDA=0 for a CPU-only build), unless ``--base-op FILE`` names an op already built from the base
commit's sources, which is then copied. Each
round runs the script once per tree and reads the number after "median" in its output (``--metric`` changes the
pattern). Prints every round, the median of each side, the spread (min-max), and head / base.
"""

import argparse
import glob
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", ROOT, *args], check=True, capture_output=True, text=True).stdout.strip()


def prepare_base(rev: str, where: str, base_op: str | None = None) -> str:
    """A worktree of ``rev`` under ``where`` with a usable compiled op and the bundled mini data."""
    tree = os.path.join(where, "base")
    git("worktree", "add", "--detach", tree, rev)
    same_op = subprocess.run(
        ["git", "-C", ROOT, "diff", "--quiet", rev, "HEAD", "--", "universal_seg/ops/csrc", "setup.py"]
    ).returncode
    if base_op is not None:
        shutil.copy(base_op, os.path.join(tree, "universal_seg", os.path.basename(base_op)))
    elif same_op == 0:
        for so in glob.glob(os.path.join(ROOT, "universal_seg", "_C*.so")):
            shutil.copy(so, os.path.join(tree, "universal_seg"))
    else:
        print(f"the op differs between {rev} and HEAD: building it in the base tree", flush=True)
        subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=tree, check=True)
    mini = os.path.join(ROOT, "datasets", "mini")
    if os.path.isdir(mini) and not os.path.exists(os.path.join(tree, "datasets", "mini")):
        os.symlink(mini, os.path.join(tree, "datasets", "mini"))
    return tree


def run_once(tree: str, script: list[str], metric: re.Pattern) -> float:
    env = {**os.environ, "PYTHONPATH": tree}
    proc = subprocess.run([sys.executable, *script], cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(script)} failed in {tree}:\n{proc.stderr[-2000:]}")
    found = metric.findall(proc.stdout)
    if not found:
        raise SystemExit(f"error: no '{metric.pattern}' in the output of {' '.join(script)}:\n{proc.stdout[-2000:]}")
    return float(found[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the commit to compare against (e.g. HEAD~3, a hash)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--base-op", help="universal_seg/_C*.so built from the base commit's sources (no build)")
    parser.add_argument("--metric", default=r"median ([0-9.]+)", help="regex whose group 1 is the number")
    parser.add_argument("script", nargs=argparse.REMAINDER, help="-- SCRIPT [ARGS]: run from each tree's root")
    args = parser.parse_args()
    script = args.script[1:] if args.script[:1] == ["--"] else args.script
    if not script:
        parser.error("give the benchmark script after --")
    metric = re.compile(args.metric)
    rev = git("rev-parse", "--short", args.base)
    head = git("rev-parse", "--short", "HEAD")
    with tempfile.TemporaryDirectory() as where:
        base_tree = prepare_base(rev, where, args.base_op)
        try:
            times = {"base": [], "head": []}
            for r in range(args.rounds):
                order = [("base", base_tree), ("head", ROOT)] if r % 2 == 0 else [("head", ROOT), ("base", base_tree)]
                for side, tree in order:
                    times[side].append(run_once(tree, script, metric))
                print(f"round {r + 1}: base {times['base'][-1]:.3f}  head {times['head'][-1]:.3f}", flush=True)
        finally:
            git("worktree", "remove", "--force", base_tree)
    med = {side: statistics.median(v) for side, v in times.items()}
    for side, label in (("base", rev), ("head", head)):
        v = times[side]
        print(f"{side} {label}: median {med[side]:.3f} (spread {min(v):.3f}-{max(v):.3f}, {len(v)} rounds)")
    print(f"head / base: {med['head'] / med['base']:.3f} (below 1: head is faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
