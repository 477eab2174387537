"""The Typer app: parse, call the library, write files, print a short summary."""

from __future__ import annotations

import sys

import typer

from circuitgraph.errors import CircuitGraphError

app = typer.Typer(
    name="circuitgraph",
    help="Edge-level circuit discovery for transformer language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def models() -> None:
    """List the bundled zoo models (load them with --model zoo:NAME)."""
    from circuitgraph import zoo

    found = zoo.list_models()
    if not found:
        typer.echo("no zoo models are installed")
    for m in found:
        typer.echo(
            f"zoo:{m.name:<16} {m.architecture:<10} {m.size_mb:6.2f} MB  "
            f"tasks: {', '.join(m.tasks)}"
        )


@app.command()
def tasks() -> None:
    """List the built-in tasks and the zoo models they fit."""
    from circuitgraph.tasks import TASKS

    for t in TASKS.values():
        fits = ", ".join(f"zoo:{m}" for m in t.models) or "any model"
        typer.echo(f"{t.name:<14} {t.description}  [fits: {fits}]")


def main() -> None:
    """Console-script entry point.

    Typer reports usage errors itself (one line, exit status 2); a library error, which is
    always a user mistake, becomes one line on stderr and exit status 1, never a traceback.
    """
    try:
        app()
    except CircuitGraphError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(1)
