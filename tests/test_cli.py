"""The ``atjt`` command: its subcommands, a short --help that loads no torch, errors in one line."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from atjt_dist.main import ARGPARSE_COMMANDS, COMMANDS, main, module_doc


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


@pytest.mark.parametrize("name", sorted(set(COMMANDS) - set(ARGPARSE_COMMANDS)))
def test_command_help_is_short_and_loads_no_torch(name):
    done = _python(
        f"import sys\nfrom atjt_dist.main import main\nassert main([{name!r}, '--help']) == 0\nassert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"usage: atjt {name} [--config FILE] [--section.key=value ...]"
    assert len(lines) < 45 and max(map(len, lines)) < 160
    assert "--model.name NAME" in done.stdout and "docs/config.md" in done.stdout


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
        assert "python -m" in module_doc(module) or name in ARGPARSE_COMMANDS, name
    for name in ARGPARSE_COMMANDS:  # these import their argparse parsers, which print their own help
        assert callable(importlib.import_module(COMMANDS[name][0]).main)
