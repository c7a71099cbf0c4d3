"""Semantic evaluation from label PNGs: mIoU, fwIoU, mACC, pACC with detectron2's SemSegEvaluator definitions."""

import os

import numpy as np

from .errors import PredictionFileError, check_ids, read_png


def _label_files(folder):
    return {os.path.splitext(f)[0]: os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".png")}


def confusion_matrix(pred, gt, num_classes, ignore_label):
    """[K+1, K+1] counts, rows = prediction, columns = ground truth; ignored gt pixels go to column K."""
    gt = np.where(gt == ignore_label, num_classes, gt).astype(np.int64)
    flat = (num_classes + 1) * pred.astype(np.int64).reshape(-1) + gt.reshape(-1)
    return np.bincount(flat, minlength=(num_classes + 1) ** 2).reshape(num_classes + 1, num_classes + 1)


def semantic_metrics(conf, class_names=None):
    """mIoU, fwIoU, mACC, pACC (in %) and per-class IoU/ACC from a confusion matrix, exactly as SemSegEvaluator:
    IoU/ACC averaged over classes present in the ground truth, mIoU's denominator counting classes that are in
    the ground truth or the prediction."""
    tp = conf.diagonal()[:-1].astype(np.float64)
    pos_gt = conf[:-1, :-1].sum(0).astype(np.float64)
    pos_pred = conf[:-1, :-1].sum(1).astype(np.float64)
    valid, iou_valid = pos_gt > 0, (pos_gt + pos_pred) > 0
    acc, iou = np.full(len(tp), np.nan), np.full(len(tp), np.nan)
    acc[valid] = tp[valid] / pos_gt[valid]
    iou[valid] = tp[valid] / (pos_gt + pos_pred - tp)[valid]
    weights = pos_gt / pos_gt.sum()
    res = {
        "mIoU": 100 * iou[valid].sum() / iou_valid.sum(),
        "fwIoU": 100 * (iou[valid] * weights[valid]).sum(),
        "mACC": 100 * acc[valid].sum() / valid.sum(),
        "pACC": 100 * tp.sum() / pos_gt.sum(),
    }
    names = class_names or [str(i) for i in range(len(tp))]
    res.update({f"IoU-{n}": 100 * v for n, v in zip(names, iou)})
    res.update({f"ACC-{n}": 100 * v for n, v in zip(names, acc)})
    return res


def evaluate_semantic(gt_folder, pred_folder, num_classes, ignore_label=255, class_names=None):
    """Compare every ``<id>.png`` of ``gt_folder`` with ``pred_folder/<id>.png`` (values 0..K-1).

    Ground-truth values must be class ids in [0, K) or the ignore label (a wrong --num-classes or --ignore-label
    would otherwise silently change the metrics); PredictionFileError names the first file that breaks a rule.
    """
    if num_classes < 1:
        raise PredictionFileError(f"--num-classes must be positive (got {num_classes}).")
    if 0 <= ignore_label < num_classes:
        raise PredictionFileError(
            f"--ignore-label {ignore_label} is one of the {num_classes} class ids; use the dataset's ignore value "
            "(e.g. 255)."
        )
    for folder, what in ((gt_folder, "--gt-folder"), (pred_folder, "--pred-folder")):
        if not os.path.isdir(folder):
            raise PredictionFileError(f"{what} '{folder}' is not a directory.")
    gts, preds = _label_files(gt_folder), _label_files(pred_folder)
    if not gts:
        raise PredictionFileError(f"--gt-folder '{gt_folder}' holds no .png label files.")
    check_ids(preds, gts, "label file")
    conf = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    for key, gt_path in sorted(gts.items()):
        gt, gt_mode = read_png(gt_path, "Ground-truth label")
        pred, pred_mode = read_png(preds[key], "Prediction")
        for array, mode, path in ((gt, gt_mode, gt_path), (pred, pred_mode, preds[key])):
            if array.ndim != 2:
                raise PredictionFileError(f"'{path}' is a {mode} image; label PNGs have one channel (class ids).")
        gt, pred = gt.astype(np.int64), pred.astype(np.int64)
        if pred.shape != gt.shape:
            raise PredictionFileError(
                f"Prediction '{preds[key]}' is {pred.shape} but its ground truth is "
                f"{gt.shape}; write predictions at the original image size."
            )
        bad = np.unique(gt[((gt < 0) | (gt >= num_classes)) & (gt != ignore_label)])
        if bad.size:
            raise PredictionFileError(
                f"Ground truth '{gt_path}' has values {bad[:5].tolist()}, neither class ids in [0, {num_classes}) "
                f"nor the ignore label {ignore_label}; check --num-classes and --ignore-label."
            )
        bad = np.unique(pred[(pred < 0) | (pred >= num_classes)])
        if bad.size:
            raise PredictionFileError(
                f"Prediction '{preds[key]}' has unknown class ids {bad[:5].tolist()}; "
                f"values must be in [0, {num_classes})."
            )
        conf += confusion_matrix(pred, gt, num_classes, ignore_label)
    return semantic_metrics(conf, class_names)
