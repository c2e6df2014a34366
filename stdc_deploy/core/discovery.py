"""Which artifact to use when no model is named.

The rule: the newest engine in ``engines/`` that fits this GPU and TensorRT (its sidecar
says which it was built for), else the newest **FP32** ONNX file in ``models/``. Reduced
precision (FP16 / INT8 exports) is never picked silently: those files are listed as passed
over, with how to use them (``--precision auto`` may then run an INT8 file quantized from the
chosen FP32 file, and says so; see :mod:`stdc_deploy.backends.cpu`). Callers print :attr:`Choice.reason` and :attr:`Choice.skipped`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import StdcError
from .artifacts import ENGINES_DIR, KINDS, MODELS_DIR, read_onnx_metadata

RULE = "an engine in engines/ built for this GPU, else the newest FP32 ONNX in models/"


@dataclass(frozen=True)
class Choice:
    path: Path
    reason: str
    skipped: tuple[str, ...] = ()  # artifacts passed over, each with why


def _newest(paths: list[Path]) -> Path:
    return max(paths, key=lambda p: (p.stat().st_mtime, p.name))


def _files(folder: Path, kind: str) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and KINDS.get(p.suffix.lower()) == kind)


def _usable_engines(engines: list[Path]) -> tuple[list[Path], list[str]]:
    """Engines this machine can run; the others are listed with the reason."""
    if not engines:
        return [], []
    from ..backends.tensorrt.environment import engine_fits_this_machine

    usable, skipped = [], []
    for engine in engines:
        fits, why = engine_fits_this_machine(engine)
        if fits:
            usable.append(engine)
        else:
            skipped.append(f"skipped {engine}: {why}")
    return usable, skipped


def find_default_model(models_dir: Path = MODELS_DIR, engines_dir: Path = ENGINES_DIR) -> Choice:
    """The artifact to use without a model argument; StdcError saying what to run if none."""
    usable, skipped = _usable_engines(_files(engines_dir, "engine"))
    if usable:
        engine = _newest(usable)
        return Choice(engine, f"newest engine in {engines_dir}/ built for this GPU", tuple(skipped))
    fp32, reduced = [], []
    for path in _files(models_dir, "onnx"):
        try:
            precision = read_onnx_metadata(path).precision
        except StdcError as exc:
            skipped.append(f"skipped {path}: {exc.message}")
            continue
        (fp32 if precision == "fp32" else reduced).append((path, precision))
    for path, precision in reduced:
        skipped.append(f"skipped {path}: {precision} (reduced precision is used only when named, --model {path}, "
                       "or when --precision auto finds it quantized from the chosen FP32 file)")
    if fp32:
        chosen = _newest([p for p, _ in fp32])
        others = f", {len(fp32) - 1} other FP32 file(s) there" if len(fp32) > 1 else ""
        return Choice(chosen, f"newest FP32 ONNX in {models_dir}/{others}; rule: {RULE}", tuple(skipped))
    checkpoints = _files(models_dir, "checkpoint")
    if checkpoints:
        raise StdcError(f"no model given and no FP32 export in {models_dir}/; export one first: "
                        f"stdc export onnx {checkpoints[0]}  (or name {checkpoints[0]} as the model to run it in PyTorch)")
    if reduced:
        raise StdcError(f"no model given and only reduced-precision exports in {models_dir}/ "
                        f"({', '.join(str(p) for p, _ in reduced[:3])}); name one as the model to use it")
    raise StdcError(f"no model given and nothing in {models_dir}/ or {engines_dir}/; export a checkpoint "
                    "with `stdc export onnx CHECKPOINT.pth`, or run `stdc demo` for a random-weight model")
