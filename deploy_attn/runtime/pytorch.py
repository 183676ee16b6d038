"""PyTorch: the reference's outputs and its runner."""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn as nn

from .base import Runner


def torch_outputs(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x)).numpy()


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch.set_num_threads for the block, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class TorchRunner(Runner):
    """The PyTorch module in eval mode: ``run`` under no_grad; ``timed`` eager under
    inference_mode (time it inside ``torch_threads``)."""

    runtime = "pytorch"

    def __init__(self, model: nn.Module):
        self.model = model.eval()

    def run(self, x: np.ndarray) -> np.ndarray:
        return torch_outputs(self.model, x)

    def timed(self, x: np.ndarray) -> Callable[[], Any]:
        xt = torch.from_numpy(x)

        def call():
            with torch.inference_mode():
                return self.model(xt)

        return call
