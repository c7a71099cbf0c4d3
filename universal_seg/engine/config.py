"""Config keys of the training engine (checkpointing)."""


def add_engine_config(cfg) -> None:
    """Adds the engine's keys to ``cfg`` (a detectron2 CfgNode), in place."""
    # keep only the newest N periodic checkpoints (model_<iter>.pth); 0 keeps all. model_final.pth and the one
    # last_checkpoint names are never deleted.
    cfg.SOLVER.CHECKPOINT_MAX_TO_KEEP = 0
