"""Synthetic sequential-recommendation data with planted noise and its ground truth: the
embedded default dataset of the training job, and a test bed where the noise is known.

This module writes and caches the dataset of a :class:`SyntheticConfig`, and is its command
line. The generative model is ``atjt_dist.data.synthetic_generator`` (clean sequences from item
clusters, Zipf popularity and successor links, then the configured noise), the noise
``atjt_dist.data.noise``; their public names are importable from here too.

**The default size** is set by the training schedule, not by realism. In the paper protocol a
run has users / 80 steps (2 phases of 4 epochs, each over half of the 80% training users, in
batches of 256), and each phase's freshly initialised recogniser (Adagrad, lr 0.023) only
starts to separate corrupted from clean rows after some tens of steps. The defaults (12,800
users: 160 steps, 80 per phase; 1,000 items; a taste of 2 clusters, stickiness 0.95, so most windows stay in one
cluster; short sequences, mean 12, so one replaced item is a large part of a window) keep the
default ``python -m atjt_dist.train`` at a few CPU-minutes while its recognisers still learn to
rank planted-noise users below clean ones (though in 80 steps their weights stay too close to
0.5 to change the test metrics). The measured numbers are in docs/results.md
("Default synthetic data"). The earlier default (100,000 users, 2,000 items, a taste of 3
clusters, stickiness 0.8, mean length 30) gave the recognisers 624 steps per phase, but a run
took an estimated 25 CPU-minutes.

Usage::

    python -m atjt_dist.data.synthetic --output DIR [--users N --items M --noise-kind popular ...]
    python -m atjt_dist.data.synthetic            # generate (or find) the cached default dataset

``ensure_dataset(cfg)`` is what the training job calls: it returns the cached directory for a
generator config, generating it once under a file lock (several ranks may call it at once).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import sys
import time
import typing
from pathlib import Path
from typing import ClassVar, Optional

import numpy as np
import pyarrow as pa

from ..cli import run_cli
from ..command_options import option, pop_command_options
from ..config import ConfigError, SyntheticConfig
from .layout import DatasetContent, DatasetError, prepare_output_dir, read_meta, write_dataset
from .noise import NOISE_KINDS, PlantedNoise, plant_noise
from .synthetic_generator import GENERATOR_VERSION, Catalogue, SyntheticData, build_catalogue, generate, generate_clean, generator_params

__all__ = [
    "GENERATOR_VERSION",
    "NOISE_KINDS",
    "Catalogue",
    "PlantedNoise",
    "SyntheticData",
    "SyntheticOptions",
    "build_catalogue",
    "cache_root",
    "dataset_name",
    "ensure_dataset",
    "generate",
    "generate_clean",
    "generator_params",
    "main",
    "plant_noise",
    "write",
]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# The dataset: write, cache
# ---------------------------------------------------------------------------------------------


def _last_item_note(cfg: SyntheticConfig) -> str:
    """What the noise may do to a noisy user's last item (meta.json's noise.last_item)."""
    if cfg.noise_kind == "insert":
        if cfg.noise_in_targets:
            return "an inserted item may follow it and become the last item (a false-positive training target)"
        return "never an inserted item: always the user's own last item"
    if cfg.noise_in_targets:
        return "replaced like any other item of a noisy user (a false-positive training target)"
    return "never replaced"


def write(cfg: SyntheticConfig, output: str | Path, *, overwrite: bool = False) -> Path:
    """Generate the dataset of ``cfg`` and write it to ``output`` (atomically); returns the path."""
    started = time.perf_counter()
    data = generate(cfg)
    noisy_users = len(np.unique(data.noise["user"]))
    last = data.noise["position"] == np.diff(data.seq_offsets)[data.noise["user"]] - 1
    meta = {
        "format": "synthetic",
        "generator": generator_params(cfg),
        "noise": {
            "kind": cfg.noise_kind,
            "noisy_users": noisy_users,
            "planted_items": int(len(data.noise["user"])),
            "planted_last_items": int(last.sum()),
            "last_item": _last_item_note(cfg),
            "clean_test_fold": cfg.clean_test_fold,
        },
        "generation_seconds": round(time.perf_counter() - started, 3),
    }
    content = DatasetContent(
        seq_items=data.seq_items,
        seq_offsets=data.seq_offsets,
        seq_times=data.seq_times,
        raw_users=pa.array(np.arange(cfg.users, dtype=np.int64)).cast(pa.string()),
        raw_items=pa.array(np.arange(1, cfg.items + 1, dtype=np.int64)).cast(pa.string()),
        item_category=data.item_category,
        category_names=pa.array([f"cluster{c}" for c in range(1, cfg.clusters + 1)]),
        meta=meta,
        noise=data.noise,
    )
    return write_dataset(
        output,
        content,
        folds=cfg.folds,
        fold_seed=cfg.seed,  # the assignment generate() used for clean_test_fold
        candidate_seed=cfg.seed,
        overwrite=overwrite,
    )


def cache_root(cfg: SyntheticConfig) -> Path:
    """cfg.cache_dir, else $ATJT_CACHE, else ~/.cache/atjt-dist."""
    root = cfg.cache_dir or os.environ.get("ATJT_CACHE") or Path.home() / ".cache" / "atjt-dist"
    return Path(root).expanduser()


def dataset_name(cfg: SyntheticConfig) -> str:
    """The cache directory name: sizes for people, a hash of every generator parameter for safety."""
    digest = hashlib.sha256(json.dumps(generator_params(cfg), sort_keys=True).encode()).hexdigest()
    return f"synthetic-u{cfg.users}-i{cfg.items}-{digest[:12]}"


def _is_cached(path: Path, cfg: SyntheticConfig) -> bool:
    try:
        return read_meta(path).get("generator") == generator_params(cfg)
    except (DatasetError, OSError, ValueError):
        return False


def ensure_dataset(cfg: SyntheticConfig) -> Path:
    """The cached dataset directory of ``cfg``, generated on first use.

    Safe when several processes (ranks, also on other nodes of a shared file system with
    working flock) call it at once: generation runs under an exclusive lock on a file beside
    the dataset, and the others find the finished directory when they get the lock.
    """
    cfg.check()
    root = cache_root(cfg)
    path = root / dataset_name(cfg)
    if _is_cached(path, cfg):
        return path
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{path.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not _is_cached(path, cfg):  # another process may have finished meanwhile
                log.info("generating the synthetic dataset %s (once per config)", path)
                write(cfg, path, overwrite=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return path


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


PROG = "python -m atjt_dist.data.synthetic"
#: what --help says before the options (the module docstring is about the generator)
_HELP = """Write a synthetic dataset with planted noise and its ground truth to --output DIR, or,
without --output, generate (once) and cache the dataset of these options; prints the dataset's
directory. The generative model: atjt_dist.data.synthetic_generator."""


@dataclasses.dataclass
class _CommandOptions:
    """synthetic's options besides the generator's: its whole command line is its own."""

    reads_config: ClassVar[bool] = False

    output: Optional[Path] = option(None, "dataset directory to write (default: the cache, see --cache-dir)", metavar="DIR")
    overwrite: bool = option(False, "replace a non-empty --output")
    debug: bool = option(False, "show tracebacks and debug logs")


def _generator_fields() -> list[tuple]:
    """One option per SyntheticConfig field: its name, type, default and help."""
    hints = typing.get_type_hints(SyntheticConfig)
    return [(f.name, hints[f.name], option(f.default, f.metadata["help"])) for f in dataclasses.fields(SyntheticConfig)]


#: the command line: --output, --overwrite, --debug, then every generator parameter (--users, --noise-kind, ...)
SyntheticOptions = dataclasses.make_dataclass("SyntheticOptions", _generator_fields(), bases=(_CommandOptions,))


def _main(argv: list[str]) -> int:
    opts = pop_command_options(argv, SyntheticOptions)
    logging.basicConfig(level=logging.DEBUG if opts.debug else logging.INFO, format="%(message)s")
    cfg = SyntheticConfig(**{f.name: getattr(opts, f.name) for f in dataclasses.fields(SyntheticConfig)})
    cfg.check(key=lambda f: "--" + f.replace("_", "-"))
    if opts.output is None:
        if opts.overwrite:
            raise ConfigError("--overwrite needs --output (to regenerate the cache, delete its directory)")
        path = ensure_dataset(cfg)
    else:
        prepare_output_dir(opts.output, opts.overwrite)  # fail before generating, not after
        path = write(cfg, opts.output, overwrite=opts.overwrite)
    meta = read_meta(path)
    log.info(
        "%s: %d users, %d items, %d interactions; %d noisy users, %d planted items (%s)",
        path,
        meta["num_users"],
        meta["num_items"],
        meta["num_interactions"],
        meta["noise"]["noisy_users"],
        meta["noise"]["planted_items"],
        meta["noise"]["kind"],
    )
    print(path)
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """The CLI: write a dataset to --output, or make sure the cached one exists; print its path."""
    return run_cli(_main, argv, PROG, _HELP, SyntheticOptions, errors=(OSError,))


if __name__ == "__main__":
    sys.exit(main())
