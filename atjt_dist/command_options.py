"""A command's own options, declared once as a dataclass and read from the command line.

A command (compare, audit, reproduce, score) declares its options as a dataclass whose fields are
made with :func:`option` (a default and a help text, like a config field's :func:`knob`).
:func:`pop_command_options` takes them out of argv and leaves the rest, the config flags, for
``build_config``; :func:`describe_options` gives the lines ``--help`` lists.

Field ``user_share`` is the flag ``--user-share`` (``--user_share`` works too, as config keys do),
given as ``--flag=value`` or ``--flag value``; a bool field is a switch (``--include-last``, also
``--include-last=false`` and ``--no-include-last``); a list field takes comma-separated values.
Values are converted as config values are (atjt_dist.config.coerce: ``1e-3`` is a float, ``true``
a bool), ``Path`` fields take the text as given; a missing or wrong value is a ConfigError naming
the flag and what it allows. A flag given twice takes its last value, the field's own spelling
over its aliases. Nothing here imports torch: ``--help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Optional, TypeVar, Union

import yaml

from .config.coerce import _coerce, _type_name
from .config.fields import knob
from .errors import ConfigError

T = TypeVar("T")

#: the value's name in --help when a field names none
_METAVARS = {int: "N", float: "X", str: "VALUE", Path: "PATH"}


def option(
    default: Any,
    help: str,  # noqa: A002 - the same keyword as knob's
    *,
    metavar: Optional[str] = None,
    flag: Optional[str] = None,
    aliases: tuple[str, ...] = (),
    required: bool = False,
    choices: Optional[tuple[str, ...]] = None,
) -> Any:
    """A command option: a :func:`knob` (default and help text) and how it is spelled: ``metavar``
    (the value's name in --help), ``flag`` (instead of ``--field-name``), ``aliases`` (older
    spellings: accepted, not listed), ``required`` and ``choices`` (the allowed values of a str
    field, or of each item of a list field)."""
    f = knob(default, help)
    spelling = {"metavar": metavar, "flag": flag, "aliases": tuple(aliases), "required": required, "choices": tuple(choices) if choices else None}
    f.metadata = types.MappingProxyType({**f.metadata, **spelling})
    return f


def flag_of(f: dataclasses.Field) -> str:
    """The documented flag of an option field."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _spelling(name: str) -> str:
    return name.replace("_", "-")


def _optional_arg(tp: Any) -> tuple[Any, bool]:
    """(the type inside Optional[...], whether it was optional)."""
    if typing.get_origin(tp) in (Union, types.UnionType) and type(None) in typing.get_args(tp):
        rest = [a for a in typing.get_args(tp) if a is not type(None)]
        return (rest[0] if len(rest) == 1 else Union[tuple(rest)]), True
    return tp, False


def _config_type(tp: Any) -> Any:
    """The type the config's coercion checks: a Path is read as the config reads paths, a str."""
    inner, optional = _optional_arg(tp)
    if inner is Path:
        return Optional[str] if optional else str
    return tp


def _allowed(f: dataclasses.Field, tp: Any) -> str:
    """What the option takes, for an error: its type, and its choices if it has any."""
    choices = f.metadata.get("choices")
    return _type_name(_optional_arg(tp)[0]) + (f": {', '.join(choices)}" if choices else "")


def _take(argv: list[str], flag: str, switch: bool, allowed: str) -> list[Optional[str]]:
    """Remove every occurrence of ``flag`` from argv; their raw values in order (None: a bare
    switch). Like a config flag, ``--flag value`` takes the next argument unless it is an option."""
    key, found, i = _spelling(flag), [], 0
    while i < len(argv):
        name, eq, raw = argv[i].partition("=")
        if _spelling(name) == key:
            if eq:
                found.append(raw)
                del argv[i]
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                found.append(argv[i + 1])
                del argv[i : i + 2]
            elif switch:
                found.append(None)
                del argv[i]
            else:
                raise ConfigError(f"{flag} needs a value ({allowed})")
        elif switch and not eq and _spelling(name) == "--no-" + key[2:]:
            found.append("false")
            del argv[i]
        else:
            i += 1
    return found


def _convert(raw: Optional[str], tp: Any, f: dataclasses.Field) -> Any:
    """The raw text of one option as the field's type, checked like a config value."""
    flag, target = flag_of(f), _config_type(tp)
    inner, _ = _optional_arg(tp)
    if raw is None:  # a bare switch
        return True
    if typing.get_origin(inner) is list:
        item_tp = typing.get_args(inner)[0]
        value: Any = [v.strip() if item_tp is str else yaml.safe_load(v) for v in raw.split(",") if v.strip()]
        if not value:
            raise ConfigError(f"{flag} needs a comma-separated list of {_type_name(item_tp)}")
    elif inner in (str, Path):  # text as given: a path "007" or "yes" is a path, not a number or a bool
        if not raw:
            raise ConfigError(f"{flag} needs a value ({_allowed(f, tp)})")
        value = raw
    else:
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
    try:
        value = _coerce(value, target, flag)
    except ConfigError:
        raise ConfigError(f"{flag}: expected {_type_name(target)}, got {raw!r}") from None
    choices = f.metadata.get("choices")
    if choices:
        unknown = [v for v in (value if isinstance(value, list) else [value]) if v not in choices]
        if unknown:
            some = "some" if isinstance(value, list) else "one"
            raise ConfigError(f"{flag}: unknown {', '.join(map(str, unknown))}; expected {some} of {', '.join(choices)}")
    return Path(value).expanduser() if inner is Path and value is not None else value


def pop_command_options(argv: list[str], options_cls: type[T]) -> T:
    """The command's options (an ``options_cls`` instance, defaults for those not given), taken
    out of ``argv`` in place; what stays is for ``build_config``. Raises ConfigError for a
    missing value, a value of the wrong type, a missing required option, or a config flag the
    class refuses (its class attribute ``refused``: {flag: why})."""
    for flag, reason in getattr(options_cls, "refused", {}).items():
        if any(arg.partition("=")[0] == flag for arg in argv):
            raise ConfigError(f"{flag} {reason}")
    hints = typing.get_type_hints(options_cls)
    values = {}
    for f in dataclasses.fields(options_cls):
        switch = hints[f.name] is bool
        found = []
        for name in (*f.metadata.get("aliases", ()), flag_of(f)):  # the field's own flag last: it wins
            found += _take(argv, name, switch, _allowed(f, hints[f.name]))
        if found:
            values[f.name] = _convert(found[-1], hints[f.name], f)
        elif f.metadata.get("required"):
            metavar = _metavar(f, hints[f.name])
            raise ConfigError(f"{flag_of(f)} {metavar} is required: {f.metadata['help']}")
    return options_cls(**values)


def _metavar(f: dataclasses.Field, tp: Any) -> str:
    inner, _ = _optional_arg(tp)
    if f.metadata.get("metavar"):
        return f.metadata["metavar"]
    if typing.get_origin(inner) is list:
        return "VALUE,..."
    return _METAVARS.get(inner, "VALUE")


def _default_text(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def describe_options(options_cls: type) -> list[tuple[str, str]]:
    """(flag with its value's name, help text with the allowed values and the default) of every
    option of ``options_cls``: what --help lists."""
    hints = typing.get_type_hints(options_cls)
    rows = []
    for f in dataclasses.fields(options_cls):
        tp = hints[f.name]
        spelled = flag_of(f) if tp is bool else f"{flag_of(f)} {_metavar(f, tp)}"
        text = f.metadata.get("help", "")
        if f.metadata.get("choices"):
            some = "some" if typing.get_origin(_optional_arg(tp)[0]) is list else "one"
            text += f"; {some} of {', '.join(f.metadata['choices'])}"
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        if f.metadata.get("required"):
            text += " (required)"
        elif default is not None and default is not False and default not in ([], ""):
            text += f" (default: {_default_text(default)})"
        rows.append((spelled, text))
    return rows


def option_names(options_cls: type) -> set[str]:
    """Every flag and alias the options take, and the config flags they refuse: the config flags
    that --help leaves out."""
    names = {name for f in dataclasses.fields(options_cls) for name in (flag_of(f), *f.metadata.get("aliases", ()))}
    return names | set(getattr(options_cls, "refused", {}))
