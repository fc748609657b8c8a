"""What each idea of the caption model's packed fast path buys: whole training steps (loss + clip + Adam) of
minicap variants, each with ideas switched off, timed in turn on the same batch.

    python benchmarks/bench_fast_ablation.py V KIND REPEATS STEPS VARIANT...
    e.g. python benchmarks/bench_fast_ablation.py 10000 coco 5 3 new new+noWS new+unblocked old

KIND: coco or full (bench_train_step.py's batches). A VARIANT is "old" (model.packed = False: nn.fast's unpacked
(N, T, ·) functions) or "new" (the packed path, as shipped) followed by +-separated switches:
  noWS       no workspace: every temporary freshly allocated (nn.fast_packed's `_Fresh`)
  unblocked  the vocabulary loss's arithmetic on all K rows at once (block_rows = K)
  B=<rows>   ... in blocks of <rows> rows
  P=<k>      the gate and softmax arithmetic over a RowPool of k threads (default 1: no pool)
  oldsig     the gates' σ by `nn.sigmoid` instead of `nn.fast_packed.sigmoid_by_tanh`
  dbsum      db_vocab as a column sum instead of a matrix-vector product
  adamwhole  Adam on whole arrays (Adam.chunk = 0);  chunk=<n>  Adam in pieces of n elements
Prints ms per step (median, min), the speed-up of each variant over the first, and minor page faults per step.
"""

import functools
import os
import resource
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")
V, KIND, REPEATS, STEPS = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
VARIANTS = sys.argv[5:]
sys.argv = sys.argv[:1] + ["--no-torch"]  # bench_train_step parses its own arguments on import

import numpy as np  # noqa: E402
from bench_train_step import F, H, W, make_batch  # noqa: E402

from minicap import optim  # noqa: E402
from minicap.models import CaptionModel  # noqa: E402
from minicap.nn import fast_packed, layers  # noqa: E402

ORIGINAL = {"words_loss_packed": fast_packed.words_loss_packed, "shared_pool": fast_packed.shared_pool}
POOLS: dict[int, fast_packed.RowPool] = {}


def setup(name: str, model: CaptionModel) -> None:
    parts = name.split("+")
    if parts[0] == "old":
        model.packed = False
    if "noWS" in parts:
        model._workspace = fast_packed._Fresh()


def enter(name: str) -> None:
    """Switch the module-level ideas to this variant's (before each of its steps)."""
    parts = name.split("+")
    fast_packed.words_loss_packed = ORIGINAL["words_loss_packed"]
    threads = 1
    for part in parts:
        if part == "unblocked":
            fast_packed.words_loss_packed = functools.partial(ORIGINAL["words_loss_packed"], block_rows=10**9)
        elif part.startswith("B="):
            fast_packed.words_loss_packed = functools.partial(ORIGINAL["words_loss_packed"], block_rows=int(part[2:]))
        elif part.startswith("P="):
            threads = int(part[2:])
    POOLS.setdefault(threads, fast_packed.RowPool(threads))
    fast_packed.shared_pool = lambda: POOLS[threads]
    fast_packed._gate_sigmoid = layers.sigmoid if "oldsig" in parts else fast_packed.sigmoid_by_tanh
    fast_packed._DB_BY_GEMV = "dbsum" not in parts
    optim.Adam.chunk = 0 if "adamwhole" in parts else 32768
    for part in parts:
        if part.startswith("chunk="):
            optim.Adam.chunk = int(part[6:])


def main() -> None:
    features, captions, _ = make_batch(V, KIND)
    fns = {}
    for name in VARIANTS:
        model = CaptionModel(V, F, W, H, cell="lstm", dtype=np.float32, seed=0)
        setup(name, model)
        opt = optim.Adam(lr=1e-3)

        def step(model=model, opt=opt, name=name):
            enter(name)
            loss, grads = model.loss(features, captions)
            optim.clip_grad_norm(grads, 5.0)
            opt.step(model.params, grads)

        fns[name] = step
    faults = {}
    for name, fn in fns.items():
        fn()
        fn()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        fn()
        faults[name] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    times: dict[str, list[float]] = {n: [] for n in fns}
    for _ in range(REPEATS):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(STEPS):
                fn()
            times[name].append((time.perf_counter() - start) / STEPS)
    base = np.median(times[VARIANTS[0]])
    print(f"V={V} {KIND} load {os.getloadavg()[0]:.2f}, {REPEATS}x{STEPS}")
    for name in VARIANTS:
        m = np.median(times[name])
        print(
            f"  {name:<24} {1e3 * m:7.1f} ms/step (min {1e3 * min(times[name]):.1f})  {base / m:5.2f}x vs "
            f"{VARIANTS[0]}  faults/step {faults[name]}"
        )


if __name__ == "__main__":
    main()
