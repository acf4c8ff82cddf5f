"""Training throughput side by side with RecBole 1.2.1: DIN and SASRec on ml-100k, equal dimensions.

    python benchmarks/recbole_bench.py [--data /tmp/d/ml-100k] [--models din,sasrec] [--steps 16]
        [--rounds 5] [--warmup 3] [--next-item-rows 16,256] [--din-dims 8,64] [--output benchmarks/recbole.md]

RecBole is not a dependency of this project. Install it, for this benchmark only, in a virtualenv
of its own beside this package (Python 3.11; RecBole 1.2.1 asks for ``ray``, which nothing here
imports, hence ``--no-deps`` and its other requirements by hand; pandas 3 breaks RecBole's
dataset code, hence ``pandas<3``):

    python3 -m venv /work/recbole-venv && . /work/recbole-venv/bin/activate
    pip install -e /work/main                   # this package: torch 2.13.0+cpu, torchrec 1.8.0, numpy 2.4
    pip install --no-deps recbole==1.2.1
    pip install "numpy==2.4.6" "torch==2.13.0" "pandas<3" scipy "colorlog==4.7.2" "colorama==0.4.4" \\
        scikit-learn tensorboard thop tabulate plotly texttable psutil

The ml-100k directory is one prepared by ``python -m atjt_dist.data.prepare --format movielens``;
RecBole reads atomic files written from it under --work: the same interactions in the same order
(row index as timestamp), the item's category as its ``class`` token. ``patch_recbole`` makes
RecBole 1.2.1 run on numpy 2 (the report lists what RecBole needed on this stack).

What is timed, one thread (OMP_NUM_THREADS=1, torch.set_num_threads(1)), in one process: the
training pass only, on batches built beforehand by each side's own data pipeline. Ours:
``Trainer.train_step(plan, batches)`` (forward through the DistributedModelParallel module,
loss, backward with the fused embedding optimiser, dense optimiser step; ATJT off). RecBole:
``optimizer.zero_grad(); model.calculate_loss(batch).backward(); optimizer.step()``, the core of
its ``Trainer._train_epoch``. After ``--warmup`` untimed steps, ``--rounds`` rounds of
``--steps`` steps per implementation, alternating within a round (order reversed every other
round), new batches every round; ratio = ours / RecBole in the same round.

Settings (the report's table has them all): DIN with 1024 rows per step (512 positives, 512
negatives), L = 19, embedding 8 (our default) and 64 on both sides, MLPs [256, 64] (RecBole's one
list for both MLPs; ours also with its default attention [32]). SASRec with L = 19, hidden 64, 2
blocks, 2 heads, feed-forward 64, ReLU, dropout 0, 256 prefixes per step with one negative each
(RecBole: loss_type BPR, as its SASRec has no BCE); ours (a) pointwise (score_pairs) and (b)
next-item (model.objective=next_item, --next-item-rows windows per step, prefixes = valid
positions). Adagrad, lr 0.05, weight decay 5e-4 on both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ["OMP_NUM_THREADS"] = "1"
os.environ["NUMBA_NUM_THREADS"] = "1"

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from machine_info import machine_line, versions_line  # noqa: E402

from atjt_dist.config import build_config  # noqa: E402
from atjt_dist.distributed import DistConfig, init_distributed, shutdown  # noqa: E402
from atjt_dist.models.batch import SequenceBatch  # noqa: E402
from atjt_dist.trainer import Trainer  # noqa: E402

L = 19
LR, WEIGHT_DECAY = 0.05, 5e-4
TARGETS = {"din": 3.0, "sasrec": 2.0}  # ours / RecBole, training samples per second
DATASET = "ml-100k-atjt"  # RecBole special-cases the name "ml-100k" (its bundled copy)


@dataclass
class Side:
    """One implementation under test: a step function over prebuilt batches and their sizes."""

    name: str
    run_step: object  # callable(i): train step on batch i
    samples: list[int]  # training samples (rows or prefixes) of batch i
    mean_history: float  # mean valid history items per row over the timed batches
    build_ms: float  # building one batch with the side's own data pipeline (not timed in the rounds)
    wall: list[float] = field(default_factory=list)  # seconds per round
    cpu: list[float] = field(default_factory=list)
    done: list[int] = field(default_factory=list)  # samples per round
    trainer: object = None  # ours: the Trainer, closed after the rounds


def build_batches(make, count: int) -> tuple[list, float]:
    """``count`` batches from ``make()``, and the median ms one took (first calls, such as numba's
    compilation or a loader's start, do not count in a median)."""
    batches, ms = [], []
    for _ in range(count):
        started = time.perf_counter()
        batches.append(make())
        ms.append(1000 * (time.perf_counter() - started))
    return batches, statistics.median(ms)


# -- RecBole ---------------------------------------------------------------------------------


def patch_recbole() -> None:
    """RecBole 1.2.1's Config.compatibility_settings assigns np.float_ and np.complex_, removed in
    numpy 2: only add the old aliases (np.float, np.int, ...) that numpy lacks."""
    from recbole.config import Config

    aliases = dict(bool=np.bool_, int=np.int_, float=np.float64, complex=np.complex128, object=np.object_, str=np.str_, long=np.int_, unicode=np.str_)

    def compatibility_settings(self) -> None:  # noqa: ARG001 - a method
        for name, alias in aliases.items():
            if name not in np.__dict__:
                setattr(np, name, alias)

    Config.compatibility_settings = compatibility_settings


def write_atomic_files(data: Path, work: Path) -> Path:
    """RecBole atomic files (.inter, .item) of a prepared dataset; returns RecBole's data_path."""
    out = work / DATASET
    out.mkdir(parents=True, exist_ok=True)
    inter = pq.read_table(data / "interactions.parquet", columns=["user", "item"]).to_pydict()
    with open(out / f"{DATASET}.inter", "w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        f.writelines(f"{u}\t{i}\t{n}\n" for n, (u, i) in enumerate(zip(inter["user"], inter["item"])))
    items = pq.read_table(data / "items.parquet", columns=["item", "category"]).to_pydict()
    with open(out / f"{DATASET}.item", "w") as f:
        f.write("item_id:token\tclass:token\n")
        f.writelines(f"{i}\t{c}\n" for i, c in zip(items["item"], items["category"]))
    return work


def recbole_settings(model: str, args, dim: int | None) -> dict:
    """RecBole's config_dict for ``model`` (DIN with embedding ``dim``, or SASRec)."""
    common = dict(data_path=str(args.work), checkpoint_dir=str(args.work / "saved"), use_gpu=False, show_progress=False, state="WARNING")
    common |= dict(reproducibility=False, MAX_ITEM_LIST_LENGTH=L, learner="adagrad", learning_rate=LR, weight_decay=WEIGHT_DECAY)
    common |= dict(load_col={"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "class"]})
    common |= dict(train_neg_sample_args={"distribution": "uniform", "sample_num": 1})
    split = {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user"}
    if model == "DIN":  # pointwise: train_batch_size counts positive and negative rows
        return common | dict(embedding_size=dim, mlp_hidden_size=[256, 64], dropout_prob=0.0, train_batch_size=1024, eval_args=split | {"mode": "uni100"})
    sasrec = dict(hidden_size=64, n_layers=2, n_heads=2, inner_size=64, hidden_dropout_prob=0.0, attn_dropout_prob=0.0, hidden_act="relu")
    return common | sasrec | dict(loss_type="BPR", train_batch_size=256, eval_args=split | {"mode": "full"})


def recbole_side(model: str, args, count: int, dim: int | None = None) -> Side:
    """RecBole's ``model`` on its own training data loader's first ``count`` batches."""
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, init_seed

    config = Config(model=model, dataset=DATASET, config_dict=recbole_settings(model, args, dim))
    init_seed(config["seed"], config["reproducibility"])
    train, _, _ = data_preparation(config, create_dataset(config))
    net = get_model(config["model"])(config, train._dataset).to(config["device"])
    net.train()
    optimizer = torch.optim.Adagrad(net.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)  # RecBole's learner 'adagrad'
    loader = iter(())

    def next_batch():  # the loader's batches, epoch after epoch
        nonlocal loader
        for _ in range(2):
            try:
                return next(loader).to(config["device"])
            except StopIteration:
                loader = iter(train)
        raise RuntimeError("RecBole's training loader yields no batch")

    batches, build_ms = build_batches(next_batch, count)

    def run_step(i: int) -> None:
        optimizer.zero_grad()
        net.calculate_loss(batches[i]).backward()
        optimizer.step()

    lengths = torch.cat([b["item_length"] for b in batches]).float()
    return Side(f"RecBole {model}", run_step, [len(b) for b in batches], float(lengths.mean()), build_ms)


# -- ours ------------------------------------------------------------------------------------


def our_side(name: str, flags: list[str], args, ctx, tmp: str, count: int, count_by: str) -> Side:
    """Our Trainer (ATJT off) on its schedule's first ``count`` batches. ``count_by``: a batch's
    training samples are its 'rows', its 'pairs' (rows / 2: a prefix's positive and negative
    rows) or its valid 'positions' (next-item: every scored prefix)."""
    common = ["--atjt.enabled=false", f"--data.history_length={L}", f"--data.path={args.data}", "--no-train.progress_bar", "--no-log.tensorboard"]
    common += [f"--train.lr={LR}", f"--train.weight_decay={WEIGHT_DECAY}", f"--run-dir={tmp}/{len(os.listdir(tmp))}"]
    trainer = Trainer(build_config(common + flags), ctx=ctx)
    plans = [p for _, p in zip(range(count), trainer.schedule.steps())]
    todo = iter(plans)
    batches, build_ms = build_batches(lambda: SequenceBatch.from_arrays(trainer.schedule.recommender_batch(next(todo))).to(ctx.device), count)
    trainer.model.train()

    def run_step(i: int) -> None:
        trainer.train_step(plans[i], (batches[i], None))

    size = {"rows": len, "pairs": lambda b: len(b) // 2, "positions": lambda b: int(b.lengths.sum())}[count_by]
    lengths = torch.cat([b.lengths for b in batches]).float()
    return Side(name, run_step, [size(b) for b in batches], float(lengths.mean()), build_ms, trainer=trainer)


def din_sides(args, ctx, tmp: str, count: int, dim: int) -> list[Side]:
    """Ours with attention [256, 64] and with its default [32], then RecBole's DIN; embedding ``dim``."""
    base = ["--model.name=din", f"--model.embedding_dim={dim}", "--train.batch_size=512"]
    return [
        our_side("ours DIN, attention [256, 64]", base + ["--model.din.attention_hidden=256,64"], args, ctx, tmp, count, "rows"),
        our_side("ours DIN, attention [32] (default)", base, args, ctx, tmp, count, "rows"),
        recbole_side("DIN", args, count, dim),
    ]


def sasrec_sides(args, ctx, tmp: str, count: int) -> list[Side]:
    """Ours pointwise (a) and next-item (b, one per --next-item-rows), then RecBole's SASRec."""
    base = ["--model.name=sasrec", "--model.sasrec.hidden=64", "--model.sasrec.blocks=2", "--model.sasrec.heads=2", "--model.sasrec.dropout=0"]
    sides = [our_side("ours SASRec (a) pointwise", base + ["--train.batch_size=256"], args, ctx, tmp, count, "pairs")]
    for rows in args.next_item_rows:
        flags = base + ["--model.objective=next_item", f"--train.batch_size={rows}"]
        sides.append(our_side(f"ours SASRec (b) next-item, {rows} rows", flags, args, ctx, tmp, count, "positions"))
    return sides + [recbole_side("SASRec", args, count)]


# -- timing ----------------------------------------------------------------------------------


def time_rounds(sides: list[Side], args) -> None:
    """Warm-up, then alternating rounds (order reversed every other round), new batches each."""
    for s in sides:
        for i in range(args.warmup):
            s.run_step(i)
    for r in range(args.rounds):
        order = sides if r % 2 == 0 else sides[::-1]
        for s in order:
            first = args.warmup + r * args.steps
            wall, cpu = time.perf_counter(), time.process_time()
            for i in range(first, first + args.steps):
                s.run_step(i)
            s.wall.append(time.perf_counter() - wall)
            s.cpu.append(time.process_time() - cpu)
            s.done.append(sum(s.samples[first : first + args.steps]))
        print(f"[recbole_bench] round {r + 1}: " + ", ".join(f"{s.name} {s.done[-1] / s.wall[-1]:,.0f}/s" for s in sides), flush=True)


def rates(s: Side, which: str) -> list[float]:
    return [n / t for n, t in zip(s.done, getattr(s, which))]


def ratios(ours: Side, ref: Side, which: str) -> list[float]:
    return [a / b for a, b in zip(rates(ours, which), rates(ref, which))]


def fmt_range(xs: list[float], fmt: str) -> str:
    return f"{format(statistics.median(xs), fmt)} ({format(min(xs), fmt)}-{format(max(xs), fmt)})"


# -- report ----------------------------------------------------------------------------------

SETTINGS = """| setting | ours | RecBole 1.2.1 |
| --- | --- | --- |
| data | prepared ml-100k (`atjt_dist.data.prepare`), k-fold split (fold 0 = test users), data.mode=sliding: every position of a training user's sequence a sample | the same interactions and order as atomic files, leave-one-out split (`LS: valid_and_test`, order TO): every prefix but each user's last two a training sample |
| history | L = 19 (data.history_length): up to 19 items before the target | MAX_ITEM_LIST_LENGTH = 19: up to 19 items before the target |
| DIN embedding | model.embedding_dim = d (DIMS); item = [item; category], 2d | embedding_size = d; item features item_id and class: 2d |
| DIN attention MLP | 4 x 2d -> [256, 64] -> 1 (Dice), or the default [32]; the first layer computed from h, t and h * t without building the 8d input; softmax over valid positions | [q; h; q - h; q * h] built, 8d -> [256, 64] -> 1 (Sigmoid); masked, scaled, no softmax |
| DIN output MLP | [user; pooled; target] 5d -> 256 -> 64 -> 1, Dice | [pooled; target; pooled x target] 6d -> 256 -> 64 -> 1, BatchNorm + Dice |
| DIN batch | train.batch_size = 512: 512 positive + 512 negative rows | train_batch_size = 1024: 512 positive + 512 negative rows |
| DIN negatives, loss | popularity^0.75, never the user's items; BCE | uniform (sample_num 1), outside the user's training items; BCEWithLogitsLoss |
| SASRec encoder | hidden 64, 2 blocks, 2 heads, feed-forward 64 ReLU, pre-norm + final LayerNorm, dropout 0, learned positions | hidden_size 64, n_layers 2, n_heads 2, inner_size 64 relu, post-norm (LayerNorm on the input), dropout 0, learned positions |
| SASRec step | (a) 256 prefixes: 256 positive + 256 negative rows, each history encoded once (score_pairs); (b) NEXTROWS windows per step, every valid position scored | 256 prefixes (train_batch_size 256), each encoded over all 19 positions, the last position scored |
| SASRec negatives, loss | one per prefix, popularity^0.75; BCE | one per prefix, uniform; BPR (loss_type BCE does not exist in RecBole's SASRec) |
| embeddings | TorchRec EmbeddingCollection, fused Adagrad on the looked-up rows, in the backward | nn.Embedding, dense gradient of the whole table, torch Adagrad step |
| optimiser | Adagrad lr 0.05, weight decay 5e-4 | learner adagrad, learning_rate 0.05, weight_decay 5e-4 |
| timed | Trainer.train_step(plan, prebuilt batches); ATJT off | zero_grad, calculate_loss, backward, step; batches from RecBole's own loader, prebuilt |
| threads | 1 (OMP_NUM_THREADS=1, torch.set_num_threads(1)) | the same process |"""

RECBOLE_STACK = """## RecBole 1.2.1 on this stack

- Installed in a virtualenv of its own (the script's docstring has the commands) with
  `--no-deps`: its metadata asks for `ray<=2.6.3`, which nothing used here imports.
- pandas 3 breaks RecBole 1.2.1's dataset code (`Dataset._remap`: "Length of values (1) does not
  match length of index"), so pandas < 3 (2.3.3 here).
- numpy 2 removed `np.float_` and `np.complex_`, which RecBole's
  `Config.compatibility_settings` assigns on every `Config()`: the script replaces that method
  with one that only adds the old aliases numpy lacks (`patch_recbole`). Nothing else is
  patched. RecBole's evaluator (`np.float` in evaluator/metrics.py) is not used here.
- RecBole's `Config` reads its bundled copy of ml-100k for a dataset named `ml-100k`, whatever
  `data_path` says; the atomic files written from our prepared dataset are named
  `ml-100k-atjt` for that reason.
"""

DIFFERENCES = """## What differs between the two sides

- Data pipelines are not timed. Each side's batches come from its own pipeline before the rounds
  (ours: the numba samplers of `TrainingData`; RecBole: its `TrainDataLoader` with its negative
  sampler; with `worker: 0` a RecBole run pays that in its training process). The tables give
  the median time to build one batch, measured while building them, outside the rounds.
- Populations: ours trains on the k-fold training users (4/5 of the users), RecBole on every
  user's prefixes but the last two. The batches have the same shape and about the same mean
  history length (tables), so a step does the same amount of work on both sides.
- DIN: RecBole's DIN has one list of MLP sizes for its attention MLP and its output MLP, so the
  equal-size comparison sets our attention_hidden to [256, 64]; our default [32] is 8 times
  narrower. The activations differ and are not settings on our side: our attention MLP uses
  Dice (models/din.py), which standardises with batch statistics over the valid positions,
  RecBole's attention MLP a Sigmoid; RecBole uses Dice with BatchNorm in its output MLP only.
  With [256, 64] our attention's hidden layer is [1024, 19, 256] per step, and Dice over it is
  most of the step: a torch.profiler probe of 5 such steps (embedding 8, one thread) put 44% of the
  CPU time in aten::mul and about 70% in element-wise operators (mul, div, neg, add, sub,
  sigmoid), 18% in matrix products. RecBole also looks up the user embedding and never uses it;
  ours feeds it to the output MLP. Our attention is a softmax over valid positions, RecBole's
  masked scores are scaled, without softmax. RecBole builds the attention input [q; h; q - h;
  q * h] (8d wide) for every position, ours computes the first layer from h, t and h * t: the
  reason RecBole's step grows more from embedding 8 to 64 than ours.
- SASRec: RecBole encodes every prefix as its own sequence of 19 positions and scores only the
  last one. (a) does the same work (256 x 19 positions encoded, two scores per prefix); a
  profile of it shows matrix products, layout copies of the attention inputs and layer norms,
  no single hot spot. (b) encodes a window once and scores all its valid positions, so one
  encoding yields up to 19 prefixes: another training algorithm (the paper's), not the same one
  done faster. In data.mode=sliding one user's windows overlap, so an epoch of (b) scores each
  position of a sequence up to 19 times. Ours is pre-norm with a final LayerNorm, RecBole's
  post-norm with a LayerNorm on the input: two LayerNorms per block and one more either way. Ours uses
  learned positions counted from the most recent item (model.sasrec.positions=end), RecBole from
  the oldest; the cost is the same.
- Losses and negatives: BCE with negatives drawn by popularity^0.75 (ours) against BCE (DIN) or
  BPR (SASRec) with uniform negatives (RecBole); sampling is outside the timed region and the
  losses cost the same.
- Embedding updates: TorchRec's fused Adagrad updates only the rows a batch looked up, inside the
  backward; RecBole's nn.Embedding tables get a dense gradient and a torch Adagrad update of the
  whole table every step (1,683 x 64 for SASRec): a small share of a step on ml-100k.
"""


def results_table(title: str, meaning: str, sides: list[Side], unit: str, target: float, steps: int) -> list[str]:
    """One benchmark's table: every side's throughput and step time, our sides' ratios to RecBole's
    (the last side) by wall and CPU time, each the median over rounds of the per-round ratio."""
    ref = sides[-1]
    lines = [
        f"### {title}",
        "",
        meaning,
        "",
        f"| implementation | {unit} per step | mean history | {unit}/s, median (range) | ms/step wall | ms/step CPU | ours / RecBole, wall: median (range) | ours / RecBole, CPU: median (range) | target >= {target:g}x met (wall / CPU) | batch building ms (untimed) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for s in sides:
        cells, met = "- | -", "-"
        if s is not ref:
            rw, rc = ratios(s, ref, "wall"), ratios(s, ref, "cpu")
            cells = f"{fmt_range(rw, '.2f')}x | {fmt_range(rc, '.2f')}x"
            met = " / ".join("yes" if statistics.median(x) >= target else "no" for x in (rw, rc))
        wall_ms, cpu_ms = (1000 * statistics.median(getattr(s, w)) / steps for w in ("wall", "cpu"))
        lines.append(
            f"| {s.name} | {statistics.mean(s.samples):,.0f} | {s.mean_history:.1f} | {fmt_range(rates(s, 'wall'), ',.0f')} | {wall_ms:.0f} | {cpu_ms:.0f} | {cells} | {met} | {s.build_ms:.1f} |"
        )
    lines += ["", f"{unit.capitalize()}/s per round (wall): " + "; ".join(f"{s.name}: " + ", ".join(f"{x:,.0f}" for x in rates(s, "wall")) for s in sides), ""]
    return lines


def verdicts(results: list) -> list[str]:
    """One line per target and side of ours: met or not, with the figures it rests on."""
    lines = []
    for (model, title), sides in results:
        ref, target = sides[-1], TARGETS[model]
        for s in sides[:-1]:
            rw, rc = statistics.median(ratios(s, ref, "wall")), statistics.median(ratios(s, ref, "cpu"))
            ok = [x >= target for x in (rw, rc)]
            verdict = "met" if all(ok) else ("not met" if not any(ok) else "met by one measure only")
            near = " Within 0.1 of the target: not a firm verdict." if min(abs(rw - target), abs(rc - target)) <= 0.1 else ""
            lines.append(f"- {title}: {s.name} >= {target:g}x RecBole: {verdict} ({rw:.2f}x by wall time, {rc:.2f}x by CPU time).{near}")
    return lines


def report(args, cmd: str, results: dict, loads: tuple, totals: tuple) -> str:
    (l0, l1), (wall, cpu) = loads, totals
    meta = json.loads((args.data / "meta.json").read_text())
    lines = [
        "# Training throughput: atjt-dist vs RecBole 1.2.1 (DIN, SASRec; ml-100k)",
        "",
        f"Command: `{cmd}` in the RecBole virtualenv of the script's docstring (the script sets OMP_NUM_THREADS=1, NUMBA_NUM_THREADS=1 and torch.set_num_threads(1) itself)  ",
        f"Machine: {machine_line()}; torch threads {torch.get_num_threads()}; shared with other jobs (load average below)  ",
        f"Versions: {versions_line('torch', 'torchrec', 'recbole', 'numpy', 'pandas')}  ",
        f"Load average (1/5/15 min): {' / '.join(f'{x:.1f}' for x in l0)} at the start, {' / '.join(f'{x:.1f}' for x in l1)} at the end; the run {wall:.0f} s wall, {cpu:.0f} s CPU.  ",
        f"Dataset: `{args.data}` ({meta['num_users']:,} users, {meta['num_items']:,} items, {meta['num_interactions']:,} interactions).  ",
        f"Rounds: {args.warmup} warm-up steps per implementation, then {args.rounds} rounds of {args.steps} steps each, implementations alternating within a round (order reversed every other round), new batches every round; ratios are taken within a round.",
        "",
        "## Settings",
        "",
        SETTINGS.replace("DIMS", " and ".join(f"d = {d}" for d in args.din_dims)).replace("NEXTROWS", " or ".join(str(r) for r in args.next_item_rows)),
        "",
        "## Results",
        "",
    ]
    units = {"din": "rows", "sasrec": "prefixes"}
    meaning = {
        "din": "A row: one (history, target, label) sample; a step holds positives and as many negatives.",
        "sasrec": "A prefix: one training sample, a history scored against the item that follows it and one negative.",
    }
    for (model, title), sides in results:
        lines += results_table(title, meaning[model], sides, units[model], TARGETS[model], args.steps)
    lines += (
        ["Targets (ours / RecBole, training samples per second; medians of the per-round ratios):", ""] + verdicts(results) + ["", DIFFERENCES, RECBOLE_STACK]
    )
    return "\n".join(lines)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("/tmp/d/ml-100k"), help="prepared ml-100k (atjt_dist.data.prepare)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/recbole-bench"), help="where RecBole's atomic files go")
    ap.add_argument("--models", default="din,sasrec", help="comma-separated: din, sasrec")
    ap.add_argument("--steps", type=int, default=16, help="steps per implementation per round")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per implementation first")
    ap.add_argument("--next-item-rows", default="16,256", help="our next-item SASRec: windows per step, one run per value")
    ap.add_argument("--din-dims", default="8,64", help="DIN embedding dimensions, the same on both sides, one benchmark each (our default: 8)")
    ap.add_argument("--output", type=Path, default=None, help="Markdown report to write")
    args = ap.parse_args(argv)
    args.next_item_rows = [int(r) for r in args.next_item_rows.split(",") if r]
    args.din_dims = [int(d) for d in args.din_dims.split(",") if d]
    args.models = [m for m in args.models.split(",") if m]
    if set(args.models) - set(TARGETS):
        ap.error(f"--models: expected some of {', '.join(TARGETS)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    loads, started, cpu_started = [os.getloadavg()], time.perf_counter(), time.process_time()
    patch_recbole()
    write_atomic_files(args.data, args.work)
    ctx = init_distributed(DistConfig())
    count = args.warmup + args.rounds * args.steps
    benches = [("din", f"DIN, embedding {d}", d) for d in args.din_dims if "din" in args.models]
    benches += [("sasrec", "SASRec, hidden 64", None)] if "sasrec" in args.models else []
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for model, title, dim in benches:
            sides = din_sides(args, ctx, tmp, count, dim) if model == "din" else sasrec_sides(args, ctx, tmp, count)
            time_rounds(sides, args)
            results.append(((model, title), sides))
            for s in sides:  # drop the models (and DMP's references to the group) before shutdown
                s.run_step = None
                if s.trainer is not None:
                    s.trainer.close()
                    s.trainer = None
    shutdown(ctx)
    loads.append(os.getloadavg())
    cmd = "python benchmarks/recbole_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = report(args, cmd.strip(), results, tuple(loads), (time.perf_counter() - started, time.process_time() - cpu_started))
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
