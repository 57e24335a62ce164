"""One module per family; importing this package registers every model."""

from convnets.models import alexnet, lenet, nin, resnet, vgg  # noqa: F401
