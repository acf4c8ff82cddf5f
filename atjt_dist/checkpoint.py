"""Checkpoints of the whole training state: saved atomically, verified, resumed exactly.

What a checkpoint holds. ``RUN_DIR/checkpoints/step-XXXXXXXX/`` (XXXXXXXX = training steps done):

    .metadata, __R_0.distcp   a torch.distributed.checkpoint (DCP) of
        model               DistributedModelParallel's state dict: the recommender and the
                            recognisers, embedding tables as ShardedTensors (each rank writes its
                            shards), dense weights and buffers (e.g. Dice's running moments)
        sparse_optimizer    TorchRec's fused optimiser (``model.fused_optimizer``): per-table
                            Adagrad sums, sharded like their tables
        dense_optimizer     the dense optimiser's state keyed by parameter name, so that any
                            number of processes can load it (:func:`dense_optimizer_state`)
    dense/                  instead of dense_optimizer, when the dense backend keeps its own
                            checkpoint format (DeepSpeed ZeRO, optim.DeepSpeedAdagrad: its
                            ``save_checkpoint``/``load_checkpoint``, partitioned per rank)
    rng-rankRRRRR.pt        rank R's torch generator state (and CUDA's on GPUs); the training
                            step's dropout masks do not depend on it (they are keyed by seed,
                            step, layer and global row: models/layers.py, Dropout), anything
                            drawn from the generator outside a step does
    checkpoint.json         the commit record: step (the schedule position; phase and epoch
                            are derived from it and recorded for reading), seed, a hash of the
                            config that decides the trajectory and that config, the dataset's
                            fingerprint, the number of processes, and every file's size and
                            sha256

The data path needs no state: every batch is a pure function of (seed, step) and the config
(atjt_dist.data.dataset), so the step, the seed and the config hash are all a resume needs, and
they are checked. numpy's and Python's global generators are not saved: nothing on the training
path draws from them (samplers use keyed counters, atjt_dist.data.rng).

Atomicity. A checkpoint is written into ``step-XXXXXXXX.tmp/``: DCP's files (fsynced), then
each rank's generator file; a barrier; the files are hashed (spread over the ranks); rank 0
writes checkpoint.json into the directory and renames it to ``step-XXXXXXXX`` (one rename: the
commit), then deletes all but the newest ``checkpoint.keep`` committed checkpoints and any
leftovers; a last barrier. A process that dies before the rename leaves a ``.tmp`` directory
that is never read (the next save deletes it), so the last good checkpoint is never replaced
by a half-written one. Checkpoints never follow a step whose loss was not finite (the trainer
checks before saving).

Resuming. The newest committed checkpoint is verified (every file's size and sha256, spread
over the ranks); a damaged one is reported in the log, renamed ``.damaged`` and the previous
one is tried. Its config hash must match the run's (a ConfigError lists the differing keys;
run_dir, resume, checkpoint.*, train.max_steps, train.log_every, train.progress_bar, eval.*,
dist.* and data.path may change). DCP reshards the tables and their optimiser state on load, so
the number of processes may change; the generators are then reseeded per rank from (seed,
step, rank) instead (the training step draws nothing from them: its dropout masks are keyed by
the global row, so such a run equals the uninterrupted one up to summation order). A table must keep its kind of
sharding, model-parallel (state in the fused optimiser) or data-parallel (state in the dense
one), and a DeepSpeed ZeRO state its number of processes; otherwise the resume is refused with
a message saying so.

Storage: every rank must see RUN_DIR (a shared filesystem across nodes), as DCP requires.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from .collectives import barrier, broadcast_object, gather_objects, rank, world_size
from .config import Config, ConfigError, to_dict
from .files import sha256_file

log = logging.getLogger("atjt_dist")

FORMAT = "atjt-dist checkpoint"
VERSION = 1
RECORD = "checkpoint.json"
_PREFIX = "step-"

#: Config keys (and sections) that may differ between a checkpoint's run and the run resuming it.
RESUMABLE_KEYS = (
    "run_dir",
    "resume",
    "checkpoint",
    "train.max_steps",
    "train.log_every",
    "train.progress_bar",
    "eval",
    "dist",
    "data.path",
    "data.synthetic.cache_dir",
)


# ---------------------------------------------------------------------------------------------
# What goes into the DCP part
# ---------------------------------------------------------------------------------------------


def deepspeed_engine(dense: Any) -> Optional[Any]:
    """``dense`` if it saves and loads its own checkpoints (a DeepSpeed engine, or a dense
    backend wrapping one: optim.DeepSpeedAdagrad), else None."""
    if callable(getattr(dense, "save_checkpoint", None)) and callable(getattr(dense, "load_checkpoint", None)):
        return dense
    return None


def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def dense_optimizer_state(model: nn.Module, dense: Any) -> dict:
    """The dense optimiser's state, keyed by parameter name: the one place a checkpoint reads it.

    ``dense``: a torch optimiser or an optimiser-like dense backend (optim.TorchAdagrad:
    ``param_groups``, ``state_dict``, ``load_state_dict``). Names (not torch's positional
    indices) make the state independent of how parameters are grouped and of the number of
    processes. A DeepSpeed engine keeps its (partitioned) state itself and returns {} here:
    :meth:`Checkpoints.save` has it write its own files.
    """
    if deepspeed_engine(dense) is not None:
        return {}
    names = _param_names(model, dense)
    return {names[i]: dict(state) for i, state in dense.state_dict()["state"].items()}


def load_dense_optimizer_state(model: nn.Module, dense: Any, state: dict) -> None:
    """Inverse of :func:`dense_optimizer_state` (hyperparameters stay the config's)."""
    names = _param_names(model, dense)
    missing = [n for n in names if n not in state]
    if missing:
        raise ConfigError(f"the checkpoint has no dense optimiser state for {missing[:3]}: it was written by another model")
    packed = dense.state_dict()
    packed["state"] = {i: state[n] for i, n in enumerate(names)}
    dense.load_state_dict(packed)


def training_state(model: nn.Module, dense: Any) -> dict:
    """The DCP part of a checkpoint (also the template that a load fills in place)."""
    state = {"model": model.state_dict(), "sparse_optimizer": model.fused_optimizer.state_dict()}
    if deepspeed_engine(dense) is None:
        state["dense_optimizer"] = dense_optimizer_state(model, dense)
    return state


def rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# ---------------------------------------------------------------------------------------------
# Config identity
# ---------------------------------------------------------------------------------------------


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def trajectory_config(cfg: Config) -> dict[str, Any]:
    """The config keys that decide a run's trajectory (all but RESUMABLE_KEYS), flattened."""
    flat = _flatten(to_dict(cfg))
    return {k: v for k, v in flat.items() if not any(k == r or k.startswith(r + ".") for r in RESUMABLE_KEYS)}


def config_hash(cfg: Config) -> str:
    return hashlib.sha256(json.dumps(trajectory_config(cfg), sort_keys=True, default=str).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _files(directory: Path) -> list[str]:
    """Every file under ``directory``, as sorted relative paths."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


def checkpoint_step(path: Path) -> Optional[int]:
    """The step of a committed checkpoint directory's name (None for anything else)."""
    name = path.name
    if not name.startswith(_PREFIX) or not name[len(_PREFIX) :].isdigit():
        return None
    return int(name[len(_PREFIX) :])


def committed(root: Path) -> list[Path]:
    """Committed checkpoint directories under ``root``, newest first (by name; not verified)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step, reverse=True)


def check_files(directory: Path, files: dict[str, dict], names: list[str]) -> list[str]:
    """Problems of the listed ``names`` against their recorded size and sha256."""
    problems = []
    for name in names:
        want = files[name]
        path = directory / name
        if not path.is_file():
            problems.append(f"{name} is missing")
            continue
        size = path.stat().st_size
        if size != want["bytes"]:
            what = "truncated" if size < want["bytes"] else "longer than written"
            problems.append(f"{name} has {size} bytes, {want['bytes']} were written ({what})")
        elif sha256_file(path) != want["sha256"]:
            problems.append(f"{name} does not match its sha256 (corrupted)")
    return problems


def read_record(directory: Path) -> dict:
    """A checkpoint's checkpoint.json (ValueError if absent or unreadable)."""
    path = directory / RECORD
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{RECORD} is missing") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{RECORD} is unreadable ({exc})") from None
    if record.get("format") != FORMAT or not isinstance(record.get("files"), dict):
        raise ValueError(f"{RECORD} is not an {FORMAT} record")
    if record.get("version") != VERSION:
        raise ValueError(f"{RECORD} has version {record.get('version')}, this code reads version {VERSION}")
    return record


def rewind_metrics(path: Path, nbytes: Optional[int]) -> None:
    """Cut metrics.jsonl back to its length when the checkpoint was saved: what the run logged
    after it is logged again by the resumed run. (A file shorter than that is left alone.)"""
    if nbytes is not None and path.is_file() and path.stat().st_size > nbytes:
        os.truncate(path, nbytes)  # the writer appends (O_APPEND): it continues at the new end


# ---------------------------------------------------------------------------------------------
# Save and resume
# ---------------------------------------------------------------------------------------------


def _check_keys(state: dict, reader, path: Path) -> None:
    """ConfigError if the checkpoint lacks entries this run needs (DCP's own error is opaque)."""
    from torch.distributed.checkpoint._nested_dict import flatten_state_dict

    missing = sorted(set(flatten_state_dict(state)[0]) - set(reader.read_metadata().state_dict_metadata))
    if missing:
        raise ConfigError(
            f"cannot resume from {path}: it has no {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}. "
            "The model differs, or a table is sharded otherwise than when it was saved (data-parallel in one "
            "run, model-parallel in the other: their optimiser states differ); set dist.sharding or "
            "dist.table_sharding as in the run that saved it"
        )


class Checkpoints:
    """The checkpoints of one run directory; every method is called by every rank together."""

    def __init__(self, run_dir: Path, cfg: Config, device: torch.device, dataset_fingerprint: str, hooks=None) -> None:
        self.root = Path(run_dir) / "checkpoints"
        self.cfg = cfg
        self.device = device
        self.fingerprint = dataset_fingerprint
        self.hooks = hooks
        self.rank, self.world = rank(), world_size()

    # -- listing ------------------------------------------------------------------------------

    def committed(self) -> list[Path]:
        """Committed checkpoints, newest first, as rank 0 sees them (not verified)."""
        return broadcast_object(committed(self.root) if self.rank == 0 else None)

    def _hash(self, directory: Path, names: list[str]) -> dict[str, dict]:
        mine = {n: {"bytes": (directory / n).stat().st_size, "sha256": sha256_file(directory / n)} for n in names[self.rank :: self.world]}
        out: dict[str, dict] = {}
        for part in gather_objects(mine):
            out.update(part)
        return out

    def verify(self, directory: Path) -> tuple[Optional[dict], list[str]]:
        """(record, problems) of a committed checkpoint; files are checked spread over ranks."""
        try:
            record = read_record(directory)
        except ValueError as exc:
            local: list[str] = [str(exc)]
            record = None
        else:
            names = sorted(record["files"])
            local = check_files(directory, record["files"], names[self.rank :: self.world])
        problems = sorted({p for part in gather_objects(local) for p in part})
        return (record if not problems else None), problems

    # -- save ---------------------------------------------------------------------------------

    def save(self, step: int, model: nn.Module, dense: Any, info: Optional[dict] = None) -> Path:
        """Write the checkpoint of ``step`` atomically; returns its directory."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint import FileSystemWriter

        started = time.perf_counter()
        final = self.root / f"{_PREFIX}{step:08d}"
        tmp = final.with_name(final.name + ".tmp")
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier()
        dcp.save(training_state(model, dense), storage_writer=FileSystemWriter(str(tmp), sync_files=True))
        engine = deepspeed_engine(dense)
        if engine is not None:
            engine.save_checkpoint(str(tmp / "dense"), tag="engine", save_latest=False)
        buffer = io.BytesIO()
        torch.save(rng_state(self.device), buffer)
        _write_synced(tmp / f"rng-rank{self.rank:05d}.pt", buffer.getvalue())
        if self.hooks is not None:
            self.hooks.in_checkpoint(step, self.rank)
        barrier()
        files = self._hash(tmp, _files(tmp))
        if self.rank == 0:
            record = {
                "format": FORMAT,
                "version": VERSION,
                "step": step,
                **(info or {}),
                "seed": self.cfg.seed,
                "config_hash": config_hash(self.cfg),
                "config": trajectory_config(self.cfg),
                "dataset_fingerprint": self.fingerprint,
                "world_size": self.world,
                "dense_optimizer": "deepspeed" if engine is not None else type(dense).__name__,
                "torch": torch.__version__,
                "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "files": files,
            }
            _write_synced(tmp / RECORD, (json.dumps(record, indent=1, default=str) + "\n").encode())
            _fsync_dir(tmp)
            if final.exists():  # the same step saved before (e.g. a resume with another checkpoint.every)
                old = final.with_name(final.name + ".old")
                shutil.rmtree(old, ignore_errors=True)
                os.rename(final, old)
            os.rename(tmp, final)  # the commit
            _fsync_dir(self.root)
            self._prune(keep=final)
            size = sum(f["bytes"] for f in files.values())
            log.info("checkpoint %s saved (%.1f MB, %.1f s)", final, size / 1e6, time.perf_counter() - started)
        barrier()
        return final

    def _prune(self, keep: Path) -> None:
        """Keep the newest checkpoint.keep committed checkpoints (and ``keep``); delete the
        rest and any leftovers (.tmp of dead writers, .old, .damaged)."""
        kept = set(committed(self.root)[: self.cfg.checkpoint.keep]) | {keep}
        for entry in self.root.iterdir():
            if entry.is_dir() and entry.name.startswith(_PREFIX) and entry not in kept:
                shutil.rmtree(entry, ignore_errors=True)

    # -- resume -------------------------------------------------------------------------------

    def find_resumable(self) -> Optional[tuple[Path, dict]]:
        """The newest undamaged committed checkpoint and its record, or None.

        Damaged ones are reported, renamed ``.damaged`` (never read again) and skipped.
        """
        for path in self.committed():
            record, problems = self.verify(path)
            if record is not None:
                return path, record
            if self.rank == 0:
                log.warning(
                    "checkpoint %s is damaged: %s; falling back to the previous checkpoint",
                    path,
                    "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else ""),
                )
                damaged = path.with_name(path.name + ".damaged")
                shutil.rmtree(damaged, ignore_errors=True)
                os.rename(path, damaged)
            barrier()
        return None

    def check_compatible(self, path: Path, record: dict, dense: Any) -> None:
        """ConfigError unless the checkpoint was written by this run's config and dataset."""
        if record.get("seed") != self.cfg.seed:
            raise ConfigError(f"cannot resume from {path}: it was written with seed={record.get('seed')}, this run has seed={self.cfg.seed}")
        if record.get("dataset_fingerprint") != self.fingerprint:
            raise ConfigError(f"cannot resume from {path}: it was trained on another dataset (its fingerprint differs from data.path's)")
        if record.get("config_hash") != config_hash(self.cfg):
            saved, now = record.get("config", {}), trajectory_config(self.cfg)
            diffs = [f"{k}: {saved.get(k, '(absent)')!r} -> {now.get(k, '(absent)')!r}" for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
            raise ConfigError(
                f"cannot resume from {path}: its run had another config ({'; '.join(diffs[:6]) or 'hash differs'}); "
                f"resume with the same config (only {', '.join(RESUMABLE_KEYS)} may change) or use another --run-dir"
            )
        kind = "deepspeed" if deepspeed_engine(dense) is not None else type(dense).__name__
        if record.get("dense_optimizer") != kind:
            raise ConfigError(f"cannot resume from {path}: its dense optimiser is {record.get('dense_optimizer')}, this run's is {kind}")
        if kind == "deepspeed" and record.get("world_size") != self.world:
            raise ConfigError(
                f"cannot resume from {path} on {self.world} processes: its DeepSpeed ZeRO state is partitioned over "
                f"{record.get('world_size')} (resume with that many, or train with dist.dense=ddp to change the count)"
            )

    def load(self, path: Path, record: dict, model: nn.Module, dense: Any, seed: int) -> None:
        """Load the checkpoint into the model and optimisers (resharding as needed) and restore
        this rank's generators (reseeded from (seed, step, rank) if the process count changed)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint import FileSystemReader

        state = training_state(model, dense)
        reader = FileSystemReader(str(path))
        _check_keys(state, reader, path)
        dcp.load(state, storage_reader=reader)
        model.load_state_dict(dict(state["model"]))
        model.fused_optimizer.load_state_dict(state["sparse_optimizer"])
        engine = deepspeed_engine(dense)
        if engine is not None:
            engine.load_checkpoint(str(path / "dense"), tag="engine", load_optimizer_states=True, load_lr_scheduler_states=True)
        else:
            load_dense_optimizer_state(model, dense, state["dense_optimizer"])
        if record["world_size"] == self.world:
            set_rng_state(torch.load(path / f"rng-rank{self.rank:05d}.pt", weights_only=True), self.device)
        else:
            derived = int.from_bytes(hashlib.sha256(f"{seed}:{record['step']}:{self.rank}".encode()).digest()[:8], "little")
            torch.manual_seed(derived & ((1 << 63) - 1))
