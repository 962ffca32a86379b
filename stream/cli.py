"""The ``dfstream`` command line: one typer app; each concern registers its commands from
``stream/commands/``. Heavy imports (torch, PyAV) happen inside commands, so ``--help`` is quick.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from stream.config import ConfigError, Settings, configure_store, load_settings

app = typer.Typer(
    name="dfstream",
    help="Streaming, real-time deepfake detection: live video in, calibrated alerts out to Redis.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
bench_app = typer.Typer(help="Benchmarks; each prints JSON with ratios against a same-run base.")
models_app = typer.Typer(help="The model store: pull, import, list and verify weights.")
config_app = typer.Typer(help="Inspect and check the configuration.")
data_app = typer.Typer(help="Datasets: manifests, and a synthetic face-forgery set for tests.")
engine_app = typer.Typer(help="Compiled crop-scorer engines: build (compile and accuracy gate), "
                         "list and time them.")
app.add_typer(bench_app, name="bench")
app.add_typer(models_app, name="models")
app.add_typer(config_app, name="config")
app.add_typer(data_app, name="data")
app.add_typer(engine_app, name="engine")

console = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config file (else $DFSTREAM_CONFIG).",
                 show_default=False),
]


def settings_or_exit(config: Path | None, **overrides: object) -> Settings:
    """Load settings and point the model store at their locations, so that every command
    honours them alike; on a bad config print what is wrong and exit 2 rather than a traceback."""
    try:
        settings = load_settings(config, **overrides)
    except ConfigError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    configure_store(settings)
    return settings


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print a clear error and return the Exit to raise."""
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


@app.command()
def version() -> None:
    """Print the installed version."""
    from importlib.metadata import version as dist_version

    typer.echo(dist_version("dfstream"))


@config_app.command("check")
def config_check(config: ConfigOption = None) -> None:
    """Validate the configuration and print the effective settings as JSON."""
    settings = settings_or_exit(config)
    typer.echo(json.dumps(settings.model_dump(mode="json"), indent=2))


def main() -> None:
    app()


# Commands of each concern register themselves on the apps above.
from stream.commands import (  # noqa: E402,F401
    bench,
    bench_scorer,
    bench_whip,
    data,
    demo,
    engine,
    evaluate,
    faces,
    models,
    score,
    serve,
    thresholds,
    train,
    watch,
)
