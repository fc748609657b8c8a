"""How long do the COCO caption metrics take, and how much of it is METEOR's Java start-up?

For 30, 100 and 300 images of COCO val2017 (leave-one-out "human" captions: each image's first caption
scored against its other four), per repeat:
  start-up  a fresh `CaptionScorer`'s first METEOR call on one tiny caption (JVM + paraphrase table load)
  per size  `CaptionScorer.score` with all metrics, split into its stages (PTB tokenize, BLEU, METEOR,
            ROUGE_L, CIDEr) from `CaptionScores.seconds`
and the CPU seconds used by child processes (the Java programs) over the repeat, which a busy machine
inflates far less than wall time. Medians with min-max. The last line is one JSON object.

    .venv/bin/python benchmarks/bench_metrics.py [--captions /work/shared/coco/captions_val2017_full.json] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

from minicap.coco import load_coco_captions
from minicap.metrics import CaptionScorer

SIZES = (30, 100, 300)
STAGES = ("tokenize", "BLEU", "METEOR", "ROUGE_L", "CIDEr")


def stats(times: list[float]) -> dict[str, float]:
    return {"median": statistics.median(times), "min": min(times), "max": max(times)}


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", default="/work/shared/coco/captions_val2017_full.json")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    refs = load_coco_captions(args.captions).references()
    ids = sorted(i for i, caps in refs.items() if len(caps) >= 2)[: max(SIZES)]
    startup: list[float] = []
    child_cpu: list[float] = []
    totals: dict[int, list[float]] = {n: [] for n in SIZES}
    stages: dict[int, dict[str, list[float]]] = {n: {s: [] for s in STAGES} for n in SIZES}
    scores: dict[int, dict[str, float]] = {}
    for _ in range(args.repeats):
        cpu0 = children_cpu()
        with CaptionScorer() as scorer:
            startup.append(scorer.warm_up())
            for n in SIZES:
                chosen = ids[:n]
                t0 = time.perf_counter()
                result = scorer.score({i: refs[i][1:] for i in chosen}, {i: refs[i][0] for i in chosen})
                totals[n].append(time.perf_counter() - t0)
                for s in STAGES:
                    stages[n][s].append(result.seconds[s])
                scores[n] = result.corpus
        child_cpu.append(children_cpu() - cpu0)

    s = stats(startup)
    print(f"METEOR start-up (JVM + paraphrase table): {s['median']:.2f} s  (min {s['min']:.2f}, max {s['max']:.2f})")
    c = stats(child_cpu)
    print(f"Java CPU per repeat (incl. start-up): {c['median']:.1f} s  (min {c['min']:.1f}, max {c['max']:.1f})")
    for n in SIZES:
        t = stats(totals[n])
        parts = "  ".join(f"{st} {statistics.median(stages[n][st]):.2f}" for st in STAGES)
        print(f"{n:4d} images: {t['median']:6.2f} s  (min {t['min']:.2f}, max {t['max']:.2f})  | {parts}")
        print("            " + "  ".join(f"{k} {v:.3f}" for k, v in scores[n].items()))
    print(
        json.dumps(
            {
                "benchmark": "metrics",
                "repeats": args.repeats,
                "meteor_startup_s": s,
                "java_cpu_per_repeat_s": c,
                "score_s": {str(n): stats(totals[n]) for n in SIZES},
                "stage_median_s": {str(n): {st: statistics.median(stages[n][st]) for st in STAGES} for n in SIZES},
            }
        )
    )


if __name__ == "__main__":
    main()
