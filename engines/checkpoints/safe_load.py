"""Reading foreign checkpoint files (safetensors, torch, Lightning, TorchScript) without ever
running code they carry: a Lightning checkpoint's pickled classes become inert stand-ins."""

from __future__ import annotations

import logging
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from engines.checkpoints.errors import CheckpointError

log = logging.getLogger(__name__)


class _Opaque:
    """Stands in for any non-tensor object of a foreign pickle; it runs no code of its own."""

    origin = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Opaque:
        return object.__new__(cls)

    def __call__(self, *args: Any, **kwargs: Any) -> _Opaque:
        return _Opaque(*args)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.items: dict[Any, Any] = {}
        self.values: list[Any] = []

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.values.append(value)

    def extend(self, values: Any) -> None:
        self.values.extend(values)


_SAFE_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch", "Size"),
    ("torch", "device"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
}


class _TensorOnlyUnpickler(pickle.Unpickler):
    """Builds tensors and plain containers; every other class becomes an inert ``_Opaque``."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        return type(name, (_Opaque,), {"__module__": f"opaque.{module}",
                                       "origin": f"{module}.{name}"})


_tensor_only_pickle = SimpleNamespace(
    __name__="dfstream_tensor_only_pickle",
    Unpickler=_TensorOnlyUnpickler,
    load=lambda f, **kw: _TensorOnlyUnpickler(f, **kw).load(),
)


def _torch_load(path: Path) -> Any:
    """torch.load that never runs a checkpoint's code: torch's weights-only loader first, then
    one that turns foreign classes (a Lightning checkpoint's config enums, callbacks) inert."""
    mmap = zipfile.is_zipfile(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        log.info("%s holds non-tensor objects; reading it with inert stand-ins for them", path)
    return torch.load(
        path, map_location="cpu", weights_only=False, mmap=mmap,
        pickle_module=_tensor_only_pickle,
    )


def plain(value: Any) -> Any:
    """An unpickled value as plain JSON-able data (inert stand-ins become their content)."""
    if isinstance(value, _Opaque):
        if value.items:
            return {str(k): plain(v) for k, v in value.items.items()}
        if value.values:
            return [plain(v) for v in value.values]
        if len(value.args) == 1:
            return plain(value.args[0])  # an Enum member pickled by value
        if value.origin == "builtins.getattr" and len(value.args) == 2:
            return plain(value.args[1])  # an attribute (an Enum member pickled by name)
        if hasattr(value, "state"):
            return plain(value.state)
        return None
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


@dataclass
class LoadedCheckpoint:
    state: dict[str, torch.Tensor]
    extra: dict[str, Any]
    """Non-tensor content (a Lightning checkpoint's hyper-parameters, safetensors metadata)."""
    container: str


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())


def read_checkpoint(path: Path) -> LoadedCheckpoint:
    """Tensors (and non-tensor extras) of a safetensors, torch, Lightning or TorchScript file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        if path.suffix == ".safetensors":
            with safe_open(path, framework="pt") as handle:
                metadata = handle.metadata() or {}
            return LoadedCheckpoint(load_file(path), dict(metadata), "safetensors")
        if _is_torchscript(path):
            # OpenAI's own CLIP files are TorchScript archives; loading one runs no Python.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # "jit is deprecated"
                module = torch.jit.load(str(path), map_location="cpu")
            return LoadedCheckpoint(dict(module.state_dict()), {}, "torchscript")
        obj = _torch_load(path)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        extra = {k: plain(v) for k, v in obj.items() if k in ("hyper_parameters", "epoch",
                                                            "global_step",
                                                            "pytorch-lightning_version")}
        return LoadedCheckpoint(dict(obj["state_dict"]), extra, "lightning")
    if isinstance(obj, Mapping) and any(isinstance(v, torch.Tensor) for v in obj.values()):
        return LoadedCheckpoint(dict(obj), {}, "state_dict")
    raise CheckpointError(f"{path} holds no state dict (found {type(obj).__name__})")
