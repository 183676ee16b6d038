"""Calibration and verification inputs: an image folder with the model's preprocessing,
or a seeded generated set that the report labels as such."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import ConfigError
from ..core.images import Preprocess, image_classes, load_image
from ..core.numerics import seeded_inputs

CALIB_SEED = 99  # verification uses core.numerics.seeded_inputs' default seed: disjoint sets


@dataclass(frozen=True)
class CalibData:
    inputs: np.ndarray  # [N, C, H, W] float32
    source: str
    preprocess: Preprocess | None

    def as_dict(self) -> dict:
        return {"count": int(self.inputs.shape[0]), "source": self.source,
                "preprocess": self.preprocess.as_dict() if self.preprocess else None}


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
    inputs = np.stack([load_image(p, pre) for p in files]).astype(np.float32)
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
