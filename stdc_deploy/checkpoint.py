"""Reading STDC-Seg checkpoints: safe loading, one pure remap, then a strict load.

Accepted: official bare state_dicts (``model_maxmIOU50.pth`` ...), the same wrapped in
``state_dict`` / ``model`` / ``net`` and/or with ``module.`` prefixes, MMSegmentation
STDC checkpoints, and the mgchen fork's ``cut`` and ``del`` variants (detected from the
tensor shapes). Everything is converted to the official key names, which are also this
package's module names; what the model deliberately omits (backbone aliases, the ImageNet
head, training-only heads, the unused 1/32 stage a ``del`` checkpoint carries) is dropped
by name and reported.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import CheckpointError
from .models import AUX_HEADS, ARCHS, VARIANTS, STDCSeg, create_model, get_arch

log = logging.getLogger(__name__)

WRAPPER_KEYS = ("state_dict", "model", "net")
_BACKBONE_ALIASES = re.compile(r"^cp\.backbone\.x(2|4|8|16|32)\.")
_IMAGENET_HEAD = re.compile(r"^cp\.backbone\.(conv_last|fc|bn|linear)\.")
FEATURE_BLOCK = re.compile(r"^cp\.backbone\.features\.(\d+)\.")
_AUX_HEAD = re.compile(rf"^({'|'.join(AUX_HEADS)})\.")
CLASSIFIER = "conv_out.conv_out"
CONTEXT_AVG = "cp.conv_avg.conv.weight"  # its input channels tell the deepest stage the network runs
HEAD_WIDTH_KEYS = ("conv_out.conv.conv.weight", "ffm.convblk.conv.weight")  # out channels: head width


@dataclass(frozen=True)
class Remapped:
    """The result of :func:`remap_state_dict`: official-named tensors plus what was dropped."""

    state_dict: dict[str, torch.Tensor]
    source_format: str  # "official" or "mmseg"
    dropped: dict[str, list[str]] = field(default_factory=dict)  # reason -> original keys
    inplace_abn: tuple[str, ...] = ()  # layers whose InPlaceABN scale was converted (see remap_state_dict)
    variant: str = "plain"  # see detect_variant


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint is, as detected from its tensors."""

    path: str | None
    sha256: str | None
    source_format: str
    arch: str
    num_classes: int
    classifier_bias: bool
    has_aux_heads: bool
    dropped: dict[str, int]  # reason -> number of tensors
    inplace_abn_layers: int = 0  # official InPlaceABN layers, scale converted to |weight| + eps
    variant: str = "plain"  # "plain" (official network), or the fork's "cut" / "del"

    @property
    def model_name(self) -> str:
        """``stdc1``, or ``stdc1-cut`` for a variant: for file names and messages."""
        return self.arch if self.variant == "plain" else f"{self.arch}-{self.variant}"


def file_sha256(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- reading

def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a checkpoint file with ``weights_only=True`` and return its flat state_dict.

    Never executes code from the file: a pickle that references anything beyond plain
    tensors and containers is refused before any of it runs.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError("no such file", path)
    if path.is_dir():
        raise CheckpointError("is a directory, not a checkpoint file", path)
    if path.stat().st_size == 0:
        raise CheckpointError("empty file, not a checkpoint", path)
    try:
        with warnings.catch_warnings():  # e.g. torch's note on non-default pickle protocols
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if found := re.search(r"GLOBAL ([\w.]+)", text):
            raise CheckpointError(
                f"refused: the file would run code or build arbitrary objects ({found.group(1)}); "
                "nothing was executed: only plain tensor checkpoints are loaded (weights_only)", path) from None
        if found := re.search(r"Unsupported operand \d+", text):
            raise CheckpointError(
                f"not a PyTorch checkpoint, or one using pickle features beyond plain tensors "
                f"({found.group(0)}); nothing was executed", path) from None
        raise CheckpointError(f"not a PyTorch checkpoint ({_first_line(text)})", path) from None
    except (EOFError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"truncated or corrupt checkpoint ({_first_line(str(exc)) or 'unexpected end of file'})", path) from None
    except RuntimeError as exc:
        text = _first_line(str(exc))
        if "central directory" in text or "PytorchStreamReader" in text or "zip archive" in text:
            raise CheckpointError(f"truncated or corrupt checkpoint ({text})", path) from None
        raise CheckpointError(f"cannot read checkpoint ({text})", path) from None
    except Exception as exc:  # the unpickler fails on garbage in many ways (IndexError, KeyError, ...)
        raise CheckpointError(f"not a PyTorch checkpoint ({type(exc).__name__}: {_first_line(str(exc))})",
                              path) from None
    return unwrap_state_dict(obj, path)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def unwrap_state_dict(obj: object, path: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """Find the tensor dict inside a loaded object (``state_dict``/``model``/``net`` wrappers)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"not a state_dict: the file holds a {type(obj).__name__}", path)
    for key in WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner:
            obj = inner
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        keys = ", ".join(map(str, list(obj)[:6]))
        raise CheckpointError(f"no tensors found (top-level keys: {keys or 'none'})", path)
    others = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if others:
        raise CheckpointError(f"not a flat state_dict: non-tensor entries {_name_list(others)}", path)
    return {str(k): v for k, v in tensors.items()}


# ----------------------------------------------------------------------------- remapping

def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Remove a DataParallel/DDP prefix when every key carries it."""
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def is_mmseg(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith(("backbone.backbone.stages.", "decode_head.")) for k in state_dict)


_MMSEG_FIXED = (  # (MMSeg prefix, official prefix), first match wins
    ("backbone.arms.0.atten_conv_layer.1.conv.", "cp.arm32.conv_atten."),
    ("backbone.arms.0.atten_conv_layer.1.bn.", "cp.arm32.bn_atten."),
    ("backbone.arms.0.conv_layer.", "cp.arm32.conv."),
    ("backbone.arms.1.atten_conv_layer.1.conv.", "cp.arm16.conv_atten."),
    ("backbone.arms.1.atten_conv_layer.1.bn.", "cp.arm16.bn_atten."),
    ("backbone.arms.1.conv_layer.", "cp.arm16.conv."),
    ("backbone.convs.0.", "cp.conv_head32."),
    ("backbone.convs.1.", "cp.conv_head16."),
    ("backbone.conv_avg.", "cp.conv_avg."),
    ("backbone.ffm.conv0.", "ffm.convblk."),
    ("backbone.ffm.attention.1.conv.", "ffm.conv1."),
    ("backbone.ffm.attention.2.conv.", "ffm.conv2."),
    ("decode_head.convs.0.", "conv_out.conv."),
    ("decode_head.conv_seg.", "conv_out.conv_out."),
)
_MMSEG_STEM = re.compile(r"^backbone\.backbone\.stages\.([01])\.(.*)$")
_MMSEG_BLOCK = re.compile(r"^backbone\.backbone\.stages\.(\d+)\.(\d+)\.(.*)$")


def mmseg_to_official(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename MMSeg STDC keys to official ones. Returns (renamed, dropped auxiliary-head keys).

    Keys it does not know keep their MMSeg name, so a strict load names them.
    """
    blocks: dict[int, set[int]] = {}
    for key in state_dict:
        if m := _MMSEG_BLOCK.match(key):
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    # running index of block (S, j) in the official `features`: two stem convs first
    offsets, running = {}, 2
    for stage in sorted(blocks):
        offsets[stage] = running
        running += max(blocks[stage]) + 1

    out: dict[str, torch.Tensor] = {}
    aux: list[str] = []
    for key, value in state_dict.items():
        if key.startswith("auxiliary_head."):
            aux.append(key)
            continue
        new = None
        if m := _MMSEG_STEM.match(key):
            new = f"cp.backbone.features.{m.group(1)}.{m.group(2)}"
        elif (m := _MMSEG_BLOCK.match(key)) and int(m.group(1)) >= 2:
            n = offsets[int(m.group(1))] + int(m.group(2))
            rest = m.group(3)
            rest = re.sub(r"^layers\.", "conv_list.", rest)
            rest = re.sub(r"^downsample\.conv\.", "avd_layer.0.", rest)
            rest = re.sub(r"^downsample\.bn\.", "avd_layer.1.", rest)
            new = f"cp.backbone.features.{n}.{rest}"
        else:
            for src, dst in _MMSEG_FIXED:
                if key.startswith(src):
                    new = dst + key[len(src):]
                    break
        out[new or key] = value
    return out, aux


def remap_state_dict(state_dict: Mapping[str, torch.Tensor], *, keep_aux_heads: bool = False) -> Remapped:
    """Convert any accepted checkpoint layout to this package's (= the official) key names.

    Pure: no model, no I/O. Drops, by name, the backbone's duplicate stage aliases
    (``cp.backbone.x8...``), the ImageNet head (``conv_last``, ``fc``, ``bn``, ``linear``),
    the backbone blocks a variant never runs (``del``: the 1/32 stage) and, unless
    ``keep_aux_heads``, the training-only heads. Unknown keys are kept so that the strict
    load reports them.
    """
    sd = strip_prefix(state_dict)
    dropped: dict[str, list[str]] = {}
    source = "official"
    if is_mmseg(sd):
        source = "mmseg"
        sd, aux = mmseg_to_official(sd)
        if aux:
            dropped["MMSeg auxiliary heads (training only)"] = aux
    elif any(k.startswith("features.") for k in sd) and not any(k.startswith("cp.") for k in sd):
        raise CheckpointError(
            "this is an ImageNet STDCNet backbone checkpoint (keys 'features.N...'), not an "
            "STDC-Seg segmentation checkpoint; train or download a segmentation model")
    variant = detect_variant(sd)
    unused_from = None  # first `features` block the variant does not run
    if VARIANTS[variant].context_stride != 32:
        arch = detect_arch(sd)
        if arch not in VARIANTS[variant].archs:
            raise CheckpointError(
                f"a {variant} head (context from 1/{VARIANTS[variant].context_stride}) on an {arch} backbone: "
                f"the {variant} variant exists for {', '.join(VARIANTS[variant].archs)} only")
        unused_from = get_arch(arch, variant).num_feature_blocks
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        block = FEATURE_BLOCK.match(key)
        if _BACKBONE_ALIASES.match(key):
            reason = "backbone stage aliases (duplicates of cp.backbone.features)"
        elif unused_from is not None and block and int(block.group(1)) >= unused_from:
            reason = f"backbone 1/32 stage (not run by the {variant} variant)"
        elif _IMAGENET_HEAD.match(key):
            reason = "ImageNet classification head (unused for segmentation)"
        elif _AUX_HEAD.match(key) and not keep_aux_heads:
            reason = "training-only heads (conv_out16/32, detail heads)"
        else:
            out[key] = value
            continue
        dropped.setdefault(reason, []).append(key)
    converted = ()
    if source == "official":
        converted = inplace_abn_layers(out)
        for layer in converted:
            out[f"{layer}.weight"] = out[f"{layer}.weight"].abs() + INPLACE_ABN_EPS
    return Remapped(out, source, dropped, converted, variant)


INPLACE_ABN_EPS = 1e-5  # the official InPlaceABNSync's default eps


def inplace_abn_layers(state_dict: Mapping[str, torch.Tensor]) -> tuple[str, ...]:
    """The layers the official code ran as InPlaceABNSync: head BatchNorms (outside
    ``cp.backbone``) saved without ``num_batches_tracked``.

    InPlaceABN scales by ``|weight| + eps``, not ``weight`` (its CPU and CUDA kernels both
    compute ``gamma = abs(weight) + eps``), so :func:`remap_state_dict` stores that value and
    a plain BatchNorm computes what the official network computed, negative weights included.
    Checkpoints written with plain BatchNorm (MMSeg, the fork and its ``cut``/``del``
    variants) keep ``num_batches_tracked`` and are left as they are. The test is per layer and
    runs after the remap, so only layers the model loads count (a ``del`` checkpoint's unused
    1/32 stage and ImageNet head are gone by then, and sit under ``cp.backbone`` anyway).
    """
    layers = []
    for key in state_dict:
        if key.endswith(".running_var") and not key.startswith("cp.backbone."):
            layer = key[: -len(".running_var")]
            if f"{layer}.num_batches_tracked" not in state_dict and f"{layer}.weight" in state_dict:
                layers.append(layer)
    return tuple(sorted(layers))


# ----------------------------------------------------------------------------- detection

def detect_arch(state_dict: Mapping[str, torch.Tensor]) -> str:
    """``stdc1``/``stdc2`` from the number of ``cp.backbone.features`` blocks (all of them,
    or those a variant runs, as after :func:`remap_state_dict`)."""
    indices = {int(m.group(1)) for k in state_dict if (m := FEATURE_BLOCK.match(k))}
    if not indices:
        raise CheckpointError(
            "not an STDC-Seg checkpoint: no 'cp.backbone.features.*' (or MMSeg "
            f"'backbone.backbone.stages.*') tensors; first keys: {_name_list(list(state_dict))}")
    count = max(indices) + 1
    for cfg in ARCHS.values():
        if cfg.num_feature_blocks == count:
            return cfg.name
    for cfg in ARCHS.values():
        for variant in VARIANTS.values():
            if cfg.name in variant.archs and get_arch(cfg.name, variant.name).num_feature_blocks == count:
                return cfg.name
    known = ", ".join(f"{c.name}={c.num_feature_blocks}" for c in ARCHS.values())
    raise CheckpointError(f"not an STDC-Seg checkpoint: backbone has {count} feature blocks ({known})")


def detect_variant(state_dict: Mapping[str, torch.Tensor]) -> str:
    """``plain``, ``cut`` or ``del`` from official-named tensors (raw or remapped).

    Head width: the output channels of ``conv_out.conv.conv`` and ``ffm.convblk.conv`` (256 for
    the official network, 128 for ``cut``/``del``). Deepest stage run: the input channels of
    ``cp.conv_avg.conv`` (1024: 1/32; 512: 1/16, ``del``), or without that tensor, 1/16 when
    there is a ``cp.arm16`` but no ``cp.arm32``. Whatever is absent counts as the official
    network's, so that the strict load names it.
    """
    widths = {k: int(state_dict[k].shape[0]) for k in HEAD_WIDTH_KEYS if k in state_dict and state_dict[k].ndim == 4}
    if len(set(widths.values())) > 1:
        found = ", ".join(f"{k} {n}" for k, n in widths.items())
        raise CheckpointError(f"head tensors disagree on the head width (output channels: {found}); "
                              f"{_known_variants()}")
    width = next(iter(widths.values()), VARIANTS["plain"].head_channels)
    avg = state_dict.get(CONTEXT_AVG)
    if avg is not None and avg.ndim == 4:
        stride = 16 if int(avg.shape[1]) == 512 else 32  # other widths: the strict load names them
    else:
        stride = 16 if (any(k.startswith("cp.arm16.") for k in state_dict)
                        and not any(k.startswith("cp.arm32.") for k in state_dict)) else 32
    for variant in VARIANTS.values():
        if (variant.head_channels, variant.context_stride) == (width, stride):
            return variant.name
    raise CheckpointError(
        f"no known variant has a {width}-channel head ({', '.join(widths) or HEAD_WIDTH_KEYS[0]}) with its "
        f"context from 1/{stride} ({CONTEXT_AVG}{' absent' if avg is None else ' ' + _shape(avg)}); "
        f"{_known_variants()}")


def detect_num_classes(state_dict: Mapping[str, torch.Tensor]) -> int:
    weight = state_dict.get(f"{CLASSIFIER}.weight")
    if weight is None or weight.ndim != 4:
        raise CheckpointError(f"not an STDC-Seg checkpoint: no classifier '{CLASSIFIER}.weight'")
    return int(weight.shape[0])


def _known_variants() -> str:
    return "known: " + "; ".join(f"{v.name} = {v.head_channels}-channel head, context from 1/{v.context_stride}"
                                 for v in VARIANTS.values())


def _shape(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape))


# ----------------------------------------------------------------------------- loading

def _name_list(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" ... and {len(names) - limit} more" if len(names) > limit else "")


def load_state_dict_strict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Strict load that names every missing, unexpected and mis-shaped tensor.

    ``num_batches_tracked`` counters are the only keys allowed to be absent (InPlaceABN
    layers of the official code have none; they do not affect inference).
    """
    expected = model.state_dict()
    sd = dict(state_dict)
    for key, value in expected.items():
        if key.endswith("num_batches_tracked") and key not in sd:
            sd[key] = value
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    mismatched = [
        f"{k} (file {tuple(sd[k].shape)}, model {tuple(v.shape)})"
        for k, v in expected.items() if k in sd and sd[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_name_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_name_list(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {_name_list(mismatched)}")
    if problems:
        raise CheckpointError("does not fit the model; " + "; ".join(problems))
    model.load_state_dict(sd, strict=True)


def non_finite_tensors(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding NaN or Inf values."""
    return [k for k, v in state_dict.items()
            if (v.is_floating_point() or v.is_complex()) and not bool(torch.isfinite(v).all())]


def check_finite(state_dict: Mapping[str, torch.Tensor]) -> None:
    """Refuse weights with NaN/Inf values: they would give all-zero masks and NaN parity."""
    bad = non_finite_tensors(state_dict)
    if bad:
        raise CheckpointError(f"corrupt weights: NaN/Inf values in {len(bad)} tensor(s): {_name_list(bad, 3)}; "
                              "re-download or re-train the checkpoint")


def inspect_checkpoint(state_dict: Mapping[str, torch.Tensor], *, path: str | os.PathLike | None = None,
                       keep_aux_heads: bool = False) -> tuple[Remapped, CheckpointInfo]:
    """Remap and describe a state_dict (architecture, variant, classes, classifier bias).

    Raises :class:`CheckpointError` for non-finite weights among the tensors the model would load.
    """
    try:
        remapped = remap_state_dict(state_dict, keep_aux_heads=keep_aux_heads)
        sd = remapped.state_dict
        info = CheckpointInfo(
            path=None if path is None else os.fspath(path),
            sha256=file_sha256(path) if path is not None else None,
            source_format=remapped.source_format,
            arch=detect_arch(sd),
            num_classes=detect_num_classes(sd),
            classifier_bias=f"{CLASSIFIER}.bias" in sd,
            has_aux_heads=any(_AUX_HEAD.match(k) for k in sd) or any(
                "heads" in reason for reason in remapped.dropped),
            dropped={reason: len(keys) for reason, keys in remapped.dropped.items()},
            inplace_abn_layers=len(remapped.inplace_abn),
            variant=remapped.variant,
        )
        check_finite(sd)
    except CheckpointError as exc:
        if path is not None and exc.path is None:
            raise CheckpointError(str(exc), path) from None
        raise
    return remapped, info


def load_model(path: str | os.PathLike, *, arch: str | None = None, num_classes: int | None = None,
               variant: str | None = None, aux_heads: bool = False) -> tuple[STDCSeg, CheckpointInfo]:
    """Load a checkpoint into an eval-mode :class:`STDCSeg` on the CPU.

    ``arch``, ``variant`` and ``num_classes`` are optional, checked against what the file's
    tensors say (they never change what is built).
    """
    remapped, info = inspect_checkpoint(read_state_dict(path), path=path, keep_aux_heads=aux_heads)
    if arch is not None and get_arch(arch).name != info.arch:
        raise CheckpointError(f"checkpoint is {info.arch}, not {get_arch(arch).name} (--arch)", path)
    if variant is not None and variant not in VARIANTS:
        raise CheckpointError(f"unknown variant {variant!r}; choose one of: {', '.join(VARIANTS)} (--variant)")
    if variant is not None and variant != info.variant:
        raise CheckpointError(f"checkpoint is the {info.variant} variant of {info.arch}, not {variant} (--variant)",
                              path)
    if num_classes is not None and num_classes != info.num_classes:
        raise CheckpointError(
            f"checkpoint has {info.num_classes} classes, not {num_classes} (--num-classes)", path)
    if aux_heads and info.source_format == "mmseg":
        raise CheckpointError("auxiliary heads of MMSeg checkpoints are not mapped; load without them", path)
    model = create_model(info.arch, info.num_classes, variant=info.variant, classifier_bias=info.classifier_bias,
                         aux_heads=aux_heads)
    try:
        load_state_dict_strict(model, remapped.state_dict)
    except CheckpointError as exc:
        raise CheckpointError(f"{info.model_name} checkpoint ({info.source_format} format) {exc}", path) from None
    for reason, count in info.dropped.items():
        log.debug("%s: ignored %d tensors: %s", path, count, reason)
    return model.eval(), info
