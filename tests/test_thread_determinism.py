"""Same config and seed, same result, also with several torch threads.

With two threads, SASRec's and FEARec's runs used to differ from process to process: the learned
position tables were read with advanced indexing (``weight[ids]``), whose CPU backward
(index_put_ with accumulate) sums repeated ids in a thread-dependent order. Every position table
now reads through F.embedding, whose backward does not (docs/results.md, Determinism).
"""

from __future__ import annotations

import hashlib

import pytest
import torch

from atjt_dist.models.recognizers.base import ReversePositions
from atjt_dist.models.transformer import LearnedPositions


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _gradient_digests(module: torch.nn.Module, call, repeats: int = 12) -> set[str]:
    """Digests of ``module``'s gradients over repeated identical backward passes."""
    torch.manual_seed(0)
    out_grad = torch.randn_like(call())
    digests = set()
    for _ in range(repeats):
        module.zero_grad(set_to_none=True)
        (call() * out_grad).sum().backward()
        digests.add(hashlib.sha1(b"".join(p.grad.numpy().tobytes() for p in module.parameters())).hexdigest())
    return digests


@pytest.mark.parametrize("table", ["learned", "reverse"])
def test_position_tables_have_a_thread_independent_backward(two_threads, table):
    # 512 rows of 50 positions: each id repeats hundreds of times, where weight[ids]'s backward
    # gave 18 different gradients in 20 passes.
    torch.manual_seed(1)
    lengths = torch.randint(1, 51, (512,))
    if table == "learned":
        module = LearnedPositions(50, 64)
        digests = _gradient_digests(module, lambda: module(lengths, 50, "end"))
    else:
        module = ReversePositions(50, 64)
        digests = _gradient_digests(module, lambda: module(lengths, 50))
    assert len(digests) == 1


def _state_after_steps(cfg, steps: int) -> dict[str, bytes]:
    from atjt_dist.trainer import Trainer

    trainer = Trainer(cfg)
    try:
        trainer.model.train()
        for i, plan in enumerate(trainer.schedule.steps()):
            if i == steps:
                break
            trainer.train_step(plan)
        state = {}
        for key, value in trainer.model.state_dict().items():
            shards = [s.tensor for s in value.local_shards()] if hasattr(value, "local_shards") else [value]
            state[key] = b"".join(t.detach().contiguous().numpy().tobytes() for t in shards if torch.is_tensor(t))
        return state
    finally:
        trainer.close()


@pytest.mark.slow
def test_sasrec_with_the_transformer_recogniser_trains_the_same_twice(two_threads, tiny_dataset, tmp_path):
    from atjt_dist.config import build_config

    def config(name: str):
        return build_config(
            [
                f"--data.path={tiny_dataset}",
                "--model.name=sasrec",
                "--atjt.recognizer.kind=transformer",
                "--train.epochs=1",
                "--no-train.progress_bar",
                "--no-log.tensorboard",
                "--checkpoint.every=0",
                f"--run-dir={tmp_path / name}",
            ]
        )

    first, second = _state_after_steps(config("a"), 12), _state_after_steps(config("b"), 12)
    assert first.keys() == second.keys() and any(k.startswith("recognizers.") for k in first)
    assert [k for k in first if first[k] != second[k]] == []
