"""Below everything: files, text for the terminal, ONNX I/O, numerics, images, the CPU."""

__version__ = "0.1.0"  # the version in pyproject.toml
