"""FastCOCOEvaluator for datasets whose thing classes live in a larger contiguous space (panoptic convention)."""

from detectron2.data import MetadataCatalog
from detectron2.data.catalog import Metadata

from .coco import FastCOCOEvaluator


class InstanceSegEvaluator(FastCOCOEvaluator):
    """COCO AP when ``thing_dataset_id_to_contiguous_id`` maps to non-consecutive contiguous ids (e.g. ADE20K or
    the mini set, where things and stuff share one id space). Predicted ``pred_classes`` are contiguous ids."""

    def __init__(self, dataset_name, *args, **kwargs):
        super().__init__(dataset_name, *args, **kwargs)
        meta = MetadataCatalog.get(dataset_name)
        self._contiguous_to_dataset = {v: k for k, v in meta.thing_dataset_id_to_contiguous_id.items()}
        self._metadata = Metadata(name=dataset_name, thing_classes=meta.thing_classes)  # no id map: ids converted

    def _eval_predictions(self, predictions, img_ids=None):
        for prediction in predictions:
            kept = []
            for inst in prediction.get("instances", []):
                if inst["category_id"] in self._contiguous_to_dataset:  # stuff classes have no instance GT
                    kept.append(dict(inst, category_id=self._contiguous_to_dataset[inst["category_id"]]))
            prediction["instances"] = kept
        return super()._eval_predictions(predictions, img_ids)
