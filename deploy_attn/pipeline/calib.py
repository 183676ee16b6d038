"""Calibration and verification inputs: an image folder with the model's preprocessing,
or a seeded generated set that the report labels as such."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import ArtifactError, ConfigError
from .parity import seeded_inputs

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CALIB_SEED = 99  # verification uses parity.seeded_inputs' default seed: disjoint sets


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes a model input: resize to (H, W), scale to [0, 1], normalise."""

    size: tuple[int, int]
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CalibData:
    inputs: np.ndarray  # [N, C, H, W] float32
    source: str
    preprocess: Preprocess | None

    def as_dict(self) -> dict:
        return {"count": int(self.inputs.shape[0]), "source": self.source,
                "preprocess": self.preprocess.as_dict() if self.preprocess else None}


def _load_image(path: Path, pre: Preprocess) -> np.ndarray:
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


def _spread(groups: dict[str, list[Path]], count: int
            ) -> tuple[list[Path], dict[str, list[Path]]]:
    """``count`` files spread evenly over the classes and, within each, over its sorted
    names (a folder sorted by class would otherwise calibrate on its first classes only),
    and the rest, by class."""
    quota = dict.fromkeys(groups, 0)
    left = count
    while left > 0 and any(quota[k] < len(v) for k, v in groups.items()):
        for k, v in groups.items():
            if left and quota[k] < len(v):
                quota[k] += 1
                left -= 1
    picked, rest = [], {}
    for k, files in groups.items():
        chosen = set(np.linspace(0, len(files) - 1, quota[k]).round().astype(int).tolist()) \
            if quota[k] else set()
        picked += [f for i, f in enumerate(files) if i in chosen]
        rest[k] = [f for i, f in enumerate(files) if i not in chosen]
    return picked, {k: v for k, v in rest.items() if v}


def _load(files: list[Path], pre: Preprocess, what: str, folder: Path) -> CalibData:
    inputs = np.stack([_load_image(p, pre) for p in files]).astype(np.float32)
    return CalibData(inputs, f"images: {folder} ({len(files)} files, {what})", pre)


def image_folder(folder: str | Path, pre: Preprocess, count: int) -> CalibData:
    """``count`` images from ``folder`` (spread over its classes and sorted names),
    preprocessed."""
    folder = Path(folder)
    return _load(_spread(image_classes(folder), count)[0], pre, "calibration", folder)


def verification_data(pre: Preprocess | None, shape: tuple[int, ...],
                      calib_dir: str | Path | None, calib_count: int, count: int) -> CalibData:
    """Inputs for the FP16/INT8 checks: images of the calibration folder that calibration
    did not use (real data in the range calibration saw), else the seeded set, which is
    disjoint from the generated calibration set."""
    if calib_dir is not None and pre is not None:
        held_out = _spread(image_classes(Path(calib_dir)), calib_count)[1]
        if held_out:
            return _load(_spread(held_out, count)[0], pre, "held out from calibration",
                         Path(calib_dir))
    return CalibData(seeded_inputs((count,) + tuple(shape[1:])),
                     "generated: seeded standard normal (seed 1234), not real data", pre)


def calibration_data(pre: Preprocess | None, shape: tuple[int, ...],
                     calib_dir: str | Path | None, count: int, label: str = "the model"
                     ) -> CalibData:
    """``count`` calibration inputs: images of ``calib_dir`` preprocessed by ``pre``, or
    the seeded generated set (``label`` names the model in errors)."""
    if count < 1:
        raise ConfigError(f"--calib-count {count}: need at least one calibration input")
    if calib_dir is not None:
        if pre is None:
            raise ConfigError(f"{label} takes {shape[1]}-channel feature maps, not images; "
                              "calibrate it with the generated set (omit --calib-dir)")
        return image_folder(calib_dir, pre, count)
    inputs = seeded_inputs((count,) + tuple(shape[1:]), CALIB_SEED)
    return CalibData(inputs, f"generated: seeded standard normal (seed {CALIB_SEED}), "
                             "not real data", pre)
