"""What every command-line entry point shares: --help, and errors.

A bad config key, a missing dataset or a similar user error prints one line on stderr and
exits with status 2 (a traceback only with ATJT_DEBUG=1, or a command's own --debug); so does a :class:`RunError` (a run
stopped by a fault it explains, with its own exit status); other failures propagate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import textwrap
from contextvars import ContextVar
from typing import Callable, Iterator, Optional

from .errors import ConfigError, DatasetError, RunError

USER_ERRORS = (ConfigError, DatasetError, FileNotFoundError)
#: the width --help wraps an option's text to
HELP_WIDTH = 120
#: how the running command was started when a dispatcher (atjt_dist.main) started it
_INVOKED_AS: ContextVar[Optional[str]] = ContextVar("invoked_as", default=None)


@contextlib.contextmanager
def invoked_as(prog: str) -> Iterator[None]:
    """Within the block, a command names itself ``prog`` (e.g. ``atjt compare``) in its usage line
    and its errors instead of its own module's ``python -m`` name: the way it was started."""
    token = _INVOKED_AS.set(prog)
    try:
        yield
    finally:
        _INVOKED_AS.reset(token)


#: The config keys most runs set; --help lists them, --help-all (and docs/config.md) all of them.
KEY_FLAGS = (
    ("--config FILE", "a YAML file of config sections (configs/); flags override it"),
    ("--data.path DIR", "a prepared dataset (atjt prepare); default: generated synthetic data"),
    ("--model.name NAME", "din, dcn, wide_deep, sasrec, fearec or s3rec"),
    ("--atjt.enabled BOOL", "true: ATJT's sequence weights (default); false: the baseline"),
    ("--train.epochs N", "epochs per phase"),
    ("--train.lr LR", "the recommender's learning rate (0.001 or 1e-3)"),
    ("--seed N", "same config and seed, same result"),
    ("--run-dir DIR", "where the run writes (default: runs/<time>-<model>-<method>)"),
    ("--dist.device DEV", "auto, cpu or cuda"),
)


def usage_block(doc: str) -> str:
    """The opening of a command's docstring up to and including its usage lines (the first
    indented block naming the command), or its first paragraph when it has none."""
    paragraphs = [p for p in doc.strip().split("\n\n") if p.strip()]
    for i, paragraph in enumerate(paragraphs[:4]):
        if "python -m" in paragraph:
            return "\n\n".join(paragraphs[: i + 1])
    return paragraphs[0] if paragraphs else ""


def print_help(prog: str, doc: str, full: bool = False, options: Optional[type] = None, epilog: str = "") -> None:
    """The command's usage, its own ``options`` (a dataclass read by
    :func:`~atjt_dist.command_options.pop_command_options`) with their defaults, ``epilog``, then,
    for a command that reads a config, the key config flags and where the rest are (``full``:
    every config key with its type, default and meaning, as in docs/config.md)."""
    rows: list[tuple[str, str]] = []
    shadowed: set[str] = set()
    usage, config = f"usage: {prog}", True
    if options is not None:
        from .command_options import describe_options, option_names, reads_config, usage_of

        rows, config = describe_options(options), reads_config(options)
        shadowed = option_names(options)  # a config flag the command reads as its own (or refuses) is not listed as one
        usage += f" {usage_of(options)}"
    if config:
        usage += ("" if "--config" in shadowed else " [--config FILE]") + " [--section.key=value ...]"
    print(usage.rstrip() + "\n")
    print(usage_block(doc) + "\n")
    if rows:
        _print_rows("Options of this command (--flag=value or --flag value):", rows)
        print()
    if epilog:
        print(epilog.strip() + "\n")
    if not config:
        return
    if full:
        from .config import describe  # the whole table: imports nothing heavy either

        print("Config keys (YAML sections or --section.key=value overrides):\n")
        print(describe())
        return
    _print_rows("Most used config flags (--key=value or --key value):", [(f, t) for f, t in KEY_FLAGS if f.split()[0] not in shadowed])
    print("\nEvery config key: docs/config.md, or --help-all.")


def _print_rows(title: str, rows: list[tuple[str, str]]) -> None:
    print(title)
    width = max(len(flag) for flag, _ in rows)
    for flag, text in rows:
        lines = textwrap.wrap(text, max(40, HELP_WIDTH - width - 4)) or [""]
        print(f"  {flag:<{width}}  {lines[0]}")
        for line in lines[1:]:
            print(" " * (width + 4) + line)


def _debug_switch(argv: list[str], options: Optional[type]) -> bool:
    """Whether the command's own ``--debug`` switch (prepare's, synthetic's) is on: then its
    errors show their traceback, as with ATJT_DEBUG=1."""
    if options is None or "debug" not in {f.name for f in dataclasses.fields(options)}:
        return False
    from .command_options import pop_command_options

    try:
        return bool(pop_command_options(list(argv), options).debug)
    except ConfigError:
        return False  # the command line itself is wrong: its one-line error says all


def run_cli(
    main: Callable[[list[str]], int],
    argv: list[str] | None,
    prog: str,
    doc: str,
    options: Optional[type] = None,
    errors: tuple[type[BaseException], ...] = (),
    epilog: str = "",
) -> int:
    """Run ``main(argv)``, turning user errors (:data:`USER_ERRORS`, and the command's own
    ``errors``) into one line on stderr and exit status 2. ``-h``/``--help`` print
    :func:`print_help` from ``doc`` (the command's module docstring), ``options`` (the dataclass
    of the command's own options, if it has any) and ``epilog``. ``prog`` names the command
    unless a dispatcher started it (:func:`invoked_as`)."""
    prog = _INVOKED_AS.get() or prog
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv or "--help-all" in argv:
        print_help(prog, doc, full="--help-all" in argv, options=options, epilog=epilog)
        return 0
    try:
        return main(list(argv))
    except (*USER_ERRORS, *errors, RunError) as exc:
        if os.environ.get("ATJT_DEBUG") or _debug_switch(argv, options):
            raise
        print(f"{prog}: error: {' '.join(str(exc).split())}", file=sys.stderr)  # one line, even for a message that wraps
        return exc.exit_status if isinstance(exc, RunError) else 2
