"""`stdc verify`: compare artifacts and backends pair by pair; exit 1 past the tolerances."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from ..core.fileio import atomic_write_bytes, check_outputs
from ..verify import ArtifactSpec, PairResult, load_inputs, verify_artifacts, verify_report
from .common import (AtolOption, MinAgreementOption, OverwriteOption, RtolOption, command, console, err_console,
                     parse_size, print_error, styled, tolerance_overrides)


def pair_table(pairs: list[PairResult], title: str) -> Table:
    """One row per pair, sized for an 80-column terminal or CI log; the limit formulas go below
    it and the mean abs error into --json."""
    table = Table(title=Text(title), title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("A", overflow="fold")
    table.add_column("B", overflow="fold")
    for header in ("max err", "limit", "agree %"):
        table.add_column(header, justify="right", no_wrap=True)
    table.add_column("result", no_wrap=True)
    for pair in pairs:
        p, tol = pair.parity, pair.tolerance
        limit = "-" if tol.atol == float("inf") else f"{tol.max_error_for(p.reference_abs_max):.2e}"
        table.add_row(Text(pair.a), Text(pair.b), f"{p.max_abs_error:.2e}", limit, f"{p.label_agreement * 100:.3f}",
                      styled("pass", "green") if pair.passes else styled("FAIL", "bold red"))
    return table


def limits_line(pairs: list[PairResult]) -> str:
    """How the limits were set, once for all pairs that share them."""
    def formula(tol) -> str:
        if tol.atol == float("inf"):
            return f"agreement >= {tol.min_label_agreement:.2%} (no logit error limit)"
        return f"max err <= {tol.atol:g} + {tol.rtol:g} x max|logit of A|, agreement >= {tol.min_label_agreement:.2%}"

    return "limits: " + "; ".join(dict.fromkeys(formula(p.tolerance) for p in pairs))


@command
def verify(
    artifacts: Annotated[list[str], typer.Argument(
        metavar="ARTIFACT...",
        help="Two or more artifacts: PATH, or PATH@BACKEND[:PRECISION] (e.g. m.onnx@openvino:bf16).")],
    images: Annotated[Path | None, typer.Option("--images", help="Folder of real images (default: synthetic street scenes).")] = None,
    num_images: Annotated[int, typer.Option("--num-images", min=1, help="Images to compare on.")] = 4,
    size: Annotated[str | None, typer.Option("--size", "-s", help="Input HxW for dynamic models.")] = None,
    atol: AtolOption = None,
    rtol: RtolOption = None,
    min_agreement: MinAgreementOption = None,
    json_path: Annotated[Path | None, typer.Option(
        "--json",
        help="Write every pair's numbers, limits and result as JSON ('-': to stdout, instead of the table).")] = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Run every artifact on the same inputs and compare each pair: max/mean abs error, label agreement.

    Default limits follow the coarser precision of each pair (fp32: 1e-3 + 1e-4 x range and
    99.95%; fp16/bf16: 0.05 + 0.02 x range and 98%; int8: agreement >= 90%).
    """
    specs = [ArtifactSpec.parse(a) for a in artifacts]
    to_stdout = json_path is not None and str(json_path) == "-"
    if json_path is not None and not to_stdout:
        check_outputs([json_path], [s.path for s in specs], overwrite=overwrite)
    input_size = parse_size(size) if size else None
    inputs, skipped = load_inputs(images, num_images)
    for path, reason in skipped:
        err_console.print(f"skipped {path}: {reason}")
    labels, used, pairs = verify_artifacts(specs, inputs, input_size,
                                           tolerance_overrides(atol, rtol, min_agreement))
    report = json.dumps(verify_report(labels, used, pairs, len(inputs)), indent=2) + "\n"
    if to_stdout:
        typer.echo(report, nl=False)
    else:
        console.print(pair_table(pairs, f"stdc verify: {len(inputs)} images at {used[0]}x{used[1]}"))
        console.print(limits_line(pairs))
        if json_path is not None:
            atomic_write_bytes(json_path, report.encode())
            console.print(f"wrote {json_path}")
    failed = [p for p in pairs if not p.passes]
    if failed:
        print_error(f"{len(failed)} of {len(pairs)} pairs outside the limits: "
                    + ", ".join(f"{p.a} vs {p.b}" for p in failed))
        raise typer.Exit(1)
