"""Our `typer.Typer` apps as click commands, cheaply: the lazy root group, plain coercion.

typer 0.29 coerces every parameter through a pydantic ``TypeAdapter`` that it builds on each run
(~70 ms to import pydantic, then a few ms a parameter), even for a ``str``, a ``float`` or the
``--help`` flag.  Our parameters are all plain (str, int, float, bool, Path, lists of those, an
optional min/max), so `_build_runtime_param` gives those a coercer of a few lines, with click's
wording, and leaves anything else to typer's own builder.  It replaces the one function typer
calls for this (``typer.core.build_runtime_param``), only in the ``ryla`` process (the library
never imports this module): pyproject pins typer to 0.29.x, and tests/test_cli_basics.py fails
when a command's run imports pydantic again.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args, get_origin

import typer
import typer.core
import typer.main
from typer.core import TyperCommand, TyperGroup

if TYPE_CHECKING:  # pragma: no cover
    from typer._click import Context as ClickContext
    from typer._click.core import Command as ClickCommand


_PLAIN: dict[type[Any], str] = {
    str: "text",
    int: "integer",
    float: "number",
    Path: "path",
    bool: "boolean",
}
_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "f", "no", "n", "off", ""})


@dataclass(frozen=True)
class _PlainCoercion:
    """What typer's ``RuntimeParam`` does for a plain type, without pydantic."""

    kind: type[Any]
    is_list: bool
    low: float | None
    high: float | None

    def coerce(self, value: Any, param: Any, ctx: ClickContext) -> Any:
        if value is None:
            return () if (param.multiple or param.nargs == -1) else None
        if self.is_list:
            if isinstance(value, str):
                raise typer.BadParameter("Value must be an iterable.", ctx=ctx, param=param)
            return [self._coerce_value(item, param, ctx) for item in value]
        return self._coerce_value(value, param, ctx)

    def _coerce_value(self, value: Any, param: Any, ctx: ClickContext) -> Any:
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if self.kind is str:
            return str(value)
        if self.kind is Path:
            return value if isinstance(value, Path) else Path(value)
        if self.kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE or text in _FALSE:
                return text in _TRUE
            raise typer.BadParameter(f"{value!r} is not a valid boolean.", ctx=ctx, param=param)
        try:
            number = self.kind(value)
        except (TypeError, ValueError):
            raise typer.BadParameter(
                f"{value!r} is not a valid {_PLAIN[self.kind]}.", ctx=ctx, param=param
            ) from None
        if isinstance(number, float) and not math.isfinite(number):
            raise typer.BadParameter(f"{value!r} is not a finite number.", ctx=ctx, param=param)
        if (self.low is not None and number < self.low) or (
            self.high is not None and number > self.high
        ):
            raise typer.BadParameter(
                f"{value} is not in the range {range_text(self.low, self.high)}.",
                ctx=ctx,
                param=param,
            )
        return number


def range_text(low: float | None, high: float | None) -> str:
    """A range the way typer's help shows it (``x>=1``, ``1<=x<=64``)."""
    if low is None:
        return f"x<={high}"
    if high is None:
        return f"x>={low}"
    return f"{low}<=x<={high}"


def plain_coercion(descriptor: Any) -> _PlainCoercion | None:
    """The cheap coercer for a typer ``TypeDescriptor``, or None when typer must do it."""
    info = descriptor.parameter_info
    if info.parser is not None or descriptor.file_annotation is not None:
        return None
    if any(getattr(info, flag, False) for flag in ("exists", "resolve_path", "allow_dash")):
        return None  # typer's path checks: let typer do them
    if getattr(info, "clamp", False):
        return None
    annotation = descriptor.annotation
    is_list = get_origin(annotation) is list
    if is_list:
        (annotation,) = get_args(annotation)
    if annotation not in _PLAIN:
        return None
    return _PlainCoercion(annotation, is_list, info.min, info.max)


_typer_build_runtime_param = vars(typer.core)["build_runtime_param"]


def _build_runtime_param(descriptor: Any) -> Any:
    return plain_coercion(descriptor) or _typer_build_runtime_param(descriptor)


vars(typer.core)["build_runtime_param"] = _build_runtime_param


def import_rich_help() -> None:
    """Import ``typer.rich_utils`` (the help pages) without rich's Markdown and Traceback.

    typer.rich_utils imports ``rich.markdown`` (markdown-it, ~30 ms) and ``rich.traceback`` at
    import time, but uses them only in "markdown" markup mode and for typer's pretty tracebacks:
    ryla uses neither.  Stand-ins take their place while typer.rich_utils loads and leave
    ``sys.modules`` straight after; should one ever be called, it builds the real thing.
    """
    import sys
    import types

    if "typer.rich_utils" in sys.modules:
        return

    class Markdown:
        def __new__(cls, *args: Any, **kwargs: Any) -> Any:
            from rich.markdown import Markdown as real

            return real(*args, **kwargs)

    class Traceback:
        def __new__(cls, *args: Any, **kwargs: Any) -> Any:
            from rich.traceback import Traceback as real

            return real(*args, **kwargs)

        @classmethod
        def from_exception(cls, *args: Any, **kwargs: Any) -> Any:
            from rich.traceback import Traceback as real

            return real.from_exception(*args, **kwargs)

    stand_ins = {"rich.markdown": Markdown, "rich.traceback": Traceback}
    added = []
    for name, cls in stand_ins.items():
        if name not in sys.modules:
            module = types.ModuleType(name)
            setattr(module, cls.__name__, cls)
            sys.modules[name] = module
            added.append(name)
    try:
        importlib.import_module("typer.rich_utils")
    finally:
        for name in added:
            del sys.modules[name]


def to_click(app: typer.Typer) -> ClickCommand:
    """The click command typer builds for ``app``."""
    return typer.main.get_command(app)


@dataclass(frozen=True)
class Entry:
    """One top-level command: where its `typer.Typer` lives, its line in ``ryla --help``."""

    target: str  # "module:attribute"
    summary: str
    panel: str


class Interrupted(BaseException):
    """Ctrl-C reached the top: typer would turn it into a silent exit 130, we say so."""


class LazyGroup(TyperGroup):
    """A typer group that imports a command's module only when that command runs.

    ``ryla --help`` lists the commands from the registry (`Entry.summary`) without importing
    any of them; ``ryla NAME`` imports one module and converts its `typer.Typer`.
    """

    registry: dict[str, Entry] = {}  # noqa: RUF012  # set on the instance by the root

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self._loaded: dict[str, ClickCommand] = {}
        self._listing = False

    def list_commands(self, ctx: ClickContext) -> list[str]:
        return list(self.registry)

    def get_command(self, ctx: ClickContext, cmd_name: str) -> ClickCommand | None:
        entry = self.registry.get(cmd_name)
        if entry is None:
            return None
        if self._listing:  # the help page only needs a name, a line and a panel
            return TyperCommand(
                name=cmd_name, help=entry.summary, rich_help_panel=entry.panel, callback=None
            )
        if cmd_name not in self._loaded:
            module, _, attr = entry.target.partition(":")
            app = getattr(importlib.import_module(module), attr)
            assert isinstance(app, typer.Typer), entry.target
            command = to_click(app)
            command.name = cmd_name
            self._loaded[cmd_name] = command
        return self._loaded[cmd_name]

    def resolve_command(
        self, ctx: ClickContext, args: list[str]
    ) -> tuple[str | None, ClickCommand | None, list[str]]:
        # typer suggests from ``self.commands``, which stays empty here: fill it with stand-ins
        # for the suggestion only.
        if args and args[0] not in self.registry and not self.commands:
            self.commands = {name: TyperCommand(name=name) for name in self.registry}
            try:
                return super().resolve_command(ctx, args)
            finally:
                self.commands = {}
        return super().resolve_command(ctx, args)

    def format_help(self, ctx: ClickContext, formatter: Any) -> None:
        import_rich_help()
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False

    def invoke(self, ctx: ClickContext) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            raise Interrupted from exc


def print_help_when_bare(ctx: typer.Context) -> None:
    """`ryla` or `ryla jobs` alone: the help page on stdout, exit 0 (not click's usage error)."""
    if ctx.invoked_subcommand is None:
        import_rich_help()
        text = ctx.get_help()  # typer's rich help prints itself and returns ""
        if text:
            print(text)
        raise typer.Exit(0)
