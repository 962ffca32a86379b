"""Detector bundles, base towers, and importers of the published LN-CLIP checkpoints.

A bundle holds what LN-tuning changes and nothing else: the LayerNorm values and the head
(104,450 values, 0.4 MB for ViT-L/14), the calibration parameters and JSON metadata, in one
safetensors file. It names its frozen base tower by store id and by the sha256 of the base's
tensors, so it only ever loads over exactly the weights it was tuned from.

Importers read the published checkpoints (GenD's HF safetensors, the LN-CLIP paper's Lightning
checkpoint, OpenAI's weights in open_clip or HF layout), map HF names to open_clip's, and check
that the frozen part equals the named base before they keep only the delta; a checkpoint whose
frozen weights differ is refused unless the caller asks to keep the whole tower.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import pickle
import re
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from engines import store
from engines.clip_detector import (
    ARCHS,
    CLIP_MEAN,
    CLIP_STD,
    FAKE_CLASS,
    LNCLIPDetector,
    arch_spec,
)

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "dfstream-detector-bundle"
BASE_FORMAT = "dfstream-clip-base"
FORMAT_VERSION = "1"
DEFAULT_BASES = {"ViT-L-14": "clip-vit-l-14-openai", "ViT-B-16": "clip-vit-b-16-openai"}
CALIBRATION_PARAMS = {"none": 0, "temperature": 1, "platt": 2}
"""Calibration methods a bundle may carry and how many parameters each has."""

DownloadProgress = Callable[[str, int, int | None], None]
"""(label, bytes done, bytes total or None)."""


class CheckpointError(ValueError):
    """A checkpoint or bundle cannot be read, imported or loaded; the message says why."""


# --- tensors and their identity ----------------------------------------------------------------


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 of the tensors as float32, by sorted name: the same weights in any file format
    (HF, open_clip, ours; fp16 or fp32 on disk) give the same digest."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        array = tensors[name].detach().to("cpu", torch.float32).contiguous().numpy()
        digest.update(f"{name}:{list(array.shape)}:<f4\n".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _as_stored(tensor: torch.Tensor) -> torch.Tensor:
    """float32, contiguous, owning its storage (safetensors refuses views into shared memory)."""
    out = tensor.detach().to("cpu", torch.float32).contiguous()
    if out.untyped_storage().nbytes() != out.numel() * out.element_size():
        out = out.clone()
    return out


@cache
def _detector_keys(
    arch: str,
) -> tuple[tuple[str, ...], tuple[str, ...], dict[str, tuple[int, ...]]]:
    """(every state key, the tuned keys, shapes) of a detector, from a meta-device build."""
    with torch.device("meta"):
        model = LNCLIPDetector(arch)
    state = model.state_dict()
    shapes = {name: tuple(t.shape) for name, t in state.items()}
    return tuple(state), tuple(model.trainable_names()), shapes


def tower_keys(arch: str) -> list[str]:
    """State keys of the vision tower (``visual.*``) of ``arch``."""
    return [k for k in _detector_keys(arch)[0] if k.startswith("visual.")]


def tuned_keys(arch: str) -> list[str]:
    return list(_detector_keys(arch)[1])


def _check_shapes(arch: str, tensors: Mapping[str, torch.Tensor], what: str) -> None:
    shapes = _detector_keys(arch)[2]
    wrong = [
        f"{name} {tuple(t.shape)} != {shapes[name]}"
        for name, t in tensors.items()
        if name in shapes and tuple(t.shape) != shapes[name]
    ]
    if wrong:
        raise CheckpointError(f"{what}: shapes do not fit {arch}: " + "; ".join(wrong[:5]))


# --- HF and open_clip layouts -------------------------------------------------------------------

_HF_TOP = {
    "embeddings.class_embedding": "class_embedding",
    "embeddings.patch_embedding.weight": "conv1.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "pre_layrnorm.weight": "ln_pre.weight",
    "pre_layrnorm.bias": "ln_pre.bias",
    "post_layernorm.weight": "ln_post.weight",
    "post_layernorm.bias": "ln_post.bias",
}
_HF_BLOCK = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "self_attn.out_proj": "attn.out_proj",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_HF_IGNORED = {"embeddings.position_ids"}
_HF_ROOTS = ("embeddings.", "pre_layrnorm.", "encoder.", "post_layernorm.")
_HF_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")
_HF_QKV = re.compile(r"^self_attn\.([qkv])_proj\.(weight|bias)$")


def hf_tower_to_open_clip(hf: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF ``CLIPVisionModel`` tower keys (without ``vision_model.``) -> our ``visual.*`` keys.

    q, k and v projections are concatenated in that order into ``in_proj_weight/bias``.
    """
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    unknown = []
    for key, tensor in hf.items():
        if key in _HF_IGNORED:
            continue
        if key in _HF_TOP:
            out[f"visual.{_HF_TOP[key]}"] = tensor
            continue
        layer = _HF_LAYER.match(key)
        if layer is None:
            unknown.append(key)
            continue
        index, rest = layer.groups()
        projection = _HF_QKV.match(rest)
        if projection is not None:
            qkv.setdefault((index, projection[2]), {})[projection[1]] = tensor
            continue
        for hf_name, oc_name in _HF_BLOCK.items():
            if rest.startswith(hf_name + "."):
                suffix = rest[len(hf_name):]
                out[f"visual.transformer.resblocks.{index}.{oc_name}{suffix}"] = tensor
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(
            f"{len(unknown)} keys are not part of a CLIP vision tower, e.g. {unknown[:5]}"
        )
    for (index, kind), parts in sorted(qkv.items()):
        if set(parts) != {"q", "k", "v"}:
            raise CheckpointError(
                f"layer {index}: {kind} of the q/k/v projections incomplete ({sorted(parts)})"
            )
        out[f"visual.transformer.resblocks.{index}.attn.in_proj_{kind}"] = torch.cat(
            [parts["q"], parts["k"], parts["v"]], dim=0
        )
    return out


@dataclass
class ForeignCheckpoint:
    """The parts of a foreign checkpoint we use, already in our names."""

    tower: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor]
    layout: str
    ignored: list[str] = field(default_factory=list)


_HEAD_KEY = re.compile(r"^(?:model\.linear|head)\.(weight|bias)$")
_PEFT_TUNED = re.compile(r"\.ln_tuning_layers\.([^.]+)\.")
_PEFT_BASE = ".base_layer."


def split_checkpoint(state: Mapping[str, torch.Tensor]) -> ForeignCheckpoint:
    """Find the vision tower and the head in a state dict of any of the published layouts.

    Accepts HF names with or without a ``vision_model.`` prefix (under any outer prefix, e.g.
    Lightning's ``feature_extractor.``), PEFT LN-tuning wrappers (the tuned copies in
    ``ln_tuning_layers.<adapter>`` win over ``base_layer``), and open_clip's ``visual.*``.
    The head is ``model.linear.*`` (the authors' ``LinearProbe``) or our ``head.*``.
    """
    hf: dict[str, torch.Tensor] = {}
    open_clip_tower: dict[str, torch.Tensor] = {}
    head: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    adapters: set[str] = set()
    peft = False
    for key, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            ignored.append(key)
            continue
        name = key.removeprefix("module.")
        if _PEFT_BASE in name:
            peft = True
            ignored.append(key)  # the untouched original LayerNorm; the tuned copy is used
            continue
        tuned = _PEFT_TUNED.search(name)
        if tuned is not None:
            peft = True
            adapters.add(tuned[1])
            name = name[: tuned.start()] + "." + name[tuned.end():]
        if _HEAD_KEY.match(name):
            head[f"head.{_HEAD_KEY.match(name)[1]}"] = tensor  # type: ignore[index]
        elif "vision_model." in name:
            hf[name.rsplit("vision_model.", 1)[1]] = tensor
        elif name.startswith(_HF_ROOTS):
            hf[name] = tensor
        elif name.startswith("visual.") and name != "visual.proj":
            open_clip_tower[name] = tensor
        else:
            ignored.append(key)  # text tower, CLIP's projections, logit scale, metrics state
    if len(adapters) > 1:
        raise CheckpointError(f"several LN-tuning adapters in one checkpoint: {sorted(adapters)}")
    if hf and open_clip_tower:
        raise CheckpointError("the checkpoint mixes HF and open_clip tower layouts")
    if hf:
        return ForeignCheckpoint(
            hf_tower_to_open_clip(hf), head, "hf+peft-ln-tuning" if peft else "hf", ignored
        )
    if open_clip_tower:
        return ForeignCheckpoint(open_clip_tower, head, "open_clip", ignored)
    raise CheckpointError(
        "no CLIP vision tower found (looked for HF `vision_model.*` and open_clip `visual.*` keys)"
    )


def infer_arch(tower: Mapping[str, torch.Tensor]) -> str:
    """The architecture whose shapes the tower has."""
    try:
        conv = tower["visual.conv1.weight"]
        positions = tower["visual.positional_embedding"].shape[0]
    except KeyError as exc:
        raise CheckpointError(f"the tower lacks {exc.args[0]}") from None
    layers = len({k.split(".")[3] for k in tower if k.startswith("visual.transformer.resblocks.")})
    width, patch = int(conv.shape[0]), int(conv.shape[-1])
    grid = math.isqrt(positions - 1)
    for arch in ARCHS:
        spec = arch_spec(arch)
        if (spec.width, spec.layers, spec.patch_size, spec.image_size) == (
            width, layers, patch, grid * patch
        ):
            return arch
    raise CheckpointError(
        f"a tower of width {width}, {layers} layers, patch {patch}, input {grid * patch} matches "
        f"no known architecture ({', '.join(ARCHS)})"
    )


def _check_tower(arch: str, tower: Mapping[str, torch.Tensor], what: str) -> None:
    expected = set(tower_keys(arch))
    missing, extra = sorted(expected - set(tower)), sorted(set(tower) - expected)
    if missing or extra:
        raise CheckpointError(
            f"{what} is not a complete {arch} tower: missing {missing[:5]}, unexpected {extra[:5]}"
        )
    _check_shapes(arch, tower, what)


# --- reading foreign files ----------------------------------------------------------------------


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


# --- base towers --------------------------------------------------------------------------------


@dataclass(frozen=True)
class BaseRef:
    """How a bundle names its frozen base: store id and the sha256 of the base's tensors."""

    id: str
    sha256: str


@dataclass
class BaseTower:
    name: str
    arch: str
    sha256: str
    tensors: dict[str, torch.Tensor]
    source: dict[str, Any]
    path: Path | None = None

    @property
    def ref(self) -> BaseRef:
        return BaseRef(self.name, self.sha256)


def _atomic_save(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def save_base(
    tower: Mapping[str, torch.Tensor],
    name: str,
    arch: str | None = None,
    source: Mapping[str, Any] | None = None,
    directory: Path | None = None,
) -> Path:
    """Keep a complete vision tower (open_clip names, no projection) as a store base."""
    store.check_store_name(name)
    arch = arch or infer_arch(tower)
    tensors = {k: _as_stored(v) for k, v in tower.items()}
    _check_tower(arch, tensors, f"base {name}")
    metadata = {
        "format": BASE_FORMAT,
        "version": FORMAT_VERSION,
        "name": name,
        "arch": arch,
        "sha256": tensors_sha256(tensors),
        "source": json.dumps(dict(source or {}), sort_keys=True),
        "created_at": _now(),
    }
    path = (directory or store.writable_dir(store.BASES_SUBDIR)) / f"{name}.safetensors"
    _atomic_save(tensors, metadata, path)
    return path


def _metadata(path: Path, expected_format: str) -> dict[str, str]:
    try:
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from None
    if metadata.get("format") != expected_format:
        raise CheckpointError(
            f"{path} is not a {expected_format} file (format {metadata.get('format')!r})"
        )
    if metadata.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {metadata.get('version')!r}; this dfstream reads "
            f"version {FORMAT_VERSION}"
        )
    return metadata


def read_base(path: Path, verify: bool = True) -> BaseTower:
    """A stored base tower; with ``verify``, its tensors must hash to its recorded sha256."""
    metadata = _metadata(path, BASE_FORMAT)
    tensors = load_file(path)
    arch = metadata["arch"]
    if arch not in ARCHS:
        raise CheckpointError(f"{path}: unknown architecture {arch!r}")
    _check_tower(arch, tensors, str(path))
    if verify and tensors_sha256(tensors) != metadata["sha256"]:
        raise CheckpointError(
            f"{path}: its tensors no longer match its sha256; the file is corrupt, pull or "
            "import the base again"
        )
    return BaseTower(
        metadata["name"], arch, metadata["sha256"], tensors, json.loads(metadata["source"]), path
    )


def load_base(name: str, expected_sha256: str | None = None, verify: bool = True) -> BaseTower:
    """The installed base ``name``; a CheckpointError says how to get it when missing."""
    path = store.find_in_store(store.BASES_SUBDIR, name)
    if path is None:
        where = ", ".join(str(d / store.BASES_SUBDIR) for d in store.search_dirs())
        raise CheckpointError(
            f"base weights {name!r} are not installed (looked in {where}); run "
            f"`dfstream models pull {name}`, or `dfstream models import base FILE --name {name}`"
        )
    base = read_base(path, verify=verify)
    if expected_sha256 is not None and base.sha256 != expected_sha256:
        raise CheckpointError(
            f"the installed base {name!r} ({path}) has tensors sha256 {base.sha256}, but the "
            f"bundle was tuned on {expected_sha256}: different weights under the same name"
        )
    return base


def import_base(
    path: Path,
    name: str | None = None,
    arch: str | None = None,
    source: Mapping[str, Any] | None = None,
) -> Path:
    """Keep the vision tower of OpenAI CLIP weights (open_clip, OpenAI TorchScript or HF layout)."""
    loaded = read_checkpoint(path)
    found = split_checkpoint(loaded.state)
    tower_arch = infer_arch(found.tower)
    if arch is not None and arch != tower_arch:
        raise CheckpointError(f"{path} holds a {tower_arch} tower, not {arch}")
    if name is None:
        if tower_arch not in DEFAULT_BASES:
            raise CheckpointError(f"name the base of a {tower_arch} tower with --name")
        name = DEFAULT_BASES[tower_arch]
    provenance = {"file": Path(path).name, "layout": found.layout, **dict(source or {})}
    return save_base(found.tower, name, tower_arch, provenance)


# --- bundles ------------------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def preprocessing_constants(arch: str) -> dict[str, Any]:
    spec = arch_spec(arch)
    return {
        "input": f"uint8 RGB, (N, {spec.image_size}, {spec.image_size}, 3)",
        "size": spec.image_size,
        "mean": list(CLIP_MEAN),
        "std": list(CLIP_STD),
        "scale": "1/255, then (x - mean) / std, inside the model",
        "fake_class": FAKE_CLASS,
        "feature": "CLS after ln_post, no projection, L2-normalised",
    }


def check_calibration(calibration: Mapping[str, Any]) -> dict[str, Any]:
    """``{"method": "none"|"temperature"|"platt", "params": [floats]}``, validated."""
    method = calibration.get("method")
    params = calibration.get("params", [])
    if method not in CALIBRATION_PARAMS:
        raise CheckpointError(
            f"calibration method {method!r} is not one of {', '.join(CALIBRATION_PARAMS)}"
        )
    if not isinstance(params, list | tuple) or not all(
        isinstance(p, int | float) and math.isfinite(p) for p in params
    ):
        raise CheckpointError(f"calibration params must be finite numbers, got {params!r}")
    if len(params) != CALIBRATION_PARAMS[method]:
        raise CheckpointError(
            f"calibration {method!r} takes {CALIBRATION_PARAMS[method]} params, got {len(params)}"
        )
    if method == "temperature" and params[0] <= 0:
        raise CheckpointError(f"calibration temperature must be > 0, got {params[0]}")
    return {"method": method, "params": [float(p) for p in params]}


NO_CALIBRATION: dict[str, Any] = {"method": "none", "params": []}


@dataclass
class Bundle:
    """A detector: the tuned values over a named base (or, when ``base`` is None, a whole tower)."""

    arch: str
    tensors: dict[str, torch.Tensor]
    base: BaseRef | None
    calibration: dict[str, Any] = field(default_factory=lambda: dict(NO_CALIBRATION))
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    created_at: str = field(default_factory=_now)

    @property
    def full(self) -> bool:
        return self.base is None

    def check(self) -> None:
        """Raise CheckpointError unless the tensors are exactly what this kind of bundle holds."""
        if self.arch not in ARCHS:
            raise CheckpointError(f"unknown architecture {self.arch!r}")
        expected = set(_detector_keys(self.arch)[0] if self.full else tuned_keys(self.arch))
        missing = sorted(expected - set(self.tensors))
        extra = sorted(set(self.tensors) - expected)
        if missing or extra:
            kind = "full" if self.full else "LayerNorm + head"
            raise CheckpointError(
                f"not a {kind} {self.arch} bundle: missing {missing[:5]}, unexpected {extra[:5]}"
            )
        _check_shapes(self.arch, self.tensors, "bundle")
        self.calibration = check_calibration(self.calibration)


def save_bundle(bundle: Bundle, path: Path) -> Path:
    bundle.check()
    tensors = {k: _as_stored(v) for k, v in bundle.tensors.items()}
    metadata = {
        "format": BUNDLE_FORMAT,
        "version": FORMAT_VERSION,
        "arch": bundle.arch,
        "base": json.dumps(
            None if bundle.base is None else {"id": bundle.base.id, "sha256": bundle.base.sha256}
        ),
        "full": json.dumps(bundle.full),
        "preprocessing": json.dumps(preprocessing_constants(bundle.arch)),
        "calibration": json.dumps(bundle.calibration),
        "training": json.dumps(bundle.training, sort_keys=True),
        "metrics": json.dumps(bundle.metrics, sort_keys=True),
        "source": json.dumps(bundle.source, sort_keys=True),
        "created_at": bundle.created_at,
        "tensors_sha256": tensors_sha256(tensors),
    }
    _atomic_save(tensors, metadata, Path(path))
    return Path(path)


def _json_field(metadata: Mapping[str, str], key: str, path: Path) -> Any:
    try:
        return json.loads(metadata[key])
    except (KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: metadata {key!r} missing or not JSON ({exc})") from None


def read_bundle(path: Path, verify: bool = True) -> Bundle:
    """A bundle file; with ``verify``, its tensors must hash to its recorded sha256."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    metadata = _metadata(path, BUNDLE_FORMAT)
    tensors = load_file(path)
    if verify and tensors_sha256(tensors) != metadata.get("tensors_sha256"):
        raise CheckpointError(f"{path}: its tensors do not match its sha256; the file is corrupt")
    base = _json_field(metadata, "base", path)
    bundle = Bundle(
        arch=metadata.get("arch", "?"),
        tensors=tensors,
        base=None if base is None else BaseRef(base["id"], base["sha256"]),
        calibration=_json_field(metadata, "calibration", path),
        training=_json_field(metadata, "training", path),
        metrics=_json_field(metadata, "metrics", path),
        source=_json_field(metadata, "source", path),
        created_at=metadata.get("created_at", ""),
    )
    try:
        bundle.check()
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return bundle


def bundle_from_model(
    model: LNCLIPDetector,
    base: BaseRef | None,
    calibration: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    source: Mapping[str, Any] | None = None,
) -> Bundle:
    """The bundle of a (trained) model: its tuned values over ``base``, or all of it if None."""
    tensors = model.tuned_state_dict() if base is not None else dict(model.state_dict())
    bundle = Bundle(
        arch=model.arch,
        tensors={k: v.detach().to("cpu", torch.float32) for k, v in tensors.items()},
        base=base,
        calibration=dict(calibration or NO_CALIBRATION),
        training=dict(training or {}),
        metrics=dict(metrics or {}),
        source=dict(source or {}),
    )
    bundle.check()
    return bundle


def detector_from_state(arch: str, state: Mapping[str, torch.Tensor]) -> LNCLIPDetector:
    """A detector holding exactly ``state``, built without a wasted random initialisation."""
    with torch.device("meta"):
        model = LNCLIPDetector(arch)
    model = model.to_empty(device="cpu")
    model.reset_pixel_constants()
    model.load_state_dict(
        {k: v.to(torch.float32) for k, v in state.items()}, strict=True, assign=True
    )
    model.freeze_backbone()
    return model.eval()


def build_detector(bundle: Bundle, base: BaseTower | None = None) -> LNCLIPDetector:
    """The detector a bundle describes; a tuned bundle loads over its verified base."""
    bundle.check()
    if bundle.full:
        return detector_from_state(bundle.arch, bundle.tensors)
    assert bundle.base is not None
    if base is None:
        base = load_base(bundle.base.id, expected_sha256=bundle.base.sha256)
    elif base.sha256 != bundle.base.sha256:
        raise CheckpointError(
            f"the bundle was tuned on base {bundle.base.id} ({bundle.base.sha256}), not on "
            f"{base.name} ({base.sha256})"
        )
    if base.arch != bundle.arch:
        raise CheckpointError(f"base {base.name} is {base.arch}, the bundle is {bundle.arch}")
    return detector_from_state(bundle.arch, {**base.tensors, **bundle.tensors})


def install_bundle(bundle: Bundle, name: str, overwrite: bool = False) -> Path:
    """Write a bundle into the store as ``name``."""
    store.check_store_name(name)
    path = store.writable_dir(store.BUNDLES_SUBDIR) / f"{name}.safetensors"
    if path.exists() and not overwrite:
        raise CheckpointError(f"a bundle named {name!r} exists ({path}); choose another name")
    return save_bundle(bundle, path)


# --- importing published detectors --------------------------------------------------------------


class BaseMismatchError(CheckpointError):
    """The frozen weights are not the named base; only a full bundle can hold the model."""


def _differences(
    tensors: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor], names: list[str]
) -> list[tuple[str, float]]:
    diffs = []
    for name in names:
        a = tensors[name].to(torch.float32)
        b = reference[name].to(torch.float32)
        if not torch.equal(a, b):
            diffs.append((name, float((a - b).abs().max())))
    return diffs


def detector_bundle(
    found: ForeignCheckpoint,
    base: str | None = None,
    full_model: bool = False,
    source: Mapping[str, Any] | None = None,
) -> Bundle:
    """A bundle of an imported detector: its LayerNorms and head over the base it names.

    The frozen weights must equal the base exactly; otherwise BaseMismatchError, unless
    ``full_model`` asks to keep the whole tower (1.2 GB for ViT-L/14) instead.
    """
    arch = infer_arch(found.tower)
    _check_tower(arch, found.tower, "the checkpoint's tower")
    if set(found.head) != {"head.weight", "head.bias"}:
        raise CheckpointError(
            "the checkpoint has no linear head (`model.linear.weight/bias`); found "
            f"{sorted(found.head) or 'none'}"
        )
    _check_shapes(arch, found.head, "the checkpoint's head")
    state = {**found.tower, **found.head}
    provenance: dict[str, Any] = {"layout": found.layout, **dict(source or {})}
    base_name = base or DEFAULT_BASES.get(arch)
    tuned = tuned_keys(arch)
    frozen = [k for k in tower_keys(arch) if k not in set(tuned)]
    base_tower: BaseTower | None = None
    if base_name is not None:
        try:
            base_tower = load_base(base_name)
        except CheckpointError:
            if not full_model:
                raise
    if base_tower is not None:
        if base_tower.arch != arch:
            raise CheckpointError(f"base {base_name} is {base_tower.arch}; the tower is {arch}")
        frozen_diffs = _differences(state, base_tower.tensors, frozen)
        ln_names = [k for k in tuned if k.startswith("visual.")]
        changed_ln = {k.rsplit(".", 1)[0] for k, _ in _differences(state, base_tower.tensors,
                                                                     ln_names)}
        provenance["tuned_layernorms"] = f"{len(changed_ln)}/{arch_spec(arch).layernorms}"
        if len(changed_ln) < arch_spec(arch).layernorms:
            untouched = sorted({k.rsplit(".", 1)[0] for k in ln_names} - changed_ln)
            log.warning("%d LayerNorms equal the base (not tuned): %s", len(untouched),
                        ", ".join(untouched[:5]))
        if frozen_diffs and not full_model:
            worst = max(frozen_diffs, key=lambda d: d[1])
            raise BaseMismatchError(
                f"{len(frozen_diffs)} of {len(frozen)} frozen tensors differ from base "
                f"{base_name} (e.g. {frozen_diffs[0][0]}; largest |diff| {worst[1]:.3g} in "
                f"{worst[0]}): this is not an LN-tuned {base_name}. Refusing to keep only the "
                "LayerNorms; import with --full-model to keep the whole tower instead"
            )
        if not frozen_diffs and not full_model:
            return Bundle(
                arch=arch,
                tensors={k: state[k] for k in tuned},
                base=base_tower.ref,
                source=provenance,
            )
        provenance["frozen_equals_base"] = not frozen_diffs
    return Bundle(arch=arch, tensors=state, base=None, source=provenance)


_HEADS_ON_NORMALISED = {"LinearNorm"}


def import_gend(
    path: Path, base: str | None = None, full_model: bool = False,
    source: Mapping[str, Any] | None = None, config: Mapping[str, Any] | None = None,
) -> Bundle:
    """GenD's HF safetensors (``feature_extractor.vision_model.*``, ``model.linear.*``).

    ``config`` is the model's published config.json when known; its head must be LinearNorm.
    """
    if config is not None and config.get("head") not in _HEADS_ON_NORMALISED:
        raise CheckpointError(
            f"this GenD model's head is {config.get('head')!r}; only a head on L2-normalised "
            "features (LinearNorm) is the LN-CLIP detector dfstream runs"
        )
    loaded = read_checkpoint(Path(path))
    found = split_checkpoint(loaded.state)
    provenance = {"format": "gend", "file": Path(path).name, **dict(source or {})}
    if config is not None:
        provenance["config"] = {k: config.get(k) for k in ("backbone", "head") if k in config}
    return detector_bundle(found, base=base, full_model=full_model, source=provenance)


def import_lightning(
    path: Path, base: str | None = None, full_model: bool = False,
    source: Mapping[str, Any] | None = None,
) -> Bundle:
    """The LN-CLIP paper's Lightning checkpoint: ``state_dict`` with the authors' prefixes
    (``feature_extractor.[base_model.model.]vision_model.*``, ``model.linear.*``)."""
    loaded = read_checkpoint(Path(path))
    if loaded.container != "lightning":
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no `state_dict` inside)")
    hyper = loaded.extra.get("hyper_parameters") or {}
    head = hyper.get("head") if isinstance(hyper, Mapping) else None
    if head is not None and head not in _HEADS_ON_NORMALISED:
        raise CheckpointError(
            f"this checkpoint's head is {head!r} (on unnormalised features); dfstream's detector "
            "applies its head to L2-normalised features (LinearNorm)"
        )
    if head is None:
        log.warning("%s does not say which head it trained; assuming LinearNorm", path)
    found = split_checkpoint(loaded.state)
    provenance: dict[str, Any] = {
        "format": "lightning", "file": Path(path).name, "head": head or "unknown",
        **{k: loaded.extra[k] for k in ("epoch", "global_step") if k in loaded.extra},
        **dict(source or {}),
    }
    if isinstance(hyper, Mapping):
        provenance["hyper_parameters"] = {
            k: hyper[k] for k in ("backbone", "run_name", "loss", "lr", "batch_size") if k in hyper
        }
    return detector_bundle(found, base=base, full_model=full_model, source=provenance)


def import_bundle_file(path: Path) -> Bundle:
    """One of our own bundle files (e.g. trained elsewhere), fully verified."""
    bundle = read_bundle(Path(path))
    if bundle.base is not None:
        load_base(bundle.base.id, expected_sha256=bundle.base.sha256, verify=False)
    return bundle


# --- store summaries, verification, pull --------------------------------------------------------


@dataclass(frozen=True)
class BundleSummary:
    name: str
    path: Path
    arch: str
    full: bool
    base: BaseRef | None
    created_at: str
    calibration: dict[str, Any]
    metrics: dict[str, Any]
    source: dict[str, Any]
    size: int


def bundle_summary(path: Path) -> BundleSummary:
    """What a bundle is, from its metadata alone (no tensors read)."""
    metadata = _metadata(path, BUNDLE_FORMAT)
    base = _json_field(metadata, "base", path)
    return BundleSummary(
        name=path.stem,
        path=path,
        arch=metadata.get("arch", "?"),
        full=bool(_json_field(metadata, "full", path)),
        base=None if base is None else BaseRef(base["id"], base["sha256"]),
        created_at=metadata.get("created_at", ""),
        calibration=_json_field(metadata, "calibration", path),
        metrics=_json_field(metadata, "metrics", path),
        source=_json_field(metadata, "source", path),
        size=path.stat().st_size,
    )


def installed_bundles(arch: str | None = None) -> list[BundleSummary]:
    """Readable bundles in the store (of ``arch`` if given); unreadable ones are logged."""
    out = []
    for path in store.store_files(store.BUNDLES_SUBDIR):
        try:
            summary = bundle_summary(path)
        except CheckpointError as exc:
            log.warning("skipping %s: %s", path, exc)
            continue
        if arch is None or summary.arch == arch:
            out.append(summary)
    return out


@dataclass(frozen=True)
class BaseSummary:
    name: str
    path: Path
    arch: str
    sha256: str
    source: dict[str, Any]
    size: int


def installed_bases() -> list[BaseSummary]:
    out = []
    for path in store.store_files(store.BASES_SUBDIR):
        try:
            metadata = _metadata(path, BASE_FORMAT)
        except CheckpointError as exc:
            log.warning("skipping %s: %s", path, exc)
            continue
        out.append(BaseSummary(
            path.stem, path, metadata.get("arch", "?"), metadata.get("sha256", ""),
            json.loads(metadata.get("source", "{}")), path.stat().st_size,
        ))
    return out


def verify_bundle(path: Path) -> str:
    """Check a bundle's own sha256 and that its base is installed with the named sha256."""
    bundle = read_bundle(path, verify=True)
    if bundle.base is None:
        return "sha256 ok (full model)"
    load_base(bundle.base.id, expected_sha256=bundle.base.sha256, verify=False)
    return f"sha256 ok, base {bundle.base.id} present"


def verify_base(path: Path) -> str:
    base = read_base(path, verify=True)
    return f"sha256 ok ({base.sha256[:12]})"


def _import_command(model: store.HubModel) -> str:
    kind = "base" if model.kind == "base" else model.fmt
    return f"dfstream models import {kind} FILE --name {model.name}"


def pull(name: str, progress: DownloadProgress | None = None) -> Path:
    """Fetch a hub model and keep it: a base tower, or a detector bundle (its base first).

    Already installed models are returned as they are. Offline, a StoreError says so and gives
    the manual steps.
    """
    model = store.hub_model(name)
    subdir = store.BASES_SUBDIR if model.kind == "base" else store.BUNDLES_SUBDIR
    existing = store.find_in_store(subdir, name)
    if existing is not None:
        return existing
    if model.kind == "detector" and model.base is not None:
        try:
            pull(model.base, progress)
        except store.StoreError as exc:
            steps = store.hub_manual_steps(model.weights, _import_command(model))
            raise store.StoreError(f"{exc}\nThen, for {name}: {steps}") from None

    def reporter(label: str) -> store.ProgressCallback | None:
        if progress is None:
            return None
        return lambda done, total: progress(label, done, total)

    downloads = Path(tempfile.mkdtemp(prefix="pull-", dir=store.writable_dir("downloads")))
    try:
        config: dict[str, Any] | None = None
        if model.config is not None:
            config_path, _ = store.hub_download(
                model.config, downloads, _import_command(model), reporter(model.config.filename)
            )
            config = json.loads(config_path.read_text())
        weights, provenance = store.hub_download(
            model.weights, downloads, _import_command(model), reporter(f"{name} weights")
        )
        if model.kind == "base":
            return import_base(weights, name=name, arch=model.arch, source=provenance)
        if model.fmt == "gend":
            bundle = import_gend(weights, base=model.base, source=provenance, config=config)
        elif model.fmt == "lightning":
            bundle = import_lightning(weights, base=model.base, source=provenance)
        else:
            raise CheckpointError(f"no importer for format {model.fmt!r}")
        return install_bundle(bundle, name)
    finally:
        shutil.rmtree(downloads, ignore_errors=True)
