"""Check the CUDA path of the training step on a GPU machine (one short run, < 5 minutes).

    python benchmarks/gpu_check.py [--steps 60] [--batch 256] [--output gpu_check.json]
    python benchmarks/gpu_check.py --cpu [--stand-in]   # on CPU, tiny: checks the script itself

The GPU machines lent to this project have torch, Triton, numba and pyarrow but no TorchRec,
FBGEMM-GPU or DeepSpeed (and nothing can be installed there). The script therefore checks what
it can and says, part by part, what it could not:

1. ``nccl``: a single-process NCCL group through ``atjt_dist.distributed.init_distributed``
   (device cuda, backend auto), one all-reduce, clean shutdown.
2. ``prefetch``: ``atjt_dist.prefetch.DevicePrefetcher`` on CUDA (``dist.pipeline``): the
   batches arrive on the GPU equal to the host ones, in order, through pinned memory and a
   side stream.
3. ``step``: the training step's dense part, real code (joint.JointModel with DIN and the
   recognisers, objective.compute_losses with the Triton loss, torch Adagrad, the idle
   parameters' grads dropped), with TorchRec's EmbeddingCollection replaced by a plain-torch
   stand-in (one nn.Embedding per table, same KeyedJaggedTensor interface) when TorchRec is
   missing; samples/s with the pipeline off (batches built and copied in the step) and on.
4. ``placement``: every parameter and buffer of the joint model (Dice's running statistics
   included) sits on the device after ``distributed.place_dense`` and the timed steps.
5. ``loss_backends``: the step's loss and gradients with the fused Triton loss forced
   (``objective.loss_backend=triton``) equal those of torch's formula on the same forward.
6. ``syncs``: ``torch.cuda.set_sync_debug_mode("warn")`` around a few steps: every host sync
   is reported with the first frame of our code that caused it. The design goal is none;
   the stand-in's KeyedJaggedTensor construction (``SequenceBatch.kjt``: boolean-mask indexing
   of the padded history) is a known one, as are TorchRec's own (its input distribution learns
   the split sizes on the host).

Not checkable without TorchRec/FBGEMM-GPU/DeepSpeed: the sharded tables (FBGEMM's fused CUDA
kernels, the all-to-all input and output distribution over NCCL), DistributedModelParallel's
DDP wrap, and the DeepSpeed backend on CUDA. The report lists them as ``not_checked`` (also when
``--stand-in`` replaced an installed TorchRec).

Output and exit status: a JSON report (printed; ``--output`` also writes it) with the device,
versions, which modules were present and which were stood in, and per check its status
(``ok``, ``skipped`` without CUDA, ``syncs found``, ``failed`` or ``error`` with the traceback
tail) and seconds. A failing check does not stop the others. Exit 0 when every check is ok,
skipped or only found syncs (the sync list is information, not a failure), else 1.

Time: with the defaults (20,000 synthetic users, batch 256, 60 + 60 timed steps) the dataset is
generated in well under a minute and the steps take seconds on a GPU; the run should end within
5 minutes. What a CPU machine can check (``--cpu``, tiny sizes, about a minute): that the script
imports with or without TorchRec (``--stand-in``), that the stand-in gives the models the
KeyedJaggedTensor / EmbeddingCollection interface they use, that prefetched batches equal the host
ones and come in order, and that the step (forward, losses, backward, optimiser) runs; the
``nccl`` and ``syncs`` checks report ``skipped``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import json
import sys
import tempfile
import time
import traceback
import types
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch import nn  # noqa: E402


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# ---------------------------------------------------------------------------------------------
# Stand-ins for what a GPU machine of this project lacks
# ---------------------------------------------------------------------------------------------


def _install_aliases(force_stand_in: bool = False) -> list[str]:
    """Make the repository importable as installed: ``atjt_kernels`` is the ``kernels`` folder;
    a plain-torch ``torchrec`` stand-in when TorchRec is missing; a minimal ``yaml`` when
    PyYAML is. Returns what was stood in."""
    stood_in = []
    if not _have("atjt_kernels"):
        sys.modules["atjt_kernels"] = importlib.import_module("kernels")
        stood_in.append("atjt_kernels = kernels/ (not installed)")
    if not _have("yaml"):
        y = types.ModuleType("yaml")
        y.YAMLError = ValueError
        y.safe_load = lambda s: s
        y.safe_dump = lambda data, **kw: json.dumps(data)
        sys.modules["yaml"] = y
        stood_in.append("yaml (PyYAML missing; config overrides unused)")
    if force_stand_in or not _have("torchrec"):
        sys.modules["torchrec"] = _fake_torchrec()
        stood_in.append("torchrec: EmbeddingCollection = one nn.Embedding per table (no FBGEMM, no sharding)")
    return stood_in


def _fake_torchrec() -> types.ModuleType:
    """EmbeddingConfig, KeyedJaggedTensor and an unsharded EmbeddingCollection in plain torch,
    with exactly the interface models/batch.py uses."""
    m = types.ModuleType("torchrec")

    @dataclasses.dataclass
    class EmbeddingConfig:
        name: str
        embedding_dim: int
        num_embeddings: int
        feature_names: list

    class JaggedTensor:
        def __init__(self, values: torch.Tensor, lengths: torch.Tensor) -> None:
            self._values, self._lengths = values, lengths

        def values(self) -> torch.Tensor:
            return self._values

        def lengths(self) -> torch.Tensor:
            return self._lengths

        def to_padded_dense(self, desired_length: int, padding_value: float = 0.0) -> torch.Tensor:
            B = self._lengths.numel()
            pos = torch.arange(desired_length, device=self._values.device)
            mask = pos[None, :] < self._lengths[:, None]
            out = self._values.new_full((B, desired_length, self._values.shape[-1]), padding_value)
            out[mask] = self._values  # the values are row-major, one block per row
            return out

    class KeyedJaggedTensor:
        def __init__(self, keys, values, lengths) -> None:
            self._keys = list(keys)
            self._values, self._lengths = values, lengths.long()
            per_key = self._lengths.view(len(self._keys), -1)
            self._per_key_lengths = per_key
            self._splits = per_key.sum(1)

        def keys(self):
            return self._keys

        def split_by_key(self) -> dict:
            # one host sync for the split sizes (TorchRec's KJT has the same need)
            parts = torch.split(self._values, self._splits.tolist())
            return {k: (v, self._per_key_lengths[i]) for i, (k, v) in enumerate(zip(self._keys, parts))}

    class EmbeddingCollection(nn.Module):
        def __init__(self, tables, device=None) -> None:
            super().__init__()
            dev = None if device is None or torch.device(device).type == "meta" else device
            self._tables = list(tables)
            self.embeddings = nn.ModuleDict({t.name: nn.Embedding(t.num_embeddings, t.embedding_dim, device=dev) for t in tables})
            self._feature_table = {f: t.name for t in tables for f in t.feature_names}

        def embedding_configs(self):
            return self._tables

        def forward(self, kjt) -> dict:
            out = {}
            for key, (values, lengths) in kjt.split_by_key().items():
                out[key] = JaggedTensor(self.embeddings[self._feature_table[key]](values), lengths)
            return out

    m.EmbeddingConfig, m.EmbeddingCollection, m.KeyedJaggedTensor, m.JaggedTensor = EmbeddingConfig, EmbeddingCollection, KeyedJaggedTensor, JaggedTensor
    m.__stand_in__ = True
    return m


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------


def check_nccl(device: torch.device) -> dict:
    import torch.distributed as dist

    from atjt_dist.config import DistConfig
    from atjt_dist.distributed import init_distributed, shutdown

    if device.type != "cuda":
        return {"status": "skipped", "why": "no CUDA"}
    ctx = init_distributed(DistConfig(device="cuda"))
    t = torch.ones(4, device=ctx.device)
    dist.all_reduce(t)
    torch.cuda.synchronize()
    result = {"status": "ok" if ctx.backend == "nccl" and t.sum().item() == 4 else "failed", "backend": ctx.backend, "world": ctx.world}
    shutdown(ctx)
    return result


def _setup(args, device: torch.device):
    """Config, data, schedule, model and optimiser of a small real run (DIN with ATJT)."""
    from atjt_dist.config import Config
    from atjt_dist.data.dataset import TrainingData
    from atjt_dist.data.synthetic import ensure_dataset
    from atjt_dist.distributed import place_dense
    from atjt_dist.joint import JointModel
    from atjt_dist.models import ModelSpec
    from atjt_dist.schedule import Schedule

    cfg = Config()
    cfg.train.batch_size = cfg.atjt.recognizer_batch_size = args.batch
    cfg.atjt.recognizer.dropout = 0.0
    cfg.data.synthetic.users = args.users
    cfg.data.synthetic.cache_dir = args.cache
    path = ensure_dataset(cfg.data.synthetic)
    d = cfg.data
    data = TrainingData(
        path,
        split=d.split,
        fold=d.fold,
        history_length=d.history_length,
        mode=d.mode,
        negative_sampler=d.negative_sampler,
        popularity_exponent=d.popularity_exponent,
        seed=cfg.seed,
        rank=0,
        world=1,
    )
    schedule = Schedule(data, cfg)
    meta = data.meta
    torch.manual_seed(cfg.seed)
    model = JointModel(ModelSpec(meta["num_users"], meta["num_items"], meta["num_categories"], d.history_length), cfg)
    place_dense(model, device)  # what the trainer does after sharding (not module.to(): see check_placement)
    optimizer = torch.optim.Adagrad(model.parameters(), lr=cfg.train.lr, eps=1e-10, weight_decay=cfg.recommender_weight_decay())
    return cfg, schedule, model, optimizer


def _host_batches(schedule, plan):
    from atjt_dist.models.batch import SequenceBatch
    from atjt_dist.schedule import RECOGNIZER_ONLY

    rec = None if plan.stage == RECOGNIZER_ONLY else SequenceBatch.from_arrays(schedule.recommender_batch(plan))
    aux_arrays = schedule.recognizer_batch(plan)
    return rec, (SequenceBatch.from_arrays(aux_arrays) if aux_arrays is not None else None)


def _step(cfg, model, optimizer, plan, rec, aux):
    from atjt_dist.objective import compute_losses

    out = model(rec, aux, plan.phase, plan.stage)
    losses = compute_losses(out, rec, aux, cfg, plan.stage, plan.step)
    losses.backward.backward()
    for p in model.idle_dense_parameters(plan.phase, plan.stage):
        p.grad = None
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return losses


def check_prefetch(schedule, device: torch.device, n: int) -> dict:
    from atjt_dist.prefetch import DevicePrefetcher

    plans = [p for _, p in zip(range(n), schedule.steps())]
    got = list(DevicePrefetcher(plans, lambda p: _host_batches(schedule, p), device))
    ok = [p.step for p, _ in got] == [p.step for p in plans]
    for plan, dev in got:
        host = _host_batches(schedule, plan)
        for h, d in zip(host, dev):
            if h is None:
                ok &= d is None
                continue
            ok &= all(torch.equal(getattr(h, f.name), getattr(d, f.name).cpu()) for f in dataclasses.fields(h) if getattr(h, f.name) is not None)
            ok &= d.user.device.type == device.type
    return {"status": "ok" if ok else "failed", "batches": len(got), "pinned_side_stream": device.type == "cuda"}


def check_step(cfg, schedule, model, optimizer, device: torch.device, steps: int) -> dict:
    from atjt_dist.prefetch import DevicePrefetcher

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    plans = [p for _, p in zip(range(2 * steps + 5), schedule.steps())]
    model.train()
    for plan in plans[:5]:  # warm-up: Triton compilation, allocator
        rec, aux = (b.to(device) if b is not None else None for b in _host_batches(schedule, plan))
        _step(cfg, model, optimizer, plan, rec, aux)
    sync()
    rows = sum(2 * cfg.train.batch_size for _ in plans[5:])
    t0 = time.perf_counter()
    for plan in plans[5 : 5 + steps]:
        rec, aux = (b.to(device) if b is not None else None for b in _host_batches(schedule, plan))
        _step(cfg, model, optimizer, plan, rec, aux)
    sync()
    off = time.perf_counter() - t0
    t0 = time.perf_counter()
    for plan, (rec, aux) in DevicePrefetcher(plans[5 + steps :], lambda p: _host_batches(schedule, p), device):
        _step(cfg, model, optimizer, plan, rec, aux)
    sync()
    on = time.perf_counter() - t0
    half = rows / 2
    return {
        "status": "ok",
        "steps_each": steps,
        "rows_per_step": 2 * cfg.train.batch_size,
        "samples_per_s_pipeline_off": half / off,
        "samples_per_s_pipeline_on": half / on,
    }


def check_placement(model, device: torch.device) -> dict:
    """Every parameter and buffer of the joint model (Dice's statistics included) on the device,
    after distributed.place_dense and some steps: what the trainer relies on under every dense
    backend (DMP's DDP wrap moves the dense part itself; under DeepSpeed nothing else would)."""
    from atjt_dist.distributed import misplaced_tensors

    wrong = misplaced_tensors(model, device)
    buffers = [n for n, _ in model.named_buffers()]
    return {
        "status": "ok" if not wrong else "failed",
        "tensors": len(list(model.parameters())) + len(buffers),
        "buffers": len(buffers),
        "not_on_device": wrong[:20],
    }


def check_loss_backends(cfg, schedule, model, device: torch.device) -> dict:
    """The real step's losses and gradients with the fused Triton loss (objective.loss_backend=
    triton) equal torch's formula on the same forward, over a few ATJT steps of both phases."""
    import copy

    from atjt_dist.objective import compute_losses

    if device.type != "cuda":
        return {"status": "skipped", "why": "no CUDA (the interpreter is covered by tests/test_kernel_triton.py)"}
    worst = {"loss": 0.0, "grad": 0.0}
    plans = [p for _, p in zip(range(40), schedule.steps())][::8]
    for plan in plans:
        rec, aux = (b.to(device) if b is not None else None for b in _host_batches(schedule, plan))
        results = []
        for backend in ("torch", "triton"):
            c = copy.deepcopy(cfg)
            c.objective.loss_backend = backend
            model.zero_grad(set_to_none=True)
            torch.manual_seed(0)
            out = model(rec, aux, plan.phase, plan.stage)
            losses = compute_losses(out, rec, aux, c, plan.stage, plan.step)
            losses.backward.backward()
            grads = [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]
            results.append((losses.backward.detach(), grads))
        (l0, g0), (l1, g1) = results
        worst["loss"] = max(worst["loss"], float((l0 - l1).abs() / l0.abs().clamp_min(1e-12)))
        worst["grad"] = max([worst["grad"]] + [float((a - b).abs().max() / a.abs().max().clamp_min(1e-12)) for a, b in zip(g0, g1)])
    model.zero_grad(set_to_none=True)
    ok = worst["loss"] < 1e-5 and worst["grad"] < 1e-4
    return {"status": "ok" if ok else "failed", "steps": len(plans), "max_rel_diff": worst}


def check_syncs(cfg, schedule, model, optimizer, device: torch.device, steps: int) -> dict:
    if device.type != "cuda":
        return {"status": "skipped", "why": "no CUDA"}
    plans = [p for _, p in zip(range(steps), schedule.steps())]
    batches = [tuple(b.to(device) if b is not None else None for b in _host_batches(schedule, p)) for p in plans]
    torch.cuda.synchronize()
    sources: dict[str, int] = {}
    original = warnings.showwarning

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" not in str(message):  # only the sync debug mode's warnings count
            return original(message, category, filename, lineno, file, line)
        ours = [f for f in traceback.extract_stack() if "/atjt_dist/" in f.filename or "/kernels/" in f.filename or "gpu_check" in f.filename]
        stack = [f for f in traceback.extract_stack() if "warnings" not in f.filename and "gpu_check" not in f.filename]
        outside = f"outside our code, at {'/'.join(Path(stack[-1].filename).parts[-2:])}:{stack[-1].lineno} {stack[-1].line}" if stack else "outside our code"
        where = next((f"{Path(f.filename).name}:{f.lineno} {f.line}" for f in reversed(ours) if "gpu_check" not in f.filename), outside)
        sources[where] = sources.get(where, 0) + 1

    warnings.showwarning = record
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            torch.cuda.set_sync_debug_mode("warn")
            try:
                for plan, (rec, aux) in zip(plans, batches):
                    _step(cfg, model, optimizer, plan, rec, aux)
            finally:
                torch.cuda.set_sync_debug_mode("default")
    finally:
        warnings.showwarning = original
    torch.cuda.synchronize()
    return {"status": "ok" if not sources else "syncs found", "steps": steps, "syncs_by_source": sources}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60, help="timed steps with the pipeline off, and again on")
    ap.add_argument("--batch", type=int, default=256, help="positives per batch (rows = 2x)")
    ap.add_argument("--users", type=int, default=20000, help="users of the synthetic dataset")
    ap.add_argument("--cache", default=None, help="dataset cache folder (default: a temporary one)")
    ap.add_argument("--cpu", action="store_true", help="run on CPU with tiny sizes (checks the script itself)")
    ap.add_argument("--stand-in", action="store_true", help="use the plain-torch TorchRec stand-in even where TorchRec is installed")
    ap.add_argument("--output", default=None, help="JSON report to write (also printed)")
    args = ap.parse_args(argv)
    if args.cpu:
        args.steps, args.batch, args.users = min(args.steps, 3), min(args.batch, 32), min(args.users, 2000)
    device = torch.device("cpu") if args.cpu or not torch.cuda.is_available() else torch.device("cuda:0")
    args.cache = args.cache or tempfile.mkdtemp(prefix="gpu-check-")
    report: dict = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "available": {m: _have(m) for m in ("torchrec", "fbgemm_gpu", "deepspeed", "triton", "numba", "yaml")},
        "stand_ins": _install_aliases(args.stand_in),
        "not_checked": [],
    }
    started = time.perf_counter()
    checks = {}

    def run(name, fn, *a):
        t0 = time.perf_counter()
        try:
            checks[name] = fn(*a)
        except Exception as exc:  # noqa: BLE001 - report and go on with the other checks
            checks[name] = {"status": "error", "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-2000:]}
        checks[name]["seconds"] = round(time.perf_counter() - t0, 1)
        print(f"[gpu_check] {name}: {checks[name].get('status')}", flush=True)

    run("nccl", check_nccl, device)
    try:
        cfg, schedule, model, optimizer = _setup(args, device)
    except Exception as exc:  # noqa: BLE001
        checks["setup"] = {"status": "error", "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-2000:]}
    else:
        run("prefetch", check_prefetch, schedule, device, 4)
        run("step", check_step, cfg, schedule, model, optimizer, device, args.steps)
        run("placement", check_placement, model, device)
        run("loss_backends", check_loss_backends, cfg, schedule, model, device)
        run("syncs", check_syncs, cfg, schedule, model, optimizer, device, 3)
    if args.stand_in or not report["available"]["torchrec"] or not report["available"]["fbgemm_gpu"]:
        report["not_checked"] += [
            "TorchRec sharded tables on CUDA (FBGEMM fused kernels, all-to-all input/output distribution over NCCL)",
            "DistributedModelParallel's DDP wrap of the dense part on NCCL",
            "host syncs inside TorchRec's input distribution (expected: it learns split sizes on the host)",
        ]
    if not report["available"]["deepspeed"]:
        report["not_checked"].append("dist.dense=deepspeed on CUDA")
    report["checks"] = checks
    report["seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(report, indent=1, default=str)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 0 if all(c.get("status") in ("ok", "skipped", "syncs found") for c in checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
