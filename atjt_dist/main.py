"""The ``atjt`` command: one entry point for every command of the package.

    atjt <command> [options]        (python -m atjt_dist <command> ... is the same)

Each command is also a module of its own (``python -m atjt_dist.train ...`` keeps working); this
dispatcher imports a command only to run it, so ``atjt --help`` and ``atjt <command> --help``
answer in well under a second, without loading torch.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from pathlib import Path

from .cli import invoked_as, print_help

#: command -> (module, one-line summary)
COMMANDS = {
    "train": ("atjt_dist.train", "train a base model, with ATJT or as the baseline"),
    "prepare": ("atjt_dist.data.prepare", "turn raw logs (MovieLens, Amazon, Yelp, sequences) into a dataset"),
    "synthetic": ("atjt_dist.data.synthetic", "generate a synthetic dataset with planted noise"),
    "compare": ("atjt_dist.commands.compare", "train several methods over paired seeds on the same data"),
    "audit": ("atjt_dist.commands.audit", "plant known noise in a real dataset and measure each method"),
    "score": ("atjt_dist.commands.score", "export every training user's noise score from an ATJT run"),
    "report": ("atjt_dist.commands.report", "plots and a Markdown summary of runs"),
    "reproduce": ("atjt_dist.commands.reproduce", "the paper's grid: datasets x models x methods x seeds"),
    "pretrain": ("atjt_dist.commands.pretrain", "pre-train S3Rec's encoder"),
}
#: commands whose own --help lists their options (their modules import no torch at the top, so
#: the help stays fast); the others' help is printed here from the module docstring
SELF_HELP_COMMANDS = ("prepare", "synthetic", "report", "score", "compare", "audit", "reproduce")


def program_name() -> str:
    """How this dispatcher was started, as its usage lines show it: ``python -m atjt_dist`` when
    run as that module, else ``atjt`` (the console script, or a call from Python)."""
    started = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    return "python -m atjt_dist" if started == Path(__file__).with_name("__main__.py").resolve() else "atjt"


def overview(prog: str = "atjt") -> str:
    """The top-level help: the commands and where to read more."""
    width = max(map(len, COMMANDS))
    lines = [f"usage: {prog} <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", f"{prog} <command> --help: the command's options; every config key: docs/config.md."]
    return "\n".join(lines)


def module_doc(module: str) -> str:
    """A module's docstring, read from its source without importing it."""
    spec = importlib.util.find_spec(module)
    with open(spec.origin, encoding="utf-8") as f:
        return ast.get_docstring(ast.parse(f.read())) or ""


def main(argv: list[str] | None = None) -> int:
    """Console entry point (atjt)."""
    prog = program_name() if argv is None else "atjt"
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(overview(prog))
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"{prog}: error: unknown command {name!r}; expected one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = COMMANDS[name][0]
    if name not in SELF_HELP_COMMANDS and any(a in ("-h", "--help", "--help-all") for a in rest):
        print_help(f"{prog} {name}", module_doc(module), full="--help-all" in rest)
        return 0
    with invoked_as(f"{prog} {name}"):  # the command's usage line and errors say how it was started
        return importlib.import_module(module).main(rest)


if __name__ == "__main__":
    sys.exit(main())
