"""The step's input pipeline on CUDA: the next step's batches are built and copied ahead.

``dist.pipeline`` (CUDA only). While step k runs on the GPU, a host thread builds step k+1's
batches (the numba samplers), pins them, and issues their host-to-device copies on a side
stream; step k+1 then only waits for that copy (an event on the compute stream, no host sync).

Why not TorchRec's ``TrainPipelineSparseDist``. It overlaps three stages (copy, the sharded
modules' input distribution, compute) but needs (1) a model ``model(batch) -> (loss, output)``
whose sharded modules read their KeyedJaggedTensor through ``getattr`` chains on the batch, found
by symbolic tracing, and (2) a plain optimiser that it steps after ``loss.backward()``. Our step
has neither: the recogniser that runs depends on the phase (a Python int choosing a module of a
ModuleList, which torch.fx cannot trace), its input is the concatenation of the clean positives
and the corrupted rows computed inside the forward, every KeyedJaggedTensor is built from the
padded batch inside the model (``SequenceBatch.kjt``), and the backward is the dense backend's
(DeepSpeed's ``engine.backward``, the idle parameters' gradients dropped before the step). The
pipeline's rewrite would find no pipelineable input distribution, leaving only its copy stage,
which is what this module does, with our backward and step unchanged. The input distribution
(the all-to-alls of the ids) therefore stays in the step.

The batches of a step are a pure function of its plan (schedule.Schedule), so prefetching changes
nothing in what a step computes.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from typing import Callable, Iterable, Iterator

import numba
import torch

_DONE = object()


def _pinned(batch):
    if batch is None:
        return None
    return dataclasses.replace(batch, **{f.name: getattr(batch, f.name).pin_memory() for f in dataclasses.fields(batch) if getattr(batch, f.name) is not None})


def _tensors(batch) -> list[torch.Tensor]:
    if batch is None:
        return []
    return [getattr(batch, f.name) for f in dataclasses.fields(batch) if getattr(batch, f.name) is not None]


class DevicePrefetcher:
    """Iterate ``(plan, batches)`` with each step's batches already on ``device``.

    ``build(plan)`` returns the step's batches on the host (a tuple of SequenceBatch or None);
    it runs on one worker thread, ``depth`` steps ahead. Copies run on a side stream; the
    consumer's stream waits for them and the tensors are recorded on it (the caching allocator
    must not reuse their memory while the step still reads them). Exceptions in the worker are
    raised in the consumer. Call :meth:`close` (or exhaust the iterator) to stop the worker.
    """

    def __init__(self, plans: Iterable, build: Callable, device: torch.device, depth: int = 2) -> None:
        self.device = device
        # numba's thread count is per calling thread: the worker takes the one the process set
        # (distributed.align_cpu_threads), not numba's default of one per core, which would
        # oversubscribe the cores under torchrun.
        self.numba_threads = numba.get_num_threads()
        self.build = build
        # On CPU (tests) only the thread runs: no pinning, no streams.
        self.stream = torch.cuda.Stream(device=device) if device.type == "cuda" else None
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._work, args=(iter(plans),), name="batch-prefetch", daemon=True)
        self.thread.start()

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self, plans: Iterator) -> None:
        try:
            numba.set_num_threads(self.numba_threads)
            if self.stream is not None:
                torch.cuda.set_device(self.device)
            for plan in plans:
                if self.stop.is_set():
                    return
                if self.stream is None:
                    dev, ready = tuple(self.build(plan)), None
                else:
                    host = tuple(_pinned(b) for b in self.build(plan))
                    with torch.cuda.stream(self.stream):
                        dev = tuple(b.to(self.device, non_blocking=True) if b is not None else None for b in host)
                        ready = torch.cuda.Event()
                        ready.record(self.stream)
                if not self._put((plan, dev, ready)):
                    return
            self._put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            self._put(exc)

    def __iter__(self):
        try:
            while True:
                item = self.queue.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                plan, dev, ready = item
                if ready is not None:
                    stream = torch.cuda.current_stream(self.device)
                    stream.wait_event(ready)  # a device-side wait: the host does not block
                    for b in dev:
                        for t in _tensors(b):
                            t.record_stream(stream)
                yield plan, dev
        finally:
            self.close()

    def close(self) -> None:
        self.stop.set()
        while True:  # unblock a worker waiting on a full queue
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break
        if self.thread.is_alive() and threading.current_thread() is not self.thread:
            self.thread.join(timeout=30)


def step_batches(plans: Iterable, build_host: Callable, device: torch.device, enabled: bool) -> Iterator[tuple]:
    """``(plan, batches)`` for each plan: with the pipeline (``enabled`` and CUDA) the batches
    are already on the device; otherwise ``batches`` is None and the step builds them itself."""
    if enabled and device.type == "cuda":
        yield from DevicePrefetcher(plans, build_host, device)
    else:
        for plan in plans:
            yield plan, None


def prefetch_plans(steps: Iterable, start: int, total: int) -> Iterator:
    """The plans of steps [start, total) of a schedule's step sequence, in order."""
    for plan in steps:
        if plan.step >= total:
            return
        if plan.step >= start:
            yield plan


__all__ = ["DevicePrefetcher", "prefetch_plans", "step_batches"]
