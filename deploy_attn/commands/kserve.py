"""A KServe InferenceService manifest for a Triton model repository (the Triton runtime,
KServe's open inference protocol v2)."""
from __future__ import annotations

import json
import re

KSERVE_FILE = "inferenceservice.yaml"  # beside the models, at the repository root
RUNTIME = "kserve-tritonserver"  # KServe's ClusterServingRuntime for Triton


def service_name(name: str) -> str:
    """``name`` as a Kubernetes resource name (DNS-1123 label: lowercase, '-', <= 63)."""
    label = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    label = label if label[:1].isalpha() else f"m-{label}"
    return label[:63].rstrip("-")


def default_uri(name: str) -> str:
    return f"pvc://triton-models/{service_name(name)}"


def inference_service(name: str, storage_uri: str | None, gpu: bool) -> str:
    """The manifest's YAML: one predictor on KServe's Triton runtime, loading every model
    of the repository at ``storage_uri``; a GPU requested when it holds TensorRT plans."""
    uri = json.dumps(storage_uri or default_uri(name))  # a quoted YAML scalar
    lines = ["apiVersion: serving.kserve.io/v1beta1", "kind: InferenceService", "metadata:",
             f"  name: {service_name(name)}", "spec:", "  predictor:", "    model:",
             "      modelFormat:", "        name: triton", "      protocolVersion: v2",
             f"      runtime: {RUNTIME}", f"      storageUri: {uri}"]
    if gpu:
        lines += ["      resources:", "        limits:", '          nvidia.com/gpu: "1"']
    return "\n".join(lines) + "\n"
