"""The `stdc` command: a thin layer over the library (every command calls into stdc_deploy)."""

from __future__ import annotations

from typing import Annotated

import typer

from .._version import __version__
from . import export
from .bench import bench
from .common import State, setup_logging
from .demo import demo
from .engine import build_engine_command
from .eval import eval_command
from .infer import infer
from .info import info
from .quantize import quantize
from .serve import serve
from .train import train_command
from .verify import verify

app = typer.Typer(
    name="stdc",
    help="Deploy STDC-Seg semantic segmentation: export, run, inspect.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"stdc-deploy {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    State.debug = debug
    setup_logging(verbose)


app.add_typer(export.app, name="export")
app.command()(infer)
app.command()(bench)
app.command()(serve)
app.command()(quantize)
app.command()(verify)
app.command("build-engine")(build_engine_command)
app.command("eval")(eval_command)
app.command("train")(train_command)
app.command()(info)
app.command()(demo)


def main() -> None:
    app()
