"""Download a subset of MS-COCO photos, with the captions that describe exactly what arrived.

    captions JSON (COCO 2014 or 2017)  ──select N images──▶  fetch each coco_url (thread pool, retries)
        ──verify (Pillow decodes it fully, size matches the JSON)──▶  DIR/images/<file_name>
        ──▶  DIR/captions.json  (same COCO format, only the images that are present and verified)

`DIR` then has the layout `minicap demo --coco DIR` reads (the shared data in `../shared/coco` has it too).

Which images. With no seed, the first N by image id: deterministic, and a larger N extends a smaller
one. With a seed, the N images whose `sha256(f"{seed}:{id}")` is smallest: a fixed pseudo-random subset
that is the same on every machine and Python version (unlike `random.sample`), that does not depend on the
order of the JSON, and that also nests (N+1 images = the same N plus one). An offset K skips the first K
images of that order: `limit=N, offset=K` continues where `limit=K` stopped, so one split gives disjoint
sets (e.g. 2,000 validation and 2,000 test images from val2014: offset 0 and offset 2000, same seed).

What is retried. A download is retried with exponential back-off and jitter after a connection error, a
timeout, HTTP 429 or any 5xx, a body shorter than its `Content-Length` (truncated), or image data that
Pillow recognises but cannot decode to the end (a truncation the server did not announce). `Retry-After`
(seconds or an HTTP date) is honoured on 429/5xx. Not retried, reported as failed: any other 4xx (404,
403, ...), bytes that are not an image at all, and an image whose size differs from the JSON's
width/height (the server has a different picture). The network rules and the back-off timing live in
`minicap.vision.fetch`, shared with the other downloads (caption files, encoder weights).

No partial file is ever left. Bytes go to `images/<file_name>.part`, are verified there, and only then
renamed to `images/<file_name>`; a failed download removes its `.part`, and stale `.part` files from a
killed run are removed when the next run starts. One download per DIR at a time: two concurrent runs
would remove each other's `.part` files.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from minicap.safe_io import atomic_write_json
from minicap.vision.fetch import (
    CHUNK_BYTES,
    MAX_BACKOFF_S,
    MAX_RETRY_AFTER_S,
    NETWORK_ERRORS,
    USER_AGENT,
    RetryPolicy,
    mirror_url,
    network_failure,
    parse_retry_after,
    retry_delay,
    rewrite_url,
)

__all__ = [
    "MAX_BACKOFF_S",
    "DownloadReport",
    "ImageOutcome",
    "ImageRecord",
    "download_coco",
    "load_captions",
    "parse_retry_after",
    "retry_delay",
    "rewrite_url",
    "select_images",
    "verify_image",
]

IMAGES_SUBDIR = "images"
CAPTIONS_NAME = "captions.json"
PART_SUFFIX = ".part"


# ----------------------------------------------------------------------------------------------- reading


class ImageRecord(NamedTuple):
    """The fields of one `images[]` entry the downloader needs (the full entry is kept for captions.json)."""

    image_id: int
    file_name: str
    url: str  # the JSON's coco_url (before any --base-url rewrite)
    width: int
    height: int


def _check_file_name(name: Any, where: str) -> str:
    """A file name must stay inside images/: no folders, no '..', no hidden files, no '.part' clash."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: 'file_name' must be a non-empty string, got {name!r}")
    if name != os.path.basename(name) or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"{where}: unsafe 'file_name' {name!r} (it must be a plain file name inside images/)")
    if name.endswith(PART_SUFFIX):
        raise ValueError(f"{where}: 'file_name' {name!r} ends with {PART_SUFFIX!r}, the downloader's temp suffix")
    return name


def load_captions(path: str | os.PathLike) -> tuple[dict[str, Any], list[ImageRecord]]:
    """Read a COCO captions JSON and check every image record the downloader relies on.

    Returns the whole JSON object (to copy `info`, `licenses`, ... into the output) and one `ImageRecord` per
    entry of `images`, in file order. Raises `FileNotFoundError`, or `ValueError` naming the first problem:
    not JSON, no `images`/`annotations` lists, a record without an integer `id`/`width`/`height`, an unsafe or
    duplicate `file_name`, a duplicate `id`.
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            coco = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(coco, dict):
        raise ValueError(f"{path}: a COCO captions file is a JSON object, got {type(coco).__name__}")
    for key in ("images", "annotations"):
        if not isinstance(coco.get(key), list):
            raise ValueError(f"{path}: no '{key}' list (is this a COCO captions file, e.g. captions_val2017.json?)")

    records: list[ImageRecord] = []
    seen_ids: set[int] = set()
    seen_names: set[str] = set()
    for i, im in enumerate(coco["images"]):
        where = f"{path}: images[{i}]"
        if not isinstance(im, dict):
            raise ValueError(f"{where} is not an object")
        for key in ("id", "width", "height"):
            value = im.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{where}: '{key}' must be a non-negative integer, got {value!r}")
        name = _check_file_name(im.get("file_name"), where)
        url = im.get("coco_url")
        if not isinstance(url, str) or not url:
            raise ValueError(f"{where} (id {im['id']}): no 'coco_url' to download it from")
        if im["id"] in seen_ids:
            raise ValueError(f"{where}: duplicate image id {im['id']}")
        if name in seen_names:
            raise ValueError(f"{where}: duplicate file_name {name!r}")
        seen_ids.add(im["id"])
        seen_names.add(name)
        records.append(ImageRecord(im["id"], name, url, im["width"], im["height"]))
    return coco, records


def select_images(
    records: list[ImageRecord], limit: int | None, seed: int | None = None, offset: int = 0
) -> list[ImageRecord]:
    """Pick `limit` images (all when None) after the first `offset`, deterministically; returned sorted by id.

    The order: seed None, by image id; seed given, by `sha256(f"{seed}:{id}")` — a pseudo-random order, identical
    on every machine, independent of JSON order. The images are positions offset .. offset + limit - 1 of it, so
    a larger limit keeps every image of a smaller one, and (limit=K, offset=0) and (limit=N, offset=K) never share
    an image.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1 (or None for all images), got {limit}")
    if offset < 0:
        raise ValueError(f"offset must be at least 0, got {offset}")
    if seed is None:
        order = sorted(records, key=lambda r: r.image_id)
    else:
        order = sorted(records, key=lambda r: (hashlib.sha256(f"{seed}:{r.image_id}".encode()).digest(), r.image_id))
    chosen = order[offset:] if limit is None else order[offset : offset + limit]
    return sorted(chosen, key=lambda r: r.image_id)


# ----------------------------------------------------------------------------------------------- verifying


class _Check(NamedTuple):
    kind: str  # "ok"; "damaged" (may be a truncated transfer: retry); "not_image", "wrong_size", "unreadable"
    problem: str


def _inspect_image(path: Path, width: int, height: int) -> _Check:
    """Open with Pillow, compare the size with the JSON, then decode every pixel (`img.load()`).

    Pillow raises for truncated JPEG data unless someone set `PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True`
    process-wide; minicap never does.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        f = open(path, "rb")
    except OSError as e:  # permission denied, I/O error: not a question of the image data
        return _Check("unreadable", f"cannot read the file ({e})")
    with f:
        head = f.read(16)
        f.seek(0)
        try:
            img = Image.open(f)
        except UnidentifiedImageError:
            return _Check("not_image", f"not an image (Pillow cannot identify it; it starts with {head!r})")
        except Image.DecompressionBombError as e:
            return _Check("not_image", f"refused as a decompression bomb ({e})")
        except Exception as e:  # the format was recognised but its header is cut short or broken
            return _Check("damaged", f"image header does not parse ({type(e).__name__}: {e})")
        with img:
            if img.size != (width, height):
                w, h = img.size
                return _Check("wrong_size", f"image is {w}x{h} but the captions JSON says {width}x{height}")
            try:
                img.load()
            except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, ... for bad data
                return _Check("damaged", f"{img.format} data does not decode to the end ({e})")
    return _Check("ok", "")


def verify_image(path: str | os.PathLike, width: int, height: int) -> str | None:
    """None if `path` is an image Pillow decodes completely, of size (width, height); else the problem."""
    check = _inspect_image(Path(path), width, height)
    return None if check.kind == "ok" else check.problem


# ----------------------------------------------------------------------------------------------- fetching


class ImageOutcome(NamedTuple):
    """What happened to one selected image."""

    image_id: int
    file_name: str
    url: str  # the URL actually requested (after --base-url)
    status: str  # "downloaded", "present" (already there and verified) or "failed"
    attempts: int  # HTTP requests made (0 when the image was already present)
    nbytes: int  # bytes written (0 unless downloaded)
    reason: str  # why it failed; for a download, a note such as "replaced an invalid existing file"


class _Attempt(NamedTuple):
    ok: bool
    retryable: bool
    reason: str
    retry_after: float | None = None
    nbytes: int = 0


class _Cancelled(Exception):
    """The run is being interrupted; stop this download and clean up."""


def _fetch_once(url: str, part: Path, record: ImageRecord, timeout: float, cancel: threading.Event) -> _Attempt:
    """One HTTP GET of `url` into `part`, then verification. Leaves `part` on disk; the caller removes it."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    nbytes = 0
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, open(part, "wb") as f:
            length = response.headers.get("Content-Length")
            expected = int(length) if length is not None and length.strip().isdigit() else None
            while chunk := response.read(CHUNK_BYTES):
                if cancel.is_set():
                    raise _Cancelled
                f.write(chunk)
                nbytes += len(chunk)
            f.flush()
            os.fsync(f.fileno())
    except NETWORK_ERRORS as e:  # HTTP status, connection, timeout: fetch.network_failure says which are retried
        failure = network_failure(e)
        return _Attempt(False, failure.retryable, failure.reason, failure.retry_after)
    except OSError as e:  # not a network error: the disk (full, read-only, ...) — retrying will not help
        return _Attempt(False, False, f"could not write {part}: {e}")

    # HTTP/1.x ends a body early without an error when the connection closes: count the bytes ourselves.
    if expected is not None and nbytes != expected:
        return _Attempt(False, True, f"truncated: received {nbytes} of {expected} bytes (Content-Length)")
    check = _inspect_image(part, record.width, record.height)
    if check.kind == "ok":
        return _Attempt(True, False, "", nbytes=nbytes)
    return _Attempt(False, check.kind == "damaged", check.problem)


def _download_one(
    record: ImageRecord, url: str, images_dir: Path, settings: RetryPolicy, cancel: threading.Event
) -> ImageOutcome:
    """Skip a present, valid file; else fetch with up to 1 + `retries` attempts and rename into place."""

    def outcome(status: str, attempts: int, nbytes: int = 0, reason: str = "") -> ImageOutcome:
        return ImageOutcome(record.image_id, record.file_name, url, status, attempts, nbytes, reason)

    dest = images_dir / record.file_name
    note = ""
    if dest.exists():
        problem = verify_image(dest, record.width, record.height)
        if problem is None:
            return outcome("present", 0)
        note = f"existing file was invalid ({problem})"

    part = dest.with_name(dest.name + PART_SUFFIX)
    attempts = 0
    try:
        for attempt in range(settings.retries + 1):
            if cancel.is_set():
                raise _Cancelled
            attempts += 1
            result = _fetch_once(url, part, record, settings.timeout, cancel)
            if result.ok:
                try:
                    os.replace(part, dest)  # atomic: dest is either the old file or the verified new one
                except OSError as e:
                    return outcome("failed", attempts, reason=f"could not move the download into place ({e})")
                return outcome("downloaded", attempts, result.nbytes, f"replaced: {note}" if note else "")
            too_long = result.retry_after is not None and result.retry_after > MAX_RETRY_AFTER_S
            if not result.retryable or attempt == settings.retries or too_long:
                reason = f"{result.reason} [{attempts} attempt{'s' if attempts > 1 else ''}]"
                if too_long:
                    reason += f"; server asked to wait {result.retry_after:.0f} s before retrying: try again later"
                if note:
                    reason += f"; {note}, left in place and not listed"
                return outcome("failed", attempts, reason=reason)
            if cancel.wait(retry_delay(attempt, settings.backoff, result.retry_after)):
                raise _Cancelled
        raise AssertionError("unreachable: the loop returns on its last attempt")
    except _Cancelled:
        return outcome("failed", attempts, reason="cancelled")
    finally:
        part.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------- the report


@dataclass
class DownloadReport:
    """What `download_coco` did: one `ImageOutcome` per selected image (sorted by id), what it wrote."""

    out_dir: Path
    captions_path: Path  # DIR/captions.json, listing exactly the present and verified selected images
    outcomes: list[ImageOutcome]
    images_in_json: int  # images in the source captions JSON
    captions_written: int  # annotations written to captions.json
    stale_parts_removed: int  # .part files from an earlier, killed run
    unlisted_files: int  # files in DIR/images outside this selection (left alone, not listed)
    seconds: float

    @property
    def downloaded(self) -> list[ImageOutcome]:
        return [o for o in self.outcomes if o.status == "downloaded"]

    @property
    def already_present(self) -> list[ImageOutcome]:
        return [o for o in self.outcomes if o.status == "present"]

    @property
    def failed(self) -> list[ImageOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def ok(self) -> bool:
        """True when every selected image is present and verified."""
        return not self.failed

    def summary(self, max_listed: int = 20) -> str:
        """Human-readable lines: counts, failures (the first `max_listed`, then a tally by reason), output."""
        mb = sum(o.nbytes for o in self.downloaded) / 1e6
        lines = [
            f"selected {len(self.outcomes)} of {self.images_in_json} images: "
            f"downloaded {len(self.downloaded)} "
            f"({mb:.1f} MB in {self.seconds:.1f} s), already present {len(self.already_present)}, "
            f"failed {len(self.failed)}"
        ]
        lines += [f"  note: {o.file_name} (id {o.image_id}): {o.reason}" for o in self.downloaded if o.reason]
        failed = self.failed
        lines += [f"  FAILED {o.file_name} (id {o.image_id}) from {o.url}: {o.reason}" for o in failed[:max_listed]]
        if len(failed) > max_listed:
            tally = Counter(o.reason.split(" [")[0] for o in failed)  # the reason without "[n attempts]"
            lines.append(f"  ... and {len(failed) - max_listed} more; all {len(failed)} failures by reason:")
            lines += [f"    {n:6d} x {reason}" for reason, n in tally.most_common()]
        if self.stale_parts_removed:
            lines.append(f"  removed {self.stale_parts_removed} stale {PART_SUFFIX} file(s) from an earlier run")
        if self.unlisted_files:
            lines.append(
                f"  {self.unlisted_files} file(s) in {self.out_dir / IMAGES_SUBDIR} are not in this "
                "selection: left alone, not listed in captions.json"
            )
        present = len(self.outcomes) - len(self.failed)
        lines.append(f"wrote {self.captions_path}: {present} images, {self.captions_written} captions")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- the driver


def _write_captions(coco: dict[str, Any], keep_ids: set[int], path: Path) -> int:
    """Write `coco` with only `keep_ids`' images and annotations (other keys kept); return #captions."""
    subset = {key: value for key, value in coco.items() if key not in ("images", "annotations")}
    subset["images"] = [im for im in coco["images"] if im["id"] in keep_ids]
    subset["annotations"] = [a for a in coco["annotations"] if isinstance(a, dict) and a.get("image_id") in keep_ids]
    atomic_write_json(path, subset, indent=None)  # compact, like the official files
    return len(subset["annotations"])


def download_coco(
    captions_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    limit: int | None,
    *,
    workers: int = 8,
    retries: int = 4,
    timeout: float = 30.0,
    base_url: str | None = None,
    progress: bool = True,
    seed: int | None = None,
    backoff: float = 1.0,
    offset: int = 0,
) -> DownloadReport:
    """Download `limit` images of a COCO captions JSON into `out_dir/images/`; write `out_dir/captions.json`.

    Args:
        captions_path: a COCO captions JSON (2014 or 2017), e.g. captions_val2017.json.
        out_dir: DIR; gets images/<file_name> and captions.json (the layout `minicap demo --coco DIR` reads).
        limit: how many images (None: all); chosen by `select_images(records, limit, seed, offset)`.
        workers: parallel downloads (threads; the work is waiting on the network).
        retries: extra attempts after the first for a transient failure (so at most 1 + retries requests).
        timeout: seconds for connecting and for each socket read.
        base_url: mirror to use instead of each coco_url's scheme+host (see `rewrite_url`); None: the mirror in
            $MINICAP_DOWNLOAD_BASE_URL if that is set, else each coco_url as it is.
        progress: show a tqdm progress bar on stderr.
        seed: None for the first `limit` images by id, else a seeded deterministic subset.
        backoff: first back-off step in seconds (doubled per attempt, capped at MAX_BACKOFF_S; tests pass ~0).
        offset: skip the first `offset` images of the selection order (disjoint subsets of one split).

    Images already in DIR/images that verify are not fetched again. captions.json is written even when
    some images failed (and after Ctrl-C), and lists exactly the selected images present and verified.
    Raises `FileNotFoundError`/`ValueError` for a missing or malformed captions file or bad arguments;
    failures of single images do not raise, they are in the returned report (`report.ok` is False).
    """
    from tqdm import tqdm

    if workers < 1:
        raise ValueError(f"need workers >= 1, got {workers}")
    settings = RetryPolicy(retries=retries, timeout=timeout, backoff=backoff)  # checks the other three
    captions_path, out_dir = Path(captions_path), Path(out_dir)
    out_captions = out_dir / CAPTIONS_NAME
    if out_captions.exists() and out_captions.resolve() == captions_path.resolve():
        raise ValueError(
            f"{captions_path} is also the output file: it would be overwritten by the subset. "
            "Pass the original COCO captions file (e.g. captions_val2017.json) as the input."
        )
    mirror_url("http://images.cocodataset.org/x.jpg", base_url)  # validate the mirror before any work
    coco, records = load_captions(captions_path)
    selected = select_images(records, limit, seed, offset)
    urls = {r.image_id: mirror_url(r.url, base_url) for r in selected}
    for r in selected:
        if urllib.parse.urlsplit(urls[r.image_id]).scheme not in ("http", "https"):
            raise ValueError(f"{captions_path}: image id {r.image_id} has a non-HTTP coco_url {urls[r.image_id]!r}")

    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output {out_dir} exists and is not a directory")
    images_dir = out_dir / IMAGES_SUBDIR
    images_dir.mkdir(parents=True, exist_ok=True)
    stale = list(images_dir.glob("*" + PART_SUFFIX))  # left by a killed run: never complete, never verified
    for p in stale:
        p.unlink(missing_ok=True)

    cancel = threading.Event()
    futures: list[Future[ImageOutcome]] = []
    n_failed = 0
    start = time.perf_counter()
    bar = tqdm(total=len(selected), unit="img", desc="download", disable=None if progress else True, dynamic_ncols=True)
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="coco-dl") as pool:
            futures = [pool.submit(_download_one, r, urls[r.image_id], images_dir, settings, cancel) for r in selected]
            try:
                for future in as_completed(futures):
                    n_failed += future.result().status == "failed"
                    bar.update(1)
                    bar.set_postfix(failed=n_failed, refresh=False)
            except BaseException:
                # Ctrl-C (or a bug): stop queued downloads, let running ones notice `cancel` and delete
                # their .part; the pool's exit waits for them. `finally` then keeps what is complete.
                cancel.set()
                for future in futures:
                    future.cancel()
                raise
    finally:
        bar.close()
        # The pool has waited for every started download, so each future not cancelled is done now, including
        # one that finished during a Ctrl-C: captions.json then matches the files on disk exactly.
        finished = [f.result() for f in futures if not f.cancelled() and f.exception() is None]
        outcomes = {o.image_id: o for o in finished}
        keep = {o.image_id for o in finished if o.status in ("downloaded", "present")}
        n_captions = _write_captions(coco, keep, out_captions)

    selected_names = {r.file_name for r in selected}
    unlisted = sum(1 for p in images_dir.iterdir() if p.is_file() and p.name not in selected_names)
    return DownloadReport(
        out_dir=out_dir,
        captions_path=out_captions,
        outcomes=[outcomes[r.image_id] for r in selected],
        images_in_json=len(records),
        captions_written=n_captions,
        stale_parts_removed=len(stale),
        unlisted_files=unlisted,
        seconds=time.perf_counter() - start,
    )
