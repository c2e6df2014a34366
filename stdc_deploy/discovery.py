"""Which artifact a command uses when no ``--model`` is given.

Exports land in ``models/`` and engines in ``engines/``. The best artifact for this
machine is an engine that fits this GPU and TensorRT (when the TensorRT backend can run
it), else the newest ONNX file in ``models/``. Callers print :attr:`Choice.reason`, so
the user always sees which file was picked and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .backends import KINDS
from .errors import StdcError

MODELS_DIR = Path("models")
ENGINES_DIR = Path("engines")


@dataclass(frozen=True)
class Choice:
    path: Path
    reason: str
    skipped: tuple[str, ...] = ()  # artifacts passed over, each with why


def _newest(paths: list[Path]) -> Path:
    return max(paths, key=lambda p: (p.stat().st_mtime, p.name))


def _usable_engines(engines: list[Path]) -> tuple[list[Path], list[str]]:
    """Engines this machine can run (TensorRT installed, same TensorRT version and GPU
    model as their sidecar says); the others are listed with the reason."""
    from .engine import engine_fits_this_machine

    usable, skipped = [], []
    for engine in engines:
        fits, why = engine_fits_this_machine(engine)
        if fits:
            usable.append(engine)
        else:
            skipped.append(f"skipped {engine}: {why}")
    return usable, skipped


def find_default_model(models_dir: Path = MODELS_DIR, engines_dir: Path = ENGINES_DIR) -> Choice:
    """The artifact to use without ``--model``; StdcError saying what to run if there is none."""
    engines = sorted(p for p in engines_dir.glob("*") if KINDS.get(p.suffix.lower()) == "engine") \
        if engines_dir.is_dir() else []
    usable, skipped = _usable_engines(engines)
    if usable:
        engine = _newest(usable)
        return Choice(engine, f"newest engine in {engines_dir}/ built for this GPU", tuple(skipped))
    onnx = sorted(models_dir.glob("*.onnx")) if models_dir.is_dir() else []
    if onnx:
        chosen = _newest(onnx)
        others = f", {len(onnx) - 1} other(s) there" if len(onnx) > 1 else ""
        return Choice(chosen, f"newest ONNX file in {models_dir}/{others}; pass --model to choose",
                      tuple(skipped))
    checkpoints = sorted(p for p in models_dir.glob("*") if KINDS.get(p.suffix.lower()) == "checkpoint") \
        if models_dir.is_dir() else []
    if checkpoints:
        raise StdcError(f"no --model given and no exported model in {models_dir}/; export one first: "
                        f"stdc export onnx {checkpoints[0]}  (or pass --model {checkpoints[0]} to run it in PyTorch)")
    raise StdcError(f"no --model given and nothing in {models_dir}/ or {engines_dir}/; export a checkpoint "
                    "with `stdc export onnx CHECKPOINT.pth`, or run `stdc demo` for a random-weight model")
