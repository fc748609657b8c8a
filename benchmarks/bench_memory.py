"""Peak memory of a training step (forward, backward, clip, Adam) at V=10,000, minicap against PyTorch's packed
and padded recipes: each framework in a subprocess of its own, so one's memory never counts for the other.

    python benchmarks/bench_memory.py [--vocab 10000] [--steps 3] [--threads 2]

The step is bench_train_step.py's (N=128, T=16, W=256, H=512, F=1280, float32, the same batches). In each
subprocess: build the model, the optimiser and the batch, read the resident set size (RSS, /proc/self/status),
reset the peak (/proc/self/clear_refs), run `--steps` steps, read the peak RSS (VmHWM). "The steps add" = peak −
RSS before the first step: what training adds on top of the parameters and the framework itself (Adam's m and v
are created by the first step, so they count: 2 × the parameters, 80 MB here). For minicap, tracemalloc's peak of
the steps too (NumPy reports its allocations to it; PyTorch's are invisible to it). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, default=10000)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # "framework kind": run one measurement
    return p.parse_args()


def rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(args: argparse.Namespace) -> None:
    framework, kind = args.child.split()
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    sys.argv = [sys.argv[0], "--no-torch"]  # bench_train_step parses its own arguments on import
    sys.path.insert(0, HERE)
    import tracemalloc

    import bench_train_step as bench

    V = args.vocab
    if framework == "minicap":
        step = bench.minicap_step_fn(V, kind)
    else:
        step, _ = bench.torch_step_fn(V, kind, args.threads, framework.split("-")[1])
    before = rss_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to now: the setup does not count
        f.write("5")
    if framework == "minicap":
        tracemalloc.start()
    for _ in range(args.steps):
        step()
    traced = tracemalloc.get_traced_memory()[1] if framework == "minicap" else None
    peak = rss_kb("VmHWM")
    print(json.dumps({"rss_before_mb": before / 1024, "peak_rss_mb": peak / 1024, "tracemalloc_peak_mb":
                      None if traced is None else traced / 2**20}))  # fmt: skip


def main() -> None:
    args = parse_args()
    if args.child:
        child(args)
        return
    try:
        import torch  # noqa: F401

        frameworks = ["minicap", "torch-packed", "torch-padded"]
    except ImportError:
        print("torch not importable: minicap only")
        frameworks = ["minicap"]
    print(f"peak memory of {args.steps} training steps at V={args.vocab} (N=128 T=16 W=256 H=512 F=1280 float32)")
    result: dict[str, object] = {"vocab": args.vocab, "steps": args.steps}
    for kind in ("coco", "full"):
        for framework in frameworks:
            out = subprocess.run(
                [sys.executable, __file__, "--vocab", str(args.vocab), "--steps", str(args.steps), "--threads",
                 str(args.threads), "--child", f"{framework} {kind}"],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            m = json.loads(out.stdout.strip().splitlines()[-1])
            m["step_mb"] = m["peak_rss_mb"] - m["rss_before_mb"]
            result[f"{framework} {kind}"] = m
            traced = "" if m["tracemalloc_peak_mb"] is None else f", tracemalloc peak {m['tracemalloc_peak_mb']:.0f} MB"
            print(
                f"{kind:>4} {framework:<13} RSS before the steps {m['rss_before_mb']:6.0f} MB, "
                f"peak {m['peak_rss_mb']:6.0f} MB: the steps add {m['step_mb']:5.0f} MB{traced}",
                flush=True,
            )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
