"""PyTorch: the reference's outputs and a timed runner."""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn as nn


def torch_outputs(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x)).numpy()


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch.set_num_threads for the block, restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def torch_runner(model, x: np.ndarray) -> Callable[[], Any]:
    """Eager PyTorch under inference_mode (call inside ``torch_threads``)."""
    import torch

    model = model.eval()
    xt = torch.from_numpy(x)

    def run():
        with torch.inference_mode():
            return model(xt)

    return run
