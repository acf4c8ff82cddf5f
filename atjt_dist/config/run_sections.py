"""The run's remaining sections (the ATJT recogniser and schedule, the objective, training,
evaluation, run records, distribution, checkpoints) and :class:`Config`, the root of the tree."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from ..errors import ConfigError
from .data_sections import DataConfig
from .fields import knob
from .model_sections import RECOMMENDER_WEIGHT_DECAY, ModelConfig


@dataclass
class RecognizerConfig:
    """The noise-recognition model (atjt_dist.models.recognizers): the paper's DIN-like
    target-attention network, the same with reverse-position embeddings, or an item-level
    replaced-item detector (a small bidirectional Transformer)."""

    kind: Literal["din", "din_pos", "transformer"] = knob(
        "din",
        "'din': the paper's DIN-like network; 'din_pos': the same with a learned reverse-position "
        "embedding added to each history item; 'transformer': a bidirectional self-attention "
        "detector that scores every history item (P(item clean)) and derives the sequence's "
        "P(clean) from them (sequence_weight); it has no user table.",
    )
    embedding_dim: int = knob(8, "'din'/'din_pos': embedding dimension of its user, item and category tables.")
    attention_hidden: list[int] = knob([32], "'din'/'din_pos': attention MLP hidden sizes (input 4 x item dim = 64).")
    mlp_hidden: list[int] = knob([256, 64], "'din'/'din_pos': output MLP hidden sizes (input 40).")
    dropout: float = knob(0.5, "'din'/'din_pos': dropout of the attention MLP.")
    transformer_hidden: int = knob(
        16,
        "'transformer': hidden size of the blocks and of its item, category and position "
        "embeddings (a multiple of 4 and of transformer_heads). The defaults (hidden 16, 1 block, "
        "1 head, feed-forward 2H, no dropout) keep its step cost within 2x the din recogniser's "
        "and learn the corruption task faster than hidden 32, 2 blocks, 2 heads, 4H, dropout 0.1 "
        "(benchmarks/step.md, 'recogniser kinds').",
    )
    transformer_blocks: int = knob(1, "'transformer': bidirectional self-attention blocks.")
    transformer_heads: int = knob(1, "'transformer': attention heads (must divide transformer_hidden).")
    transformer_inner_factor: int = knob(2, "'transformer': width of each block's GELU feed-forward layer, in multiples of transformer_hidden.")
    transformer_dropout: float = knob(
        0.0,
        "'transformer': dropout of the embeddings, the attention probabilities and every block's outputs (a byte mask: p rounded to a multiple of 1/256).",
    )
    sequence_weight: Literal["product", "min"] = knob(
        "product",
        "'transformer': a sequence's P(clean) from its items' P(item clean): 'product' over the "
        "valid history positions (P(no item replaced), items taken as independent) or 'min' "
        "(the most suspicious item's). A row without history gets P(clean) = 1 (logit 20).",
    )

    def check(self, key: Any = None) -> None:
        """Raise ConfigError for values the recogniser cannot build (build_recognizer calls it;
        ``key(field)`` names a field)."""
        name = key or (lambda f: f"config key 'atjt.recognizer.{f}'")
        for f in ("embedding_dim", "transformer_hidden", "transformer_blocks", "transformer_heads", "transformer_inner_factor"):
            if getattr(self, f) < 1:
                raise ConfigError(f"{name(f)} must be >= 1, got {getattr(self, f)}")
        if self.transformer_hidden % 4:
            raise ConfigError(f"{name('transformer_hidden')} must be a multiple of 4 (TorchRec's embedding kernels), got {self.transformer_hidden}")
        if self.transformer_hidden % self.transformer_heads:
            raise ConfigError(f"{name('transformer_heads')}={self.transformer_heads} must divide {name('transformer_hidden')}={self.transformer_hidden}")
        for f in ("dropout", "transformer_dropout"):
            if not 0.0 <= getattr(self, f) < 1.0:
                raise ConfigError(f"{name(f)} must be in [0, 1), got {getattr(self, f)}")


@dataclass
class ATJTConfig:
    """Auxiliary Task Joint Training: partition, schedule, corruption and the joint objective."""

    enabled: bool = knob(True, "Train with ATJT weights; false = the baseline with w = 1.")
    num_parts: int = knob(2, "N: the training users are split into N parts and trained in N phases.")
    aux_weight: float = knob(100.0, "lambda: weight of the recogniser loss L_D in L_R + lambda*L_D.")
    detach: bool = knob(False, "Detach the weights w from the recommender loss.")
    weight_exponent: float = knob(
        2.0,
        "gamma: the recommender's rows are weighted by P(clean)^gamma (the paper: 1, w = P(clean); "
        "configs/paper.yaml). Above 1 sharpens the weights (0.4 -> 0.16 at gamma 2), moving them "
        "towards an oracle's 0 / 1; the exported scores and the audit stay P(clean). On the "
        "synthetic validation users (10 seeds) gamma 2 captured 68% of the oracle's AUC gain, "
        "gamma 1 39% (docs/results.md, section 4d).",
    )
    weight_scope: Literal["row", "user"] = knob(
        "row",
        "What the recogniser scores for a recommender row's weight in sliding mode: 'row' = the "
        "row's own window (its history prefix and target); 'user' = the user's whole training "
        "window (its last training item and the items before it), so that every row of a user "
        "shares one weight w_i, as each user's single row has it in paper mode (where the two "
        "are the same). Compared in docs/results.md, section 4d.",
    )
    weight_dropout: bool = knob(
        True,
        "The recogniser's dropout also drops units of the rows whose P(clean) weights the "
        "recommender's loss (the recogniser is in training mode for its weights as for L_D); "
        "false = those rows pass its dropout layers unchanged, as in eval mode, in the same "
        "pass (batch statistics unchanged). Compared in docs/results.md.",
    )
    isolate_weighted_users: bool = knob(
        True,
        "Keep L_R away from the recogniser's user-embedding rows of the users it weights: their "
        "rows are read without gradient, so neither L_R nor weight decay moves them (otherwise "
        "Adagrad turns L_R's tiny gradients into full-size steps on exactly those rows, leaking "
        "the recommender's loss across the cross-fitting boundary). false = the authors' graph.",
    )
    variant: Literal["joint", "no_aux", "two_stage"] = knob(
        "joint",
        "'joint': the method; 'no_aux': the 'w/o auxiliary task' ablation (weights learned "
        "from L_R alone with a penalty, no L_D); 'two_stage': each recogniser is trained "
        "first, then frozen, and its detached weights reweight the recommender.",
    )
    no_aux_penalty: float = knob(0.04, "'no_aux' ablation: coefficient of -mean(w^2) in the loss.")
    noise_fraction: float = knob(0.5, "Share of each recogniser batch's rows that are corrupted.")
    replace_count: int = knob(1, "History items replaced in a corrupted row.")
    per_row_position: bool = knob(
        True,
        "Draw the replaced position r per row, uniform over the row's own history (1 = most "
        "recent). false = the authors' rule: one r shared by the batch, uniform in [1, shortest "
        "history in the batch], which in sliding mode is r = 1 in most batches (the paper preset).",
    )
    replacement: Literal["uniform", "popularity"] = knob("uniform", "Distribution of the replacement item: uniform over the vocabulary or by popularity.")
    recognizer_batch_size: int = knob(256, "Rows per recogniser batch (global, across ranks).")
    recognizer_warmup_steps: int = knob(
        600,
        "Recogniser budget: steps at the start of each joint phase in which only the phase's "
        "recogniser trains (on its corrupted B^D batches), so that its weights carry information "
        "before they reweight the recommender (600: corrupted-vs-clean AUC about 0.92 on the "
        "synthetic data, docs/results.md). 0 = the paper's schedule.",
    )
    recognizer_batches_per_step: int = knob(
        1,
        "Recogniser budget: K, the recogniser batches per part of B^D that each step trains on (a step reads K * (N-1) of them; the paper: 1).",
    )
    recognizer_lrs: list[float] = knob(
        [0.05],
        "Adagrad learning rate of recogniser j (phase j); the last repeats (paper: 0.023, 0.025; "
        "0.05 learns the corruption task fastest in the probes of docs/results.md, 0.2 diverges).",
    )
    recognizer_weight_decay: float = knob(
        5e-4,
        "L2 weight decay of the recognisers' Adagrad, tables included (the paper's single weight "
        "decay, 5e-4, under which the recognisers of docs/results.md were measured); the "
        "recommender's is train.weight_decay.",
    )
    recognizer: RecognizerConfig = knob(RecognizerConfig(), "The noise recogniser's architecture.")


@dataclass
class ObjectiveConfig:
    """Which loss trains the recommender (see atjt_dist/objective.py)."""

    name: Literal["auto", "bce", "atjt", "tce", "rce", "oracle", "oracle_item"] = knob(
        "auto",
        "'bce' (the base model), 'atjt', 'tce' (truncated loss), 'rce' (reweighted loss), or on "
        "data with planted noise the oracles: 'oracle' (weight 0 for planted-noise users) and "
        "'oracle_item' (planted items removed from histories, weight 0 for planted targets); "
        "'auto' = atjt if atjt.enabled else bce.",
    )
    tce_max_drop: float = knob(0.2, "T-CE: the largest share of a batch's rows dropped (eps_max; Wang et al.: 0.2).")
    tce_ramp_steps: int = knob(
        30000,
        "T-CE: steps over which the drop rate rises from 0 to tce_max_drop (Wang et al.: 30000 iterations; set it to a fraction of a shorter run's steps).",
    )
    tce_exponent: float = knob(1.0, "T-CE: shape of the ramp, eps(t) = eps_max * min(t/T, 1)^exponent (1 = linear).")
    loss_backend: Literal["auto", "torch", "triton"] = knob(
        "auto",
        "Implementation of the weighted BCE (atjt_kernels.weighted_bce): 'auto' = the fused Triton "
        "kernel on CUDA for at least loss_triton_min_rows rows, torch's formula otherwise; "
        "'torch' or 'triton' always (Triton on CPU needs TRITON_INTERPRET=1).",
    )
    loss_triton_min_rows: int = knob(
        1 << 10,
        "'auto': rows from which the Triton kernel is used on CUDA (measured on an H200, "
        "benchmarks/kernel.md: faster than torch's formula at every size from 2^10 rows on).",
    )
    rce_beta: float = knob(0.25, "R-CE: positives weighted sigmoid(x)^beta, negatives (1-sigmoid(x))^beta (Wang et al.: 0.05..1, 0.25).")


@dataclass
class TrainConfig:
    """The recommender's optimisation and the loop."""

    epochs: int = knob(4, "E: epochs per phase (the whole run with ATJT off has N*E epochs).")
    batch_size: int = knob(256, "Positives per global batch (each paired with its negative).")
    max_steps: Optional[int] = knob(None, "Stop after this many steps in total (smoke runs).")
    lr: float = knob(
        0.05,
        "Adagrad learning rate of the recommender (the paper's 8.15e-4, configs/paper.yaml, does "
        "not get past the popularity ranker in a few thousand steps; docs/results.md).",
    )
    lr_decay: Literal["none", "linear", "cosine"] = knob(
        "linear",
        "Schedule of the recommender's learning rate over the steps that train it: 'none' keeps "
        "train.lr (the paper); 'linear' and 'cosine' hold it for the first lr_decay_start share "
        "of those steps, then decay it to 0 at the last one (train.max_steps included). The "
        "recognisers keep atjt.recognizer_lrs. Chosen on two validation folds of ml-100k, where "
        "it brought DIN's seed-to-seed sd of AUC under 0.01 (docs/results.md, section 7).",
    )
    lr_decay_start: float = knob(
        0.5,
        "Share of the recommender's steps, in [0, 1), at train.lr before train.lr_decay starts "
        "(0.5: the best mean validation AUC of 0, 0.5 on ml-100k, docs/results.md).",
    )
    weight_decay: Optional[float] = knob(
        None,
        "L2 weight decay of the recommender's Adagrad, tables included (on a fused table: the "
        "rows a batch touches); the recognisers' is atjt.recognizer_weight_decay. null = the base "
        "model's own, chosen on validation users (docs/results.md, section 7d): 0 for din, dcn and "
        "wide_deep, the paper's 5e-4 (configs/paper.yaml) for sasrec, fearec and s3rec.",
    )
    log_every: int = knob(50, "Log a line (rank 0) and a JSONL record every this many steps (S3Rec pre-training: a line).")
    progress_bar: bool = knob(True, "Show a progress bar on rank 0 (also off when not a TTY).")


@dataclass
class EvalConfig:
    """Test metrics over the stored candidates."""

    k: int = knob(5, "Cut-off K of HR@K and NDCG@K.")
    batch_users: int = knob(1024, "Test users scored per forward pass (global).")
    population_stats_batches: int = knob(
        64,
        "Before evaluation, the statistics of batch-normalising layers (DIN's Dice) are recomputed "
        "exactly over the last this many training batches (PreciseBN); 0 = use the running averages, "
        "which trail the weights.",
    )


@dataclass
class LogConfig:
    """What a run records besides metrics.jsonl (atjt_dist.runlog; plotted by atjt_dist.report)."""

    tensorboard: Optional[bool] = knob(
        None,
        "Also write the records as TensorBoard event files in the run directory (rank 0; needs "
        "the viz extra: pip install 'atjt-dist[viz]'). null (default) = when TensorBoard is "
        "installed; true = always, with a warning (and metrics.jsonl only) where it is not; "
        "false = never.",
    )
    weight_hist_bins: int = knob(
        20,
        "Bins over [0, 1] of the weight histograms: each phase's P(clean) on corrupted vs clean "
        "recogniser rows and on planted-noise vs clean users ('weight_hist' records), and the "
        "final per-user weights ('user_weights').",
    )
    user_weights: bool = knob(
        True,
        "After training a run with a recogniser, score every training user with the recogniser "
        "that did not train on it and write RUN_DIR/weights.parquet (user, weight, and the "
        "planted-noise ground truth where the dataset has one).",
    )


@dataclass
class DistConfig:
    """Processes, devices, sharding of the embedding tables, and the dense parameters' backend."""

    backend: Literal["auto", "gloo", "nccl"] = knob("auto", "Process-group backend; auto = nccl on CUDA, gloo on CPU.")
    device: Literal["auto", "cpu", "cuda"] = knob("auto", "Device; auto = cuda when available.")
    sharding: str = knob(
        "auto",
        "Sharding type of every embedding table (recommender and recognisers): auto (TorchRec's "
        "planner chooses per table for this machine's topology), data_parallel, table_wise, "
        "row_wise, column_wise or table_row_wise.",
    )
    table_sharding: dict[str, str] = knob(
        {},
        "Per-table sharding types overriding dist.sharding, e.g. {rec_item: row_wise, rg0_user: "
        "table_wise} (on the command line also rec_item=row_wise,rg0_user=table_wise). Tables are "
        "<prefix>_item, <prefix>_category and <prefix>_user with prefixes rec (the recommender), "
        "rg0, rg1, ... (the recognisers; the transformer recogniser has no user table), plus "
        "model-specific ones (e.g. rec_wide_*); unknown "
        "names are an error that lists the model's tables.",
    )
    dense: Literal["ddp", "deepspeed"] = knob(
        "ddp",
        "Backend of the dense (non-table) parameters: ddp = TorchRec's DistributedDataParallel "
        "with torch Adagrad; deepspeed = a DeepSpeed ZeRO engine with the same Adagrad (the "
        "tables' fused optimiser stays in TorchRec either way).",
    )
    zero_stage: int = knob(
        1,
        "DeepSpeed ZeRO stage with dist.dense=deepspeed: 1 partitions the optimiser state, 2 also "
        "the gradients (0 = plain data parallelism). Ignored when dist.deepspeed_config is given.",
    )
    deepspeed_config: Optional[str] = knob(
        None,
        "A DeepSpeed JSON config file to use instead of the generated one (dist.dense=deepspeed). "
        "Missing batch-size keys are filled in, gradient_clipping defaults to 0.0 (DeepSpeed's own "
        "default, 1.0, would silently clip), fp16/bf16 are refused (the model trains in fp32).",
    )
    pipeline: bool = knob(
        False,
        "CUDA only: build and copy the next step's batches to the GPU (pinned memory, side stream) while the current step runs. Ignored on CPU.",
    )
    timeout_s: float = knob(600.0, "Collective timeout: a dead peer ends the run after at most this.")
    reuse_host_memory: bool = knob(
        True,
        "Let glibc's malloc keep freed blocks up to 32 MiB and up to 1 GiB of free heap for reuse "
        "(mallopt), so a step's large temporaries do not come back as fresh, page-faulting pages "
        "(atjt_dist/host_memory.py; DIN's large-scale CPU step 1.09x by CPU, 1.15x by wall in an A/B, same numbers). "
        "false = the C library's defaults. No effect where the C library is not glibc.",
    )

    def check(self, key: Any = None) -> None:  # noqa: ARG002 - the sections' interface
        """Value checks that need no model (table names are checked when the model is sharded)."""
        kinds = ("auto", "data_parallel", "table_wise", "row_wise", "column_wise", "table_row_wise")
        for name, kind in [("dist.sharding", self.sharding)] + [(f"dist.table_sharding.{t}", k) for t, k in self.table_sharding.items()]:
            if kind not in kinds:
                raise ConfigError(f"config key '{name}': expected one of {', '.join(kinds)}, got {kind!r}")
        if self.zero_stage not in (0, 1, 2):
            raise ConfigError(
                f"config key 'dist.zero_stage' must be 0, 1 or 2, got {self.zero_stage} (stage 3 partitions "
                "the parameters themselves, which the sharded model's forward cannot gather)"
            )
        if self.deepspeed_config is not None and not Path(self.deepspeed_config).is_file():
            raise ConfigError(f"config key 'dist.deepspeed_config': file {self.deepspeed_config} does not exist")


@dataclass
class CheckpointConfig:
    """Checkpoints of the whole training state in RUN_DIR/checkpoints (atjt_dist/checkpoint.py)."""

    every: int = knob(
        1000,
        "Save a checkpoint every this many training steps; 0 = only at the end of training (a "
        "checkpoint is always saved at the end). A step that saves one also ends a log window.",
    )
    keep: int = knob(
        2,
        "Keep the newest this many complete checkpoints; older ones are deleted once a new one is "
        "committed. 2 or more lets a resume fall back to the previous one when the newest is damaged.",
    )


@dataclass
class Config:
    """The whole configuration of a run."""

    seed: int = knob(42, "Seed of everything: same config + seed = same result.")
    run_dir: Optional[str] = knob(None, "Run directory (default runs/<time>-<model>-<method>).")
    resume: bool = knob(
        False,
        "Continue the run in run_dir from its newest complete, undamaged checkpoint (with none, "
        "start from scratch and say so in the log). Implied when torchrun restarts the workers "
        "(--max-restarts). Without it, a run_dir that already holds checkpoints is refused.",
    )
    data: DataConfig = knob(DataConfig(), "Dataset and sample construction.")
    model: ModelConfig = knob(ModelConfig(), "Base recommender.")
    atjt: ATJTConfig = knob(ATJTConfig(), "ATJT.")
    objective: ObjectiveConfig = knob(ObjectiveConfig(), "The training objective (bce, atjt, tce, rce).")
    train: TrainConfig = knob(TrainConfig(), "Optimisation and loop.")
    eval: EvalConfig = knob(EvalConfig(), "Evaluation.")
    log: LogConfig = knob(LogConfig(), "Run records: TensorBoard, weight histograms, per-user weights.")
    dist: DistConfig = knob(DistConfig(), "Distribution.")
    checkpoint: CheckpointConfig = knob(CheckpointConfig(), "Checkpoints and resuming.")

    def recommender_weight_decay(self) -> float:
        """train.weight_decay, or where it is null the base model's own (RECOMMENDER_WEIGHT_DECAY)."""
        wd = self.train.weight_decay
        return RECOMMENDER_WEIGHT_DECAY[self.model.name] if wd is None else wd
