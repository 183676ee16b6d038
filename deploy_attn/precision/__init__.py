"""Precision stages: FP32 ONNX -> FP16 ONNX with FP32 islands, FP32 ONNX -> INT8 Q/DQ ONNX
(for TensorRT, and for the CPUs), with calibration, placement and sensitivity.

TensorRT 10.12 deprecated its FP16/INT8 builder flags and 11.0 removed them: precision now
lives in the graph, built strongly typed. The same graphs run in ONNX Runtime on the CPU,
so every precision decision is made and verified here (docs/TENSORRT.md, section 1).
"""


