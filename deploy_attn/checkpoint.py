"""A user's checkpoint -> a state_dict for the card's module: containers, key prefixes,
``.safetensors`` files and the public key layouts of the same functions.

Reading never runs pickled code (``torch.load(weights_only=True)``); loading never changes
a key's meaning silently: a public layout is applied only when it turns the checkpoint
into exactly the module's keys and shapes, and the mapping applied is recorded.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import torch
import torch.nn as nn

from .core.errors import CheckpointError, first_line
from .core.files import file_sha256

StateDict = dict[str, torch.Tensor]

# Containers that hold the weights, in the order they are looked for (timm, Lightning,
# the PyTorch tutorials' "model_state_dict", plain dicts with "model").
RAW_ENTRIES = ("state_dict", "model_state_dict", "model")
EMA_ENTRIES = ("state_dict_ema", "model_ema")
# DataParallel/DDP, Lightning modules wrapping the network as ``self.model``, torch.compile
PREFIXES = ("module.", "model.", "_orig_mod.")


@dataclass(frozen=True)
class LoadedCheckpoint:
    """How a checkpoint was read into a module (recorded in the export report)."""

    path: str
    sha256: str
    entry: str | None  # the container entry the weights came from; None: top level
    prefixes: tuple[str, ...] = ()  # key prefixes stripped, outermost first
    layout: str | None = None  # the public layout mapped onto the module's keys
    filled: int = 0  # BatchNorm num_batches_tracked counters the file lacked
    note: str = ""  # e.g. that EMA weights are present too

    def as_dict(self) -> dict:
        d = asdict(self)
        d["prefixes"] = list(self.prefixes)
        return d

    def describe(self) -> str:
        """One phrase for the success line: which entry, prefixes and layout were used."""
        parts = [f"entry '{self.entry}'" if self.entry else "top-level state_dict"]
        if self.prefixes:
            parts.append("prefix " + "".join(self.prefixes) + " stripped")
        parts.append(f"layout {self.layout}" if self.layout else "own layout")
        if self.filled:
            parts.append(f"{self.filled} num_batches_tracked filled")
        return ", ".join(parts) + (f" ({self.note})" if self.note else "")


# --- reading --------------------------------------------------------------------------
def read_file(path: Path) -> object:
    """The object a checkpoint file holds: safetensors by suffix, else torch.load with
    weights_only=True (pickled code is refused, not run)."""
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise CheckpointError(f"{path}: reading .safetensors needs the safetensors "
                                  "package: pip install safetensors") from None
        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file: "
                                  f"{first_line(exc)}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        # the pickled global is named further down torch's message (colour codes stripped)
        text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", str(exc))
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if found and (found[1].startswith("torch.nn.modules") or _pickles_module(path)):
            raise CheckpointError(
                f"{path}: holds a whole pickled model ({found[1].rsplit('.', 1)[-1]}), which "
                "weights_only=True refuses because unpickling it could run code; save its "
                "weights instead: torch.save(model.state_dict(), PATH)") from None
        if found:
            raise CheckpointError(f"{path}: cannot be loaded with weights_only=True: it "
                                  f"pickles {found[1]}, which could run code") from None
        raise CheckpointError(f"{path}: cannot be loaded with weights_only=True: "
                              f"{first_line(exc)}") from None


def _pickles_module(path: Path) -> bool:
    """Whether a torch.save archive holds a whole nn.Module, read from its pickle's bytes
    without unpickling (a module's state is its ``_modules`` and ``_parameters`` dicts)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("/data.pkl")), None)
            data = archive.read(name) if name else b""
    except (OSError, zipfile.BadZipFile):
        return False
    return b"_modules" in data and b"_parameters" in data


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def select_entry(obj: object, path: Path, ema: bool | None = None
                 ) -> tuple[StateDict, str | None, str]:
    """The state_dict inside a checkpoint object, the entry it came from and a note.

    ``ema`` True takes the EMA weights (an error if there are none), False the raw ones;
    None takes the raw weights when both are present (and says so in the note) and the
    EMA weights when they are all the file has."""
    if _is_state_dict(obj):
        if ema:
            raise CheckpointError(f"{path}: --ema asks for EMA weights, but the file is a "
                                  "plain state_dict")
        return dict(obj), None, ""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: not a state_dict (a {type(obj).__name__})")
    raw = next((k for k in RAW_ENTRIES if _is_state_dict(obj.get(k))), None)
    averaged = next((k for k in EMA_ENTRIES if _is_state_dict(obj.get(k))), None)
    if ema and averaged is None:
        raise CheckpointError(f"{path}: --ema asks for EMA weights, but the file has none "
                              f"({' or '.join(EMA_ENTRIES)})")
    if ema is False and raw is None:
        raise CheckpointError(f"{path}: raw weights asked for, but the file has only "
                              f"'{averaged}'" if averaged else f"{path}: no weights found")
    key = averaged if ema or (ema is None and raw is None) else raw
    if key is None:
        entries = ", ".join(map(repr, RAW_ENTRIES + EMA_ENTRIES))
        raise CheckpointError(f"{path}: not a state_dict, nor a dict with one under {entries}")
    note = (f"'{averaged}' also present; --ema uses it"
            if ema is None and key == raw and averaged else "")
    return dict(obj[key]), key, note


def strip_prefixes(state: StateDict, own: Mapping[str, torch.Tensor]
                   ) -> tuple[StateDict, tuple[str, ...]]:
    """Remove wrapper prefixes (PREFIXES) that every key carries and no key of the
    module does, repeatedly (``module._orig_mod.``)."""
    stripped: list[str] = []
    while True:
        prefix = next((p for p in PREFIXES if all(k.startswith(p) for k in state)
                       and not any(k.startswith(p) for k in own)), None)
        if prefix is None:
            return state, tuple(stripped)
        state = {k[len(prefix):]: v for k, v in state.items()}
        stripped.append(prefix)


# --- public layouts of the same functions -------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """A public key layout: ``convert`` renames (and reshapes) a state_dict into ours,
    or returns None when the checkpoint is not in this layout."""

    name: str
    convert: Callable[[StateDict], "StateDict | None"]


_BLOCK = re.compile(r"^features\.(\d+)\.conv\.(\d+)\.(.+)$")


def _map_blocks(state: StateDict, plans: Mapping[frozenset, Mapping[int, str]],
                rename: Callable[[str], str] = lambda k: k) -> dict[str, str] | None:
    """Key renames for MobileNetV2 blocks ``features.i.conv.j.*``: each block's set of
    ``j`` picks a plan (``j`` -> our index path); None when a block matches no plan."""
    blocks: dict[int, set[int]] = {}
    for key in state:
        m = _BLOCK.match(key)
        if m:
            blocks.setdefault(int(m[1]), set()).add(int(m[2]))
    if not blocks:
        return None
    renames = {}
    for key in state:
        m = _BLOCK.match(key)
        if not m:
            continue
        plan = plans.get(frozenset(blocks[int(m[1])]))
        if plan is None:
            return None
        renames[key] = f"features.{m[1]}.conv.{plan[int(m[2])]}.{rename(m[3])}"
    return renames


def _renamed(state: StateDict, renames: Mapping[str, str]) -> StateDict:
    return {renames.get(k, k): v for k, v in state.items()}


def _houqb_mbv2_ca(state: StateDict) -> StateDict | None:
    """github:houqb/CoordAttention ``mbv2_ca.py``: flat Sequentials inside each block
    (dw/pw conv, BN, ReLU6, CoordAtt, conv, BN by index), the CA gates' convs as
    ``conv2`` (H) / ``conv3`` (W), and ``classifier = Sequential(Dropout, Linear)``."""
    plans = {
        frozenset({0, 1, 3, 4}): {0: "0.0", 1: "0.1", 3: "1", 4: "2"},  # t = 1
        frozenset({0, 1, 3, 4, 6, 7, 8}): {0: "0.0", 1: "0.1", 3: "1.0", 4: "1.1", 6: "2",
                                           7: "3", 8: "4"},
    }
    gate = {"conv2.": "conv_h.", "conv3.": "conv_w."}
    renames = _map_blocks(state, plans, lambda rest: next(
        (new + rest[len(old):] for old, new in gate.items() if rest.startswith(old)), rest))
    if renames is None or not any(k.startswith("classifier.1.") for k in state):
        return None
    state = _renamed(state, renames)
    return {k.replace("classifier.1.", "classifier.", 1): v for k, v in state.items()}


def _torchvision_mbv2(state: StateDict) -> StateDict | None:
    """torchvision ``mobilenet_v2``: no attention slot inside the blocks (our empty one
    sits at ``conv.2``), the last 1x1 conv as ``features.18``, ``classifier.1``."""
    plans = {
        frozenset({0, 1, 2}): {0: "0", 1: "1", 2: "2"},  # t = 1
        frozenset({0, 1, 2, 3}): {0: "0", 1: "1", 2: "3", 3: "4"},
    }
    renames = _map_blocks(state, plans)
    heads = {int(m[1]) for k in state if (m := re.match(r"^features\.(\d+)\.[01]\.", k))}
    if renames is None or not heads or not any(k.startswith("classifier.1.") for k in state):
        return None
    last = f"features.{max(heads)}."
    state = _renamed(state, renames)
    out = {}
    for k, v in state.items():
        if k.startswith(last):
            k = "conv." + k[len(last):]
        out[k.replace("classifier.1.", "classifier.", 1)] = v
    return out


def _conv_se(state: StateDict, pattern: str, prefix: Callable[[re.Match], str]
             ) -> StateDict | None:
    """SE layers written as 1x1 convs ``fc1``/``fc2`` (``pattern`` groups: the path,
    1 or 2, weight or bias) onto our Linear ``fc.0``/``fc.2`` under ``prefix(match)``:
    the same weights, reshaped."""
    out, hit = {}, False
    for k, v in state.items():
        m = re.match(pattern, k)
        if m:
            hit = True
            k = f"{prefix(m)}fc.{0 if m[2] == '1' else 2}.{m[3]}"
            v = v.flatten(1) if m[3] == "weight" and v.dim() == 4 else v
        out[k] = v
    return out if hit else None


def _timm_se(state: StateDict) -> StateDict | None:
    """timm ``SEModule`` (``seresnet*``): ``se.fc1`` / ``se.fc2`` where ours are
    ``attn.fc.0`` / ``attn.fc.2``."""
    return _conv_se(state, r"^(.*)\bse\.fc([12])\.(weight|bias)$", lambda m: f"{m[1]}attn.")


def _torchvision_se(state: StateDict) -> StateDict | None:
    """torchvision ``SqueezeExcitation`` inside MBConv / MobileNetV3 blocks
    (``efficientnet_b0``, ``mobilenet_v3_*``): ``block.N.fc1`` / ``fc2`` where ours are
    ``block.N.fc.0`` / ``fc.2``."""
    return _conv_se(state, r"^(.*\.block\.\d+\.)fc([12])\.(weight|bias)$", lambda m: m[1])


def _timm_eca(state: StateDict) -> StateDict | None:
    """timm ``EcaModule`` (``ecaresnet*``): the 1-D conv as ``se.conv``, ours ``attn.conv``."""
    out, hit = {}, False
    for k, v in state.items():
        m = re.match(r"^(.*)\bse\.conv\.weight$", k)
        if m:
            hit, k = True, f"{m[1]}attn.conv.weight"
        out[k] = v
    return out if hit else None


LAYOUTS = (
    Layout("houqb/CoordAttention mbv2_ca.py", _houqb_mbv2_ca),
    Layout("torchvision mobilenet_v2", _torchvision_mbv2),
    Layout("timm SEModule (se.fc1/se.fc2)", _timm_se),
    Layout("torchvision SqueezeExcitation (block.N.fc1/fc2)", _torchvision_se),
    Layout("timm EcaModule (se.conv)", _timm_eca),
)


# --- matching ---------------------------------------------------------------------------
@dataclass
class _Match:
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    filled: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.conflicts)


def _match(state: StateDict, own: Mapping[str, torch.Tensor]) -> _Match:
    m = _Match()
    for k, v in own.items():
        if k not in state:
            # old files predate BatchNorm's counter; torch's own strict load accepts them
            (m.filled if k.endswith("num_batches_tracked") else m.missing).append(k)
        elif state[k].shape != v.shape:
            m.conflicts.append(f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}")
    m.unexpected = [k for k in state if k not in own]
    return m


def _preview(keys: list[str], n: int = 3) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_checkpoint(model: nn.Module, path: str | Path, ema: bool | None = None
                    ) -> LoadedCheckpoint:
    """Load ``path`` into ``model`` (which the pipeline owns) strictly: the module's own
    layout, else the one public layout (LAYOUTS) that maps onto its keys and shapes
    exactly. CheckpointError names what does not match."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    state, entry, note = select_entry(read_file(path), path, ema)
    own = model.state_dict()
    state, prefixes = strip_prefixes(state, own)
    layout, match = None, _match(state, own)
    if not match.ok:
        for candidate in LAYOUTS:
            converted = candidate.convert(state)
            if converted is not None and (m := _match(converted, own)).ok:
                layout, state, match = candidate.name, converted, m
                break
    if not match.ok:
        parts = []
        if match.missing:
            parts.append(f"missing {len(match.missing)} keys: {_preview(match.missing)}")
        if match.unexpected:
            parts.append(f"unexpected {len(match.unexpected)} keys: {_preview(match.unexpected)}")
        if match.conflicts:
            parts.append(f"{len(match.conflicts)} shape conflicts: {_preview(match.conflicts, 2)}")
        raise CheckpointError(f"{path} does not match {type(model).__name__} (nor a known "
                              "public layout of it): " + "; ".join(parts))
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} tensor(s) hold NaN or Inf: {_preview(bad)}")
    state.update({k: own[k] for k in match.filled})
    model.load_state_dict(state)
    return LoadedCheckpoint(str(path.resolve()), file_sha256(path), entry, prefixes, layout,
                            len(match.filled), note)
