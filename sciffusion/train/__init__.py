"""Training: the shared trainer, checkpoints, deterministic batches, DDP set-up and logs."""
from sciffusion.train.checkpoint import CheckpointError, find_checkpoint, load_meta, load_module_weights, save_checkpoint, write_json_atomic, write_text_atomic
from sciffusion.train.trainer import ResumeError, TrainResult, Trainer, TrainingDiverged, ema_decay_at, lr_at, train

__all__ = [
    "CheckpointError",
    "ResumeError",
    "TrainResult",
    "Trainer",
    "TrainingDiverged",
    "ema_decay_at",
    "find_checkpoint",
    "load_meta",
    "load_module_weights",
    "lr_at",
    "save_checkpoint",
    "train",
    "write_json_atomic",
    "write_text_atomic",
]
