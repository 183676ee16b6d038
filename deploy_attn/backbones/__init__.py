"""Backbones that host the attention modules; importing this package registers them."""
from . import mobilenetv2, resnet, unet  # noqa: F401
