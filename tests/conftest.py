from __future__ import annotations

import contextlib
import os
import re
import time
from pathlib import Path
from typing import Iterator

import pytest
import torch

import deploy_attn
from deploy_attn import export
from deploy_attn.exportdir.transaction import STAGING_PREFIX

ATTENTION_NAMES = deploy_attn.list_models(kind="attention")
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
# a file name that looks like a deployable artifact (or its report / reference outputs)
ARTIFACT = re.compile(r"^(model.*\.(onnx|engine|ort|xml|bin)|report\.json|"
                      r"reference\.safetensors)$")


def snapshot(directory: Path, staging: bool = True) -> dict[str, bytes]:
    """Every path under ``directory`` with its bytes (folders as a marker), {} when it does
    not exist; ``staging=False`` leaves out what lies in a run's staging folder."""
    if not directory.exists():
        return {}
    out = {}
    for p in sorted(directory.rglob("*")):
        rel = p.relative_to(directory)
        if staging or not any(part.startswith(STAGING_PREFIX) for part in rel.parts):
            out[str(rel)] = p.read_bytes() if p.is_file() else b"<dir>"
    return out


def _trt_missing() -> str | None:
    from deploy_attn.runtime.tensorrt import TensorRTUnavailable, require_tensorrt

    try:
        require_tensorrt("se")
    except TensorRTUnavailable as exc:
        return str(exc)
    return None


TRT_MISSING = _trt_missing()  # why TensorRT engines cannot be built here, or None


def needs_trt(test):
    """Mark ``test`` trt and gpu, and skip it with the reason where either is missing."""
    for mark in (pytest.mark.trt, pytest.mark.gpu,
                 pytest.mark.skipif(TRT_MISSING is not None,
                                    reason=f"needs TensorRT and a CUDA GPU: {TRT_MISSING}")):
        test = mark(test)
    return test


@pytest.fixture(scope="session")
def export_cache(tmp_path_factory):
    """Exports shared by the tests of one session: (name, dynamic_batch) -> ExportResult."""
    root = tmp_path_factory.mktemp("exports")
    cache: dict = {}

    def get(name: str, dynamic_batch: bool = False, **kwargs):
        key = (name, dynamic_batch, tuple(sorted(kwargs.items())))
        if key not in cache:
            out = root / f"{name}-{'dyn' if dynamic_batch else 'static'}-{len(cache)}"
            cache[key] = export(name, out_dir=out,
                                                 dynamic_batch=dynamic_batch, **kwargs)
        return cache[key]

    return get


def module_group(name: str):
    """The xdist group of zoo module ``name``: the tests that read its exports (export,
    precision, maps, TensorRT check) run on one worker, so export_cache (one per worker)
    exports each module once per set of options."""
    return pytest.mark.xdist_group(f"module-{name}")


def by_module(names) -> list:
    """``names`` as test parameters, each in its module's group (module_group)."""
    return [pytest.param(n, marks=module_group(n)) for n in names]


# --- models trained on scikit-learn's digits (shared by the accuracy and maps tests) -------
# The suite runs on two pytest-xdist workers (pyproject addopts; --dist loadgroup): the
# tests that read the digits models share one worker, so each model trains once.
DIGITS_WORKER = pytest.mark.xdist_group("digits")
DIGITS_SIZE = (32, 32)  # total stride 32 (classifiers) and 16 (UNet): the smallest all take
DIGITS_SEED = 0


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """PyTorch on one thread: on a shared 2-core CPU these small convolutions ran about 8x
    slower with two threads (measured), and one thread makes training reproducible
    whatever the core count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digit_sets(tmp_path_factory):
    """The digits as an ImageFolder and as images + masks, train and test splits."""
    from deploy_attn.datasets import digits
    from deploy_attn.sources import default_preprocess

    pre = default_preprocess("backbone", (1, 1, *DIGITS_SIZE))
    return digits(tmp_path_factory.mktemp("digits"), pre, seed=DIGITS_SEED)


@pytest.fixture(scope="session")
def digits_checkpoint(digit_sets, tmp_path_factory):
    """(name, TrainConfig, segment) -> a state_dict of the registry model trained with the
    package's API on the training split, read the way the accuracy command reads data;
    each trained once per session, whichever test asks first."""
    from deploy_attn.datasets import train
    from deploy_attn.models import create_model
    from deploy_attn.commands.labelled import dataset_arrays, load_dataset
    from deploy_attn.sources import default_preprocess

    pre = default_preprocess("backbone", (1, 1, *DIGITS_SIZE))
    root = tmp_path_factory.mktemp("digits-ckpt")
    cache: dict = {}

    def get(name: str, recipe, segment: bool = False) -> Path:
        key = (name, recipe, segment)
        if key not in cache:
            classes = 11 if segment else 10
            split = digit_sets["train"]
            dataset = load_dataset(split.seg if segment else split.folder,
                                   "segmentation" if segment else "classifier", classes)
            x, y = dataset_arrays(dataset, pre)
            model = create_model(name, channels=1, input_size=DIGITS_SIZE,
                                 num_classes=classes, seed=DIGITS_SEED)
            t0 = time.perf_counter()
            with one_thread():
                train(model, x, y, recipe)
            print(f"\n[digits] trained {name} {recipe.epochs} epochs in "
                  f"{time.perf_counter() - t0:.1f} s")
            cache[key] = root / f"{name}-{len(cache)}.pt"
            torch.save(model.state_dict(), cache[key])
        return cache[key]

    return get


def pytest_configure(config) -> None:
    """Each pytest-xdist worker's PyTorch, and the CLI processes its tests start, on the
    worker's share of the cores: two workers with two threads each on 2 cores ran the
    export and interrupt tests 1.55x slower than with one (measured on a 2-core Zen 3)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                 else os.cpu_count() or 1)
        threads = max(1, cores // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def pytest_report_header(config) -> str:
    """The CPU the session runs on: INT8 figures on the CPU targets' integer kernels are
    per-ISA expectations (tests/test_saturation.py)."""
    from deploy_attn.core.cpu import isa_line

    return isa_line()
