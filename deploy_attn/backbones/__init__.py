"""Backbones that host the attention modules; importing this package registers them."""
from . import efficientnet, mobilenetv2, mobilenetv3, mobilenext, resnet, unet  # noqa: F401
