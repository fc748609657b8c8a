"""Fetching one file over HTTP for minicap: from a mirror if asked, retried, resumable, verified, cached.

    URL ──mirror_url (base_url or $MINICAP_DOWNLOAD_BASE_URL)──▶ GET, with `Range: bytes=<have>-` when resuming
        ──append──▶ DEST.part ──complete? size and sha256 checked──▶ os.replace ──▶ DEST

Every minicap download goes through here: COCO photos (`download.py`) use its retry rules, COCO's caption files
(`annotations.py`) its range reads (`fetch_range`) and resumable downloads, pretrained encoder weights
(`fetch_weights`) all of it. Files that are kept go to one cache folder,
`cache_dir()`: $MINICAP_CACHE, else $XDG_CACHE_HOME/minicap, else ~/.cache/minicap.

What is retried: a connection error, a timeout, HTTP 429 or any 5xx (honouring `Retry-After`, in seconds or as an
HTTP date), and a body that ends before its `Content-Length`. What is not: any other 4xx (404, 403, ...), a
malformed URL and a host name that does not resolve (offline) — asking again gives the same answer. Pauses grow
exponentially, with jitter (`retry_delay`).

Resuming. `download_file` never throws received bytes away: they stay in `DEST.part`, and the next attempt (or the
next run, after a kill) asks only for the rest with an HTTP range request. An attempt that brought new bytes does
not use up a retry. A server that ignores ranges answers 200 with the whole file: the `.part` is then started
again. Only a complete file that passed its checks is renamed to DEST, so DEST is never partial. One download of
a file at a time: two processes appending to the same `.part` would garble it (a SHA-256 or CRC-32 check would
then refuse and remove it).

Checking. torch hub's rule for weights files: a name like `inception_v3_google-0cc3c7bd.pth` carries the first hex
digits of the file's SHA-256 (between a '-' and a '.'); a file whose hash does not begin with them is refused and
removed.
"""

from __future__ import annotations

import contextlib
import email.utils
import http.client
import os
import random
import re
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

from minicap.safe_io import sha256_file
from minicap.version import __version__

__all__ = [
    "BASE_URL_ENV",
    "CACHE_ENV",
    "DEFAULT_POLICY",
    "MAX_BACKOFF_S",
    "MAX_RETRY_AFTER_S",
    "NETWORK_ERRORS",
    "PART_SUFFIX",
    "USER_AGENT",
    "DownloadError",
    "Failure",
    "RangeNotSupported",
    "RangeReply",
    "RetryPolicy",
    "cache_dir",
    "download_file",
    "fetch_range",
    "fetch_weights",
    "mirror_url",
    "network_failure",
    "parse_content_range",
    "parse_retry_after",
    "retry_delay",
    "rewrite_url",
    "sha256_prefix_from_name",
]

USER_AGENT = f"minicap/{__version__} (Python urllib)"
CHUNK_BYTES = 64 * 1024
MAX_BACKOFF_S = 60.0  # one exponential back-off step never waits longer than this
MAX_RETRY_AFTER_S = 300.0  # a server asking for a longer pause gets a failure that says so, not a silent stall
BASE_URL_ENV = "MINICAP_DOWNLOAD_BASE_URL"  # a mirror for every download (images, annotations, weights)
CACHE_ENV = "MINICAP_CACHE"  # where downloaded files are kept
PART_SUFFIX = ".part"  # bytes of an unfinished download, kept for resuming


def cache_dir() -> Path:
    """The folder for downloaded files: $MINICAP_CACHE, else $XDG_CACHE_HOME/minicap, else ~/.cache/minicap.

    (The XDG rule: a relative $XDG_CACHE_HOME is ignored.) Nothing is created here; the functions that write
    files make the sub-folders they need (`weights/`, `coco/`).
    """
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "minicap"


# ----------------------------------------------------------------------------------------------- where from


def rewrite_url(url: str, base_url: str | None) -> str:
    """Point a URL at a mirror: its scheme and host[:port] become `base_url`'s, its path gets a prefix.

    The URL's path (and query) is kept whole and appended to `base_url`'s path:

        rewrite_url("http://images.cocodataset.org/val2017/000000000139.jpg", "http://127.0.0.1:8000/coco/")
        == "http://127.0.0.1:8000/coco/val2017/000000000139.jpg"

    A trailing slash on `base_url` makes no difference. With `base_url` None the URL is returned unchanged.
    """
    if base_url is None:
        return url
    base = urllib.parse.urlsplit(base_url)
    if base.scheme not in ("http", "https") or not base.netloc:
        raise ValueError(f"base URL must look like http://host[:port][/prefix], got {base_url!r}")
    if base.query or base.fragment:
        raise ValueError(f"base URL must not have a query or fragment, got {base_url!r}")
    original = urllib.parse.urlsplit(url)
    path = base.path.rstrip("/") + "/" + original.path.lstrip("/")
    return urllib.parse.urlunsplit((base.scheme, base.netloc, path, original.query, ""))


def mirror_url(url: str, base_url: str | None = None) -> str:
    """`url` as it will be fetched: rewritten onto `base_url`, else onto $MINICAP_DOWNLOAD_BASE_URL, else as is.

    One mirror serves every download because each keeps its official path: COCO's
    `/annotations/annotations_trainval2017.zip` and `/val2017/000000000139.jpg`, torchvision's
    `/models/inception_v3_google-0cc3c7bd.pth`. (The tests point this at a local server.)
    """
    return rewrite_url(url, base_url if base_url is not None else (os.environ.get(BASE_URL_ENV) or None))


# ----------------------------------------------------------------------------------------------- retry timing


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: `retries` extra attempts after the first, `timeout` seconds for connecting and for each
    socket read, `backoff` seconds for the first pause (doubled per attempt, capped at MAX_BACKOFF_S)."""

    retries: int = 4
    timeout: float = 30.0
    backoff: float = 1.0

    def __post_init__(self) -> None:
        if self.retries < 0 or self.timeout <= 0 or self.backoff < 0:
            raise ValueError(
                f"need retries >= 0, timeout > 0, backoff >= 0; got {self.retries}, {self.timeout}, {self.backoff}"
            )


DEFAULT_POLICY = RetryPolicy()


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header: delay-seconds ("120") or an HTTP date; else None."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def retry_delay(
    attempt: int, backoff: float, retry_after: float | None = None, rng: random.Random | None = None
) -> float:
    """Seconds to sleep after failed attempt number `attempt` (0 for the first).

    The server's `Retry-After` wins when given. Otherwise exponential back-off with "equal jitter": the
    step d = min(MAX_BACKOFF_S, backoff * 2**attempt) and the sleep is uniform in [d/2, d], so eight
    workers that failed together do not all come back in the same millisecond, yet each waits >= d/2.
    """
    if retry_after is not None:
        return retry_after
    step = min(MAX_BACKOFF_S, backoff * 2.0**attempt)
    return step / 2 + (rng or random).uniform(0.0, step / 2)


# ----------------------------------------------------------------------------------------------- what failed

# Everything urllib raises for a failed request. (HTTPError is a URLError, InvalidURL an HTTPException.)
NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError, ssl.SSLError)


class Failure(NamedTuple):
    """Why one HTTP attempt failed, and whether another attempt may succeed."""

    reason: str
    retryable: bool
    retry_after: float | None = None  # the server's Retry-After, seconds (429/5xx only)


def network_failure(e: BaseException) -> Failure:
    """Classify an exception from one of NETWORK_ERRORS (closing an HTTPError's body).

    HTTP 429 and 5xx: retryable, with the server's Retry-After. Any other HTTP status: not retryable (404 stays
    404). A malformed URL, or a host name the resolver says does not exist (what an offline machine hears): not
    retryable. Connection errors, timeouts, TLS errors, a temporary resolver failure: retryable.
    """
    if isinstance(e, urllib.error.HTTPError):
        with contextlib.closing(e):
            status = f"HTTP {e.code} {e.reason}"
            if e.code == 429 or 500 <= e.code < 600:
                return Failure(status, True, parse_retry_after(e.headers.get("Retry-After")))
            return Failure(status + " (not retried)", False)
    if isinstance(e, http.client.InvalidURL):
        return Failure(f"invalid URL ({e})", False)
    reason = getattr(e, "reason", None) or e  # URLError wraps the socket error in .reason
    if isinstance(reason, socket.gaierror) and reason.errno == socket.EAI_NONAME:  # not EAI_AGAIN: that one passes
        return Failure(f"cannot resolve the host name ({reason.strerror}): offline, or a wrong host name", False)
    return Failure(f"{type(e).__name__}: {reason}", True)


class DownloadError(OSError):
    """A download failed for good. The message names the URL, what went wrong and what to do next."""


class RangeNotSupported(DownloadError):
    """The server answered a request for part of a file with the whole file (HTTP 200 instead of 206)."""


class _Incomplete(Exception):
    """One attempt ended before the file (or the asked-for slice) was complete; another attempt may finish it."""


# ----------------------------------------------------------------------------------------------- one file, resumable


class ContentRange(NamedTuple):
    """A `Content-Range: bytes first-last/total` header (`last` inclusive; `total` None for '*')."""

    first: int
    last: int
    total: int | None


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")


def parse_content_range(value: str | None) -> ContentRange | None:
    """Parse the `Content-Range` of a 206 answer; None when it is missing or malformed."""
    m = _CONTENT_RANGE.match(value.strip()) if value else None
    if m is None:
        return None
    total = None if m.group(3) == "*" else int(m.group(3))
    return ContentRange(int(m.group(1)), int(m.group(2)), total)


def _open(url: str, byte_range: str | None, timeout: float) -> Any:
    """GET `url` (with a `Range` header if given); the open response. Raises one of NETWORK_ERRORS."""
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}  # byte offsets must be the file's own
    if byte_range is not None:
        headers["Range"] = byte_range
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _header_int(response: Any, name: str) -> int | None:
    value = response.headers.get(name)
    return int(value) if value is not None and value.strip().isdigit() else None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _transfer(url: str, part: Path, byte_range: tuple[int, int] | None, timeout: float, bar: Any) -> int | None:
    """One request: ask for the bytes `part` does not have yet and append them to it.

    Returns the length of the whole download (the file, or the `byte_range` slice) when the server told it, else
    None. Raises `_Incomplete` when the body ended before its Content-Length (the bytes received are kept),
    `RangeNotSupported` when a slice was asked for and the whole file came, or one of NETWORK_ERRORS.
    """
    have = _size(part)
    if byte_range is None:
        header = f"bytes={have}-" if have else None
    else:
        length = byte_range[1] - byte_range[0]
        if have >= length:  # complete already, or a .part longer than the slice: it belongs to something else
            if have == length:
                return length
            part.unlink()
            raise _Incomplete(f"{part.name} held {have} bytes, more than the {length} asked for; starting again")
        header = f"bytes={byte_range[0] + have}-{byte_range[1] - 1}"
    try:
        response = _open(url, header, timeout)
    except urllib.error.HTTPError as e:
        if e.code != 416 or byte_range is not None:
            raise
        # 416 Range Not Satisfiable: we asked for bytes past the end ("Content-Range: bytes */<length>"). The .part
        # is complete if it is exactly as long as the file; otherwise it belongs to another file: start again.
        with contextlib.closing(e):
            m = re.match(r"bytes\s+\*/(\d+)", e.headers.get("Content-Range") or "")
        if m is not None and int(m.group(1)) == have:
            return have
        part.unlink(missing_ok=True)
        raise _Incomplete(f"the {have} bytes kept in {part.name} are more than the file has; starting again") from None

    with response:
        if response.status == 206:
            content_range = parse_content_range(response.headers.get("Content-Range"))
            first = (byte_range[0] if byte_range else 0) + have
            if content_range is None or content_range.first != first:
                got = response.headers.get("Content-Range")
                if byte_range is not None:
                    raise RangeNotSupported(f"{url}: asked for bytes {first}-, the server answered {got!r}")
                part.unlink(missing_ok=True)
                raise _Incomplete(f"asked for bytes {first}-, the server answered {got!r}; starting again")
            total = content_range.total if byte_range is None else byte_range[1] - byte_range[0]
            mode = "ab"
        elif response.status == 200:
            if byte_range is not None:
                raise RangeNotSupported(
                    f"{url}: the server ignores range requests (asked for {header}, it sent the whole file with "
                    "HTTP 200)"
                )
            if have:  # the server ignored `Range`: it is sending everything, so the .part starts over
                bar.reset()
            total, mode = _header_int(response, "Content-Length"), "wb"
        else:
            raise DownloadError(f"{url}: unexpected answer HTTP {response.status} {response.reason}")
        if total is not None and bar.total != total:
            bar.total = total
            bar.refresh()

        announced = _header_int(response, "Content-Length")
        received = 0
        with open(part, mode) as f:
            while chunk := response.read(CHUNK_BYTES):
                f.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    # HTTP/1.x ends a body early without an error when the connection closes: count the bytes ourselves.
    if announced is not None and received < announced:
        raise _Incomplete(f"truncated: received {received} of {announced} bytes (Content-Length)")
    return total


def _fill(url: str, part: Path, byte_range: tuple[int, int] | None, policy: RetryPolicy, bar: Any) -> None:
    """Append to `part` until it holds the whole file (or slice), retrying as `policy` allows.

    `stalled` counts failed attempts in a row that brought no new bytes; only those use up retries, so a
    large file on a flaky line still arrives, a piece at a time.
    """
    stalled = attempts = 0
    while True:
        attempts += 1
        before = _size(part)
        try:
            total = _transfer(url, part, byte_range, policy.timeout, bar)
            now = _size(part)
            if total is None or now == total:
                return  # complete (or, with no length announced, as complete as the server says)
            if now > total:
                part.unlink()
                raise DownloadError(f"{url}: received {now} bytes but the file has {total}; removed {part}")
            # Fewer bytes than asked for: allowed (a server may split its answer); ask for the rest.
            failure = None if now > before else Failure(f"the server sent no bytes ({now} of {total} received)", True)
        except _Incomplete as e:
            failure = Failure(str(e), True)
        except NETWORK_ERRORS as e:
            failure = network_failure(e)
        if _size(part) > before:
            stalled = 0  # new bytes arrived: this attempt costs no retry
        if failure is not None:
            kept = f"the {_size(part)} bytes received are kept in {part}: run again to resume" if _size(part) else ""
            _give_up_or_wait(url, failure, stalled, attempts, policy, kept)
            stalled += 1


def _give_up_or_wait(url: str, failure: Failure, stalled: int, attempts: int, policy: RetryPolicy, kept: str) -> None:
    """After a failed attempt: raise `DownloadError` if it was the last one allowed, else sleep before the next.

    `stalled` failed attempts in a row came before this one; `kept` says what was saved for a later run.
    """
    too_long = failure.retry_after is not None and failure.retry_after > MAX_RETRY_AFTER_S
    if not failure.retryable or stalled >= policy.retries or too_long:
        message = f"could not download {url}: {failure.reason} [{attempts} attempt{'s' if attempts > 1 else ''}]"
        if too_long:
            message += f"; the server asked to wait {failure.retry_after:.0f} s: try again later"
        raise DownloadError(message + (f"; {kept}" if kept else ""))
    time.sleep(retry_delay(stalled, policy.backoff, failure.retry_after))


class RangeReply(NamedTuple):
    """Bytes read by `fetch_range`, where they start in the file, and the file's length (None if not told)."""

    data: bytes
    start: int
    total: int | None


def fetch_range(url: str, start: int, stop: int | None = None, *, policy: RetryPolicy = DEFAULT_POLICY) -> RangeReply:
    """Bytes [start, stop) of `url`, in memory, by one HTTP range request (retried as `policy` allows).

    A negative `start` means the last -start bytes, as in Python's slicing (`Range: bytes=-N`; a file shorter
    than N comes whole). For small reads, such as a zip archive's tail; large ones use `download_file`.
    Raises `RangeNotSupported` when the server answers with the whole file (HTTP 200), `DownloadError` otherwise.
    """
    if start < 0:
        if stop is not None:
            raise ValueError("fetch_range: a negative start (the last bytes) takes no stop")
        header = f"bytes=-{-start}"
    elif stop is None:
        header = f"bytes={start}-"
    elif start < stop:
        header = f"bytes={start}-{stop - 1}"
    else:
        raise ValueError(f"fetch_range: need start < stop, got {start}, {stop}")
    stalled = attempts = 0
    while True:
        attempts += 1
        try:
            with _open(url, header, policy.timeout) as response:
                if response.status != 206:  # close without reading: the body may be the whole 240 MB archive
                    raise RangeNotSupported(
                        f"{url}: the server ignores range requests (asked for {header}, it answered HTTP "
                        f"{response.status} with the whole file)"
                    )
                got = response.headers.get("Content-Range")
                content_range = parse_content_range(got)
                if content_range is None or (start >= 0 and content_range.first != start):
                    raise RangeNotSupported(f"{url}: asked for {header}, the server answered Content-Range {got!r}")
                data = response.read()
            expected = content_range.last - content_range.first + 1
            if len(data) != expected:
                raise _Incomplete(f"truncated: received {len(data)} of {expected} bytes")
            return RangeReply(data, content_range.first, content_range.total)
        except _Incomplete as e:
            failure = Failure(str(e), True)
        except NETWORK_ERRORS as e:
            failure = network_failure(e)
        _give_up_or_wait(url, failure, stalled, attempts, policy, kept="")
        stalled += 1


def _problem(path: Path, size: int | None, sha256_prefix: str | None) -> str | None:
    """Why the finished download at `path` is not the file expected; None when it passes."""
    if size is not None and _size(path) != size:
        return f"it is {_size(path)} bytes, expected {size}"
    if sha256_prefix is not None:
        digest = sha256_file(path)
        if not digest.startswith(sha256_prefix):
            return f"its SHA-256 is {digest[:16]}..., which does not begin with {sha256_prefix}"
    return None


def download_file(
    url: str,
    dest: str | os.PathLike,
    *,
    byte_range: tuple[int, int] | None = None,
    size: int | None = None,
    sha256_prefix: str | None = None,
    policy: RetryPolicy = DEFAULT_POLICY,
    progress: bool = False,
) -> Path:
    """Download `url` (or its bytes `byte_range` = [start, stop)) to `dest`, resumably; return `dest`.

    Bytes are appended to `dest.part`, which survives failures and kills: the next call asks only for what is
    missing. When complete, the file must have `size` bytes and a SHA-256 beginning with `sha256_prefix` (each
    if given); then it is flushed to disk and renamed to `dest`. A file that fails the checks is removed: if some
    of it came from an earlier run (perhaps of a different version of the file), it is fetched once more from
    the start, else `DownloadError` says what was wrong.

    Raises `DownloadError` (an OSError) naming the URL; `RangeNotSupported` if `byte_range` was asked for and the
    server answered with the whole file. An existing `dest` is overwritten only by a verified download.
    """
    from tqdm import tqdm

    dest = Path(dest)
    part = dest.with_name(dest.name + PART_SUFFIX)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if byte_range is not None:
        start, stop = byte_range
        if not 0 <= start < stop:
            raise ValueError(f"byte_range must be [start, stop) with 0 <= start < stop, got {byte_range}")
        size = stop - start if size is None else size
    from_earlier_run = _size(part) > 0
    while True:
        with tqdm(
            total=size,
            initial=_size(part),
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=dest.name,
            disable=None if progress else True,
            dynamic_ncols=True,
        ) as bar:
            _fill(url, part, byte_range, policy, bar)
        problem = _problem(part, size, sha256_prefix)
        if problem is None:
            break
        part.unlink(missing_ok=True)
        if not from_earlier_run:
            raise DownloadError(
                f"the download of {url} is not the file expected: {problem}. It was removed. If the server's "
                "file is damaged, try again later or from another mirror."
            )
        from_earlier_run = False  # once more, from the first byte
    with open(part, "rb+") as f:  # the bytes are on disk before the name says the file is complete
        os.fsync(f.fileno())
    os.replace(part, dest)
    return dest


# ----------------------------------------------------------------------------------------------- weights files

_HASH_IN_NAME = re.compile(r"-([a-f0-9]*)\.")  # torch.hub's HASH_REGEX: "resnet18-f37072fd.pth" -> "f37072fd"


def sha256_prefix_from_name(name: str) -> str:
    """The SHA-256 prefix a weights file name carries, as torch hub reads it: the hex digits between a '-' and a
    '.'. `inception_v3_google-0cc3c7bd.pth` -> "0cc3c7bd". ValueError if the name has none (nothing to check)."""
    m = _HASH_IN_NAME.search(name)
    if m is None or not m.group(1):
        raise ValueError(
            f"weights file name {name!r} carries no SHA-256 prefix (expected NAME-<hex digits>.EXT, as torch hub "
            "names them), so its download could not be checked"
        )
    return m.group(1)


def fetch_weights(
    url: str,
    *,
    base_url: str | None = None,
    cache: str | os.PathLike | None = None,
    policy: RetryPolicy = DEFAULT_POLICY,
    progress: bool = True,
) -> Path:
    """A pretrained weights file from `url`, downloaded once into `<cache>/weights/<name>` and checked.

    What torch hub's `load_state_dict_from_url(url, check_hash=True)` does, without torch and resumable: the
    expected SHA-256 prefix comes from the file name (`sha256_prefix_from_name`); a cached file is re-checked on
    every call, and one that fails is removed and downloaded again. `base_url` (or $MINICAP_DOWNLOAD_BASE_URL) is a
    mirror that keeps `url`'s path; `cache` defaults to `cache_dir()`. Raises `DownloadError`.
    """
    name = PurePosixPath(urllib.parse.urlsplit(url).path).name
    prefix = sha256_prefix_from_name(name)
    dest = Path(cache if cache is not None else cache_dir()) / "weights" / name
    if dest.is_file():
        if sha256_file(dest).startswith(prefix):
            return dest
        dest.unlink()  # damaged or replaced since it was checked: fetch it again
    return download_file(mirror_url(url, base_url), dest, sha256_prefix=prefix, policy=policy, progress=progress)
