"""Export every training user's noise score from a trained ATJT run:

    python -m atjt_dist.score --run RUN_DIR --output FILE.parquet [--data.path DIR] [--checkpoint DIR] [--section.key=value ...]

Each training user's sequence weight w = P(clean) comes from the recogniser that did *not* train
on that user (the recogniser of the user's own part: ``Trainer.score_training_users``), on the
user's clean last training window: the last training item as the target and the up to L items
before it as the history. The file lists the users by suspicion (lowest P(clean) first), with the
dataset's raw ids, so a person can look at the suspicious histories and clean them:

    user      int32          dense user id of the dataset directory
    raw_user  string         the user id of the raw data
    weight    float32        P(clean) from the cross-fitted recogniser
    part      int16          the user's part j: recogniser g_j (trained on the other parts) scored it
    history   list<string>   raw ids of the window's history items, oldest first (at most L)
    target    string         raw id of the window's target, the user's last training item
    length    int32          the user's number of training items (the window shows the last L + 1)
    item_noise list<float32> only for an item-level recogniser (atjt.recognizer.kind=transformer):
                             P(noisy) of each history item, aligned with ``history`` (position i
                             of the list is the i-th oldest item of the window)
    noisy     bool           only for datasets with planted noise: the user's ground truth

Rows are sorted by (weight, user). The file is written atomically (a temporary file beside it,
then a rename), so a reader never sees a half-written file.

Weights. The trained weights are read from RUN_DIR/model (the torch.distributed.checkpoint that
``Trainer.finish`` writes), or, for a run that has not finished, from the newest committed
checkpoint in RUN_DIR/checkpoints (atjt_dist/checkpoint.py; its model part only); ``--checkpoint
DIR`` picks one explicitly. The run's config is RUN_DIR/config.yaml with data.path replaced by
``--data.path`` when given (and any ``--section.key=value`` override, e.g. ``--dist.device=cpu``); the trainer
built from it writes nothing into RUN_DIR (its run directory is a temporary one, removed at the
end).

Under torchrun every process scores its share of the users (sharded tables are read shard by
shard); rank 0 gathers the scores and writes the file.

User errors (one line on stderr, exit status 2): a missing run directory or config, a run without
recognisers (a baseline, T-CE or R-CE run: their weights are not per-user), a run without trained
weights, and a dataset whose sizes (users, items, categories) differ from the run's tables.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..cli import run_cli
from ..command_options import option, pop_command_options
from ..config import Config, ConfigError, build_config
from ..data.layout import DatasetError, read_meta

log = logging.getLogger("atjt_dist")

PROG = "python -m atjt_dist.score"


@dataclass
class ScoreOptions:
    """score's own options (the rest of the command line is config overrides of the run's config)."""

    run: Optional[Path] = option(None, "the run directory of a finished (or checkpointed) ATJT run", metavar="RUN_DIR", required=True)
    output: Optional[Path] = option(None, "the Parquet file to write", metavar="FILE", required=True)
    # --data is the flag's older spelling, kept so that existing scripts keep working.
    data: Optional[Path] = option(
        None, "the dataset directory the run trained on (default: the run's data.path)", metavar="DIR", flag="--data.path", aliases=("--data",)
    )
    checkpoint: Optional[Path] = option(None, "a checkpoint directory to read instead of RUN_DIR/model", metavar="DIR")


# ---------------------------------------------------------------------------------------------
# The run: config and weights
# ---------------------------------------------------------------------------------------------


def load_run_config(run_dir: Path, data: Optional[str | Path] = None, overrides: list[str] | tuple = ()) -> Config:
    """RUN_DIR/config.yaml, with data.path = ``data`` (when given) and ``overrides`` applied.

    Raises ConfigError for a missing run directory or config, and for a run without recognisers.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run directory {run_dir} does not exist")
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no config.yaml); pass the directory a training run wrote")
    argv = list(overrides)
    if data is not None:
        argv.append(f"--data.path={data}")
    cfg = build_config(argv, config_file=config_file)
    from ..objective import objective_name  # torch: imported once the command line is read

    if objective_name(cfg) != "atjt":
        from ..trainer import method_name

        raise ConfigError(
            f"run {run_dir} was trained with method '{method_name(cfg)}', which has no noise recognisers, "
            "so it has no per-user weights; score a run trained with ATJT (objective atjt)"
        )
    return cfg


def find_weights(run_dir: Path, checkpoint: Optional[str | Path] = None) -> tuple[Path, str]:
    """The weights to load and their kind: ('model', RUN_DIR/model) written when the run
    finished, else ('checkpoint', the newest committed RUN_DIR/checkpoints/step-*)."""
    run_dir = Path(run_dir)
    if checkpoint is not None:
        path = Path(checkpoint)
        if not (path / ".metadata").is_file():
            raise ConfigError(f"--checkpoint {path} is not a torch.distributed.checkpoint directory (no .metadata)")
        return path, ("checkpoint" if (path / "checkpoint.json").is_file() else "model")
    model = run_dir / "model"
    if (model / ".metadata").is_file():
        return model, "model"
    root = run_dir / "checkpoints"
    if root.is_dir():
        steps = []
        for p in root.iterdir():
            name = p.name
            if p.is_dir() and name.startswith("step-") and name[5:].isdigit() and (p / ".metadata").is_file():
                steps.append((int(name[5:]), p))
        if steps:
            step, path = max(steps)
            log.warning("%s has no final weights (model/): scoring its newest checkpoint, step %d", run_dir, step)
            return path, "checkpoint"
    raise ConfigError(f"run {run_dir} has no trained weights (no model/ and no checkpoints/step-*); did the run finish?")


def _checkpoint_sizes(path: Path, kind: str) -> dict[str, tuple[int, ...]]:
    """Tensor sizes stored in a DCP directory, keyed like the model's state dict."""
    from torch.distributed.checkpoint import FileSystemReader

    meta = FileSystemReader(str(path)).read_metadata()
    prefix = "model." if kind == "checkpoint" else ""
    sizes = {}
    for key, value in meta.state_dict_metadata.items():
        if key.startswith(prefix) and hasattr(value, "size"):
            sizes[key[len(prefix) :]] = tuple(value.size)
    return sizes


def check_dataset_matches(run_dir: Path, data_path: Path, weights: Path, kind: str) -> None:
    """DatasetError when the dataset's sizes differ from the run's recogniser tables
    (rows: users, items + 1, categories + 1); ConfigError when the weights have no recogniser."""
    sizes = _checkpoint_sizes(weights, kind)
    tables = {k: v for k, v in sizes.items() if ".recognizers.0." in f".{k}" and k.endswith(".weight") and "embedding" in k}
    if not tables:
        raise ConfigError(f"the weights in {weights} hold no noise recogniser: run {run_dir} is not an ATJT run")
    meta = read_meta(data_path)
    expected = {
        "_user.weight": ("users", int(meta["num_users"])),
        "_item.weight": ("items + 1", int(meta["num_items"]) + 1),
        "_category.weight": ("categories + 1", int(meta["num_categories"]) + 1),
    }
    for key, shape in tables.items():
        for suffix, (what, rows) in expected.items():
            if key.endswith(suffix) and shape[0] != rows:
                raise DatasetError(
                    f"dataset {data_path} does not match run {run_dir}: its {what} = {rows}, but the run's table "
                    f"{key.rsplit('.', 2)[-2]} has {shape[0]} rows; pass the dataset the run was trained on"
                )


def load_weights(trainer, weights: Path, kind: str) -> None:
    """Load trained weights into ``trainer.model`` (resharding the tables as DCP does)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader

    model = trainer.model
    if kind == "checkpoint":
        state = {"model": model.state_dict()}
        dcp.load(state, storage_reader=FileSystemReader(str(weights)))
        model.load_state_dict(dict(state["model"]))
    else:
        state = model.state_dict()
        dcp.load(state, storage_reader=FileSystemReader(str(weights)))
        model.load_state_dict(state)


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------


def gather_to_main(*arrays: np.ndarray) -> Optional[list[np.ndarray]]:
    """Concatenate each array over ranks on rank 0 (None on the other ranks)."""
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        parts: list = [None] * dist.get_world_size()
        dist.all_gather_object(parts, arrays)
        if dist.get_rank() != 0:
            return None
        return [np.concatenate([p[i] for p in parts]) for i in range(len(arrays))]
    return list(arrays)


def raw_ids(data_path: Path) -> tuple[pa.Array, pa.Array]:
    """(raw user ids by dense user id, raw item ids by dense item id - 1) as string arrays."""
    users = pq.read_table(data_path / "users.parquet", columns=["user", "raw_user"])
    items = pq.read_table(data_path / "items.parquet", columns=["item", "raw_item"])
    u_order = np.argsort(users.column("user").to_numpy(), kind="stable")
    i_order = np.argsort(items.column("item").to_numpy(), kind="stable")
    raw_users = users.column("raw_user").combine_chunks().take(pa.array(u_order)).cast(pa.string())
    raw_items = items.column("raw_item").combine_chunks().take(pa.array(i_order)).cast(pa.string())
    return raw_users, raw_items


def window_columns(data, users: np.ndarray, raw_items: pa.Array) -> tuple[pa.Array, pa.Array, np.ndarray]:
    """(history list<string>, target string, training length) of each user's last training
    window, in raw item ids: the rows ``Trainer.score_training_users`` scores."""
    a = data.arrays
    offsets = np.asarray(a.seq_offsets, dtype=np.int64)
    items = np.asarray(a.seq_items)
    pos = np.asarray(data.last_train_pos, dtype=np.int64)[users]
    end = offsets[users] + pos  # the target's index
    start = offsets[users] + np.maximum(pos - data.L, 0)
    counts = end - start
    list_offsets = np.zeros(len(users) + 1, dtype=np.int64)
    np.cumsum(counts, out=list_offsets[1:])
    flat = np.repeat(start - list_offsets[:-1], counts) + np.arange(int(list_offsets[-1]), dtype=np.int64)
    history = pa.LargeListArray.from_arrays(pa.array(list_offsets), raw_items.take(pa.array(items[flat] - 1)))
    target = raw_items.take(pa.array(items[end] - 1))
    return history.cast(pa.list_(pa.string())), target, (pos + 1).astype(np.int32)


def build_table(trainer, users: np.ndarray, weights: np.ndarray, raw_users: pa.Array, raw_items: pa.Array, item_noise: Optional[np.ndarray] = None) -> pa.Table:
    """The scores table, sorted by suspicion (lowest weight first, then user id);
    ``item_noise`` [n, L] (the item-level recogniser's P(noisy) of each window's history items,
    oldest first, aligned with ``users``) adds the ``item_noise`` column."""
    order = np.lexsort((users, weights))
    users, weights = users[order].astype(np.int64), weights[order].astype(np.float32)
    part_of = np.full(int(trainer.data.meta["num_users"]), -1, dtype=np.int16)
    for j, part in enumerate(trainer.schedule.parts):
        part_of[part] = j
    history, target, length = window_columns(trainer.data, users, raw_items)
    columns = {
        "user": pa.array(users.astype(np.int32)),
        "raw_user": raw_users.take(pa.array(users)),
        "weight": pa.array(weights),
        "part": pa.array(part_of[users]),
        "history": history,
        "target": target,
        "length": pa.array(length),
    }
    if item_noise is not None:
        counts = np.minimum(length - 1, trainer.data.L)  # the window's history items
        valid = np.arange(item_noise.shape[1])[None, :] < counts[:, None]
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        values = pa.array(item_noise[order][valid].astype(np.float32))
        columns["item_noise"] = pa.LargeListArray.from_arrays(pa.array(offsets), values).cast(pa.list_(pa.float32()))
    noise = trainer.data.arrays.noise_users
    if noise is not None:
        columns["noisy"] = pa.array(np.asarray(noise, dtype=bool)[users])
    return pa.table(columns)


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` through a temporary file in the same directory and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def score_run(
    run_dir: str | Path,
    output: str | Path,
    data: Optional[str | Path] = None,
    overrides: list[str] | tuple = (),
    checkpoint: Optional[str | Path] = None,
) -> Optional[pa.Table]:
    """Score the training users of ``run_dir`` and write ``output``; returns the table on rank 0
    (None on the other ranks). Every rank calls it (under torchrun)."""
    from ..distributed import init_distributed, shutdown
    from ..trainer import Trainer

    run_dir, output = Path(run_dir), Path(output)
    cfg = load_run_config(run_dir, data, overrides)
    weights, kind = find_weights(run_dir, checkpoint)
    data_path = Path(cfg.data.path) if cfg.data.path else None
    if data_path is None:
        from ..data.synthetic import ensure_dataset

        data_path = ensure_dataset(cfg.data.synthetic)
    check_dataset_matches(run_dir, data_path, weights, kind)

    # The weights come from the run: no pre-training checkpoint to read (S3Rec), and the
    # trainer's own run directory is a temporary one (it writes its config and log there).
    cfg.model.s3rec.pretrained = None
    if hasattr(cfg, "resume"):
        cfg.resume = False
    ctx = init_distributed(cfg.dist)
    scratch = Path(tempfile.mkdtemp(prefix="atjt-score-")) if ctx.is_main else None
    cfg.run_dir = str(scratch) if scratch else "unused"  # choose_run_dir broadcasts rank 0's
    trainer = None
    try:
        trainer = Trainer(cfg, ctx=ctx)
        load_weights(trainer, weights, kind)
        users, w = trainer.score_training_users()
        arrays = [users.cpu().numpy(), w.float().cpu().numpy()]
        items = trainer.score_training_items()  # the same windows in the same order, or None
        if items is not None:
            arrays.append(items[2].float().cpu().numpy().reshape(-1))
        gathered = gather_to_main(*arrays)
        table = None
        if gathered is not None:
            raw_users, raw_items = raw_ids(data_path)
            item_noise = gathered[2].reshape(len(gathered[0]), -1) if items is not None else None
            table = build_table(trainer, gathered[0], gathered[1], raw_users, raw_items, item_noise)
            write_parquet_atomic(table, output)
            log.info("scored %d training users of %s (weights %s): %s", table.num_rows, run_dir, weights, output)
        return table
    finally:
        if trainer is not None:
            trainer.close()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        shutdown(ctx)


def _main(argv: list[str]) -> int:
    argv = list(argv)
    opts = pop_command_options(argv, ScoreOptions)
    table = score_run(opts.run, opts.output, opts.data, argv, opts.checkpoint)
    if table is not None:
        noisy = f", {int(np.sum(table.column('noisy').to_numpy()))} with planted noise" if "noisy" in table.column_names else ""
        print(f"{table.num_rows} training users{noisy}; most suspicious first: {opts.output}")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """The CLI; options other than score's own are config overrides (--section.key=value)."""
    return run_cli(_main, argv, PROG, __doc__, ScoreOptions)


if __name__ == "__main__":
    sys.exit(main())
