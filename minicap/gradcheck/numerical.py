"""The numerics of gradient checking: centred differences in extended precision, the two error measures and
their thresholds, and the result lines `minicap gradcheck` prints. `layers`, `attention` and `models` (this
package) use these on every backward pass of minicap."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

# Thresholds for float64 analytic gradients. Sequence functions chain T steps of rounding, so their elementwise
# bound is looser; the norm-relative bound is the same for everything.
STEP_MAX_REL = 1e-7
SEQUENCE_MAX_REL = 1e-5
NORM_REL = 1e-8
# fast == reference: the same maths in another order, so only rounding may differ (float64, max absolute difference).
FORWARD_EQUAL = 1e-12
GRADIENT_EQUAL = 1e-10

_HAS_EXTENDED = np.finfo(np.longdouble).eps < np.finfo(np.float64).eps
REFERENCE_DTYPE = np.dtype(np.longdouble if _HAS_EXTENDED else np.float64)


def _default_step(dtype: np.dtype) -> float:
    """h balancing truncation (∝ h²) against rounding (∝ ε/h) for the dtype f is evaluated in."""
    return 1e-6 if np.finfo(dtype).eps < np.finfo(np.float64).eps else 1e-5


def numerical_gradient(f: Callable[[], float], x: np.ndarray, h: float | None = None) -> np.ndarray:
    """Centred-difference gradient of a scalar function f() with respect to the array x, as float64.

    f takes no arguments: it must read x, which is perturbed IN PLACE one entry at a time and restored.
    f should return a NumPy scalar of x's dtype (not a Python float) so no precision is lost. h defaults to a
    step suited to x's dtype (1e-5 for float64, 1e-6 for extended precision).
    """
    h = _default_step(x.dtype) if h is None else h
    grad = np.zeros(x.shape, dtype=np.float64)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + h
        f_plus = f()
        x[i] = old - h
        f_minus = f()
        x[i] = old
        grad[i] = (f_plus - f_minus) / (2 * h)
    return grad


def numerical_gradient_array(
    f: Callable[[], np.ndarray], x: np.ndarray, dout: np.ndarray, h: float | None = None
) -> np.ndarray:
    """Gradient of Σ f() ⊙ dout with respect to x, for an array-valued f (see `numerical_gradient`)."""
    return numerical_gradient(lambda: np.sum(f() * dout), x, h)


def rel_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    """max_i |a_i − n_i| / max(1e-8, |a_i| + |n_i|)"""
    a, n = np.asarray(analytic, np.float64), np.asarray(numeric, np.float64)
    return float(np.max(np.abs(a - n) / np.maximum(1e-8, np.abs(a) + np.abs(n)), initial=0.0))


def norm_rel_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    """‖a − n‖ / max(1e-8, ‖a‖ + ‖n‖)"""
    a, n = np.asarray(analytic, np.float64), np.asarray(numeric, np.float64)
    return float(np.linalg.norm(a - n) / max(1e-8, np.linalg.norm(a) + np.linalg.norm(n)))


class CheckResult(NamedTuple):
    function: str
    input: str
    max_rel: float
    norm_rel: float
    max_rel_threshold: float
    norm_rel_threshold: float

    @property
    def passed(self) -> bool:
        return self.max_rel <= self.max_rel_threshold and self.norm_rel <= self.norm_rel_threshold

    def line(self) -> str:
        status = "ok  " if self.passed else "FAIL"
        return (
            f"{status} {self.function:<37} {self.input:<7} max rel {self.max_rel:8.1e} (≤ {self.max_rel_threshold:.0e})"
            f"   norm rel {self.norm_rel:8.1e} (≤ {self.norm_rel_threshold:.0e})"
        )


class EqualityResult(NamedTuple):
    """The fast path against the readable one: the largest absolute difference of one output."""

    function: str
    output: str
    max_abs_diff: float
    threshold: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.threshold

    def line(self) -> str:
        status = "ok  " if self.passed else "FAIL"
        return (
            f"{status} {self.function:<37} {self.output:<7} fast == reference: max |diff| {self.max_abs_diff:8.1e} "
            f"(≤ {self.threshold:.0e})"
        )


def equal(function: str, output: str, fast: np.ndarray, reference: np.ndarray, threshold: float) -> EqualityResult:
    if np.shape(fast) != np.shape(reference):
        raise ValueError(f"{function}/{output}: fast {np.shape(fast)} vs reference {np.shape(reference)}")
    diff = np.max(np.abs(np.asarray(fast, np.float64) - np.asarray(reference, np.float64)), initial=0.0)
    return EqualityResult(function, output, float(diff), threshold)


def compare(function: str, name: str, analytic: np.ndarray, numeric: np.ndarray, max_rel: float) -> CheckResult:
    """One `CheckResult` for one (function, input), with the given elementwise threshold."""
    if analytic.shape != numeric.shape:
        raise ValueError(f"{function}/{name}: analytic gradient {analytic.shape} vs numeric {numeric.shape}")
    return CheckResult(
        function, name, rel_error(analytic, numeric), norm_rel_error(analytic, numeric), max_rel, NORM_REL
    )


def as_reference(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Copies of float arrays in REFERENCE_DTYPE (integer arrays, e.g. word ids, are left alone)."""
    return {k: v.astype(REFERENCE_DTYPE) if v.dtype.kind == "f" else v for k, v in arrays.items()}


# Each check builds deterministic float64 inputs from a fixed seed, runs forward and backward once, and compares
# every analytic gradient with its numerical estimate.


def check_array_function(
    function: str,
    forward: Callable[..., np.ndarray],
    inputs: dict[str, np.ndarray],
    analytic: dict[str, np.ndarray],
    dout: np.ndarray,
    max_rel: float,
) -> list[CheckResult]:
    """Compare `analytic[name]` with the numerical gradient of Σ forward(**inputs) ⊙ dout for every name
    (evaluated on REFERENCE_DTYPE copies of the float64 inputs)."""
    ref = as_reference(inputs)
    dout_ref = dout.astype(REFERENCE_DTYPE)
    results = []
    for name, grad in analytic.items():
        numeric = numerical_gradient_array(lambda: forward(**ref), ref[name], dout_ref)
        results.append(compare(function, name, grad, numeric, max_rel))
    return results


# Functions with several outputs are checked through the scalar Σ_k Σ out_k ⊙ dout_k: its gradient is what the
# backward pass computes when every output receives its upstream gradient.


def check_outputs(
    function: str,
    forward: Callable[..., tuple[np.ndarray, ...]],
    inputs: dict[str, np.ndarray],
    analytic: dict[str, np.ndarray],
    douts: tuple[np.ndarray, ...],
    max_rel: float,
) -> list[CheckResult]:
    ref = as_reference(inputs)
    douts_ref = tuple(d.astype(REFERENCE_DTYPE) for d in douts)

    def scalar() -> np.floating:
        outs = forward(**ref)
        return sum((np.sum(o * d) for o, d in zip(outs, douts_ref, strict=True)), REFERENCE_DTYPE.type(0))

    return [
        compare(function, name, grad, numerical_gradient(scalar, ref[name]), max_rel) for name, grad in analytic.items()
    ]
