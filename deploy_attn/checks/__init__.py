"""Checks of artifacts: parity, the TensorRT operator check, map drift."""


