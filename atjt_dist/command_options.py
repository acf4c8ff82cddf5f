"""A command's own options, declared once as a dataclass and read from the command line.

A command (compare, audit, reproduce, score, prepare, synthetic, report) declares its options as a
dataclass whose fields are made with :func:`option` (a default and a help text, like a config
field's :func:`knob`). :func:`pop_command_options` takes them out of argv; what it leaves is for
``build_config``, unless the class reads no config (:func:`reads_config`): then the whole command
line is the command's, the arguments left after the options are its positional ones, and an
unknown option is an error. :func:`describe_options` and :func:`usage_of` give what ``--help``
shows.

Field ``user_share`` is the flag ``--user-share`` (``--user_share`` works too, as config keys do),
given as ``--flag=value`` or ``--flag value``. A bool field is a switch (``--include-last``, also
``--include-last=false``, ``--include-last no`` and ``--no-include-last``; true/yes/on/1 and
false/no/off/0 in any case); a list field takes comma-separated values, or separate arguments
after one flag when declared ``spaced`` (``--input a.csv b.csv``); an Optional field that is not
required takes ``none`` or ``null`` as None (a path is taken as given). Values are converted as
config values are (atjt_dist.config.coerce: ``1e-3`` is a float), text and ``Path`` fields take
the text as given; a str field's allowed values are its ``choices`` or its ``Literal`` type's. A
missing or wrong value is a ConfigError naming the flag and what it allows. A flag given twice
takes its last value, the field's own spelling over its aliases. Nothing here imports torch:
``--help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, Optional, TypeVar, Union

import yaml

from .config.coerce import _coerce, _type_name
from .config.fields import knob
from .errors import ConfigError

T = TypeVar("T")

#: the value's name in --help when a field names none
_METAVARS = {int: "N", float: "X", str: "VALUE", Path: "PATH", Literal: "CHOICE"}
#: a switch's value, in any case
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
#: the value of an Optional option that stands for None
_NONE = ("none", "null")


def option(
    default: Any,
    help: str,  # noqa: A002 - the same keyword as knob's
    *,
    metavar: Optional[str] = None,
    flag: Optional[str] = None,
    aliases: tuple[str, ...] = (),
    required: bool = False,
    choices: Optional[tuple[str, ...]] = None,
    positional: bool = False,
    spaced: bool = False,
) -> Any:
    """A command option: a :func:`knob` (default and help text) and how it is spelled: ``metavar``
    (the value's name in --help), ``flag`` (instead of ``--field-name``), ``aliases`` (older
    spellings: accepted, not listed), ``required``, ``choices`` (the allowed values of a str
    field, or of each item of a list field), ``positional`` (an argument without a flag, for a
    class that reads no config: a list field takes every one left) and ``spaced`` (a list field
    given as separate arguments after its flag, up to the next option, instead of one
    comma-separated value)."""
    f = knob(default, help)
    spelling = {
        "metavar": metavar,
        "flag": flag,
        "aliases": tuple(aliases),
        "required": required,
        "choices": tuple(choices) if choices else None,
        "positional": positional,
        "spaced": spaced,
    }
    f.metadata = types.MappingProxyType({**f.metadata, **spelling})
    return f


def reads_config(options_cls: type) -> bool:
    """Whether what the options leave of the command line is config flags for ``build_config``:
    true unless the class says ``reads_config: ClassVar[bool] = False`` (a command whose whole
    command line is its own options, as prepare's, synthetic's and report's are)."""
    return bool(getattr(options_cls, "reads_config", True))


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


def _is_list(tp: Any) -> bool:
    return typing.get_origin(_optional_arg(tp)[0]) is list


def _is_text(tp: Any) -> bool:
    """str, Path or a Literal of strings: taken as given, never read as a number or a bool."""
    return tp in (str, Path) or (typing.get_origin(tp) is Literal and all(isinstance(a, str) for a in typing.get_args(tp)))


def _config_type(tp: Any) -> Any:
    """The type the config's coercion checks: a Path (or a list of them) is read as the config
    reads paths, as text."""
    inner, optional = _optional_arg(tp)
    if inner is Path:
        inner = str
    elif typing.get_origin(inner) is list and typing.get_args(inner)[0] is Path:
        inner = list[str]
    else:
        return tp
    return Optional[inner] if optional else inner


def _choices(f: dataclasses.Field, tp: Any) -> Optional[tuple[str, ...]]:
    """The allowed values of the option (of each item, for a list): its choices, or its Literal type's."""
    inner = _optional_arg(tp)[0]
    item = typing.get_args(inner)[0] if typing.get_origin(inner) is list else inner
    if f.metadata.get("choices"):
        return f.metadata["choices"]
    return tuple(map(str, typing.get_args(item))) if typing.get_origin(item) is Literal else None


def _allowed(f: dataclasses.Field, tp: Any) -> str:
    """What the option takes, for an error: its type, and its choices if it has any."""
    inner, choices = _optional_arg(tp)[0], _choices(f, tp)
    return _type_name(str if typing.get_origin(inner) is Literal else inner) + (f": {', '.join(choices)}" if choices else "")


def _arity(f: dataclasses.Field, tp: Any) -> str:
    """How many arguments follow the flag: 'switch' (none, or one that reads as a bool),
    'many' (a spaced list: up to the next option) or 'one'."""
    if _optional_arg(tp)[0] is bool:
        return "switch"
    return "many" if f.metadata.get("spaced") else "one"


def _take(argv: list[str], flag: str, arity: str, allowed: str, switch_words: Optional[tuple[str, ...]] = None) -> list[list[str]]:
    """Remove every occurrence of ``flag`` from argv; the raw values of each, in order ([]: a bare
    switch). Like a config flag, ``--flag value`` takes the next argument unless it is an option;
    a switch takes it only if it is one of ``switch_words`` (None: any), so that a switch can
    stand before a positional argument."""
    key, found, i = _spelling(flag), [], 0
    while i < len(argv):
        name, eq, raw = argv[i].partition("=")
        if arity == "switch" and not eq and _spelling(name) == "--no-" + key[2:]:
            found.append(["false"])
            del argv[i]
            continue
        if _spelling(name) != key:
            i += 1
            continue
        if eq:
            found.append([raw])
            del argv[i]
            continue
        end = i + 1
        while end < len(argv) and not argv[end].startswith("--") and (arity == "many" or end == i + 1):
            end += 1
        if arity == "switch" and end > i + 1 and switch_words is not None and argv[i + 1].lower() not in switch_words:
            end = i + 1  # not a bool: the next argument is not this switch's
        if end == i + 1 and arity != "switch":
            raise ConfigError(f"{flag} needs a value ({allowed})")
        found.append(argv[i + 1 : end])
        del argv[i:end]
    return found


def _scalar(text: str) -> Any:
    """One value as YAML reads it (``1e-3`` stays text for the coercion to read as a float)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _list_items(values: list[str], item_tp: Any, f: dataclasses.Field) -> list:
    """The items of a list option: its separate arguments (spaced, positional) or its comma-separated value."""
    if f.metadata.get("spaced") or f.metadata.get("positional"):
        texts = list(values)
    else:
        texts = [v.strip() for v in ",".join(values).split(",") if v.strip()]
    if not texts:
        raise ConfigError(f"{flag_of(f)} needs a comma-separated list of {_type_name(item_tp)}")
    return [t if _is_text(item_tp) else _scalar(t) for t in texts]


def _convert(values: list[str], tp: Any, f: dataclasses.Field) -> Any:
    """The raw values of one occurrence of an option ([]: a bare switch) as the field's type,
    checked like a config value."""
    flag, (inner, optional) = flag_of(f), _optional_arg(tp)
    raw = " ".join(values)  # as the error quotes it
    if not values:
        return True
    if optional and inner is not Path and not f.metadata.get("required") and raw.strip().lower() in _NONE:
        return None
    if typing.get_origin(inner) is list:
        value: Any = _list_items(values, typing.get_args(inner)[0], f)
    elif inner is bool:
        word = raw.strip().lower()
        value = word in _TRUE if word in _TRUE + _FALSE else raw
    elif _is_text(inner):
        if not raw:
            raise ConfigError(f"{flag} needs a value ({_allowed(f, tp)})")
        value = raw
    else:
        value = _scalar(raw)
    target = _config_type(tp)
    try:
        value = _coerce(value, target, flag)
    except ConfigError:
        raise ConfigError(f"{flag}: expected {_type_name(target)}, got {raw!r}") from None
    choices = _choices(f, tp)
    unknown = [v for v in (value if isinstance(value, list) else [value]) if choices and v is not None and v not in choices]
    if unknown:
        some = "some" if isinstance(value, list) else "one"
        raise ConfigError(f"{flag}: unknown {', '.join(map(str, unknown))}; expected {some} of {', '.join(choices)}")
    if inner is Path and value is not None:
        return Path(value).expanduser()
    if typing.get_origin(inner) is list and typing.get_args(inner)[0] is Path:
        return [Path(v).expanduser() for v in value]
    return value


def _take_positionals(argv: list[str], options_cls: type, hints: dict) -> dict[str, list[list[str]]]:
    """What is left once every option is taken, for a class that reads no config: the positional
    fields' values in order (a list field takes the rest), argv left empty. Raises ConfigError
    for an unknown option or an argument no field takes."""
    unknown = [arg.partition("=")[0] for arg in argv if arg.startswith("--")]
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]} (--help lists the options)")
    found = {}
    for f in dataclasses.fields(options_cls):
        if f.metadata.get("positional") and argv:
            count = len(argv) if _is_list(hints[f.name]) else 1
            found[f.name] = [argv[:count]]
            del argv[:count]
    if argv:
        raise ConfigError(f"unexpected argument {argv[0]!r}")
    return found


def pop_command_options(argv: list[str], options_cls: type[T]) -> T:
    """The command's options (an ``options_cls`` instance, defaults for those not given), taken
    out of ``argv`` in place; what stays is for ``build_config`` (nothing, for a class that does
    not :func:`reads_config`: the rest is its positional arguments). Raises ConfigError for an
    unknown option or a stray argument (a class that reads no config), a missing value, a value
    of the wrong type, a missing required option, or a config flag the class refuses (its class
    attribute ``refused``: {flag: why})."""
    for flag, reason in getattr(options_cls, "refused", {}).items():
        if any(arg.partition("=")[0] == flag for arg in argv):
            raise ConfigError(f"{flag} {reason}")
    hints = typing.get_type_hints(options_cls)
    fields = dataclasses.fields(options_cls)
    positionals = any(f.metadata.get("positional") for f in fields)
    if positionals and reads_config(options_cls):
        raise TypeError(f"{options_cls.__name__}: positional options need reads_config = False (a config value would read as one)")
    # A switch may take any next argument as its value where nothing else could be (no positionals): its error then names it.
    words = _TRUE + _FALSE + _NONE if positionals else None
    found: dict[str, list[list[str]]] = {}
    for f in fields:
        if not f.metadata.get("positional"):
            tp = hints[f.name]
            for name in (*f.metadata.get("aliases", ()), flag_of(f)):  # the field's own flag last: it wins
                found.setdefault(f.name, []).extend(_take(argv, name, _arity(f, tp), _allowed(f, tp), words))
    if not reads_config(options_cls):
        found.update(_take_positionals(argv, options_cls, hints))
    values = {}
    for f in fields:
        if found.get(f.name):
            values[f.name] = _convert(found[f.name][-1], hints[f.name], f)
        elif f.metadata.get("required"):
            name = _metavar(f, hints[f.name]) if f.metadata.get("positional") else _spelled(f, hints[f.name])
            raise ConfigError(f"{name} is required: {f.metadata['help']}")
    return options_cls(**values)


def _metavar(f: dataclasses.Field, tp: Any) -> str:
    inner, _ = _optional_arg(tp)
    if f.metadata.get("metavar"):
        return f.metadata["metavar"]
    if typing.get_origin(inner) is list:
        return _METAVARS.get(typing.get_args(inner)[0], "VALUE") if f.metadata.get("spaced") or f.metadata.get("positional") else "VALUE,..."
    return _METAVARS.get(typing.get_origin(inner) or inner, "VALUE")


def _spelled(f: dataclasses.Field, tp: Any) -> str:
    """The option as --help shows it: ``--flag VALUE``, ``--flag PATH [PATH ...]``, ``RUN_DIR``;
    a switch that is on, or unset, by default as ``--[no-]flag``."""
    metavar = _metavar(f, tp)
    if f.metadata.get("positional"):
        return f"{metavar} [{metavar} ...]" if _is_list(tp) else metavar
    if _optional_arg(tp)[0] is bool:
        default = f.default if f.default is not dataclasses.MISSING else None
        return flag_of(f) if default is False else f"--[no-]{flag_of(f)[2:]}"
    return f"{flag_of(f)} {metavar} [{metavar} ...]" if f.metadata.get("spaced") else f"{flag_of(f)} {metavar}"


def _default_text(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def describe_options(options_cls: type) -> list[tuple[str, str]]:
    """(the option as spelled, help text with the allowed values and the default) of every
    option of ``options_cls``: what --help lists."""
    hints = typing.get_type_hints(options_cls)
    rows = []
    for f in dataclasses.fields(options_cls):
        tp = hints[f.name]
        text, choices = f.metadata.get("help", ""), _choices(f, tp)
        if choices:
            text = text.rstrip(".") + f"; {'some' if _is_list(tp) else 'one'} of {', '.join(choices)}"
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        if f.metadata.get("required"):
            text += " (required)"
        elif default is not None and default is not False and default not in ([], ""):
            text += f" (default: {_default_text(default)})"
        rows.append((_spelled(f, tp), text))
    return rows


def usage_of(options_cls: type) -> str:
    """The options' part of a usage line: the required options, ``[options]`` for the others,
    then the positional arguments."""
    hints = typing.get_type_hints(options_cls)
    fields = dataclasses.fields(options_cls)
    parts = [_spelled(f, hints[f.name]) for f in fields if f.metadata.get("required") and not f.metadata.get("positional")]
    if any(not f.metadata.get("required") and not f.metadata.get("positional") for f in fields):
        parts.append("[options]")
    for f in fields:
        if f.metadata.get("positional"):
            spelled = _spelled(f, hints[f.name])
            parts.append(spelled if f.metadata.get("required") else f"[{spelled}]")
    return " ".join(parts)


def option_names(options_cls: type) -> set[str]:
    """Every flag and alias the options take, and the config flags they refuse: the config flags
    that --help leaves out."""
    names = {name for f in dataclasses.fields(options_cls) for name in (flag_of(f), *f.metadata.get("aliases", ()))}
    return names | set(getattr(options_cls, "refused", {}))
