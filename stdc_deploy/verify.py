"""Cross-checking artifacts: run any artifacts and backends on the same inputs, compare every pair.

An artifact is written ``PATH`` or ``PATH@BACKEND`` or ``PATH@BACKEND:PRECISION`` (for
example ``m.onnx@openvino:bf16``), so one file can be compared across runtimes.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backends import create_backend
from .errors import InvalidValue, StdcError
from .preprocess import normalize
from .sources import IMAGE_SUFFIXES, read_image
from .synthetic import synthetic_images
from .parity import Parity, Tolerance, compare_logits, default_tolerance


@dataclass(frozen=True)
class ArtifactSpec:
    path: Path
    backend: str | None = None
    precision: str = "fp32"

    @classmethod
    def parse(cls, text: str) -> ArtifactSpec:
        path, _, rest = text.partition("@")
        backend, _, precision = rest.partition(":")
        return cls(Path(path), backend or None, precision or "fp32")

    @property
    def label(self) -> str:
        extra = f"@{self.backend}" if self.backend else ""
        extra += f":{self.precision}" if self.precision != "fp32" else ""
        return f"{self.path.name}{extra}"


@dataclass(frozen=True)
class PairResult:
    a: str
    b: str
    parity: Parity
    tolerance: Tolerance

    @property
    def passes(self) -> bool:
        return self.parity.passes(self.tolerance)


def load_inputs(images: Path | None, count: int) -> tuple[list[np.ndarray], list[tuple[str, str]]]:
    """(BGR images, skipped): up to ``count`` readable images from a folder (unreadable ones
    are skipped and listed with the reason), or seeded street-like synthetic ones."""
    if count < 1:
        raise InvalidValue("num_images", f"must be >= 1, got {count}")
    if images is None:
        return synthetic_images(count, 512, 1024, seed=123), []
    if not images.is_dir():
        raise StdcError("no such folder", images)
    files = sorted(p for p in images.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    loaded, skipped = [], []
    for path in files:
        if len(loaded) == count:
            break
        try:
            loaded.append(read_image(path))
        except StdcError as exc:
            skipped.append((str(path), exc.message))
    if not loaded:
        raise StdcError("no readable images in this folder" if files else "no images in this folder", images)
    return loaded, skipped


def verify_artifacts(specs: Sequence[ArtifactSpec], images: Sequence[np.ndarray], size: tuple[int, int] | None = None,
                     overrides: Mapping[str, float] | None = None) -> tuple[list[str], tuple[int, int], list[PairResult]]:
    """Run every artifact on the same normalised inputs and compare every pair.

    Each pair is judged by the default limits of its coarser precision
    (:func:`default_tolerance`); ``overrides`` (``atol``, ``rtol``,
    ``min_label_agreement``) replace single limits on top of those defaults.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = set(overrides) - {f.name for f in dataclasses.fields(Tolerance)}
    if unknown:
        raise InvalidValue("overrides", f"unknown limit(s) {', '.join(sorted(unknown))}")
    if len(specs) < 2:
        raise StdcError("give at least two artifacts to compare")
    # logits are compared at the input size: every network runs whole, its final upsampling included
    backends = [create_backend(s.path, backend=s.backend, precision=s.precision, native_logits=False) for s in specs]
    try:
        for b in backends:
            b.open()
        fixed = {(b.input_spec.height, b.input_spec.width) for b in backends if b.input_spec.height is not None}
        if len(fixed) > 1:
            raise StdcError(f"these models take different fixed sizes: {sorted(fixed)}")
        if fixed:
            common = fixed.pop()
            if size is not None and tuple(size) != common:
                raise InvalidValue("size", f"a model here takes {common[0]}x{common[1]} only, not {size[0]}x{size[1]}")
            size = common
        size = tuple(size) if size else (backends[0].metadata.opt_height, backends[0].metadata.opt_width)
        classes = {b.metadata.num_classes for b in backends}
        if len(classes) > 1:
            raise StdcError(f"the artifacts have different class counts: {sorted(classes)}")
        outputs = []
        for b in backends:
            logits = [b.infer(normalize(image, b.metadata.mean, b.metadata.std, size=size, protocol="official")) for image in images]
            outputs.append(np.concatenate(logits))
        labels = [s.label for s in specs]
        precisions = [b.effective_precision for b in backends]
    finally:
        for b in backends:
            b.close()
    pairs = []
    for i, j in itertools.combinations(range(len(specs)), 2):
        tol = dataclasses.replace(default_tolerance(precisions[i], precisions[j]), **overrides)
        pairs.append(PairResult(labels[i], labels[j], compare_logits(outputs[i], outputs[j]), tol))
    return labels, size, pairs


VERIFY_SCHEMA = "stdc-deploy.verify/1"


def verify_report(labels: Sequence[str], size: tuple[int, int], pairs: Sequence[PairResult], num_images: int) -> dict:
    """The JSON form of a :func:`verify_artifacts` result: one entry per pair with its
    numbers, the limits it was judged by and whether it passed."""
    def num(value: float) -> float | None:  # JSON has no NaN/Infinity: null (no limit, or no number)
        return float(value) if np.isfinite(value) else None

    def pair_json(pair: PairResult) -> dict:
        p, tol = pair.parity, pair.tolerance
        return {"a": pair.a, "b": pair.b, "shape": list(p.shape), "max_abs_error": num(p.max_abs_error),
                "mean_abs_error": num(p.mean_abs_error), "logit_abs_max": num(p.reference_abs_max),
                "label_agreement": p.label_agreement,
                "limits": {"atol": num(tol.atol), "rtol": num(tol.rtol),
                           "max_abs_error": num(tol.max_error_for(p.reference_abs_max)),
                           "min_label_agreement": tol.min_label_agreement},
                "passes": pair.passes}

    return {"schema": VERIFY_SCHEMA, "artifacts": list(labels), "images": num_images, "input_size": list(size),
            "passes": all(p.passes for p in pairs), "pairs": [pair_json(p) for p in pairs]}
