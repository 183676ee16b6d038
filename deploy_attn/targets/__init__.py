"""The CPU targets: OpenVINO IR, ORT (mobile) and onnx-cpu files."""


