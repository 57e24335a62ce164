"""One module per family; importing this package registers every model."""

from convnets.models import alexnet, efficientnet, inception, lenet, mobilenet, nin, resnet, vgg  # noqa: F401
