"""`stdc info`: what an artifact or checkpoint is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..checkpoint import inspect_checkpoint, read_state_dict
from ..core.artifacts import artifact_kind, read_metadata
from ..errors import StdcError
from .common import command, console


def _table(title: str, rows: dict[str, object]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows.items():
        table.add_row(key, value if isinstance(value, str) else json.dumps(value))
    return table


@command
def info(artifact: Annotated[Path, typer.Argument(help="An .onnx or TorchScript file, or a checkpoint.")],
         as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False) -> None:
    """Print an artifact's metadata (ONNX, TorchScript) or what a checkpoint holds."""
    if not artifact.exists():
        raise StdcError("no such file", artifact)
    kind = artifact_kind(artifact)
    if kind in ("onnx", "torchscript"):
        meta = read_metadata(artifact)
        rows = {k: v for k, v in vars(meta).items()}
        rows["class_names"] = list(meta.class_names)
        title = f"{artifact} ({'ONNX' if kind == 'onnx' else 'TorchScript'})"
    else:
        _, ckpt = inspect_checkpoint(read_state_dict(artifact), path=artifact)
        rows = dict(vars(ckpt))
        title = f"{artifact} (checkpoint)"
    if as_json:
        console.print_json(json.dumps(rows, default=list))
    else:
        console.print(_table(title, rows))
