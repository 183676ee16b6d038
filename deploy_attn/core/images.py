"""Images as a model sees them: preprocessing, the ImageNet statistics, image files."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import ArtifactError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes a model input: resize to (H, W), scale to [0, 1], normalise."""

    size: tuple[int, int]
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def as_dict(self) -> dict:
        return asdict(self)


def load_image(path: Path, pre: Preprocess) -> np.ndarray:
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings(), Image.open(path) as img:
            # deploy: a decompression bomb (a small file of billions of pixels) is refused
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
            mode = img.mode
            if mode == "P":
                img = img.convert("RGB")
                mode = "RGB"
            channels = {"1": 1, "L": 1, "I": 1, "I;16": 1, "F": 1, "RGB": 3}.get(mode)
            if channels != pre.channels:
                raise ArtifactError(f"{path}: image has mode {mode} "
                                    f"({channels or len(img.getbands())} channels); the model "
                                    f"takes {pre.channels}-channel input")
            img = img.convert("F" if channels == 1 else "RGB")
            img = img.resize((pre.size[1], pre.size[0]), Image.BILINEAR)
            arr = np.asarray(img, dtype=np.float32)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ArtifactError(f"{path}: refused as a decompression bomb ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ArtifactError(f"{path}: not a readable image ({type(exc).__name__})") from None
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    arr = arr / (65535.0 if mode == "I;16" else 255.0)
    mean = np.asarray(pre.mean, np.float32)[:, None, None]
    std = np.asarray(pre.std, np.float32)[:, None, None]
    return (arr - mean) / std


def image_files(folder: Path) -> list[Path]:
    """The image files (IMAGE_SUFFIXES) at the top level of ``folder``, sorted."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def image_classes(folder: Path) -> dict[str, list[Path]]:
    """The images of a folder, by class: its top level (class ""), and one subfolder per
    class as in torchvision's ImageFolder layout (``train/<class>/*.png``)."""
    if not folder.is_dir():
        raise ArtifactError(f"{folder}: calibration folder does not exist")
    groups = {"": image_files(folder)}
    groups.update({d.name: image_files(d) for d in sorted(folder.iterdir()) if d.is_dir()})
    groups = {k: v for k, v in groups.items() if v}
    if not groups:
        raise ArtifactError(f"{folder}: no {'/'.join(IMAGE_SUFFIXES)} images to calibrate with "
                            "(at its top level or in class subfolders)")
    return groups
