"""Tests for minicap.vision.download: a local HTTP server plays COCO's image host, including its bad days.

The server (ThreadingHTTPServer on 127.0.0.1, port 0, in a thread) follows a per-path script of
behaviours, one per request: "ok", "truncate" (Content-Length larger than the body, then close),
"overannounce" (the whole body but a Content-Length 100 bytes larger: only the byte count can tell),
"nolength" (half the body, no Content-Length, then close), "drop" (close without answering), "slow"
(answer after the client's timeout), an HTTP status such as "404" or "503", or "429:N" (429 with
Retry-After: N). The last entry repeats. Back-off is ~0 in every test so the suite stays fast; only the
Retry-After test waits (1 s, on purpose).
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from PIL import Image

from minicap.cli import main
from minicap.vision.download import (
    MAX_BACKOFF_S,
    ImageRecord,
    download_coco,
    load_captions,
    parse_retry_after,
    retry_delay,
    rewrite_url,
    select_images,
    verify_image,
)

COCO_HOST = "http://images.cocodataset.org"
FAST = dict(workers=4, retries=3, timeout=5.0, backoff=0.001, progress=False)


# ------------------------------------------------------------------------------------------- the fake host


class FakeCocoHost:
    """What the handler serves: `bodies[path]` following `scripts[path]`; `hits[path]` counts requests."""

    def __init__(self) -> None:
        self.bodies: dict[str, bytes] = {}
        self.scripts: dict[str, list[str]] = {}
        self.hits: Counter[str] = Counter()
        self.slow_seconds = 1.0
        self._lock = threading.Lock()
        self.base_url = ""  # set by the fixture once the port is known

    def next_action(self, path: str) -> str:
        with self._lock:
            n = self.hits[path]
            self.hits[path] += 1
        script = self.scripts.get(path, ["ok"])
        return script[min(n, len(script) - 1)]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass

    def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None, length: int | None = None):
        self.send_response(code)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        host = self.server.host
        path = urlsplit(self.path).path
        action = host.next_action(path)
        body = host.bodies.get(path)
        if body is None:
            action = "404"
        if action == "ok":
            self._send(200, body, {"Content-Type": "image/jpeg"}, len(body))
        elif action == "truncate":  # announce everything, send half, hang up
            self._send(200, body[: len(body) // 2], {"Content-Type": "image/jpeg"}, len(body))
            self.close_connection = True
        elif action == "overannounce":  # the whole (valid) image, but Content-Length promised 100 bytes more
            self._send(200, body, {"Content-Type": "image/jpeg"}, len(body) + 100)
            self.close_connection = True
        elif action == "nolength":  # HTTP/1.0 without Content-Length: the body ends when the connection does
            self._send(200, body[: len(body) // 2], {"Content-Type": "image/jpeg"})
            self.close_connection = True
        elif action == "drop":
            self.close_connection = True
        elif action == "slow":
            time.sleep(host.slow_seconds)
            self._send(200, body, {"Content-Type": "image/jpeg"}, len(body))
        elif action.startswith("429:"):
            self._send(429, b"slow down", {"Retry-After": action[4:]}, 9)
        else:
            code = int(action)
            message = f"status {code}".encode()
            self._send(code, message, {"Content-Type": "text/plain"}, len(message))


class _Server(ThreadingHTTPServer):
    host: FakeCocoHost

    def handle_error(self, request, client_address) -> None:  # "slow" writes to a socket the client closed
        pass


@pytest.fixture
def fake_host() -> Iterator[FakeCocoHost]:
    host = FakeCocoHost()
    server = _Server(("127.0.0.1", 0), _Handler)
    server.host = host
    host.base_url = f"http://127.0.0.1:{server.server_address[1]}/"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield host
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# ------------------------------------------------------------------------------------------- data builders


def make_jpeg(width: int, height: int, seed: int) -> bytes:
    """A small real JPEG with some structure (a gradient plus a seed-dependent square)."""
    img = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    img.paste((seed * 37 % 256, 90, 200), (seed % 7, seed % 5, seed % 7 + width // 3, seed % 5 + height // 3))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def coco_json(images: list[dict]) -> dict:
    """A COCO captions object for `images` (id, file_name, coco_url, width, height): 2 captions each."""
    annotations = []
    for im in images:
        for k in range(2):
            annotations.append({"image_id": im["id"], "id": im["id"] * 10 + k, "caption": f"photo {im['id']} #{k}"})
    return {
        "info": {"description": "test captions", "year": 2017},
        "licenses": [{"id": 1, "name": "test licence", "url": "http://example.invalid/"}],
        "images": [{"license": 1, **im} for im in images],
        "annotations": annotations,
    }


def synthetic_set(host: FakeCocoHost, tmp_path: Path, ids: list[int]) -> tuple[Path, dict[int, bytes]]:
    """Generated JPEGs served at /val2017/<name>; returns the captions JSON path and the bytes by id."""
    images, data = [], {}
    for i in ids:
        w, h = 40 + (i % 5) * 8, 32 + (i % 3) * 8
        name = f"{i:012d}.jpg"
        data[i] = make_jpeg(w, h, i)
        host.bodies[f"/val2017/{name}"] = data[i]
        images.append({"id": i, "file_name": name, "coco_url": f"{COCO_HOST}/val2017/{name}", "width": w, "height": h})
    src = tmp_path / "captions_src.json"
    src.write_text(json.dumps(coco_json(images)))
    return src, data


def path_of(image_id: int) -> str:
    return f"/val2017/{image_id:012d}.jpg"


def assert_consistent(out: Path, src: Path, expected_ids: set[int]) -> None:
    """No .part left; captions.json lists exactly `expected_ids` and exactly the files in images/."""
    assert not list((out / "images").glob("*.part")), "a .part file was left behind"
    written = json.loads((out / "captions.json").read_text())
    source = json.loads(src.read_text())
    assert {im["id"] for im in written["images"]} == expected_ids
    assert {im["file_name"] for im in written["images"]} == {p.name for p in (out / "images").iterdir()}
    assert written["annotations"] == [a for a in source["annotations"] if a["image_id"] in expected_ids]
    assert written["info"] == source["info"] and written["licenses"] == source["licenses"]


# ----------------------------------------------------------------------------------------------- real photos


def test_real_photos_arrive_intact_and_every_failure_is_reported(shared_coco, fake_host, tmp_path):
    source = json.loads((shared_coco / "captions.json").read_text())
    images = sorted(source["images"], key=lambda im: im["id"])[:12]
    for im in images:
        fake_host.bodies[urlsplit(im["coco_url"]).path] = (shared_coco / "images" / im["file_name"]).read_bytes()
    paths = [urlsplit(im["coco_url"]).path for im in images]  # real coco_urls; --base-url points them here
    fake_host.scripts = {
        paths[2]: ["truncate", "truncate", "ok"],
        paths[3]: ["500", "503", "ok"],
        paths[4]: ["drop", "ok"],
        paths[5]: ["429:0", "ok"],
        paths[6]: ["404"],
        paths[9]: ["403"],
    }
    fake_host.bodies[paths[7]] = b"<html><body>Service temporarily moved</body></html>"
    images[8] = {**images[8], "width": images[8]["width"] + 1}  # the JSON disagrees with the photo
    ids = [im["id"] for im in images]
    keep = {im["id"] for im in images}
    subset = {
        **source,
        "images": images,
        "annotations": [a for a in source["annotations"] if a["image_id"] in keep],
    }
    src = tmp_path / "captions_val2017.json"
    src.write_text(json.dumps(subset))
    out = tmp_path / "coco"

    report = download_coco(src, out, 10, base_url=fake_host.base_url, **FAST)

    good = ids[:6]
    assert [o.image_id for o in report.downloaded] == good
    assert [o.image_id for o in report.failed] == ids[6:10]
    assert report.already_present == [] and not report.ok
    for im in images[:6]:  # byte for byte what the server holds, i.e. the shared originals
        got = (out / "images" / im["file_name"]).read_bytes()
        assert got == (shared_coco / "images" / im["file_name"]).read_bytes()
        assert verify_image(out / "images" / im["file_name"], im["width"], im["height"]) is None
    reasons = {o.image_id: o.reason for o in report.failed}
    assert "HTTP 404" in reasons[ids[6]] and "not retried" in reasons[ids[6]]
    assert "not an image" in reasons[ids[7]]
    assert "captions JSON says" in reasons[ids[8]]
    assert "HTTP 403" in reasons[ids[9]]
    # retried exactly as scripted; permanent failures asked once; beyond --limit never asked
    assert [fake_host.hits[p] for p in paths] == [1, 1, 3, 3, 2, 2, 1, 1, 1, 1, 0, 0]
    assert [o.attempts for o in report.outcomes] == [1, 1, 3, 3, 2, 2, 1, 1, 1, 1]
    assert_consistent(out, src, set(good))
    assert report.captions_written == sum(a["image_id"] in set(good) for a in subset["annotations"])
    assert "FAILED" in report.summary() and "HTTP 404" in report.summary()

    # Resume: nothing good is fetched again; the failures are retried and fail the same way.
    hits_before = Counter(fake_host.hits)
    again = download_coco(src, out, 10, base_url=fake_host.base_url, **FAST)
    assert again.downloaded == [] and [o.image_id for o in again.already_present] == good
    assert [o.image_id for o in again.failed] == ids[6:10]
    assert all(fake_host.hits[p] == hits_before[p] for p in paths[:6])
    assert_consistent(out, src, set(good))


# ----------------------------------------------------------------------------------------------- synthetic


def test_limit_and_seeded_selection_fetch_exactly_the_chosen_images(fake_host, tmp_path):
    ids = [907, 12, 455, 3, 78, 600, 31, 250]
    src, data = synthetic_set(fake_host, tmp_path, ids)
    _, records = load_captions(src)
    chosen = [r.image_id for r in select_images(records, 3, seed=11)]
    assert chosen == sorted(chosen) and len(chosen) == 3

    report = download_coco(src, tmp_path / "out", 3, seed=11, base_url=fake_host.base_url, **FAST)

    assert report.ok and [o.image_id for o in report.downloaded] == chosen
    assert {p for p, n in fake_host.hits.items() if n} == {path_of(i) for i in chosen}
    for i in chosen:
        assert (tmp_path / "out" / "images" / f"{i:012d}.jpg").read_bytes() == data[i]
    assert_consistent(tmp_path / "out", src, set(chosen))

    first = download_coco(src, tmp_path / "first", 3, base_url=fake_host.base_url, **FAST)
    assert [o.image_id for o in first.downloaded] == [3, 12, 31]  # the first 3 by id, whatever the JSON order


def test_select_images_is_deterministic_nested_and_order_free():
    records = [ImageRecord(i, f"{i}.jpg", f"http://h/{i}.jpg", 8, 8) for i in range(1000, 0, -7)]
    assert [r.image_id for r in select_images(records, 4)] == [6, 13, 20, 27]
    assert len(select_images(records, None)) == len(records) == len(select_images(records, 10_000))
    seeded = select_images(records, 10, seed=5)
    assert select_images(list(reversed(records)), 10, seed=5) == seeded  # JSON order does not matter
    assert set(select_images(records, 6, seed=5)) <= set(seeded)  # nested: more images keep the fewer
    assert select_images(records, 10, seed=6) != seeded
    assert seeded != select_images(records, 10)  # a seed really reshuffles
    with pytest.raises(ValueError, match="at least 1"):
        select_images(records, 0)


def test_resume_removes_stale_parts_and_replaces_invalid_files(fake_host, tmp_path):
    src, data = synthetic_set(fake_host, tmp_path, [1, 2, 3, 4])
    images = tmp_path / "out" / "images"
    images.mkdir(parents=True)
    (images / "000000000001.jpg").write_bytes(data[1])  # present and good: kept, not fetched
    (images / "000000000002.jpg").write_bytes(data[2][: len(data[2]) // 2])  # a truncated leftover
    (images / "000000000003.jpg.part").write_bytes(b"half")  # a killed run's temp file
    (images / "notes.txt").write_text("mine")  # not part of the dataset: left alone

    report = download_coco(src, tmp_path / "out", None, base_url=fake_host.base_url, **FAST)

    assert report.ok
    assert [o.image_id for o in report.already_present] == [1]
    assert [o.image_id for o in report.downloaded] == [2, 3, 4]
    assert "existing file was invalid" in report.downloaded[0].reason
    assert fake_host.hits[path_of(1)] == 0
    assert report.stale_parts_removed == 1 and report.unlisted_files == 1
    assert (images / "notes.txt").read_text() == "mine"
    for i in (1, 2, 3, 4):
        assert (images / f"{i:012d}.jpg").read_bytes() == data[i]
    assert not list(images.glob("*.part"))
    written = json.loads((tmp_path / "out" / "captions.json").read_text())
    assert [im["id"] for im in written["images"]] == [1, 2, 3, 4]


def test_timeouts_and_unannounced_truncation_are_retried(fake_host, tmp_path):
    src, data = synthetic_set(fake_host, tmp_path, [1, 2, 3])
    fake_host.slow_seconds = 1.0
    fake_host.scripts = {path_of(1): ["slow", "ok"], path_of(2): ["nolength", "ok"]}

    report = download_coco(src, tmp_path / "out", None, base_url=fake_host.base_url, **{**FAST, "timeout": 0.3})

    assert report.ok and [o.attempts for o in report.outcomes] == [2, 2, 1]
    assert [fake_host.hits[path_of(i)] for i in (1, 2, 3)] == [2, 2, 1]
    for i in (1, 2, 3):
        assert (tmp_path / "out" / "images" / f"{i:012d}.jpg").read_bytes() == data[i]
    assert_consistent(tmp_path / "out", src, {1, 2, 3})


def test_retries_are_bounded_and_the_last_error_is_reported(fake_host, tmp_path):
    src, _ = synthetic_set(fake_host, tmp_path, [1, 2])
    fake_host.scripts = {path_of(1): ["503"], path_of(2): ["overannounce"]}

    report = download_coco(src, tmp_path / "out", None, base_url=fake_host.base_url, **{**FAST, "retries": 2})

    assert [o.status for o in report.outcomes] == ["failed", "failed"]
    assert fake_host.hits[path_of(1)] == 3 and fake_host.hits[path_of(2)] == 3
    assert "HTTP 503" in report.outcomes[0].reason and "[3 attempts]" in report.outcomes[0].reason
    assert "truncated: received" in report.outcomes[1].reason  # Pillow alone would have accepted it
    short = report.summary(max_listed=1)  # long failure lists end in a tally by reason
    assert short.count("FAILED") == 1 and "... and 1 more" in short and "1 x HTTP 503" in short
    assert_consistent(tmp_path / "out", src, set())


def test_retry_after_is_honoured(fake_host, tmp_path):
    src, _ = synthetic_set(fake_host, tmp_path, [1, 2])
    fake_host.scripts = {path_of(1): ["429:1", "ok"], path_of(2): ["429:3600"]}

    start = time.perf_counter()
    report = download_coco(src, tmp_path / "out", None, base_url=fake_host.base_url, **{**FAST, "backoff": 0.0})
    elapsed = time.perf_counter() - start

    assert report.outcomes[0].status == "downloaded" and elapsed >= 1.0  # waited the server's 1 s, not ~0
    assert report.outcomes[1].status == "failed" and fake_host.hits[path_of(2)] == 1
    assert "3600 s" in report.outcomes[1].reason and "try again later" in report.outcomes[1].reason


def test_verify_image_decodes_fully_and_names_the_problem(tmp_path):
    noisy = Image.effect_noise((128, 96), 60).convert("RGB")
    buf = io.BytesIO()
    noisy.save(buf, format="JPEG", quality=90)
    jpeg = buf.getvalue()
    cases = {
        "good.jpg": (jpeg, None),
        "cut_in_scan.jpg": (jpeg[: len(jpeg) * 6 // 10], "does not decode to the end"),
        "cut_in_header.jpg": (jpeg[:200], "header does not parse"),
        "page.jpg": (b"<html>Not Found</html>", "not an image"),
    }
    for name, (data, problem) in cases.items():
        (tmp_path / name).write_bytes(data)
        got = verify_image(tmp_path / name, 128, 96)
        assert got is None if problem is None else problem in got, (name, got)
    assert "captions JSON says 128x97" in verify_image(tmp_path / "good.jpg", 128, 97)
    assert "cannot read" in verify_image(tmp_path, 128, 96)  # a folder: not a question of image data


def test_parse_retry_after_and_backoff_delays():
    now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now=now) == 30.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now=now) == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None

    import random

    rng = random.Random(0)
    for attempt in range(12):
        step = min(MAX_BACKOFF_S, 0.5 * 2**attempt)
        delays = [retry_delay(attempt, 0.5, rng=rng) for _ in range(50)]
        assert all(step / 2 <= d <= step for d in delays)
        assert len(set(delays)) > 1  # jittered
    assert retry_delay(3, 0.5, retry_after=12.0) == 12.0


def test_rewrite_url_replaces_scheme_and_host_and_prefixes_the_path():
    url = "http://images.cocodataset.org/val2017/000000000139.jpg"
    assert rewrite_url(url, None) == url
    assert rewrite_url(url, "http://127.0.0.1:8000") == "http://127.0.0.1:8000/val2017/000000000139.jpg"
    assert rewrite_url(url, "http://127.0.0.1:8000/") == "http://127.0.0.1:8000/val2017/000000000139.jpg"
    assert rewrite_url(url, "https://mirror.example/coco/") == "https://mirror.example/coco/val2017/000000000139.jpg"
    url14 = "http://images.cocodataset.org/val2014/COCO_val2014_000000000139.jpg"
    assert rewrite_url(url14, "http://m/a/b") == "http://m/a/b/val2014/COCO_val2014_000000000139.jpg"
    for bad in ("ftp://mirror/", "mirror.example/coco", "http:///nohost", "http://m/?x=1"):
        with pytest.raises(ValueError, match="base URL"):
            rewrite_url(url, bad)


def test_bad_input_is_refused_with_a_clear_message(tmp_path):
    good = {"id": 1, "file_name": "a.jpg", "coco_url": f"{COCO_HOST}/val2017/a.jpg", "width": 8, "height": 8}
    cases = {
        "not json": ("{oops", "not valid JSON"),
        "no images": (json.dumps({"annotations": []}), "no 'images' list"),
        "traversal": (json.dumps(coco_json([{**good, "file_name": "../evil.jpg"}])), "unsafe 'file_name'"),
        "no url": (json.dumps(coco_json([{**good, "coco_url": ""}])), "no 'coco_url'"),
        "no size": (json.dumps(coco_json([{**good, "width": None}])), "'width' must be"),
        "dup id": (json.dumps(coco_json([good, {**good, "file_name": "b.jpg"}])), "duplicate image id 1"),
        "file url": (
            json.dumps(coco_json([{**good, "coco_url": "file:///etc/passwd"}])),
            "non-HTTP coco_url",
        ),
    }
    for name, (text, message) in cases.items():
        src = tmp_path / f"{name.replace(' ', '_')}.json"
        src.write_text(text)
        with pytest.raises(ValueError, match=message):
            download_coco(src, tmp_path / "out", 5, **FAST)
    with pytest.raises(FileNotFoundError):
        download_coco(tmp_path / "missing.json", tmp_path / "out", 5, **FAST)

    # The output captions.json as input would be overwritten by a subset: refused, file untouched.
    out = tmp_path / "same"
    out.mkdir()
    (out / "captions.json").write_text(json.dumps(coco_json([good])))
    before = (out / "captions.json").read_bytes()
    with pytest.raises(ValueError, match="also the output file"):
        download_coco(out / "captions.json", out, 1, **FAST)
    assert (out / "captions.json").read_bytes() == before
    assert not (tmp_path / "out").exists()  # nothing was created for refused input


# ----------------------------------------------------------------------------------------------- CLI


def test_cli_data_download(fake_host, tmp_path, capsys):
    src, data = synthetic_set(fake_host, tmp_path, [5, 6, 7])
    out = tmp_path / "coco"
    common = ["data", "download", "--captions", str(src), "--out", str(out), "--base-url", fake_host.base_url]
    fast = ["--backoff", "0.001", "--retries", "1", "--no-progress"]

    assert main([*common, "--limit", "2", *fast]) == 0
    printed = capsys.readouterr()
    assert "downloaded 2" in printed.out and "failed 0" in printed.out
    assert sorted(p.name for p in (out / "images").iterdir()) == ["000000000005.jpg", "000000000006.jpg"]

    fake_host.scripts = {path_of(7): ["404"]}
    assert main([*common, "--limit", "all", "--first", *fast]) == 1
    printed = capsys.readouterr()
    assert "already present 2" in printed.out and "HTTP 404" in printed.out
    assert "1 image(s) failed permanently" in printed.err
    assert_consistent(out, src, {5, 6})

    assert main(["data", "download", "--captions", str(tmp_path / "nope.json"), "--out", str(out), "--limit", "1"]) == 2
    assert "error:" in capsys.readouterr().err
    for bad in (["--limit", "0"], ["--limit", "3", "--first", "--seed", "1"]):
        with pytest.raises(SystemExit) as exc:
            main([*common, *bad])
        assert exc.value.code == 2
