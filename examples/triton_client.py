"""Send one image to a model `deploy-attn triton` wrote, served by Triton, and print top-5.

    tritonserver --model-repository REPO            (or the docker line in the README)
    python examples/triton_client.py REPO mobilenetv2_ca_fp32_onnxruntime cat.jpg

The preprocessing is the export's own, read from REPO/deploy-attn.json: resize to the
model's input size (bilinear), scale to [0, 1], normalise with its mean and std, NCHW.
Needs `pip install "tritonclient[http]"` (and numpy, pillow); the server needs nothing
from deploy-attn.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image


def preprocess(path: Path, pre: dict) -> np.ndarray:
    """One image as the export's input batch [1, C, H, W] (float32)."""
    with Image.open(path) as img:
        img = img.convert("RGB" if pre["channels"] == 3 else "F")
        img = img.resize((pre["size"][1], pre["size"][0]), Image.BILINEAR)
        arr = np.asarray(img, dtype=np.float32)
    arr = (arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)) / 255.0
    mean = np.asarray(pre["mean"], np.float32)[:, None, None]
    std = np.asarray(pre["std"], np.float32)[:, None, None]
    return ((arr - mean) / std)[None].astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repository", type=Path, help="the repository deploy-attn triton wrote")
    parser.add_argument("model", help="a model in it (see its deploy-attn.json)")
    parser.add_argument("image", type=Path)
    parser.add_argument("--url", default="localhost:8000", help="Triton's HTTP endpoint")
    args = parser.parse_args()

    manifest = json.loads((args.repository / "deploy-attn.json").read_text())
    if args.model not in manifest["models"]:
        raise SystemExit(f"{args.model}: not in {args.repository}; choose from "
                         f"{', '.join(manifest['models'])}")
    if manifest["preprocess"] is None:
        raise SystemExit(f"{manifest['name']} takes feature maps, not images")
    x = preprocess(args.image, manifest["preprocess"])

    import tritonclient.http as httpclient  # only needed to send

    client = httpclient.InferenceServerClient(url=args.url)
    meta = client.get_model_metadata(args.model)
    name, out = meta["inputs"][0]["name"], meta["outputs"][0]["name"]
    request = httpclient.InferInput(name, list(x.shape), "FP32")
    request.set_data_from_numpy(x)
    logits = client.infer(args.model, [request]).as_numpy(out).reshape(-1)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    for rank, k in enumerate(np.argsort(-probs)[:5], 1):
        print(f"{rank}. class {k}: {probs[k]:.4f}")


if __name__ == "__main__":
    main()
