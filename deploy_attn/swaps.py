"""Deploy rewrites: a swap table keyed by module class, and ``patch_for_deploy``.

Each entry turns a reference module into its deploy form with the same weights. An entry
is *exact* (the same function: tested to float rounding against the reference) or
*approximate* (changes numerics; applied only when asked for, and the export report states
the error it caused). Attention files register their own twins with ``deploy_twin`` next to
the reference class, so the table is filled when ``deploy_attn.attention`` is imported.

The table holds what only the module can tell: EMAX's sampling, GroupNorm, 5-D layouts,
adaptive pools. What the exported graph shows whoever wrote the module (h_sigmoid and
h_swish written as ``ReLU6(x + 3) / 6``, shapes computed at run time) is rewritten on the
ONNX graph instead (``graph/passes.py``), so it works on any model.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Callable

import torch.nn as nn

from .layers.norm import GroupNormDeploy
from .layers.pooling import AxisMax, AxisMean, adaptive_pool_dims

Convert = Callable[[nn.Module], "nn.Module | None"]


@dataclass(frozen=True)
class Rewrite:
    convert: Convert  # returns the deploy module, or None when this instance is left alone
    exact: bool
    note: str


@dataclass(frozen=True)
class AppliedRewrite:
    path: str
    source: str
    target: str
    exact: bool
    note: str

    def as_dict(self) -> dict:
        return asdict(self)


REWRITES: dict[type[nn.Module], Rewrite] = {}


def register_rewrite(cls: type[nn.Module], convert: Convert, *, exact: bool, note: str) -> None:
    if cls in REWRITES:
        raise ValueError(f"a deploy rewrite for {cls.__name__} is already registered")
    REWRITES[cls] = Rewrite(convert, exact, note)


def deploy_twin(reference: type[nn.Module], *, exact: bool = True, note: str = ""):
    """Class decorator: register ``twin`` (a subclass of ``reference`` with a deploy
    forward) as the rewrite of ``reference``. The twin takes over the reference
    instance's submodules and parameters unchanged (a state_dict of one loads into the
    other); ``on_deploy()``, if the twin has it, may then drop what the deploy form does
    not use."""

    def wrap(twin: type[nn.Module]) -> type[nn.Module]:
        if not issubclass(twin, reference):
            raise TypeError(f"{twin.__name__} must subclass {reference.__name__}")

        def convert(module: nn.Module) -> nn.Module:
            # patch_for_deploy works on a deep copy, so the instance is re-classed in place.
            module.__class__ = twin
            if hasattr(module, "on_deploy"):
                module.on_deploy()
            return module

        register_rewrite(reference, convert, exact=exact, note=note or twin.__doc__ or "")
        return twin

    return wrap


# --- leaf rewrites shared by every module -------------------------------------------
def _adaptive_avg(m: nn.Module) -> nn.Module | None:
    dims = adaptive_pool_dims(m.output_size)
    return AxisMean(dims) if dims else None


def _adaptive_max(m: nn.Module) -> nn.Module | None:
    dims = adaptive_pool_dims(m.output_size)
    return AxisMax(dims) if dims else None


def _group_norm(m: nn.GroupNorm) -> nn.Module:
    new = GroupNormDeploy(m.num_groups, m.num_channels, m.eps, m.affine)
    new.load_state_dict(m.state_dict())
    return new


def _gelu_tanh(m: nn.GELU) -> nn.Module | None:
    return nn.GELU(approximate="tanh") if m.approximate == "none" else None


register_rewrite(nn.AdaptiveAvgPool2d, _adaptive_avg, exact=True,
                 note="adaptive average pool to 1 along an axis -> ReduceMean")
register_rewrite(nn.AdaptiveMaxPool2d, _adaptive_max, exact=True,
                 note="adaptive max pool to 1 along an axis -> ReduceMax")
register_rewrite(nn.GroupNorm, _group_norm, exact=True,
                 note="GroupNorm -> static Reshape + InstanceNormalization + affine")
register_rewrite(nn.GELU, _gelu_tanh, exact=False,
                 note="erf GELU -> tanh GELU (one fused op on more runtimes; max error ~1e-3)")


def _swap(module: nn.Module, approximate: bool, path: str,
          applied: list[AppliedRewrite]) -> nn.Module:
    rule = REWRITES.get(type(module))
    if rule is not None and (rule.exact or approximate):
        source = type(module).__name__  # before convert: twins re-class in place
        new = rule.convert(module)
        if new is not None:
            applied.append(AppliedRewrite(path or "<root>", source, type(new).__name__,
                                          rule.exact, rule.note))
            module = new
    for name, child in list(module.named_children()):
        new_child = _swap(child, approximate, f"{path}.{name}" if path else name, applied)
        if new_child is not child:
            setattr(module, name, new_child)
    return module


def patch_for_deploy(model: nn.Module, approximate: bool = False
                     ) -> tuple[nn.Module, list[AppliedRewrite]]:
    """A deploy copy of ``model`` (the input is left untouched) and the rewrites applied.

    Exact rewrites always apply; approximate ones only with ``approximate=True``.
    """
    import deploy_attn.attention  # noqa: F401  (fills REWRITES with the module twins)

    applied: list[AppliedRewrite] = []
    new = _swap(copy.deepcopy(model), approximate, "", applied)
    return new.eval() if not model.training else new, applied


def summarize(applied: list[AppliedRewrite]) -> list[dict]:
    """One row per (source, target) pair with a count, for reports and tables."""
    rows: dict[tuple[str, str], dict] = {}
    for a in applied:
        row = rows.setdefault((a.source, a.target), {
            "source": a.source, "target": a.target, "exact": a.exact, "note": a.note, "count": 0})
        row["count"] += 1
    return list(rows.values())
