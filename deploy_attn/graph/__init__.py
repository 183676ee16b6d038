"""ONNX graphs: the one Graph view, the deploy passes, the CPU forms, export and simplify."""


