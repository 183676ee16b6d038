"""TensorRT engines: their configuration, the build, and the sidecar that records it."""


