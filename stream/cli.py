"""The ``dfstream`` command line: one typer app; each concern registers its commands from
``stream/commands/``. Heavy imports (torch, PyAV) happen inside commands, so ``--help`` is quick.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.markup import escape
from rich.progress import Progress, ProgressColumn
from typer import _click as click  # typer ships its own click
from typer.core import TyperGroup

from engines.errors import UserError
from stream.config import Settings, configure_store, describe_validation_error, load_settings
from stream.console import make_console, widen_help
from stream.sources.urls import check_streams, redact


class Commands(TyperGroup):
    """The one error path of every command: a known condition (``engines.errors.UserError``,
    a refused value, a file or socket the system refuses) is one line and exit 2, naming the
    command's own flag where it has one; anything else is a bug and keeps its traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as exc:
            raise fail(with_flag(str(exc), exc.setting, self._invoked(ctx))) from None
        except ValidationError as exc:
            raise fail(describe_validation_error(exc, "value")) from None
        except OSError as exc:  # a file that cannot be read or written, a port in use
            raise fail(str(exc)) from None

    def _invoked(self, ctx: click.Context) -> click.Command | None:
        name = ctx.invoked_subcommand
        return self.get_command(ctx, name) if name else None


def with_flag(message: str, setting: str | None, command: click.Command | None) -> str:
    """``message``, naming ``command``'s option for ``setting`` (e.g. ``--allow-untrained`` for
    ``detector.allow_untrained``) when it has one."""
    if setting is None or command is None:
        return message
    name = setting.rsplit(".", 1)[-1]
    for param in command.params:
        if param.param_type_name == "option" and param.name == name:
            return f"{message} (or pass {param.opts[0]})"
    return message


def group(help_text: str, **options: Any) -> typer.Typer:
    """A typer app (the root or a command group) whose commands fail through ``Commands``."""
    return typer.Typer(cls=Commands, help=help_text, **options)


app = group(
    "Streaming, real-time deepfake detection: live video in, calibrated alerts out to Redis.",
    name="dfstream",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
bench_app = group("Benchmarks; each prints JSON with ratios against a same-run base.")
models_app = group("The model store: pull, import, list and verify weights.")
config_app = group("Inspect and check the configuration.")
data_app = group("Datasets: manifests, and a synthetic face-forgery set for tests.")
engine_app = group("Compiled crop-scorer engines: build (compile and accuracy gate), list and "
                   "time them.")
app.add_typer(bench_app, name="bench")
app.add_typer(models_app, name="models")
app.add_typer(config_app, name="config")
app.add_typer(data_app, name="data")
app.add_typer(engine_app, name="engine")

console = make_console(stderr=True)
widen_help()

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config file (else $DFSTREAM_CONFIG).",
                 show_default=False),
]


def settings_or_exit(config: Path | None, **options: object) -> Settings:
    """Load settings, with a command's options (``{"detector.arch": "tiny"}``; None: not given)
    over the file and environment, and point the model store at their locations, so that every
    command honours them alike. A bad value is a ConfigError naming the field."""
    settings = load_settings(config)
    given = {key: value for key, value in options.items() if value is not None}
    if given:
        sections: dict[str, dict[str, Any]] = {}
        for key, value in given.items():
            section, _, field = key.partition(".")
            sections.setdefault(section, getattr(settings, section).model_dump())[field] = value
        settings = load_settings(config, **sections)
    configure_store(settings)
    return settings


def progress_bar(*columns: str | ProgressColumn, transient: bool = True,
                 enabled: bool = True) -> Progress:
    """A progress bar on stderr, drawn only on a terminal: in a log it could not redraw, and
    rich would leave an empty line where it was."""
    return Progress(*columns, console=console, transient=transient,
                    disable=not (enabled and console.is_terminal))


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print a known failure (passwords redacted) and return the Exit to raise; exit 2 says the
    user can fix it."""
    console.print(f"[red]error:[/red] {escape(redact(message))}")
    return typer.Exit(code)


@app.command()
def version() -> None:
    """Print the installed version."""
    from importlib.metadata import version as dist_version

    typer.echo(dist_version("dfstream"))


@config_app.command("check")
def config_check(config: ConfigOption = None) -> None:
    """Validate the configuration (stream URLs under the URL policy included) and print the
    effective settings as JSON, passwords and the API token masked."""
    settings = settings_or_exit(config)
    check_streams(settings)
    typer.echo(redact(json.dumps(settings.model_dump(mode="json"), indent=2)))


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
