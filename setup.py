"""Install-time dependency selection for atjt-dist.

Everything is pinned as one matched set: torch, torchrec and FBGEMM are ABI-coupled (a
mismatched pair fails at import with an undefined symbol), and FBGEMM's compatibility table
pairs fbgemm 1.8 with torch 2.13 and torchrec 1.8.

torchrec requires `fbgemm-gpu`, the CUDA build. On a CPU machine we satisfy that requirement
with `packaging/fbgemm-gpu-cpu-select`, a metadata-only distribution named `fbgemm-gpu` that
depends on `fbgemm-gpu-cpu` of the same release. A direct reference needs an absolute file
URL, which is why the dependency list is computed here rather than written in pyproject.toml.

ATJT_ACCELERATOR=cuda (or `nvidia-smi` on PATH) selects the CUDA build instead;
ATJT_ACCELERATOR=cpu forces the CPU build.
"""

import os
import shutil
from pathlib import Path

from setuptools import setup

TORCH = "torch==2.13.0"
FBGEMM_VERSION = "1.8.0"

COMMON = [
    TORCH,
    "torchrec==1.8.0",
    "tensordict==0.15.3",
    "torchmetrics==1.0.3",
    "deepspeed==0.19.8",
    "triton==3.7.1",
    "numba==0.68.1",
    "numpy>=2.0,<2.6",  # numba 0.68 supports numpy < 2.6
    "pyarrow==26.0.1",
    "PyYAML>=6.0",
    "tqdm>=4.66",
]


def _accelerator() -> str:
    choice = os.environ.get("ATJT_ACCELERATOR", "").strip().lower()
    if choice in ("cpu", "cuda"):
        return choice
    if choice:
        raise SystemExit(f"ATJT_ACCELERATOR={choice!r}: expected 'cpu' or 'cuda'")
    return "cuda" if shutil.which("nvidia-smi") else "cpu"


def _fbgemm_requirement() -> str:
    if _accelerator() == "cuda":
        return f"fbgemm-gpu=={FBGEMM_VERSION}"
    selector = Path(__file__).resolve().parent / "packaging" / "fbgemm-gpu-cpu-select"
    return f"fbgemm-gpu @ {selector.as_uri()}"


setup(install_requires=COMMON + [_fbgemm_requirement()])
