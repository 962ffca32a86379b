"""Names of the published layouts mapped to ours: the HF -> open_clip key map, finding the vision
tower and head in any published state dict, and the keys and shapes each architecture has."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache

import torch

from engines.checkpoints.errors import CheckpointError
from engines.clip_detector import ARCHS, LNCLIPDetector, arch_spec


@cache
def detector_keys(
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
    return [k for k in detector_keys(arch)[0] if k.startswith("visual.")]


def tuned_keys(arch: str) -> list[str]:
    return list(detector_keys(arch)[1])


def check_shapes(arch: str, tensors: Mapping[str, torch.Tensor], what: str) -> None:
    shapes = detector_keys(arch)[2]
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


def check_tower(arch: str, tower: Mapping[str, torch.Tensor], what: str) -> None:
    expected = set(tower_keys(arch))
    missing, extra = sorted(expected - set(tower)), sorted(set(tower) - expected)
    if missing or extra:
        raise CheckpointError(
            f"{what} is not a complete {arch} tower: missing {missing[:5]}, unexpected {extra[:5]}"
        )
    check_shapes(arch, tower, what)
