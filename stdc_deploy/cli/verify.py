"""`stdc verify`: compare artifacts and backends pair by pair; exit 1 past the tolerances."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..verify import ArtifactSpec, load_inputs, verify_artifacts
from .common import command, console, err_console, parse_size


@command
def verify(
    artifacts: Annotated[list[str], typer.Argument(
        help="Two or more artifacts: PATH, or PATH@BACKEND[:PRECISION] (e.g. m.onnx@openvino:bf16).")],
    images: Annotated[Path | None, typer.Option("--images", help="Folder of real images (default: synthetic street scenes).")] = None,
    num_images: Annotated[int, typer.Option("--num-images", help="Images to compare on.")] = 4,
    size: Annotated[str | None, typer.Option("--size", "-s", help="Input HxW for dynamic models.")] = None,
    atol: Annotated[float | None, typer.Option("--atol", help="Allowed max abs logit error: atol + rtol * max|logit|.")] = None,
    rtol: Annotated[float | None, typer.Option("--rtol", help="See --atol.")] = None,
    min_agreement: Annotated[float | None, typer.Option("--min-agreement", help="Smallest label agreement, 0-1.")] = None,
) -> None:
    """Run every artifact on the same inputs and compare each pair: max/mean abs error, label agreement.

    Default limits follow the coarser precision of each pair (fp32: 1e-3 + 1e-4 x range and
    99.95%; fp16/bf16: 0.05 + 0.02 x range and 98%; int8: agreement >= 90%).
    """
    overrides = {"atol": atol, "rtol": rtol, "min_label_agreement": min_agreement}
    specs = [ArtifactSpec.parse(a) for a in artifacts]
    inputs, skipped = load_inputs(images, num_images)
    for path, reason in skipped:
        err_console.print(f"skipped {path}: {reason}", highlight=False, markup=False)
    labels, used, pairs = verify_artifacts(specs, inputs, parse_size(size) if size else None, overrides)
    table = Table("A", "B", "max abs error", "mean abs error", "logit range", "label agreement", "limits", "result",
                  title=f"stdc verify: {len(inputs)} images at {used[0]}x{used[1]}", title_justify="left")
    for pair in pairs:
        p = pair.parity
        table.add_row(pair.a, pair.b, f"{p.max_abs_error:.2e}", f"{p.mean_abs_error:.2e}",
                      f"+-{p.reference_abs_max:.1f}", f"{p.label_agreement:.4%}",
                      pair.tolerance.describe(p.reference_abs_max),
                      "[green]pass[/]" if pair.passes else "[bold red]FAIL[/]")
    console.print(table)
    failed = [p for p in pairs if not p.passes]
    if failed:
        err_console.print(f"error: {len(failed)} of {len(pairs)} pairs outside the limits: "
                          + ", ".join(f"{p.a} vs {p.b}" for p in failed), highlight=False)
        raise typer.Exit(1)
