#!/usr/bin/env python
"""Predict a folder of images and write the predictions in standard formats (tools/evaluate.py reads them).

    python tools/predict.py --config-file configs/mini/panoptic/m2f_r18.yaml --input datasets/mini/images \\
        --output out/mini --dataset mini_panoptic_val --opts MODEL.WEIGHTS model_final.pth

Writes under --output (universal_seg.inference.writers): semantic/<stem>.png (class ids), instances.json (COCO
results with RLE masks), panoptic/<stem>.png + panoptic.json (COCO panoptic), for --tasks (default: every task the
config's model outputs). --dataset names a registered dataset: its images are the default inputs, and its image
ids and category ids are written (otherwise the image id is the file stem, an int when it is all digits, and
categories come from the metadata of DATASETS.TEST[0]). A restarted run skips images whose files all exist
(--overwrite redoes them). Failed inputs are listed at the end and in <output>/errors.json; the exit status is 1
when any input failed, 2 for a bad command line, config or output folder.
"""

import argparse
import hashlib
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tqdm  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

import universal_seg.data  # noqa: E402,F401  (registers the datasets)
import universal_seg.modeling  # noqa: E402,F401  (registers the models)
from universal_seg.atomic import atomic_write_text  # noqa: E402
from universal_seg.checkpoint import CHECKPOINT_ERRORS  # noqa: E402
from universal_seg.config import load_config  # noqa: E402
from universal_seg.engine.trainer import check_class_count  # noqa: E402
from universal_seg.inference import Predictor  # noqa: E402
from universal_seg.inference.inputs import colliding_inputs, expand_inputs, file_stem  # noqa: E402
from universal_seg.inference.writers import PredictionWriter, check_writable, default_image_id  # noqa: E402
from universal_seg.modeling.meta_arch import TASKS, enable_output_task, output_tasks  # noqa: E402

logger = logging.getLogger("universal_seg.predict")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--input", nargs="+", help="image files, globs or directories (default: the --dataset's images)")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--dataset", help="registered dataset: default inputs, image ids and category ids")
    p.add_argument("--tasks", nargs="+", choices=TASKS, help="what to write (default: what the model outputs)")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass (default 1)")
    p.add_argument("--amp", action="store_true", help="autocast (fp16 on CUDA, bf16 on the CPU)")
    p.add_argument("--overwrite", action="store_true", help="predict images whose files already exist again")
    universal_seg.data.add_register_argument(p)
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides")
    return p


RUN_FILE = "predict_run.json"


def run_signature(cfg) -> dict:
    """What the predictions depend on: the whole config (sha256 of its dump) and the weights file's identity."""
    weights = cfg.MODEL.WEIGHTS
    stat = os.stat(weights) if weights and os.path.isfile(weights) else None
    return {
        "config_sha256": hashlib.sha256(cfg.dump().encode()).hexdigest(),
        "weights": weights,
        "weights_size": stat.st_size if stat else None,
        "weights_mtime_ns": stat.st_mtime_ns if stat else None,
    }


def check_earlier_run(output: str, signature: dict, overwrite: bool) -> None:
    """Warns when ``output`` holds predictions of a run with another config or weights (restarts skip finished
    images, which would then mix two models' results), then records this run's signature, unless the earlier
    run's images are kept (so each later restart warns too)."""
    path = os.path.join(output, RUN_FILE)
    try:
        with open(path) as f:
            previous = json.load(f)
    except (OSError, ValueError):
        previous = None
    if previous is not None and previous != signature and not overwrite:
        # the kept images are the earlier run's: its signature stays, so every later restart warns again
        changed = [k for k in signature if previous.get(k) != signature[k]]
        what = (
            "config"
            if changed == ["config_sha256"]
            else "weights"
            if "config_sha256" not in changed
            else "config and weights"
        )
        logger.warning(
            f"{output} holds predictions of an earlier run with other {what}: the images it finished are skipped and "
            "kept as they are; pass --overwrite to predict every image with this run."
        )
        return
    atomic_write_text(path, json.dumps(signature, indent=1))


def predict_files(predictor: Predictor, writer: PredictionWriter, paths: list[str], image_ids: dict, overwrite=False):
    """Predicts and writes every path in batches of predictor.batch_size (``image_ids``: file stem -> image id,
    default :func:`default_image_id`); returns {path: error message} of the failed ones. A failing batch is
    retried image by image, so one bad input fails alone."""
    errors: dict[str, str] = {}
    stems = [file_stem(p) for p in paths]
    errors.update(colliding_inputs(paths, file_stem))
    todo = [(p, s) for p, s in zip(paths, stems) if p not in errors and (overwrite or not writer.done(s))]
    skipped = len(paths) - len(errors) - len(todo)
    if skipped:
        logger.info(f"{skipped} images already have all their files: skipped (--overwrite redoes them).")
    with tqdm.tqdm(total=len(todo), desc="predict", unit="img", disable=not todo) as bar:
        for start in range(0, len(todo), predictor.batch_size):
            chunk = todo[start : start + predictor.batch_size]
            prepared = []
            for path, stem in chunk:
                try:
                    prepared.append((path, stem, predictor.prepare(path)))
                except Exception as err:  # noqa: BLE001 - an input's own error; the others go on
                    errors[path] = str(err)
            try:
                outputs = predictor.run([x for _, _, x in prepared])
            except Exception:  # noqa: BLE001 - find which input failed: one by one
                outputs = []
                for path, _, x in prepared:
                    try:
                        outputs.append(predictor.run([x])[0])
                    except Exception as err:  # noqa: BLE001
                        errors[path] = f"prediction failed ({type(err).__name__}: {err})"
                        outputs.append(None)
            for (path, stem, _), out in zip(prepared, outputs):
                if out is None:
                    continue
                try:
                    writer.write(stem, image_ids.get(stem, default_image_id(path)), out)
                except Exception as err:  # noqa: BLE001
                    errors[path] = f"cannot write its predictions ({type(err).__name__}: {err})"
            bar.update(len(chunk))
    return errors


def dataset_inputs(name: str) -> tuple[list[str], dict]:
    """The file names of a registered dataset and {file stem: image id}."""
    if name not in DatasetCatalog.list():
        raise ValueError(f"--dataset {name!r} is not registered; choose one of the names in universal_seg/data.")
    dicts = DatasetCatalog.get(name)
    stems = [file_stem(d["file_name"]) for d in dicts]
    # semantic datasets (detectron2's sem_seg loader) have no image_id: their predictions are matched by file stem
    return [d["file_name"] for d in dicts], {stem: d.get("image_id", stem) for stem, d in zip(stems, dicts)}


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    setup_logger(name="fvcore")
    setup_logger(name="universal_seg")
    try:
        universal_seg.data.run_registration_files(args.register)
        cfg = load_config(args.config_file, args.opts, cpu_hint="add `--opts MODEL.DEVICE cpu`")
        tasks = args.tasks or list(output_tasks(cfg))
        for task in tasks:
            enable_output_task(cfg, task)
        paths, image_ids = dataset_inputs(args.dataset) if args.dataset else ([], {})
        if args.dataset:  # its category ids are what the model's class ids get written as
            probe = cfg.clone()
            probe.DATASETS.TEST = (args.dataset,)
            check_class_count(probe, test=True)
        if args.input:
            paths = expand_inputs(args.input)
        if not paths:
            raise ValueError("no input images: give --input (files, globs, folders) or --dataset.")
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}.")
        check_writable(args.output)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    cfg.freeze()
    names = [args.dataset] if args.dataset else (list(cfg.DATASETS.TEST) or list(cfg.DATASETS.TRAIN))
    metadata = MetadataCatalog.get(names[0]) if names else None
    writer = PredictionWriter(args.output, tasks, metadata)
    try:
        predictor = Predictor(cfg, batch_size=args.batch_size, amp=args.amp)
    except (ValueError, *CHECKPOINT_ERRORS) as err:  # ValueError: a setting the predictor cannot run
        print(f"error: {err}", file=sys.stderr)
        return 2
    logger.info(f"tasks {tasks}, {len(paths)} inputs, weights {cfg.MODEL.WEIGHTS or '(none: untrained)'}")
    check_earlier_run(args.output, run_signature(cfg), args.overwrite)
    kept = 0 if args.overwrite else sum(writer.done(file_stem(p)) for p in paths)
    errors = predict_files(predictor, writer, paths, image_ids, args.overwrite)
    stems = [file_stem(p) for p in paths if p not in errors]
    for path in writer.finish(stems):
        logger.info(f"wrote {path}")
    atomic_write_text(os.path.join(args.output, "errors.json"), json.dumps(errors, indent=1))
    for path, message in errors.items():
        print(f"ERROR: {path}: {message}", file=sys.stderr)
    print(
        f"{len(paths) - len(errors)} of {len(paths)} images have predictions ({kept} kept from an earlier run), "
        f"{len(errors)} failed; output in {args.output}"
    )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
