"""Training: ``train(TrainConfig(...))`` and the ``convnets train`` command."""

from convnets.training.config import RECIPES, TrainConfig
from convnets.training.loop import ConfigMismatchError, TrainingDiverged, TrainResult, train

__all__ = ["RECIPES", "ConfigMismatchError", "TrainConfig", "TrainResult", "TrainingDiverged", "train"]
