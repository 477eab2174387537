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
    """List the bundled zoo models."""
    from circuitgraph import zoo

    for m in zoo.list_models():
        typer.echo(f"zoo:{m.name:<16} {m.architecture:<10} {m.size_mb:6.2f} MB  tasks: {', '.join(m.tasks)}")


@app.command()
def tasks() -> None:
    """List the built-in tasks and the zoo models they fit."""
    from circuitgraph.tasks import TASKS

    for t in TASKS.values():
        typer.echo(f"{t.name:<14} {t.description}  (models: {', '.join(t.models) or 'any'})")


def main() -> None:
    """Console-script entry point: user mistakes become one line and exit code 1."""
    try:
        app(standalone_mode=False)
    except CircuitGraphError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(1)
    except typer.Exit as ex:
        sys.exit(ex.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(1)
