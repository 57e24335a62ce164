"""convnets: the deep convolutional network case studies, exact to their papers."""

from convnets.analysis import count, summary
from convnets.models.base import ConvNet, InputShapeError, StageInfo
from convnets.models.efficientnet import efficientnet_scaled

# The function is convnets.predict; its module is convnets.prediction.
from convnets.prediction import Prediction, predict
from convnets.registry import Published, UnknownModelError, create_model, list_models, model_entry, register_model
from convnets.training import TrainConfig, train  # after create_model: the loop uses it

__version__ = "0.1.0"

__all__ = [
    "ConvNet",
    "InputShapeError",
    "Prediction",
    "Published",
    "StageInfo",
    "TrainConfig",
    "UnknownModelError",
    "count",
    "create_model",
    "efficientnet_scaled",
    "list_models",
    "model_entry",
    "predict",
    "register_model",
    "summary",
    "train",
]
