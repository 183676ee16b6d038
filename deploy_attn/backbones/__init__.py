"""Backbones that host the attention modules; importing this package registers them."""
