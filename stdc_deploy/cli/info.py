"""`stdc info`: what an artifact or checkpoint is.

Any ONNX file is described, ours or not (inputs, outputs, opsets, producer, node counts,
like ``polygraphy inspect model``); stdc-deploy metadata is shown where the file has it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from ..core.artifacts import KIND_NAMES
from ..info import TOP_OPS, describe_artifact
from .common import command, console, styled

def _size(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:.1f} KiB"


def _shape(tensor: dict) -> str:
    shape = "unknown shape" if tensor["shape"] is None else "[" + ", ".join(map(str, tensor["shape"])) + "]"
    return f"{tensor['name']}: {tensor['dtype']} {shape}"


def _rows(described: dict) -> dict[str, str | Text]:
    rows: dict[str, str | Text] = {"file": _size(described["file_bytes"])}
    graph = described.get("onnx")
    if graph is not None:
        ops = list(graph["op_counts"].items())
        top = ", ".join(f"{op} {n}" for op, n in ops[:TOP_OPS]) + (f", {len(ops) - TOP_OPS} more types"
                                                                     if len(ops) > TOP_OPS else "")
        rows.update({
            "producer": graph["producer"] or "-",
            "IR version": str(graph["ir_version"]),
            "opsets": ", ".join(f"{d} {v}" for d, v in graph["opsets"].items()),
            "inputs": "\n".join(map(_shape, graph["inputs"])) or "-",
            "outputs": "\n".join(map(_shape, graph["outputs"])) or "-",
            "nodes": f"{graph['nodes']} ({top})" if ops else "0",
            "initializers": str(graph["initializers"]),
        })
        if graph["other_metadata_keys"]:
            rows["other metadata"] = ", ".join(graph["other_metadata_keys"])
    for key, value in (described.get("checkpoint") or described.get("engine") or {}).items():
        if key == "path":  # the title names it
            continue
        rows[key] = value if isinstance(value, str) else json.dumps(value)
    if "metadata" in described:
        meta = described["metadata"]
        if meta is None:
            problem = described["onnx"]["metadata_problem"]
            rows["stdc-deploy"] = styled(f"unusable stdc-deploy metadata: {problem}" if problem
                                         else "no stdc-deploy metadata", "yellow")
        else:
            for key, value in meta.items():
                rows[key] = value if isinstance(value, str) else json.dumps(value)
    return rows


def _table(title: str, rows: dict[str, str | Text]) -> Table:
    table = Table(title=Text(title), show_header=False, title_justify="left")
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in rows.items():
        table.add_row(Text(key), value if isinstance(value, Text) else Text(value))
    return table


@command
def info(artifact: Annotated[Path, typer.Argument(
             metavar="ARTIFACT", help="Any .onnx file, an export (.ts, .pt2), an engine or a checkpoint.")],
         as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False) -> None:
    """Describe an artifact: any ONNX file's inputs, outputs, opsets and ops, the metadata of
    exports and engines, or what a checkpoint holds."""
    described = describe_artifact(artifact)
    if as_json:
        console.print_json(json.dumps(described, default=list))
    else:
        console.print(_table(f"{artifact} ({KIND_NAMES[described['kind']]})", _rows(described)))
