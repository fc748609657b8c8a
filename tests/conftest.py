"""Shared fixtures. Real COCO photos: the sample committed in `<repo>/assets/coco` (`sample_coco`, always there);
tests that need the original photos or the reference outputs find them at `<repo>/../shared` and skip when absent."""

from __future__ import annotations

import os

# One BLAS thread in tests: their matrices are small, where OpenBLAS's threads cost more than they give, and on a
# busy 2-core machine oversubscribed BLAS threads made single steps up to 10x slower. Must precede `import numpy`.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("MINICAP_SHARED", REPO_ROOT.parent / "shared"))


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.skip(f"{what} not found at {path} (set MINICAP_SHARED to the folder holding coco/ and reference/)")
    return path


@pytest.fixture(scope="session")
def sample_coco() -> Path:
    """`assets/coco`: the 600 real COCO photos committed with the code (images/, captions.json; never skipped)."""
    return REPO_ROOT / "assets" / "coco"


@pytest.fixture(scope="session")
def shared_coco() -> Path:
    """`../shared/coco`: 271 COCO photos (images/), captions.json, captions_val2017_full.json."""
    return _require(SHARED / "coco", "shared COCO data")


@pytest.fixture(scope="session")
def shared_reference() -> Path:
    """`../shared/reference`: EfficientNet-Lite0 reference outputs."""
    return _require(SHARED / "reference", "EfficientNet-Lite0 reference outputs")


@pytest.fixture
def rng() -> np.random.Generator:
    """A deterministic random generator: every test gets the same inputs on every run."""
    return np.random.default_rng(231)
