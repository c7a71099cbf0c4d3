"""The one exception type for malformed or mismatched prediction files."""


class PredictionFileError(ValueError):
    """A prediction file does not match its ground truth (ids, sizes, categories) or is malformed."""


def check_ids(pred_ids, gt_ids, what):
    """Raise PredictionFileError when predictions miss ground-truth ids or name unknown ones."""
    missing, unknown = sorted(set(gt_ids) - set(pred_ids)), sorted(set(pred_ids) - set(gt_ids))
    if missing:
        raise PredictionFileError(
            f"Predictions lack {len(missing)} {what}(s) of the ground truth, e.g. "
            f"{missing[:5]}; predict every ground-truth image."
        )
    if unknown:
        raise PredictionFileError(
            f"Predictions name {len(unknown)} {what}(s) not in the ground truth, e.g. "
            f"{unknown[:5]}; check that the files belong to this dataset."
        )
