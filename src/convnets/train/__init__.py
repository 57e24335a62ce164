"""Training: ``train(TrainConfig(...))`` and the ``convnets train`` command."""

from convnets.train.config import RECIPES, TrainConfig
from convnets.train.loop import ConfigMismatchError, TrainingDiverged, TrainResult, train

__all__ = ["RECIPES", "ConfigMismatchError", "TrainConfig", "TrainResult", "TrainingDiverged", "train"]
