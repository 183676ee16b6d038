"""scikit-learn's handwritten digits as labelled image folders (a dataset that ships
inside a package: no download), in the layouts ``deploy-attn accuracy`` and
``--calib-dir`` read, and a small trainer for the checks that need trained weights."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .core.errors import ConfigError
from .core.images import Preprocess
from .models import reestimate_bn

DIGITS_MAX = 16  # scikit-learn's digits are 8x8 with values 0..16
STROKE = 0.5  # pixel value in [0, 1] above which a digit pixel is stroke (segmentation)


@dataclass(frozen=True)
class DigitsSplit:
    """One split, written twice: as an ImageFolder (``folder/<digit>/<i>.png``) for
    classification and as ``seg/images`` + ``seg/masks`` for segmentation (mask: 0 on the
    background, 1 + the digit on its stroke pixels)."""

    folder: Path
    seg: Path
    classes: int = 10
    seg_classes: int = 11


def digits(root: str | Path, pre: Preprocess, test_size: float = 0.3,
           seed: int = 0) -> dict[str, DigitsSplit]:
    """The 1797 digits upsampled bilinearly to ``pre.size`` as 8-bit grayscale PNGs, split
    stratified and seeded into ``root/train`` and ``root/test`` (and ``root/seg-train``,
    ``root/seg-test``)."""
    from PIL import Image
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise ConfigError("the digits ship with scikit-learn: pip install scikit-learn "
                          "(it is in the `test` extra)") from None

    if pre.channels != 1:
        raise ConfigError(f"the digits are grayscale; the model takes {pre.channels}-channel input")
    data = load_digits()
    height, width = pre.size
    # upsampled with the filter the image loader resizes with, then stored as 8 bits
    upsampled = np.stack([np.asarray(Image.fromarray(img.astype(np.float32) * (255 / DIGITS_MAX))
                                     .resize((width, height), Image.BILINEAR))
                          for img in data.images])
    pixels = np.clip(np.rint(upsampled), 0, 255).astype(np.uint8)
    train, test = train_test_split(np.arange(len(pixels)), test_size=test_size,
                                   random_state=seed, stratify=data.target)
    splits = {}
    for split, idx in (("train", train), ("test", test)):
        folder, seg = Path(root) / split, Path(root) / f"seg-{split}"
        for d in (folder, seg):
            if d.exists() and any(d.iterdir()):  # stale files would be read with the new
                raise ConfigError(f"{d}: not empty; write the digits to a fresh folder")
        places = len(str(len(idx)))
        for i, k in enumerate(idx):
            label, name = int(data.target[k]), f"{i:0{places}d}.png"
            (folder / str(label)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[k]).save(folder / str(label) / name)
            for sub in ("images", "masks"):
                (seg / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[k]).save(seg / "images" / name)
            mask = np.where(pixels[k] > STROKE * 255, label + 1, 0).astype(np.uint8)
            Image.fromarray(mask).save(seg / "masks" / name)
        splits[split] = DigitsSplit(folder, seg)
    return splits


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 3
    lr: float = 0.05
    optimizer: str = "sgd"  # SGD (Nesterov) or AdamW, both with a one-cycle schedule
    batch: int = 32
    label_smoothing: float = 0.1
    seed: int = 0


def train(model, inputs: np.ndarray, targets: np.ndarray, cfg: TrainConfig = TrainConfig()):
    """Train ``model`` (classifier: targets [N]; segmentation: [N, H, W]) with cross
    entropy, seeded, then re-estimate BatchNorm statistics over the whole training set (a
    cumulative mean, so eval mode matches the trained weights). Returns the model, in
    eval mode."""
    import torch
    import torch.nn.functional as F

    x, y = torch.from_numpy(inputs), torch.from_numpy(np.asarray(targets, np.int64))
    model.to(memory_format=torch.channels_last)  # ~30% faster on CPU; 1-channel x is both
    steps = max(1, len(x) // cfg.batch)
    if cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True,
                              weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.epochs * steps,
                                                pct_start=0.15)
    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(steps):
            idx = order[i * cfg.batch:(i + 1) * cfg.batch]
            loss = F.cross_entropy(model(x[idx]), y[idx], label_smoothing=cfg.label_smoothing)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    reestimate_bn(model, (x[i:i + 256] for i in range(0, len(x), 256)))
    model.to(memory_format=torch.contiguous_format)
    return model.eval()

