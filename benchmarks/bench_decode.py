"""Decoding throughput: captions per second for 1,000 images, greedy (beam 1) and beam search (beam 3), minicap
against the same model in PyTorch (the same weights, copied), from ONE run with interleaved timing.

    python benchmarks/bench_decode.py [--images 1000] [--vocab 1000 10000] [--repeats 5] [--threads 2]

The model has the training benchmark's shape (F=1280, W=256, H=512, LSTM, float32) and minicap's seeded initial
weights (untrained: its captions are nonsense and rarely end early, so nearly every caption runs the full
`--max-length` 17 tokens — the decoders' worst case; the same for both frameworks). Images are decoded in batches of
256 (as `minicap.decode.generate_captions` does):
- minicap: `minicap.decode.greedy` and `minicap.decode.beam_search` (all N·B hypotheses of a batch as the rows of
  one `model.step`), exactly what `minicap caption` / `evaluate` run; at beam 3 also "minicap-all", the same
  search with `model.fast = False`, whose step scores all B·V candidates (`decode._expand_all`) where the fast
  path scores B·B (`decode._expand_pruned`): what that trick buys, from the same run (the captions are the same);
- PyTorch (benchmarks/torch_captioner.py, `torch.no_grad()`): the same algorithms written the way a PyTorch user
  would — greedy argmax over the allowed tokens; a batched beam search with float32 log_softmax and `topk` over
  the B·V candidates of each image, finished hypotheses continuing with <NULL> at no cost.
Printed: captions/s (median over repeats, min–max), the ratio minicap / PyTorch, and how many of the 1,000
captions the two frameworks agree on (rounding can flip a near-tie). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--vocab", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--repeats", type=int, default=5, help="timed repeats (median reported)")
    p.add_argument("--threads", type=int, default=2, help="BLAS / PyTorch threads")
    p.add_argument("--max-length", type=int, default=17, help="tokens per caption, <END> included")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--no-torch", action="store_true")
    return p.parse_args()


ARGS = parse_args()
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # before NumPy and torch load
    os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402

from minicap.decode import beam_search, greedy  # noqa: E402
from minicap.models import CaptionModel  # noqa: E402
from minicap.tokens import END, NULL, START, decodable_tokens  # noqa: E402

F, W, H = 1280, 256, 512


def minicap_fn(model: CaptionModel, features: np.ndarray, beam: int):
    def run() -> np.ndarray:
        out = []
        for s in range(0, len(features), ARGS.batch_size):
            chunk = features[s : s + ARGS.batch_size]
            if beam == 1:
                out.append(greedy(model, chunk, max_length=ARGS.max_length))
            else:
                out.append(beam_search(model, chunk, beam, max_length=ARGS.max_length))
        return np.concatenate(out)

    return run


def torch_fn(net, features_np: np.ndarray, beam: int, V: int):
    import torch

    allowed = torch.from_numpy(decodable_tokens(V))
    features = torch.from_numpy(features_np)
    L = ARGS.max_length

    @torch.no_grad()
    def greedy_batch(x: torch.Tensor) -> torch.Tensor:
        N = x.shape[0]
        state = net.initial_state(x)
        words = torch.full((N,), START, dtype=torch.long)
        ids = torch.full((N, L), NULL, dtype=torch.int32)
        done = torch.zeros(N, dtype=torch.bool)
        for t in range(L):
            logits, state = net.step(words, state)
            words = logits.masked_fill(~allowed, float("-inf")).argmax(dim=1)
            words[done] = NULL
            ids[:, t] = words
            done |= words == END
            if bool(done.all()):
                break
        return ids

    @torch.no_grad()
    def beam_batch(x: torch.Tensor) -> torch.Tensor:
        N, B = x.shape[0], beam
        h0, c0 = net.initial_state(x)
        state = (h0.repeat_interleave(B, dim=1), c0.repeat_interleave(B, dim=1))
        words = torch.full((N * B,), START, dtype=torch.long)
        tokens = torch.full((N, B, L), NULL, dtype=torch.int32)
        scores = torch.full((N, B), float("-inf"))
        scores[:, 0] = 0.0
        finished = torch.zeros((N, B), dtype=torch.bool)
        image = torch.arange(N)[:, None]
        for t in range(L):
            logits, state = net.step(words, state)
            log_p = torch.log_softmax(logits.masked_fill(~allowed, float("-inf")), dim=1).view(N, B, V)
            log_p[finished] = float("-inf")
            log_p[..., NULL] = torch.where(finished, 0.0, log_p[..., NULL])
            scores, best = (scores[:, :, None] + log_p).view(N, B * V).topk(B, dim=1)
            parent, word = best // V, best % V
            tokens = tokens[image, parent]
            tokens[:, :, t] = word.int()
            finished = finished[image, parent] | (word == END)
            rows = (image * B + parent).view(-1)
            state = (state[0][:, rows], state[1][:, rows])
            words = word.view(-1)
            if bool(finished.all()):
                break
        return tokens[torch.arange(N), scores.argmax(dim=1)]

    def run() -> np.ndarray:
        fn = greedy_batch if beam == 1 else beam_batch
        return torch.cat(
            [fn(features[s : s + ARGS.batch_size]) for s in range(0, len(features), ARGS.batch_size)]
        ).numpy()

    return run


def main() -> None:
    torch_available = False
    if not ARGS.no_torch:
        try:
            import torch

            torch.set_num_threads(ARGS.threads)
            from torch_captioner import TorchCaptioner

            torch_available = True
        except ImportError:
            print("torch not importable: PyTorch comparison skipped (pip install torch==2.13.0 to include it)")
    load = os.getloadavg()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, threads={ARGS.threads}, NumPy {np.__version__}")
    print(f"load average at the start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(
        f"decoding {ARGS.images} images, F={F} W={W} H={H} LSTM float32, max {ARGS.max_length} tokens, batches of "
        f"{ARGS.batch_size}; {ARGS.repeats} interleaved repeats, median captions/s (min–max)"
    )
    result: dict[str, object] = {"images": ARGS.images, "threads": ARGS.threads, "loadavg_start": round(load[0], 2)}
    features = np.random.default_rng(0).standard_normal((ARGS.images, F)).astype(np.float32)
    for V in ARGS.vocab:
        model = CaptionModel(V, F, W, H, cell="lstm", dtype=np.float32, seed=0)
        net = TorchCaptioner(V, F, W, H).copy_from(model).eval() if torch_available else None
        for beam in (1, 3):
            fns = {"minicap": minicap_fn(model, features, beam)}
            if beam > 1:
                readable = model.copy()
                readable.fast = False  # beam search's readable step: all B·V candidates
                fns["minicap-all"] = minicap_fn(readable, features, beam)
            if net is not None:
                fns["torch"] = torch_fn(net, features, beam, V)
            outputs = {name: fn() for name, fn in fns.items()}  # warm-up, and the captions to compare
            times: dict[str, list[float]] = {name: [] for name in fns}
            for _ in range(ARGS.repeats):
                for name, fn in fns.items():
                    start = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - start)
            entry: dict[str, object] = {}
            line = f"V={V:>5} beam {beam}:"
            for name, t in times.items():
                cps = [ARGS.images / s for s in t]
                entry[name] = {"captions_per_s": float(np.median(cps)), "min": min(cps), "max": max(cps)}
                line += f"  {name} {np.median(cps):7.1f} captions/s ({min(cps):.1f}–{max(cps):.1f})"
            if net is not None:
                ratio = entry["minicap"]["captions_per_s"] / entry["torch"]["captions_per_s"]  # type: ignore[index]
                same = int((outputs["minicap"] == outputs["torch"]).all(axis=1).sum())
                entry["ratio_minicap_over_torch"] = ratio
                entry["same_captions"] = same
                line += f"  minicap/PyTorch = {ratio:.2f}×  ({same}/{ARGS.images} captions identical)"
            if "minicap-all" in entry:
                gain = entry["minicap"]["captions_per_s"] / entry["minicap-all"]["captions_per_s"]  # type: ignore[index]
                entry["pruned_over_all"] = gain
                assert (outputs["minicap"] == outputs["minicap-all"]).all(), "the two beam steps must agree"
                line += f"  B·B / B·V candidates = {gain:.2f}×"
            print(line, flush=True)
            result[f"V={V} beam {beam}"] = entry
    load = os.getloadavg()
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    result["loadavg_end"] = round(load[0], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
