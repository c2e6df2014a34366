"""Shared CLI plumbing: consoles, option types, parsing helpers, error handling.

Consoles print text literally (``markup=False``): paths such as ``photo[draft].png`` and
install hints such as ``stdc-deploy[gpu]`` come out as written. Styling goes through
:func:`styled` (a rich ``Text``), never through markup in strings.
"""

from __future__ import annotations

import functools
import logging
import re
import signal
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from ..core.fileio import OutputExistsError
from ..core.metadata import MAX_SIDE, MIN_SIDE
from ..errors import InvalidValue, StdcError

console = Console(soft_wrap=True, markup=False, highlight=False)  # long paths stay on one line (greppable)
err_console = Console(stderr=True, soft_wrap=True, markup=False, highlight=False)



class State:
    debug = False
    interrupted = False  # a SIGINT / SIGTERM arrived: later ones stay ignored


class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, systemd, ``docker stop``): handled like Ctrl-C, exit code 143."""

    signum = signal.SIGTERM


def _interrupt_once(signum, frame) -> None:
    """First SIGINT / SIGTERM: raise, so the command finalises what it has. Later ones are
    ignored until the process exits, so that finalising (closing a video, joining threads,
    interpreter shutdown) is never cut short."""
    State.interrupted = True
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def styled(text: str, style: str) -> Text:
    return Text(text, style=style)


def print_error(message: str) -> None:
    err_console.print(Text.assemble(("error:", "bold red"), " ", message))


# Python parameter names whose flag is not simply --name-with-dashes
FLAG_NAMES = {"min_label_agreement": "--min-agreement", "workspace_gb": "--workspace", "size": "--size",
              "overrides": "--atol/--rtol/--min-agreement", "limit": "--max-images"}


def flag_for(param: str) -> str:
    return FLAG_NAMES.get(param, "--" + param.replace("_", "-"))


def error_text(exc: StdcError) -> str:
    """The one-line message, with library parameter names mapped to CLI flags."""
    if isinstance(exc, InvalidValue):
        return exc.for_flag(flag_for(exc.param))
    if isinstance(exc, OutputExistsError):  # "<what> (overwrite=True replaces ...)"
        return f"{exc.path}: {exc.message.split(' (overwrite=True')[0]} (pass --overwrite to replace it)"
    return str(exc)


def command(fn):
    """Run a command body: :class:`StdcError` -> one line on stderr and exit 1 (traceback
    with --debug); Ctrl-C -> exit 130; SIGTERM -> exit 143. A second interrupt while the
    first is being handled is ignored, so clean-up (closing videos, joining threads) ends."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        previous = {sig: signal.signal(sig, _interrupt_once) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            return fn(*args, **kwargs)
        except StdcError as exc:
            if State.debug:
                raise
            print_error(error_text(exc))
            raise typer.Exit(1) from None
        except KeyboardInterrupt as exc:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            err_console.print("terminated" if isinstance(exc, Terminated) else "interrupted")
            raise typer.Exit(143 if isinstance(exc, Terminated) else 130) from None
        finally:
            if not State.interrupted:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return wrapper


def announce_default_model() -> Path:
    """The artifact a command without a model uses, printed with why (and what was passed over)."""
    from ..core.discovery import find_default_model

    choice = find_default_model()
    console.print(f"model: {choice.path} ({choice.reason})", highlight=False)
    for note in choice.skipped:
        console.print(f"  {note}", highlight=False)
    return choice.path


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s", force=True)


SIZE_ALIASES = {"seg50": (512, 1024), "seg75": (768, 1536), "seg100": (1024, 2048)}


def parse_size(text: str, flag: str = "--size") -> tuple[int, int]:
    """``HxW`` (e.g. 512x1024) or seg50 / seg75 / seg100, each side within MIN_SIDE..MAX_SIDE."""
    if text.lower() in SIZE_ALIASES:
        return SIZE_ALIASES[text.lower()]
    m = re.fullmatch(r"\s*(\d+)\s*[xX,]\s*(\d+)\s*", text)
    if not m:
        raise StdcError(f"{flag} {text!r}: expected HEIGHTxWIDTH such as 512x1024, or seg50/seg75/seg100")
    height, width = int(m.group(1)), int(m.group(2))
    if not (MIN_SIDE <= height <= MAX_SIDE and MIN_SIDE <= width <= MAX_SIDE):
        raise StdcError(f"{flag} {text}: each side must be within {MIN_SIDE}..{MAX_SIDE}")
    return height, width


ArchOption = Annotated[str | None, typer.Option("--arch", help="stdc1 or stdc2; only checked against the checkpoint.")]
VariantOption = Annotated[str | None, typer.Option(
    "--variant", help="plain, cut or del (the mgchen fork's variants); only checked against the checkpoint.")]
NumClassesOption = Annotated[int | None, typer.Option("--num-classes", min=1,
                                                      help="Only checked against the checkpoint.")]
SizeOption = Annotated[str, typer.Option("--size", "-s", help="Input HEIGHTxWIDTH, or seg50 (512x1024) / seg75 / seg100.")]
OutputOption = Annotated[Path | None, typer.Option("--output", "-o", help="Output file (default: models/CHECKPOINT-ARCH-SIZE.onnx).")]
OverwriteOption = Annotated[bool, typer.Option("--overwrite", help="Replace existing output files.")]
# verification limits, shared by every command that compares against a reference
AtolOption = Annotated[float | None, typer.Option(
    "--atol", min=0.0, help="Allowed max abs logit error: atol + rtol * max|logit| (default by precision: fp32 1e-3, "
                            "fp16/bf16 0.05).")]
RtolOption = Annotated[float | None, typer.Option("--rtol", min=0.0, help="See --atol (default fp32 1e-4, fp16/bf16 0.02).")]
MinAgreementOption = Annotated[float | None, typer.Option(
    "--min-agreement", min=0.0, max=1.0, help="Smallest allowed label agreement, 0-1 (default fp32 0.9995, fp16/bf16 0.98, "
                                              "int8 0.90).")]
ThreadsOption = Annotated[int | None, typer.Option(
    "--threads", min=1, max=1024, help="CPU threads for the runtime (default: every core this process may use).")]
PrecisionOption = Annotated[str, typer.Option(
    "--precision", help="fp32; auto (the fastest CPU path of known accuracy: an INT8 file quantized from the model "
                        "by `stdc quantize`, else OpenVINO bf16 on CPUs with native bf16, else fp32; one line says "
                        "which); bf16 (OpenVINO); fp16 (PyTorch CUDA).")]
BACKEND_HELP = "torch, onnxruntime, openvino, onnxruntime-trt or tensorrt (default: the fastest available for the model and device)."


def tolerance_overrides(atol: float | None, rtol: float | None, min_agreement: float | None) -> dict[str, float]:
    """The limits a user set, keyed as :class:`~stdc_deploy.parity.Tolerance` fields."""
    values = {"atol": atol, "rtol": rtol, "min_label_agreement": min_agreement}
    return {k: v for k, v in values.items() if v is not None}
