"""Optimisers: fused sparse Adagrad for the embedding tables, and the dense backend for the rest.

METHOD.md section 5: Adagrad everywhere; the recommender at ``train.lr``, recogniser j at
``atjt.recognizer_lrs[j]`` (the last value repeats); L2 weight decay ``train.weight_decay`` (null:
the base model's own) for the recommender and ``atjt.recognizer_weight_decay`` for the recognisers.

Embedding tables sharded model-parallel (table-, row-, column-wise) are updated inside the
backward pass by FBGEMM's exact Adagrad (TorchRec's fused optimiser): the optimiser class and its
arguments are attached to each table's parameter before sharding, so every table gets its
model's learning rate. Weight decay on such a table is applied to the rows a batch touches
(sparse L2), the usual semantics for embedding tables. Data-parallel tables are plain
replicated tensors with dense gradients (TorchRec reduces them with its own DDP); like the dense
layers they are trained by a torch Adagrad with ordinary L2 weight decay.

The dense backend (:class:`DenseBackend`) is what the trainer calls for everything that is not
a fused table: ``forward``, ``backward(loss, idle)``, ``step``, ``zero_grad`` and the state.

- :class:`TorchAdagrad` (``dist.dense=ddp``): DMP's DDP averages the dense gradients; a torch
  Adagrad steps the dense layers and the data-parallel tables. Its ``state_dict`` is the torch
  optimiser's (so a checkpoint can key it by parameter name).
- :class:`DeepSpeedAdagrad` (``dist.dense=deepspeed``): a DeepSpeed ZeRO engine (stage 0-2) owns
  the dense layers with the same Adagrad as a client optimiser; DMP does not wrap them in DDP.
  The tables are not the engine's: DeepSpeed re-points its parameters into flat buffers, and a
  table's parameter is a slice of FBGEMM's table batch, so data-parallel tables keep a torch
  Adagrad beside the engine (TorchRec's own DDP still reduces them).

Idle parameters. Each step leaves some dense parameters without a real gradient (the other
phases' recognisers; in two-stage training the model not being trained); they take part through
a zero-weighted touch (joint.JointModel.idle_dense_parameters) and must not move. With torch
Adagrad their gradients are dropped before the step. ZeRO reduces gradients into its own
partitioned buffers during the backward, so there is nothing left to drop; instead the engine's
Adagrad has no weight decay, the L2 term is added to the loss for the step's active parameters
only (its gradient wd * p is what torch Adagrad adds), and a zero gradient is an exact no-op for
Adagrad (the sum of squares gains 0, the update is 0 / (sqrt(sum) + eps) = 0).

Gradient scale. The trainer back-propagates world x its share of the global loss because DDP and
TorchRec average gradients over ranks; DeepSpeed averages too (it divides the summed gradients
by the data-parallel world size, gradient_predivide_factor 1), so both give the gradient of the
global loss.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from typing import Any, Callable, Optional

import torch
from fbgemm_gpu.split_table_batched_embeddings_ops_training import WeightDecayMode
from torch import nn
from torch.distributed.optim import _apply_optimizer_in_backward
from torchrec.optim import optimizers as trec_optim
from torchrec.optim.optimizers import in_backward_optimizer_filter

from .config import Config

log = logging.getLogger(__name__)

ADAGRAD_EPS = 1e-10  # torch.optim.Adagrad's default, used for the tables too
_RECOGNIZER = re.compile(r"(?:^|\.)recognizers\.(\d+)\.")


def learning_rate(cfg: Config, param_name: str) -> float:
    """The learning rate of a parameter, from the model it belongs to."""
    m = _RECOGNIZER.search(param_name)
    if m is None:
        return cfg.train.lr
    lrs = cfg.atjt.recognizer_lrs
    return lrs[min(int(m.group(1)), len(lrs) - 1)]


def weight_decay(cfg: Config, param_name: str) -> float:
    """The L2 weight decay of a parameter, from the model it belongs to."""
    return cfg.recommender_weight_decay() if is_recommender_parameter(param_name) else cfg.atjt.recognizer_weight_decay


def _is_table(name: str) -> bool:
    return ".embeddings.embeddings." in name or name.startswith("embeddings.embeddings.")


def build_optimizers(model: nn.Module, cfg: Config) -> Callable[..., "DenseBackend"]:
    """Attach the fused Adagrad to every embedding table of ``model`` (before sharding) and
    return a factory ``(sharded_model, ctx) -> DenseBackend`` for the rest."""
    for name, param in model.named_parameters():
        if _is_table(name):
            _apply_optimizer_in_backward(
                trec_optim.Adagrad,
                [param],
                {
                    "lr": learning_rate(cfg, name),
                    "eps": ADAGRAD_EPS,
                    "weight_decay": weight_decay(cfg, name),
                    "weight_decay_mode": WeightDecayMode.L2,
                },
            )

    def dense_backend(sharded: nn.Module, ctx) -> DenseBackend:
        if cfg.dist.dense == "deepspeed":
            return DeepSpeedAdagrad(sharded, cfg, ctx)
        return TorchAdagrad(sharded, cfg)

    return dense_backend


def dense_parameters(sharded: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of everything not updated by a fused optimiser: the dense layers and
    the data-parallel tables."""
    return [(n, p) for n, p in in_backward_optimizer_filter(sharded.named_parameters()) if p.requires_grad]


def is_recommender_parameter(name: str) -> bool:
    """Whether a parameter (or fused optimiser key) belongs to the recommender, not a recogniser."""
    return _RECOGNIZER.search(name) is None


def _adagrad(named: list[tuple[str, nn.Parameter]], cfg: Config, decay: bool = True, cls: type = torch.optim.Adagrad) -> Optional[torch.optim.Optimizer]:
    """One Adagrad with a parameter group per (model, learning rate, weight decay) (None without
    parameters); each group says whether it is the recommender's (``group["recommender"]``:
    train.lr_decay scales those). ``decay=False``: no weight decay in the optimiser (DeepSpeed
    adds it to the loss)."""
    groups: dict[tuple[bool, float, float], list[nn.Parameter]] = {}
    for name, param in named:
        wd = weight_decay(cfg, name) if decay else 0.0
        groups.setdefault((is_recommender_parameter(name), learning_rate(cfg, name), wd), []).append(param)
    if not groups:
        return None
    return cls(
        [{"params": ps, "lr": lr, "weight_decay": wd, "recommender": rec} for (rec, lr, wd), ps in groups.items()],
        lr=cfg.train.lr,
        eps=ADAGRAD_EPS,
    )


def lr_decay_factor(cfg: Config, index: int, total: int) -> float:
    """train.lr's multiplier at the recommender's step ``index`` (0-based) of ``total``:
    1 before train.lr_decay_start, then falling linearly (or along a half cosine) to
    1 / (decayed steps) at the last step, i.e. to 0 just after it (train.lr_decay)."""
    t = cfg.train
    if t.lr_decay == "none" or total <= 0:
        return 1.0
    start = int(t.lr_decay_start * total)
    if index < start:
        return 1.0
    remaining = min(1.0, max(0.0, (total - index) / (total - start)))
    if t.lr_decay == "cosine":
        return 0.5 * (1.0 - math.cos(math.pi * remaining))
    return remaining


def set_recommender_lr(sharded: nn.Module, dense: "DenseBackend", lr: float) -> None:
    """Set the recommender's learning rate, in its fused table optimisers (applied by their
    next backward) and its groups of the dense optimisers; the recognisers' stay as they are."""
    for key, optimizer in sharded.fused_optimizer.optimizers:
        if is_recommender_parameter(key):
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.step()  # a fused optimiser's step only hands its lr to the kernel
    for group in dense.lr_groups():
        if group.get("recommender"):
            group["lr"] = lr


class LazyAdagrad(torch.optim.Optimizer):
    """torch.optim.Adagrad's update (its functional form, same arithmetic) with the state
    created at the first step instead of at construction.

    For DeepSpeed: ZeRO 1/2 replaces each parameter group's tensors by a flat partition after
    the optimiser is built. torch's Adagrad has already created its state for the old tensors,
    and DeepSpeed (0.19.8, since its PR #3401) works around that by rebuilding any
    ``torch.optim.Adagrad`` from its ``defaults`` over all partitions in one group, which drops
    the per-group learning rates (the recommender's and each recogniser's) and, at stage 2 with
    several groups, fails (IndexError in ``_get_flat_partition_unpadded``). This class is not a
    torch Adagrad, so DeepSpeed keeps its groups.
    """

    def __init__(self, params, lr: float, eps: float = ADAGRAD_EPS, weight_decay: float = 0.0) -> None:
        super().__init__(params, dict(lr=lr, eps=eps, weight_decay=weight_decay, lr_decay=0.0))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ARG002 - torch's signature
        from torch.optim.adagrad import adagrad

        for group in self.param_groups:
            params, grads, sums, steps = [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["sum"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                params.append(p)
                grads.append(p.grad)
                sums.append(state["sum"])
                steps.append(state["step"])
            if params:
                adagrad(
                    params,
                    grads,
                    sums,
                    steps,
                    lr=group["lr"],
                    weight_decay=group["weight_decay"],
                    lr_decay=group["lr_decay"],
                    eps=group["eps"],
                    maximize=False,
                )
        return None


# ---------------------------------------------------------------------------------------------
# Dense backends
# ---------------------------------------------------------------------------------------------


class DenseBackend:
    """The dense parameters' side of a training step (see the module docstring)::

    out = dense.forward(rec, aux, phase, stage)   # the sharded model (through DeepSpeed's engine)
    ... losses ...
    dense.backward(loss, idle)                     # tables update inside (fused optimiser)
    dense.step()
    dense.zero_grad()
    """

    def forward(self, *args, **kwargs) -> Any:
        raise NotImplementedError

    def backward(self, loss: torch.Tensor, idle: list[nn.Parameter]) -> None:
        raise NotImplementedError

    def step(self) -> None:
        raise NotImplementedError

    def zero_grad(self, set_to_none: bool = True) -> None:  # noqa: ARG002 - optimiser-like signature
        raise NotImplementedError

    def lr_groups(self) -> list[dict]:
        """Every parameter group of the dense optimisers (their "lr" may be changed)."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:
        raise NotImplementedError


class TorchAdagrad(DenseBackend):
    """DMP's DDP for the gradients, torch Adagrad for the update (``dist.dense=ddp``).

    Optimiser-like: ``state_dict``/``load_state_dict``/``param_groups`` are the torch Adagrad's,
    so a checkpoint can key the state by parameter name.
    """

    def __init__(self, sharded: nn.Module, cfg: Config) -> None:
        self.model = sharded
        self.optimizer = _adagrad(dense_parameters(sharded), cfg)
        if self.optimizer is None:
            raise ValueError("the model has no dense parameters to optimise")

    @property
    def param_groups(self) -> list[dict]:
        return self.optimizer.param_groups

    def forward(self, *args, **kwargs) -> Any:
        return self.model(*args, **kwargs)

    def backward(self, loss: torch.Tensor, idle: list[nn.Parameter]) -> None:
        loss.backward()
        for p in idle:
            p.grad = None  # untouched by this step: no weight decay, no Adagrad state change

    def step(self) -> None:
        self.optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def lr_groups(self) -> list[dict]:
        return self.optimizer.param_groups

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)


class _DenseView(nn.Module):
    """The module a DeepSpeed engine sees: the dense layers' parameters (the very Parameter
    objects of the sharded model) and a forward that runs the whole sharded model.

    The sharded model is kept out of the module tree on purpose: the engine broadcasts, flattens
    and partitions what it finds there, and sharded tables differ from rank to rank.
    """

    def __init__(self, model: nn.Module, params: list[nn.Parameter]) -> None:
        super().__init__()
        self.params = nn.ParameterList(params)
        self.__dict__["model"] = model  # not a submodule

    def forward(self, *args, **kwargs) -> Any:
        return self.model(*args, **kwargs)


def deepspeed_config(cfg: Config, world: int) -> dict:
    """The DeepSpeed JSON config of a run: generated from ours, or dist.deepspeed_config
    completed and checked (see DistConfig)."""
    d = cfg.dist
    micro = cfg.train.batch_size // world  # positives per rank (DeepSpeed only logs with it)
    if d.deepspeed_config is None:
        ds: dict = {
            "zero_optimization": {"stage": d.zero_stage},
            # DeepSpeed clips at 1.0 unless told otherwise; the method does not clip.
            "gradient_clipping": 0.0,
        }
    else:
        with open(d.deepspeed_config) as f:
            ds = json.load(f)
        for section in ("optimizer", "scheduler"):
            if section in ds:
                raise ValueError(
                    f"{d.deepspeed_config}: remove the '{section}' section; the dense optimiser is the "
                    "project's Adagrad (train.lr, atjt.recognizer_lrs, train.weight_decay, atjt.recognizer_weight_decay)"
                )
        for precision in ("fp16", "bf16"):
            if ds.get(precision, {}).get("enabled", False):
                raise ValueError(f"{d.deepspeed_config}: {precision} is not supported; the model trains in fp32")
        stage = ds.get("zero_optimization", {}).get("stage", 0)
        if stage not in (0, 1, 2):
            raise ValueError(f"{d.deepspeed_config}: zero_optimization.stage={stage}; only 0, 1 and 2 are supported")
        if ds.get("gradient_accumulation_steps", 1) != 1:
            raise ValueError(f"{d.deepspeed_config}: gradient_accumulation_steps must be 1 (one optimiser step per batch)")
        ds.setdefault("gradient_clipping", 0.0)
    ds.setdefault("train_micro_batch_size_per_gpu", micro)
    ds.setdefault("gradient_accumulation_steps", 1)
    ds.setdefault("train_batch_size", ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * world)
    ds.setdefault("steps_per_print", 10**12)  # the trainer logs
    ds["zero_allow_untested_optimizer"] = True  # a client torch.optim.Adagrad under ZeRO
    return ds


class DeepSpeedAdagrad(DenseBackend):
    """A DeepSpeed ZeRO engine over the dense layers (``dist.dense=deepspeed``), with the same
    Adagrad as a client optimiser; data-parallel tables keep a torch Adagrad beside it."""

    def __init__(self, sharded: nn.Module, cfg: Config, ctx) -> None:
        if ctx.device.type == "cpu":
            os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed is imported
        # DeepSpeed insists on LOCAL_RANK (launchers set it; a single process without one does not).
        os.environ.setdefault("LOCAL_RANK", str(ctx.local_rank))
        import deepspeed

        named = dense_parameters(sharded)
        layers = [(n, p) for n, p in named if not _is_table(n)]
        tables = [(n, p) for n, p in named if _is_table(n)]
        self.model = sharded
        self.layer_params = [p for _, p in layers]
        self.layer_decay = {id(p): weight_decay(cfg, n) for n, p in layers}
        self.table_optimizer = _adagrad(tables, cfg)
        client = _adagrad(layers, cfg, decay=False, cls=LazyAdagrad)  # L2 is a loss term: see backward
        if client is None:
            raise ValueError("the model has no dense layers for DeepSpeed to manage")
        self.config = deepspeed_config(cfg, ctx.world)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=_DenseView(sharded, self.layer_params), optimizer=client, config=self.config, dist_init_required=False
        )
        self._idle_key: Optional[int] = None
        self._active: list[tuple[float, nn.Parameter]] = []

    def forward(self, *args, **kwargs) -> Any:
        return self.engine(*args, **kwargs)

    def _decayed_params(self, idle: list[nn.Parameter]) -> list[tuple[float, nn.Parameter]]:
        """(weight decay, parameter) of the step's active layers with a non-zero weight decay."""
        key = id(idle)  # idle_dense_parameters returns one cached list per (phase, stage)
        if key != self._idle_key:
            skip = {id(p) for p in idle}
            self._active = [(self.layer_decay[id(p)], p) for p in self.layer_params if id(p) not in skip and self.layer_decay[id(p)]]
            self._idle_key = key
        return self._active

    def backward(self, loss: torch.Tensor, idle: list[nn.Parameter]) -> None:
        decayed = self._decayed_params(idle)
        if decayed:
            loss = loss + 0.5 * torch.stack([wd * p.float().pow(2).sum() for wd, p in decayed]).sum()
        self.engine.backward(loss)
        for p in idle:
            if p.grad is not None:  # ZeRO 0 keeps grads until the step (table optimiser too)
                p.grad = None

    def step(self) -> None:
        self.engine.step()
        if self.table_optimizer is not None:
            self.table_optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.engine.zero_grad()
        if self.table_optimizer is not None:
            self.table_optimizer.zero_grad(set_to_none=set_to_none)

    def lr_groups(self) -> list[dict]:
        # ZeRO's optimiser keeps the client's groups (their params replaced by its partitions).
        tables = self.table_optimizer.param_groups if self.table_optimizer is not None else []
        return [*self.optimizer.param_groups, *tables]

    def state_dict(self) -> dict:
        """This rank's state: ZeRO partitions the optimiser state, so it loads on the same
        number of processes (the engine's own checkpoints, :meth:`save_checkpoint`, are the
        portable form)."""
        import torch.distributed as dist
        from torch.utils._pytree import tree_map

        return {
            "rank": dist.get_rank(),
            "world": dist.get_world_size(),
            # ZeRO hands out views of its flat buffers (with autograd history): detached here so
            # that the state can be copied and saved like any other.
            "engine": tree_map(lambda t: t.detach() if isinstance(t, torch.Tensor) else t, self.optimizer.state_dict()),
            "tables": self.table_optimizer.state_dict() if self.table_optimizer is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        import torch.distributed as dist

        rank, world = dist.get_rank(), dist.get_world_size()
        if state["world"] != world or state["rank"] != rank:
            raise ValueError(f"DeepSpeed dense state of rank {state['rank']} of {state['world']} cannot load into rank {rank} of {world}")
        shards = [None] * world
        shards[rank] = state["engine"]
        if hasattr(self.optimizer, "single_partition_of_fp32_groups"):  # ZeRO 1 and 2: partitioned
            self.optimizer.load_state_dict(shards, load_optimizer_states=True, load_from_fp32_weights=True)
        else:  # ZeRO 0: the client optimiser itself
            self.optimizer.load_state_dict(state["engine"])
        if self.table_optimizer is not None:
            self.table_optimizer.load_state_dict(state["tables"])

    # The engine's checkpoint format (what atjt_dist.checkpoint uses for DeepSpeed runs).
    def save_checkpoint(self, save_dir: str, tag: Optional[str] = None, client_state: Optional[dict] = None, **kwargs) -> Any:
        client = dict(client_state or {})
        if self.table_optimizer is not None:
            client["table_optimizer"] = self.table_optimizer.state_dict()
        return self.engine.save_checkpoint(save_dir, tag=tag, client_state=client, **kwargs)

    def load_checkpoint(self, load_dir: str, tag: Optional[str] = None, **kwargs) -> Any:
        path, client = self.engine.load_checkpoint(load_dir, tag=tag, **kwargs)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint {tag!r} under {load_dir}")
        if self.table_optimizer is not None:
            self.table_optimizer.load_state_dict(client["table_optimizer"])
        return path, client
