"""The `medfake` command: parse, call, and turn bad input into one line and exit code 2."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from medfake.errors import MedfakeError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Simulate, detect and benchmark tampering of medical scans (CT, MRI).")
data_app = typer.Typer(no_args_is_help=True, help="Real sample scans and synthetic cohorts.")
train_app = typer.Typer(no_args_is_help=True, help="Train tamper models (inject, remove) and detectors.")
app.add_typer(data_app, name="data")
app.add_typer(train_app, name="train")
err = Console(stderr=True)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks.")):
    """medfake: research toolkit for medical deepfakes."""


def _register() -> None:
    from medfake.cli import (attack_cmds, cyclegan_cmds, data_cmds, detect_cmds, io_cmds, protect_cmds, run_cmds,
                             tamper_cmds, viewer_cmds)

    for module in (io_cmds, data_cmds, tamper_cmds, cyclegan_cmds, detect_cmds, run_cmds, viewer_cmds, protect_cmds,
                   attack_cmds):
        module.register(app, data_app, train_app)


ALIASES = {("evaluate", "protection"): "evaluate-protection"}  # `medfake evaluate` itself is the detectors'


def _resolve_alias(argv: list[str]) -> list[str]:
    first = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if first is not None and tuple(argv[first:first + 2]) in ALIASES:
        return [*argv[:first], ALIASES[tuple(argv[first:first + 2])], *argv[first + 2:]]
    return argv


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    argv = _resolve_alias(argv)
    debug = "--debug" in argv
    _register()
    try:
        app(args=argv, standalone_mode=False)
    except MedfakeError as exc:
        if debug:
            raise
        err.print(f"[red]error:[/red] {exc.one_line()}", soft_wrap=True, highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # click usage errors and anything unexpected
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(2)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(1)
        if debug:
            raise
        err.print(f"[red]error:[/red] {exc.__class__.__name__}: {' '.join(str(exc).split())[:300]} (rerun with --debug for the traceback)",
                  soft_wrap=True, highlight=False)
        sys.exit(1)

