"""The ``atjt`` command: its subcommands, a short --help that loads no torch, errors in one line."""

from __future__ import annotations

import importlib
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal, Optional

import pytest

from atjt_dist.command_options import describe_options, option, pop_command_options, usage_of
from atjt_dist.main import COMMANDS, SELF_HELP_COMMANDS, main, module_doc


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_top_level_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name}" in out for name in COMMANDS)
    assert main([]) == 0


def test_unknown_command_is_one_line_and_status_2():
    done = subprocess.run([sys.executable, "-m", "atjt_dist", "nope"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().count("\n") == 0 and "unknown command 'nope'" in done.stderr and "train" in done.stderr


@pytest.mark.parametrize("name", sorted(set(COMMANDS) - set(SELF_HELP_COMMANDS)))
def test_command_help_is_short_and_loads_no_torch(name):
    done = _python(
        f"import sys\nfrom atjt_dist.main import main\nassert main([{name!r}, '--help']) == 0\nassert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"usage: atjt {name} [--config FILE] [--section.key=value ...]"
    assert len(lines) < 45 and max(map(len, lines)) < 160
    assert "--model.name NAME" in done.stdout and "docs/config.md" in done.stdout


@pytest.mark.parametrize("name", sorted(SELF_HELP_COMMANDS))
def test_commands_printing_their_own_help_load_no_torch(name):
    done = _python(
        f"import sys\nfrom atjt_dist.main import main\nassert main([{name!r}, '--help']) == 0\nassert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: atjt {name} ") and max(map(len, done.stdout.splitlines())) < 160
    assert "Options of this command" in done.stdout


def test_commands_with_their_own_options_show_them(capsys):
    for name, flags in (("compare", ("--methods", "--seeds")), ("audit", ("--user-share", "--seeds")), ("reproduce", ("--datasets", "--data-root"))):
        assert main([name, "--help"]) == 0
        out = capsys.readouterr().out
        assert all(flag in out for flag in flags), (name, out)


def test_help_all_prints_every_config_key(capsys):
    assert main(["train", "--help-all"]) == 0
    out = capsys.readouterr().out
    assert "`train.lr_decay_start`" in out and "`dist.timeout_s`" in out


def test_python_m_train_help_loads_no_torch():
    done = _python("import sys\nfrom atjt_dist.train import main\nassert main(['--help']) == 0\nassert 'torch' not in sys.modules\n")
    assert done.returncode == 0, done.stderr


def test_every_command_module_has_main_and_a_usage_line():
    for name, (module, _) in COMMANDS.items():
        assert "python -m" in module_doc(module) or name in SELF_HELP_COMMANDS, name
    for name in SELF_HELP_COMMANDS:  # these print their own help, with their options
        assert callable(importlib.import_module(COMMANDS[name][0]).main)


# ---------------------------------------------------------------------------------------------
# A command's own options (atjt_dist.command_options)
# ---------------------------------------------------------------------------------------------


@dataclass
class _Options:
    """Options of every kind the commands use."""

    share: float = option(0.3, "a share")
    count: int = option(2, "a count")
    root: Optional[Path] = option(None, "a directory", metavar="DIR")
    include_last: bool = option(False, "a switch")
    names: list[str] = option(["a", "b"], "names", choices=("a", "b", "c"))
    seeds: list[int] = option([], "seeds")
    new_name: int = option(0, "renamed", aliases=("--old-name",))


def test_command_options_take_both_spellings_and_leave_config_flags():
    from atjt_dist.config import build_config  # the same coercion as the options: 1e-3 is a float

    argv = ["--share=1e-3", "--train.lr", "1e-3", "--count", "5", "--root", "~/data", "--seed=7", "--names", "c,a", "--seeds=1,2"]
    opts = pop_command_options(argv, _Options)
    assert opts.share == 0.001 and opts.count == 5 and opts.root == Path("~/data").expanduser()
    assert opts.names == ["c", "a"] and opts.seeds == [1, 2] and opts.include_last is False
    assert argv == ["--train.lr", "1e-3", "--seed=7"]  # the config flags, in order, for build_config
    cfg = build_config(argv)
    assert cfg.train.lr == 0.001 and cfg.seed == 7

    defaults = pop_command_options([], _Options)
    assert defaults.share == 0.3 and defaults.names == ["a", "b"] and defaults.seeds == [] and defaults.root is None


def test_command_options_switches_underscores_aliases_and_repeats():
    for argv, expected in ((["--include-last"], True), (["--include-last=false"], False), (["--include_last=true"], True), (["--no-include-last"], False)):
        assert pop_command_options(argv, _Options).include_last is expected and argv == []
    argv = ["--include-last", "--count=1"]  # a switch followed by another option takes no value
    assert pop_command_options(argv, _Options).include_last is True and argv == []
    assert pop_command_options(["--count=1", "--count", "4"], _Options).count == 4  # the last wins
    assert pop_command_options(["--old-name=3"], _Options).new_name == 3
    assert pop_command_options(["--new-name=1", "--old-name=3"], _Options).new_name == 1  # the field's own flag wins


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--share=abc"], "--share: expected float, got 'abc'"),
        (["--count=1.5"], "--count: expected int, got '1.5'"),
        (["--seeds=1,x"], "--seeds: expected list of int, got '1,x'"),
        (["--include-last=maybe"], "--include-last: expected bool"),
        (["--names=a,z"], "--names: unknown z; expected some of a, b, c"),
        (["--names="], "--names needs a comma-separated list"),
        (["--count"], "--count needs a value (int)"),
        (["--count", "--share=1"], "--count needs a value (int)"),
    ],
)
def test_command_option_errors_name_the_flag(argv, message):
    from atjt_dist.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        pop_command_options(argv, _Options)
    assert str(caught.value).startswith(message), str(caught.value)


def test_commands_keep_their_option_rules():
    from atjt_dist.commands.audit import AuditOptions
    from atjt_dist.commands.reproduce import ReproduceOptions
    from atjt_dist.commands.score import ScoreOptions
    from atjt_dist.errors import ConfigError

    audit = pop_command_options(["--data", "d", "--seed", "3", "--include-last"], AuditOptions)
    assert audit.noise_seed == 3 and audit.include_last and audit.methods == ["base", "tce", "rce", "atjt"]
    with pytest.raises(ConfigError, match="--data DIR is required"):
        pop_command_options([], AuditOptions)
    with pytest.raises(ConfigError, match="--methods: unknown nope; expected some of base"):
        pop_command_options(["--data", "d", "--methods=base,nope"], AuditOptions)
    for flag in ("--run-dir", "--run_dir"):
        assert str(pop_command_options([f"{flag}=out"], ReproduceOptions).run_dir) == "out"
    with pytest.raises(ConfigError, match="--seed is chosen per cell by the grid"):
        pop_command_options(["--seed=1"], ReproduceOptions)
    for flag in ("--data.path", "--data"):  # --data: the older spelling, still read
        argv = ["--run", "r", "--output", "o.parquet", flag, "ds", "--dist.device=cpu"]
        assert str(pop_command_options(argv, ScoreOptions).data) == "ds" and argv == ["--dist.device=cpu"]


OWN_FLAGS = [("compare", ("--methods NAME,...", "--seeds N,...")), ("audit", ("--user-share X", "--include-last")), ("score", ("--data.path DIR",))]


@pytest.mark.parametrize("module, flags", OWN_FLAGS)
def test_python_m_command_help_lists_its_options_and_loads_no_torch(module, flags):
    done = _python(f"import sys\nfrom atjt_dist.{module} import main\nassert main(['--help']) == 0\nassert 'torch' not in sys.modules, 'torch was imported'\n")
    assert done.returncode == 0, done.stderr
    own, config = done.stdout.index("Options of this command"), done.stdout.index("Most used config flags")
    assert own < config and all(done.stdout.index(flag) < config for flag in flags), done.stdout
    assert "(default: " in done.stdout[own:config]
    if module == "score":
        assert "--data DIR" not in done.stdout  # only --data.path is documented


def test_command_option_error_is_one_line_and_status_2():
    done = subprocess.run([sys.executable, "-m", "atjt_dist.compare", "--seeds=1,x"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == "python -m atjt_dist.compare: error: --seeds: expected list of int, got '1,x'\n"


@dataclass
class _WholeLine:
    """A command that reads no config: positional arguments, spaced lists, tri-state switches."""

    reads_config: ClassVar[bool] = False

    inputs: list[Path] = option([], "inputs", metavar="IN", positional=True, required=True)
    files: list[Path] = option([], "files", metavar="FILE", spaced=True)
    kind: Literal["a", "b"] = option("a", "a kind")
    dedup: Optional[bool] = option(None, "tri-state")
    fold: Optional[int] = option(0, "a fold or none")
    verbose: bool = option(False, "a switch")


def test_whole_line_options_take_positionals_spaced_lists_and_words():
    argv = ["x", "--files", "a b.csv", "007", "--verbose", "y", "--kind=b", "--no-dedup", "--fold", "None", "z"]
    opts = pop_command_options(argv, _WholeLine)
    assert argv == [] and opts.inputs == [Path("x"), Path("y"), Path("z")]  # a switch before a positional leaves it alone
    assert opts.files == [Path("a b.csv"), Path("007")]  # separate arguments, taken as given (no comma split, no number)
    assert opts.kind == "b" and opts.dedup is False and opts.fold is None and opts.verbose is True
    opts = pop_command_options(["--verbose", "off", "--dedup", "x", "--fold=3"], _WholeLine)
    assert (opts.verbose, opts.dedup, opts.fold, opts.inputs, opts.files) == (False, True, 3, [Path("x")], [])


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "IN is required: inputs"),
        (["x", "--bogus", "1"], "unknown option --bogus"),
        (["x", "--kind", "c"], "--kind: expected one of 'a', 'b', got 'c'"),
        (["x", "--files"], "--files needs a value"),
        (["x", "--fold", "one"], "--fold: expected int or null, got 'one'"),
    ],
)
def test_whole_line_option_errors(argv, message):
    from atjt_dist.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        pop_command_options(argv, _WholeLine)
    assert str(caught.value).startswith(message), str(caught.value)


def test_a_stray_argument_is_refused_where_nothing_takes_it():
    from atjt_dist.errors import ConfigError

    @dataclass
    class NoPositionals:
        reads_config: ClassVar[bool] = False
        count: int = option(1, "a count")

    @dataclass
    class PositionalBesideConfig:
        path: Optional[Path] = option(None, "a path", positional=True)

    with pytest.raises(ConfigError, match="unexpected argument 'extra'"):
        pop_command_options(["--count", "2", "extra"], NoPositionals)
    with pytest.raises(TypeError, match="reads_config"):  # a config flag's value could not be told from a positional
        pop_command_options([], PositionalBesideConfig)


def test_whole_line_help_spells_every_kind_of_option():
    rows = dict(describe_options(_WholeLine))
    assert rows["IN [IN ...]"] == "inputs (required)" and rows["--files FILE [FILE ...]"] == "files"
    assert rows["--kind CHOICE"] == "a kind; one of a, b (default: a)" and rows["--[no-]dedup"] == "tri-state" and "--verbose" in rows
    assert usage_of(_WholeLine) == "[options] IN [IN ...]"
    assert usage_of(_Options) == "[options]"


# ---------------------------------------------------------------------------------------------
# The name a command goes by: the way it was started
# ---------------------------------------------------------------------------------------------


def test_a_command_started_by_the_dispatcher_goes_by_its_name(capsys):
    from atjt_dist.commands import report

    assert main(["report", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: atjt report [options] RUN_DIR [RUN_DIR ...]\n")
    assert main(["report", "--bogus"]) == 2
    assert capsys.readouterr().err == "atjt report: error: unknown option --bogus (--help lists the options)\n"
    assert report.main(["--help"]) == 0  # started on its own again: its module's name
    assert capsys.readouterr().out.startswith("usage: python -m atjt_dist.report ")
    done = subprocess.run([sys.executable, "-m", "atjt_dist", "prepare", "--format", "seqtxt"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("python -m atjt_dist prepare: error: --input PATH [PATH ...] is required"), done.stderr
    done = subprocess.run([sys.executable, "-m", "atjt_dist", "compare", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("usage: python -m atjt_dist compare [options] [--config FILE]"), done.stdout
