"""The fused Triton weighted-BCE kernel against the torch reference, run through Triton's interpreter.

How this file is structured, and why:

- Triton decides at *decoration* time whether a kernel is compiled or interpreted, so
  TRITON_INTERPRET=1 must be in the environment before ``atjt_kernels.weighted_bce_triton`` is
  first imported; setting it inside this pytest process would also leak into every other test
  (and, on a GPU machine, turn their real kernels into interpreted ones). So the kernel runs in
  ONE child process per session: this very file executed as a script,
  ``TRITON_INTERPRET=1 python tests/test_kernel_triton.py --child CASES RESULTS``.
- The parent (pytest) builds every input in ``make_cases`` and saves them with torch.save; the
  child only runs the kernel on them (forward, then backward with an upstream gradient) and saves
  the outputs, or the traceback of a case that failed. The module-scoped fixture ``kernel_runs``
  does this once (a few seconds of interpreter time). All checks happen here in the parent, in
  ordinary test functions, against ``weighted_bce_reference`` on the same inputs: one failing
  case fails one test with its own message, and the tolerance policy lives in one place.
- The child cannot pass silently: it must return a result for every case, and it also records
  whether importing atjt_kernels imported Triton (it must not).

Interpreter cost is per program instance (milliseconds each on this machine), so cases use at most
a handful of tiles: the default interpreter tile is 2^16 rows, and the multi-tile cases pass a
small ``block`` explicitly.
"""

from __future__ import annotations

import os
import subprocess
import sys
import traceback
import warnings
from pathlib import Path

import pytest
import torch

import atjt_kernels as K

REPO = Path(__file__).resolve().parents[1]
UPSTREAM = 0.7  # upstream gradient of L: checks that backward fuses it
EPS = {torch.float32: 2.0**-23, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


# ---------------------------------------------------------------------------------------------
# Inputs (parent) and the child process
# ---------------------------------------------------------------------------------------------


def _case(
    name,
    n,
    dtype=torch.float32,
    seed=0,
    block=None,
    mask=None,
    k=1,
    weights=None,
    logits=None,
    labels=None,
    shape=None,
    weight_dtype=torch.float32,
    grads=("x", "w"),
    reduce_add=None,
    repeats=1,
):
    g = torch.Generator().manual_seed(seed)
    x = logits if logits is not None else torch.randn(n, generator=g) * 4
    y = labels if labels is not None else (torch.rand(n, generator=g) > 0.5).float()
    w = weights if weights is not None else torch.rand(n // k, generator=g) + 0.05
    if shape is not None:
        x, y = x.reshape(shape), y.reshape(shape)
    return dict(name=name, x=x.to(dtype), y=y, w=w.to(weight_dtype), mask=mask, block=block, grads=grads, reduce_add=reduce_add, repeats=repeats)


def make_cases() -> list[dict]:
    g = torch.Generator().manual_seed(123)
    cases = []
    for dt, tag in ((torch.float32, "fp32"), (torch.bfloat16, "bf16"), (torch.float16, "fp16")):
        cases += [
            _case(f"{tag}-n1", 1, dt),
            _case(f"{tag}-n7", 7, dt, seed=1),
            _case(f"{tag}-tiles", 1000, dt, seed=2, block=256),  # 4 tiles, the last one partial
        ]
        extreme = torch.tensor([100.0, -100.0, 100.0, -100.0, 30.0, -30.0, 0.0, 17.5, -17.5])
        cases.append(_case(f"{tag}-extreme", 9, dt, logits=extreme, labels=torch.tensor([0, 1, 1, 0, 1, 0, 1, 0, 1.0])))
    cases += [
        # 3 default interpreter tiles (2^16 rows each), the last one partial
        _case("fp32-default-tiles", 2 * 65536 + 3, seed=3),
        _case("fp32-soft-labels", 301, seed=4, labels=torch.rand(301, generator=g)),
        _case("fp32-bool-labels", 64, seed=5, labels=torch.rand(64, generator=g) > 0.5),
        _case(
            "fp32-zero-weights", 200, seed=6, block=64, weights=torch.where(torch.rand(200, generator=g) > 0.5, torch.rand(200, generator=g), torch.zeros(200))
        ),
        _case("fp32-tiny-weights", 100, seed=7, weights=torch.full((100,), 1e-30)),
        _case("fp32-mixed-tiny-weights", 100, seed=8, weights=torch.where(torch.arange(100) % 3 == 0, torch.full((100,), 1e-30), torch.rand(100, generator=g))),
        _case("fp32-mask", 500, seed=9, block=128, mask=torch.rand(500, generator=g) > 0.3),
        _case(
            "fp32-mask-nan-logits",
            40,
            seed=10,
            mask=torch.arange(40) % 4 != 1,
            logits=torch.where(torch.arange(40) % 4 == 1, float("nan"), torch.randn(40, generator=g)),
        ),
        _case("fp32-mask-uint8", 33, seed=11, mask=(torch.rand(33, generator=g) > 0.5).to(torch.uint8)),
        _case("bf16-mask", 257, torch.bfloat16, seed=12, block=64, mask=torch.rand(257, generator=g) > 0.5),
        _case("fp32-W0-zero-weights", 50, seed=13, weights=torch.zeros(50)),
        _case("fp32-W0-all-masked", 50, seed=14, mask=torch.zeros(50, dtype=torch.bool), logits=torch.full((50,), float("inf"))),
        _case("fp32-empty", 0, seed=15),
        _case("fp32-rows-per-weight-4", 1024, seed=16, k=4, block=256),  # in the kernel
        _case("fp32-rows-per-weight-3", 999, seed=17, k=3, block=256),  # broadcast in torch
        _case("fp32-one-weight", 77, seed=18, k=77),
        _case("fp32-2d-logits", 8 * 16, seed=19, k=16, shape=(8, 16)),
        _case("fp32-bf16-weights", 300, seed=20, weight_dtype=torch.bfloat16),
        _case("fp32-dx-only", 300, seed=21, grads=("x",)),
        _case("fp32-dw-only", 300, seed=22, grads=("w",)),
        _case("fp32-deterministic", 1000, seed=23, block=256, repeats=3),
        _case("bf16-deterministic", 1000, torch.bfloat16, seed=24, block=256, repeats=3),
    ]
    # The reduce hook: two halves, each adding the other half's [S, W] (an all-reduce of 2 ranks).
    whole = _case("fp32-reduce-whole", 700, seed=25, block=128, mask=torch.rand(700, generator=g) > 0.2)
    cases.append(whole)
    for name, sl, other in (("fp32-reduce-a", slice(0, 300), slice(300, 700)), ("fp32-reduce-b", slice(300, 700), slice(0, 300))):
        cases.append(
            dict(
                whole,
                name=name,
                x=whole["x"][sl],
                y=whole["y"][sl],
                w=whole["w"][sl],
                mask=whole["mask"][sl],
                reduce_add=_sums(whole["x"][other], whole["y"][other], whole["w"][other], whole["mask"][other]),
            )
        )
    return cases


def _sums(x, y, w, mask):
    """[S, W] of some rows in fp64 (what another rank would contribute to the all-reduce)."""
    l = torch.nn.functional.binary_cross_entropy_with_logits(x.double(), y.double(), reduction="none")
    w = torch.where(mask, w.double(), 0.0)
    return torch.stack([(w * l).sum(), w.sum()])


def _run_case(case: dict) -> dict:
    import atjt_kernels
    from atjt_kernels.weighted_bce_triton import weighted_bce_triton

    add = case["reduce_add"]
    reduce = None if add is None else (lambda s: s + add.to(s.device))
    runs = []
    for _ in range(case["repeats"]):
        x = case["x"].clone().requires_grad_("x" in case["grads"])
        w = case["w"].clone().requires_grad_("w" in case["grads"])
        if case["block"] is None:  # through the dispatch the training code uses
            loss = atjt_kernels.weighted_bce(x, case["y"], w, case["mask"], reduce, deterministic=True, backend="triton")
        else:
            loss = weighted_bce_triton(x, case["y"], w, case["mask"], reduce, deterministic=True, block=case["block"])
        inputs = [t for t in (x, w) if t.requires_grad]
        grads = torch.autograd.grad(loss, inputs, grad_outputs=torch.tensor(UPSTREAM))
        out = dict(zip([n for n in ("x", "w") if n in case["grads"]], grads))
        runs.append(dict(loss=loss.detach(), dx=out.get("x"), dw=out.get("w")))
    return dict(runs=runs, error=None)


def child_main(cases_path: str, results_path: str) -> None:
    assert os.environ.get("TRITON_INTERPRET") == "1", "the child must run with TRITON_INTERPRET=1"
    warnings.simplefilter("ignore", RuntimeWarning)  # numpy on the NaN/inf rows the kernel masks out
    triton_on_import = "triton" in sys.modules  # atjt_kernels is imported at the top of this file
    results = {}
    for case in torch.load(cases_path, weights_only=False):
        try:
            results[case["name"]] = _run_case(case)
        except Exception:  # reported by the parent's test of that case
            results[case["name"]] = dict(runs=[], error=traceback.format_exc())
    torch.save(dict(results=results, triton_on_import=triton_on_import), results_path)


# ---------------------------------------------------------------------------------------------
# Parent: the fixture and the checks
# ---------------------------------------------------------------------------------------------

CASES = {c["name"]: c for c in make_cases()}


@pytest.fixture(scope="module")
def kernel_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("triton_interp")
    cases_path, results_path = tmp / "cases.pt", tmp / "results.pt"
    torch.save(list(CASES.values()), cases_path)
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(cases_path), str(results_path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0 or not results_path.exists():
        pytest.fail(f"the interpreter child failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    out = torch.load(results_path, weights_only=False)
    assert set(out["results"]) == set(CASES), "the child must return a result for every case"
    return out


def _result(kernel_runs, name):
    r = kernel_runs["results"][name]
    assert r["error"] is None, f"case {name} raised in the interpreter:\n{r['error']}"
    return r["runs"]


def _reference(case, x=None, y=None, w=None, mask=None):
    x = (case["x"] if x is None else x).clone().requires_grad_("x" in case["grads"])
    w = (case["w"] if w is None else w).clone().requires_grad_("w" in case["grads"])
    y = case["y"] if y is None else y
    mask = case["mask"] if mask is None else mask
    loss = K.weighted_bce_reference(x, y, w, mask)
    inputs = [t for t in (x, w) if t.requires_grad]
    grads = dict(zip([n for n in ("x", "w") if n in case["grads"]], torch.autograd.grad(loss, inputs, grad_outputs=torch.tensor(UPSTREAM, dtype=loss.dtype))))
    return dict(loss=loss.detach(), dx=grads.get("x"), dw=grads.get("w"))


def _error_bounds(case, x=None, y=None, w=None, mask=None) -> dict:
    """Scale of each output's rounding error, in fp64: what "a few ulp" is measured against.

    With s = UPSTREAM / W: dx_i = s w_i (sig_i - y_i) carries an error of a few ulp of s w_i (the
    sigmoid, not the difference, is rounded), and dw_j = s sum_rows (l_i - L) one of a few ulp of
    s k max|l| (l_i and L are each rounded; k rows per weight). L itself: a few ulp of max |l|.
    """
    x = (case["x"] if x is None else x).double()
    y = (case["y"] if y is None else y).double()
    w = (case["w"] if w is None else w).double().reshape(-1)
    mask = case["mask"] if mask is None else mask
    k = K.rows_per_weight(x.numel(), w.numel())
    w = w.repeat_interleave(k).reshape(x.shape)
    keep = torch.ones_like(x, dtype=torch.bool) if mask is None else mask.reshape(x.shape) != 0
    l = torch.where(keep, torch.nn.functional.binary_cross_entropy_with_logits(x, y, reduction="none"), 0.0)
    W = torch.where(keep, w, 0.0).sum()
    s = UPSTREAM / W.item() if W > 0 else 0.0
    max_l = l.abs().max().item() if l.numel() else 0.0
    max_w = w.abs().max().item() if w.numel() else 0.0
    return dict(loss=max_l, dx=s * max_w, dw=s * k * max_l)


def _close(name, got, want, dtype, bound):
    """Same dtype and shape; equal up to a few fp32 ulp of ``bound`` plus the output dtype's rounding.

    The output rounding allows a whole ulp: Triton 3.7's interpreter truncates fp32 -> bf16 (the
    GPU rounds to nearest), so interpreted bf16 gradients can sit one bf16 ulp from the reference's.
    """
    assert got.dtype == want.dtype and got.shape == want.shape, f"{name}: {got.dtype}{tuple(got.shape)} vs {want.dtype}{tuple(want.shape)}"
    assert bool(torch.isfinite(got).all()) == bool(torch.isfinite(want).all()), f"{name}: non-finite values differ"
    if got.numel() == 0:
        return
    eps_out = EPS[dtype]
    atol = 16 * EPS[torch.float32] * bound + 2 * eps_out * want.float().abs().max().item() + 1e-37
    torch.testing.assert_close(got.float(), want.float(), rtol=max(4 * eps_out, 1e-6), atol=atol, msg=lambda m: f"{name}: {m}")


def _check_against_reference(got, want, case, bounds):
    _close("L", got["loss"], want["loss"], torch.float32, bounds["loss"])
    for key, dt in (("dx", case["x"].dtype), ("dw", case["w"].dtype)):
        if want[key] is None:
            assert got[key] is None
        else:
            _close(key, got[key], want[key], dt, bounds[key])


SIMPLE = [n for n in CASES if not n.startswith("fp32-reduce-") and "-W0-" not in n]


@pytest.mark.parametrize("name", SIMPLE)
def test_kernel_matches_reference(kernel_runs, name):
    """Value, dL/dx and dL/dw of the interpreted kernel equal the reference's, per dtype and shape."""
    case = CASES[name]
    _check_against_reference(_result(kernel_runs, name)[0], _reference(case), case, _error_bounds(case))


@pytest.mark.parametrize("name", ["fp32-W0-zero-weights", "fp32-W0-all-masked", "fp32-empty"])
def test_zero_total_weight_gives_zero_loss_and_gradients(kernel_runs, name):
    got = _result(kernel_runs, name)[0]
    assert got["loss"].item() == 0.0
    assert torch.all(got["dx"] == 0) and torch.all(got["dw"] == 0)  # zeros, not NaN


def test_extreme_logits_are_finite(kernel_runs):
    for tag in ("fp32", "bf16", "fp16"):
        got = _result(kernel_runs, f"{tag}-extreme")[0]
        assert all(torch.isfinite(t).all() for t in got.values()), tag


def test_masked_rows_are_left_out(kernel_runs):
    got = _result(kernel_runs, "fp32-mask-nan-logits")[0]
    masked = ~CASES["fp32-mask-nan-logits"]["mask"]
    assert torch.isfinite(got["loss"]) and torch.all(got["dx"][masked] == 0) and torch.all(got["dw"][masked] == 0)


def test_reduce_makes_two_halves_equal_the_whole(kernel_runs):
    """Two 'ranks' whose reduce adds the other's [S, W] get the global L and their rows' share of its gradient."""
    whole = _result(kernel_runs, "fp32-reduce-whole")[0]
    a = _result(kernel_runs, "fp32-reduce-a")[0]
    b = _result(kernel_runs, "fp32-reduce-b")[0]
    case = CASES["fp32-reduce-whole"]
    bounds = _error_bounds(case)
    for half in (a, b):
        _close("L", half["loss"], whole["loss"], torch.float32, bounds["loss"])
    _close("dx", torch.cat([a["dx"], b["dx"]]), whole["dx"], torch.float32, bounds["dx"])
    _close("dw", torch.cat([a["dw"], b["dw"]]), whole["dw"], torch.float32, bounds["dw"])
    _check_against_reference(whole, _reference(case), case, bounds)


@pytest.mark.parametrize("name", ["fp32-deterministic", "bf16-deterministic"])
def test_deterministic_mode_is_bit_identical(kernel_runs, name):
    runs = _result(kernel_runs, name)
    assert len(runs) == 3
    for other in runs[1:]:
        for key in ("loss", "dx", "dw"):
            assert torch.equal(runs[0][key], other[key]), key


def test_importing_the_package_does_not_import_triton(kernel_runs):
    assert kernel_runs["triton_on_import"] is False


# --- in-process: dispatch and the reference ----------------------------------------------


def test_dispatch_picks_the_reference_on_cpu():
    x = torch.randn(5)
    assert not K.use_triton(x) and not K.use_triton(x, "torch") and K.use_triton(x, "triton")
    with pytest.raises(ValueError, match="backend"):
        K.use_triton(x, "cuda")
    y, w = (torch.rand(5) > 0.5).float(), torch.rand(5)
    assert torch.equal(K.weighted_bce(x, y, w), K.weighted_bce_reference(x, y, w))


def test_auto_takes_the_fused_kernel_only_on_cuda_from_min_rows(monkeypatch):
    """Under 'auto' a training step's 10^3-10^4 rows take the kernel on CUDA (the threshold
    measured in benchmarks/kernel.md), fewer rows and CPU tensors torch's formula; the config's
    default is the kernels' constant."""
    from types import SimpleNamespace

    from atjt_dist.config import build_config

    monkeypatch.setattr(K, "_has_triton", lambda: True)

    def cuda_logits(rows, dtype=torch.float32):
        return SimpleNamespace(is_cuda=True, numel=lambda: rows, dtype=dtype)

    assert K.use_triton(cuda_logits(1_024)) and K.use_triton(cuda_logits(16_384))
    assert not K.use_triton(cuda_logits(512))
    assert not K.use_triton(SimpleNamespace(is_cuda=False, numel=lambda: 16_384, dtype=torch.float32))
    assert K.use_triton(cuda_logits(K.TRITON_MIN_ROWS))
    assert K.use_triton(cuda_logits(1000), min_rows=1000) and not K.use_triton(cuda_logits(999), min_rows=1000)
    assert not K.use_triton(cuda_logits(K.TRITON_MIN_ROWS, torch.float64))
    assert K.use_triton(cuda_logits(10), "triton") and not K.use_triton(cuda_logits(10**9), "torch")
    assert build_config([]).objective.loss_triton_min_rows == K.TRITON_MIN_ROWS


def test_reference_gradcheck_float64_with_mask_and_grouped_weights():
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(12, generator=g, dtype=torch.float64) * 3).requires_grad_()
    y = (torch.rand(12, generator=g) > 0.5).double()
    mask = torch.rand(12, generator=g) > 0.3
    w_rows = (torch.rand(12, generator=g, dtype=torch.float64) + 0.05).requires_grad_()
    w_pairs = (torch.rand(6, generator=g, dtype=torch.float64) + 0.05).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: K.weighted_bce_reference(a, y, b, mask), (x, w_rows))
    assert torch.autograd.gradcheck(lambda a, b: K.weighted_bce_reference(a, y, b), (x, w_pairs))
    assert torch.autograd.gradcheck(lambda a, b: K.weighted_bce_reference(a, y, b, mask), (x, w_pairs))


def test_reference_grouped_weights_equal_broadcast_weights():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 3, generator=g), (torch.rand(4, 3, generator=g) > 0.5).float()
    w = (torch.rand(4, generator=g) + 0.1).requires_grad_()
    w_rows = w.detach().repeat_interleave(3).requires_grad_()
    L, L_rows = K.weighted_bce(x, y, w), K.weighted_bce(x.reshape(-1), y.reshape(-1), w_rows)
    L.backward()
    L_rows.backward()
    torch.testing.assert_close(L, L_rows)
    torch.testing.assert_close(w.grad, w_rows.grad.reshape(4, 3).sum(1))
    with pytest.raises(ValueError, match="one entry per row"):
        K.weighted_bce(x, y, torch.rand(5))


def test_forced_triton_on_cpu_without_the_interpreter_says_what_to_do():
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("this process runs Triton's interpreter")
    pytest.importorskip("triton")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        K.weighted_bce(torch.randn(4), torch.ones(4), torch.ones(4), backend="triton")


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "--child":
        sys.exit("usage: TRITON_INTERPRET=1 python tests/test_kernel_triton.py --child CASES.pt RESULTS.pt")
    child_main(sys.argv[2], sys.argv[3])
