"""What every minicap download shares: mirrors, retry timing, and which network errors are worth another try.

    URL ──mirror_url (base_url or $MINICAP_DOWNLOAD_BASE_URL)──▶ request ──fails──▶ network_failure(e):
        retryable?  yes: sleep retry_delay(attempt, backoff, Retry-After), try again (RetryPolicy.retries times)
                    no:  stop and report the reason

What is retried: a connection error, a timeout, HTTP 429 or any 5xx (honouring `Retry-After`, in seconds or as an
HTTP date). What is not: any other 4xx (404, 403, ...) and a malformed URL — asking again gives the same answer.
"""

from __future__ import annotations

import contextlib
import email.utils
import http.client
import os
import random
import ssl
import urllib.error
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple

from minicap.version import __version__

__all__ = [
    "BASE_URL_ENV",
    "MAX_BACKOFF_S",
    "MAX_RETRY_AFTER_S",
    "NETWORK_ERRORS",
    "USER_AGENT",
    "Failure",
    "RetryPolicy",
    "mirror_url",
    "network_failure",
    "parse_retry_after",
    "retry_delay",
    "rewrite_url",
]

USER_AGENT = f"minicap/{__version__} (Python urllib)"
CHUNK_BYTES = 64 * 1024
MAX_BACKOFF_S = 60.0  # one exponential back-off step never waits longer than this
MAX_RETRY_AFTER_S = 300.0  # a server asking for a longer pause gets a failure that says so, not a silent stall
BASE_URL_ENV = "MINICAP_DOWNLOAD_BASE_URL"  # a mirror for every download (images, annotations, weights)


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
    404). A malformed URL: not retryable. Connection errors, timeouts, TLS errors: retryable.
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
    return Failure(f"{type(e).__name__}: {reason}", True)
