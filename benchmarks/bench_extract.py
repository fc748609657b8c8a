"""How fast is feature extraction, and does overlapping decode with inference pay?

Measures, in one run and interleaved repeat by repeat (so a noisy neighbour hits all three alike):
  (a) decode     JPEG decode + preprocess alone, through the same worker pool extraction uses
  (b) inference  ONNX Runtime alone on already-decoded (N, 3, S, S) tensors, same batch size
  (c) end_to_end `minicap.vision.extract.extract_features`, the whole call: hashing the ONNX file, opening the
                 session, overlapped decode + inference, pickling the store atomically
and prints medians with min-max, the ratio end_to_end / (decode + inference) (target <= 1.05: overlap should
cost nothing; < 1 means it saves time) and, with --sweep, the alternatives the defaults were chosen from.
The last line is one JSON object.

    .venv/bin/python benchmarks/bench_extract.py [--images /work/shared/coco/images] [--repeats 3] [--sweep]

The encoder is the real EfficientNet-Lite0 graph built by `minicap.vision.encoders` (or any encoder file via --encoder).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from minicap.vision.extract import OnnxEncoder, decode_batches, extract_features, load_image_tensor


def stats(times: list[float]) -> dict[str, float]:
    return {"median": statistics.median(times), "min": min(times), "max": max(times)}


def fmt(s: dict[str, float], n: int) -> str:
    return (
        f"{s['median']:7.3f} s  (min {s['min']:.3f}, max {s['max']:.3f})  "
        f"{1000 * s['median'] / n:6.2f} ms/img  {n / s['median']:6.1f} img/s"
    )


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def timed_cpu(fn, cpu: list[float]) -> float:
    """Wall time of fn(); its CPU time (all threads of this process) is appended to `cpu`. On a shared machine
    CPU seconds move far less than wall seconds, so they tell whether a change in wall time is real work."""
    start_cpu = time.process_time()
    wall = timed(fn)
    cpu.append(time.process_time() - start_cpu)
    return wall


def list_images(images_dir: Path, limit: int | None) -> list[tuple[int, Path]]:
    files = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        sys.exit(f"no images in {images_dir}")
    items = [(int(p.stem) if p.stem.isdigit() else i, p) for i, p in enumerate(files)]
    return items[:limit] if limit else items


def build_lite0(out_dir: Path) -> Path:
    try:
        from minicap.vision.encoders import build_encoder, save_encoder
    except ImportError as e:
        sys.exit(f"minicap.vision.encoders.build_encoder is not available ({e}); pass an encoder file with --encoder")
    path = out_dir / "efficientnet_lite0.onnx"
    save_encoder(build_encoder("efficientnet_lite0"), path)
    return path


def decode_all(items, spec, batch_size: int, workers: int, pool: str) -> None:
    for _ in decode_batches(items, spec, batch_size, workers, pool):
        pass


def infer_all(encoder: OnnxEncoder, x: np.ndarray, batch_size: int) -> None:
    for i in range(0, len(x), batch_size):
        encoder.run(x[i : i + batch_size])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=Path, default=Path("/work/shared/coco/images"), help="folder of JPEGs")
    ap.add_argument("--encoder", type=Path, default=None, help="encoder ONNX file (default: build Lite0)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2, help="decode threads (extract_features' default: 2)")
    ap.add_argument("--intra-op-threads", type=int, default=None, help="ORT threads (default: OnnxEncoder's)")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N images")
    ap.add_argument("--sweep", action="store_true", help="also time 1/2 threads, processes, 1/2 ORT threads")
    args = ap.parse_args()
    if args.repeats < 3:
        sys.exit("--repeats must be at least 3 (medians of fewer mean little on a shared machine)")

    items = list_images(args.images, args.limit)
    n, bs = len(items), args.batch_size
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_extract.") as tmp:
        tmp = Path(tmp)
        encoder_path = args.encoder or build_lite0(tmp)
        encoder = OnnxEncoder(encoder_path, intra_op_threads=args.intra_op_threads)
        spec = encoder.spec
        threads = encoder.session.get_session_options().intra_op_num_threads or "default"
        print(
            f"{n} images from {args.images}, encoder {encoder.arch} ({encoder_path.name}, {spec.input_size}px, "
            f"F={spec.feature_size}), batch {bs}, {args.workers} decode threads, {threads} ORT intra-op threads, "
            f"{os.cpu_count()} CPUs, load average {load_start[0]:.2f} (machine shared: timings are noisy)"
        )
        x = np.stack([load_image_tensor(p, spec) for _, p in items])  # (N, 3, S, S), for (b)
        encoder.run(x[:bs])  # warm-up: the first run allocates ORT's buffers

        times: dict[str, list[float]] = {"decode": [], "inference": [], "end_to_end": [], "setup": []}
        cpu: dict[str, list[float]] = {"decode": [], "inference": [], "end_to_end": []}
        out = tmp / "features.pkl"
        for _ in range(args.repeats):
            times["decode"].append(
                timed_cpu(lambda: decode_all(items, spec, bs, args.workers, "thread"), cpu["decode"])
            )
            times["inference"].append(timed_cpu(lambda: infer_all(encoder, x, bs), cpu["inference"]))
            out.unlink(missing_ok=True)
            times["end_to_end"].append(
                timed_cpu(
                    lambda: extract_features(
                        items,
                        encoder_path,
                        out,
                        batch_size=bs,
                        workers=args.workers,
                        progress=False,
                        save_every=10**9,
                        intra_op_threads=args.intra_op_threads,
                    ),
                    cpu["end_to_end"],
                )
            )
            times["setup"].append(timed(lambda: OnnxEncoder(encoder_path, intra_op_threads=args.intra_op_threads)))

        s = {k: stats(v) for k, v in times.items()}
        c = {k: statistics.median(v) for k, v in cpu.items()}
        print(f"(a) decode + preprocess   {fmt(s['decode'], n)}  cpu {c['decode']:6.3f} s")
        print(f"(b) onnxruntime inference {fmt(s['inference'], n)}  cpu {c['inference']:6.3f} s")
        print(f"(c) end to end            {fmt(s['end_to_end'], n)}  cpu {c['end_to_end']:6.3f} s")
        print(f"    of which setup        {s['setup']['median']:7.3f} s  (sha256 of the ONNX file + session)")
        total = s["decode"]["median"] + s["inference"]["median"]
        ratio = s["end_to_end"]["median"] / total
        print(
            f"end_to_end / (decode + inference) = {s['end_to_end']['median']:.3f} / {total:.3f} = {ratio:.3f} "
            f"(target <= 1.05); overlap {'beats' if ratio < 1 else 'does not beat'} the sum"
        )
        cpu_ratio = c["end_to_end"] / (c["decode"] + c["inference"])
        print(f"cpu seconds, same ratio = {cpu_ratio:.3f} (what the pipeline itself costs beyond the work)")

        sweep: dict[str, dict[str, float]] = {}
        if args.sweep:
            print("sweep (medians over the same number of repeats):")
            for workers, pool in ((0, "thread"), (1, "thread"), (2, "thread"), (2, "process")):
                key = f"decode_{workers}_{'threads' if pool == 'thread' else 'processes'}"
                sweep[key] = stats(
                    [timed(lambda w=workers, p=pool: decode_all(items, spec, bs, w, p)) for _ in range(args.repeats)]
                )
                print(f"  {key:28s}{fmt(sweep[key], n)}")
            for intra in (1, 2):
                enc = OnnxEncoder(encoder_path, intra_op_threads=intra)
                enc.run(x[:bs])
                key = f"inference_ort_threads_{intra}"
                sweep[key] = stats([timed(lambda e=enc: infer_all(e, x, bs)) for _ in range(args.repeats)])
                print(f"  {key:28s}{fmt(sweep[key], n)}")
            for workers, intra in ((1, 2), (2, 1), (2, 2), (3, 2)):
                key = f"end_to_end_w{workers}_ort{intra}"
                runs = []
                for _ in range(args.repeats):
                    out.unlink(missing_ok=True)
                    runs.append(
                        timed(
                            lambda w=workers, t=intra: extract_features(
                                items, encoder_path, out, batch_size=bs, workers=w, progress=False, intra_op_threads=t
                            )
                        )
                    )
                sweep[key] = stats(runs)
                print(f"  {key:28s}{fmt(sweep[key], n)}")

    load_end = os.getloadavg()
    print(f"load average at the end {load_end[0]:.2f}")
    result = {
        "benchmark": "extract",
        "images": n,
        "encoder": encoder.arch,
        "batch_size": bs,
        "workers": args.workers,
        "intra_op_threads": threads,
        "repeats": args.repeats,
        "cpus": os.cpu_count(),
        "loadavg_start": round(load_start[0], 2),
        "loadavg_end": round(load_end[0], 2),
        **{f"{k}_s": {kk: round(vv, 4) for kk, vv in v.items()} for k, v in s.items()},
        "ratio_end_to_end_over_sum": round(ratio, 4),
        "overlap_beats_sum": ratio < 1,
        "cpu_s_median": {k: round(v, 4) for k, v in c.items()},
        "cpu_ratio_end_to_end_over_sum": round(cpu_ratio, 4),
        "end_to_end_images_per_s": round(n / s["end_to_end"]["median"], 2),
        **({"sweep": {k: round(v["median"], 4) for k, v in sweep.items()}} if sweep else {}),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
