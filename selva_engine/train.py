"""The public entry point of training: `from selva_engine.train import train`.

The trainer lives in selva_engine.training (selva_engine.training.trainer reads top to
bottom); this module keeps the import path of the first release working.
"""

from selva_engine.training.trainer import TrainError, TrainResult, train

__all__ = ["TrainError", "TrainResult", "train"]
