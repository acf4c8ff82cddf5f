"""The config tree: defaults, YAML, overrides, errors, documentation, round trip."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from atjt_dist.config import Config, ConfigError, build_config, config_doc, describe, dump_yaml, iter_fields


def test_defaults_learn_and_the_paper_is_one_flag_away():
    cfg = build_config([])
    assert cfg.seed == 42
    assert cfg.data.history_length == 19 and cfg.data.mode == "sliding"
    assert cfg.atjt.num_parts == 2 and cfg.atjt.aux_weight == 100.0 and cfg.atjt.detach is False
    assert cfg.train.lr == pytest.approx(0.05) and cfg.atjt.recognizer_lrs == [0.05]
    assert cfg.atjt.recognizer_warmup_steps == 600 and cfg.atjt.per_row_position and cfg.atjt.isolate_weighted_users
    assert cfg.recommender_weight_decay() == 0.0 and cfg.atjt.recognizer_weight_decay == pytest.approx(5e-4) and cfg.train.batch_size == 256
    assert cfg.train.epochs == 4 and cfg.eval.k == 5
    assert cfg.atjt.weight_exponent == 2.0 and cfg.atjt.weight_scope == "row"
    paper = build_config(["--config", str(Path(__file__).resolve().parents[1] / "configs" / "paper.yaml")])
    assert paper.data.mode == "paper" and paper.train.lr == pytest.approx(8.15e-4)
    assert paper.atjt.recognizer_lrs == [0.023, 0.025] and paper.atjt.recognizer_warmup_steps == 0
    assert paper.train.weight_decay == paper.atjt.recognizer_weight_decay == pytest.approx(5e-4)  # one value for every model
    assert not paper.atjt.per_row_position and not paper.atjt.isolate_weighted_users
    assert paper.atjt.weight_exponent == 1.0  # w = P(clean)
    assert paper.atjt.recognizer.kind == "din" and paper.train.epochs == 4 and paper.train.batch_size == 256


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  name: din\n  embedding_dim: 16\ntrain:\n  epochs: 2\n")
    cfg = build_config(["--config", str(f), "--train.epochs=3", "--atjt.enabled", "false", "--seed", "7"])
    assert cfg.model.embedding_dim == 16  # from the file
    assert cfg.train.epochs == 3  # the command line wins
    assert cfg.atjt.enabled is False and cfg.seed == 7


def test_flag_forms_and_lists():
    cfg = build_config(["--atjt.detach", "--no-train.progress_bar", "--atjt.recognizer_lrs=0.1,0.2,0.3", "--run-dir", "x"])
    assert cfg.atjt.detach is True and cfg.train.progress_bar is False
    assert cfg.atjt.recognizer_lrs == [0.1, 0.2, 0.3]
    assert cfg.run_dir == "x"


def test_exponent_notation_is_a_number_in_flags_and_yaml(tmp_path):
    """YAML 1.1 reads 1e-3 (no dot) as a string: float fields take it as the number it is."""
    assert build_config(["--train.lr=1e-3"]).train.lr == 0.001
    (tmp_path / "c.yaml").write_text("train:\n  lr: 1e-3\n  weight_decay: 5E-4\natjt:\n  recognizer_lrs: [2e-2, 1e-1]\n")
    cfg = build_config(["--config", str(tmp_path / "c.yaml")])
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.atjt.recognizer_lrs) == (0.001, 0.0005, [0.02, 0.1])


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--train.epoch=3"], ["unknown config key 'train.epoch'", "epochs"]),
        (["--nosuch=1"], ["unknown config key 'nosuch'"]),
        (["--train.epochs=three"], ["train.epochs", "expected int", "'three'"]),
        (["--atjt.enabled=3"], ["atjt.enabled", "expected bool"]),
        (["--data.split=random"], ["data.split", "'kfold'", "'loo'"]),
        (["--atjt.num_parts=1"], ["atjt.num_parts", ">= 2"]),
        (["--atjt.noise_fraction=1.5"], ["atjt.noise_fraction"]),
        (["--dist.sharding=diagonal"], ["dist.sharding", "row_wise"]),
        (["--train.lr=.nan"], ["train.lr", "finite"]),
        (["--train.lr=fast"], ["train.lr", "expected float", "'fast'"]),
        (["--model.name=nope"], ["model.name", "'din'", "'s3rec'", "'nope'"]),
        (["--train.lr=-1"], ["train.lr", ">= 0"]),
        (["--atjt.recognizer_lrs=0.1,-0.1"], ["atjt.recognizer_lrs", ">= 0"]),
        (["--train.weight_decay=-0.1"], ["train.weight_decay", ">= 0"]),
        (["--train.lr_decay=step"], ["train.lr_decay", "'linear'"]),
    ],
)
def test_bad_keys_and_values_name_the_key(argv, words):
    with pytest.raises(ConfigError) as err:
        build_config(argv)
    for w in words:
        assert w in str(err.value)


def test_bad_yaml_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        build_config(["--config", str(f)])
    with pytest.raises(ConfigError, match="does not exist"):
        build_config(["--config", str(tmp_path / "missing.yaml")])
    f.write_text("train:\n  nosuch: 1\n")
    with pytest.raises(ConfigError, match="train.nosuch"):
        build_config(["--config", str(f)])


def test_every_field_is_documented():
    fields = list(iter_fields(Config))
    assert len(fields) > 40
    undocumented = [key for key, _, _, help_ in fields if len(help_) < 10]
    assert undocumented == []
    table = describe()
    assert "`atjt.aux_weight`" in table and "lambda" in table


def test_docs_config_md_is_current():
    """docs/config.md is generated from the tree; regenerate it when a knob changes."""
    doc = Path(__file__).resolve().parents[1] / "docs" / "config.md"
    assert doc.read_text() == config_doc(), "docs/config.md is stale: run python -m atjt_dist.config > docs/config.md"


def test_dump_and_reload_round_trip(tmp_path):
    cfg = build_config(["--train.epochs=2", "--model.din.mlp_hidden=8,4", "--data.synthetic.users=99"])
    dump_yaml(cfg, tmp_path / "config.yaml")
    again = build_config(["--config", str(tmp_path / "config.yaml")])
    assert again == cfg
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["train"]["epochs"] == 2


def test_cli_reports_config_errors_in_one_line():
    proc = subprocess.run([sys.executable, "-m", "atjt_dist.train", "--train.epochz=1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "unknown config key 'train.epochz'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_configs_never_share_nested_sections():
    a = build_config(["--model.din.mlp_hidden=8,4", "--atjt.recognizer.dropout=0.1", "--data.synthetic.users=7"])
    b = Config()
    assert b.model.din.mlp_hidden == [256, 64]
    assert b.atjt.recognizer.dropout == 0.5 and b.data.synthetic.users != 7
    assert a.model.din is not b.model.din


def test_every_shipped_config_loads(tmp_path):
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))
    assert len(configs) >= 1 + 6 + 5 + 30
    for f in configs:
        build_config(["--config", str(f)])  # raises on any unknown key or bad value
    grid = {p.stem for p in (Path(__file__).resolve().parents[1] / "configs" / "grid").glob("*.yaml")}
    for ds in ("ml-20m", "amazon-electronics", "yelp"):  # the paper's grid: 3 datasets x 6 models
        for m in ("din", "dcn", "wide_deep", "fearec", "sasrec", "s3rec"):
            assert f"{ds}-{m}" in grid
            cfg = build_config(["--config", str(Path(__file__).resolve().parents[1] / "configs" / "grid" / f"{ds}-{m}.yaml")])
            assert cfg.model.name == m and cfg.data.path == f"data/{ds}"


def test_include_merges_and_the_file_wins(tmp_path):
    (tmp_path / "a.yaml").write_text("train:\n  epochs: 2\n  lr: 0.5\n")
    (tmp_path / "b.yaml").write_text("include: a.yaml\ntrain:\n  lr: 0.25\n")
    cfg = build_config(["--config", str(tmp_path / "b.yaml")])
    assert cfg.train.epochs == 2 and cfg.train.lr == 0.25
    (tmp_path / "loop.yaml").write_text("include: loop.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        build_config(["--config", str(tmp_path / "loop.yaml")])


def test_the_model_names_are_the_registry():
    import typing

    from atjt_dist.config import ModelConfig
    from atjt_dist.models import REGISTRY

    assert set(typing.get_args(typing.get_type_hints(ModelConfig)["name"])) == set(REGISTRY)
