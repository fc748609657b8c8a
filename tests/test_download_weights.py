"""Tests for minicap.vision.fetch — the resumable, verified download every minicap download shares — and for the
Inception v3 weights `minicap encoder build` fetches with it. Everything runs against a local server
(tests/fake_http.py); the "weights" are random bytes whose SHA-256 prefix the test puts into their file name."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fake_http import closed_port_url, serve

from minicap.cli import main
from minicap.vision import fetch
from minicap.vision.encoders import onnx_build
from minicap.vision.fetch import (
    BASE_URL_ENV,
    CACHE_ENV,
    DownloadError,
    RangeNotSupported,
    RetryPolicy,
    cache_dir,
    download_file,
    fetch_weights,
    mirror_url,
    sha256_prefix_from_name,
)

FAST = RetryPolicy(retries=3, timeout=5.0, backoff=0.001)
ONCE = RetryPolicy(retries=0, timeout=5.0, backoff=0.001)  # no retry: the first failure ends the run (a "kill")
N = 300_000  # bytes of fake weights: several 64 KiB chunks


@pytest.fixture(autouse=True)
def no_user_settings(monkeypatch):
    """A developer's own mirror or cache must not leak into the tests."""
    monkeypatch.delenv(BASE_URL_ENV, raising=False)
    monkeypatch.delenv(CACHE_ENV, raising=False)


@pytest.fixture
def server():
    with serve() as s:
        yield s


def fake_weights(seed: int = 0, n: int = N) -> tuple[str, bytes]:
    """(path on the server, bytes): random bytes named like torch hub files, `/models/net-<sha256[:8]>.pth`."""
    data = np.random.default_rng(seed).bytes(n)
    return f"/models/net-{hashlib.sha256(data).hexdigest()[:8]}.pth", data


# ----------------------------------------------------------------------------------------------- weights files


def test_weights_are_downloaded_checked_and_then_served_from_the_cache(server, tmp_path):
    path, data = fake_weights()
    server.files[path] = data
    official = "https://download.pytorch.org" + path  # fetched from the mirror, which keeps the path

    got = fetch_weights(official, base_url=server.base_url, cache=tmp_path, policy=FAST, progress=False)
    assert got == tmp_path / "weights" / path.rsplit("/", 1)[1] and got.read_bytes() == data
    assert sorted(p.name for p in got.parent.iterdir()) == [got.name]  # no .part or temp file left
    assert server.hits() == 1

    assert fetch_weights(official, base_url=server.base_url, cache=tmp_path, policy=FAST) == got
    assert server.hits() == 1  # cached: checked again, not fetched again


def test_a_file_whose_hash_does_not_match_its_name_is_refused_and_removed(server, tmp_path):
    path, _ = fake_weights(seed=0)
    server.files[path] = fake_weights(seed=1)[1]  # other bytes under that name: a wrong or tampered file
    with pytest.raises(DownloadError, match=r"SHA-256 is [0-9a-f]{16}\.\.\., which does not begin with") as e:
        fetch_weights(server.url(path), cache=tmp_path, policy=FAST, progress=False)
    assert server.url(path) in str(e.value) and "removed" in str(e.value)
    assert list((tmp_path / "weights").iterdir()) == []  # neither the file nor a .part


def test_a_damaged_cached_file_is_removed_and_fetched_again(server, tmp_path):
    path, data = fake_weights()
    server.files[path] = data
    cached = tmp_path / "weights" / path.rsplit("/", 1)[1]
    cached.parent.mkdir()
    cached.write_bytes(data[: N // 2])  # e.g. copied by hand, cut short
    assert fetch_weights(server.url(path), cache=tmp_path, policy=FAST).read_bytes() == data
    assert server.hits() == 1


def test_truncated_transfers_continue_where_they_stopped(server, tmp_path):
    path, data = fake_weights()
    server.files[path] = data
    server.script(path, "cut:100000", "cut:50000", "ok")  # the connection drops twice mid-body
    got = fetch_weights(server.url(path), cache=tmp_path, policy=FAST)
    assert got.read_bytes() == data
    assert [r.range for r in server.requests] == [None, "bytes=100000-", "bytes=150000-"]
    assert server.served() == N  # not one byte fetched twice


def test_a_killed_download_resumes_from_its_part_file(server, tmp_path):
    """The first run ends after 120,000 bytes (no retries: as if killed); the second asks only for the rest."""
    path, data = fake_weights()
    server.files[path] = data
    server.script(path, "cut:120000", "ok")
    with pytest.raises(DownloadError, match=r"the 120000 bytes received are kept in .*\.part: run again to resume"):
        fetch_weights(server.url(path), cache=tmp_path, policy=ONCE)
    name = path.rsplit("/", 1)[1]
    assert (tmp_path / "weights" / f"{name}.part").stat().st_size == 120_000
    assert not (tmp_path / "weights" / name).exists()  # never a partial file under the real name

    first_run = server.served()
    assert fetch_weights(server.url(path), cache=tmp_path, policy=ONCE).read_bytes() == data
    assert server.requests[-1].range == "bytes=120000-"
    assert server.served() - first_run == N - 120_000
    assert not (tmp_path / "weights" / f"{name}.part").exists()


def test_a_download_killed_by_sigkill_resumes_from_what_reached_the_disk(server, tmp_path):
    """A real kill: a child process downloads, the server holds the transfer after 200,000 bytes, the test kills the
    child (SIGKILL: no clean-up runs). The next run asks for exactly the bytes after those in the .part."""
    path, data = fake_weights()
    server.files[path] = data
    server.script(path, "hold:200000", "ok")
    part = tmp_path / "weights" / (path.rsplit("/", 1)[1] + ".part")
    code = (
        "from minicap.vision.fetch import fetch_weights\n"
        f"fetch_weights({server.url(path)!r}, cache={str(tmp_path)!r}, progress=False)"
    )
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 60
        while not (part.exists() and part.stat().st_size >= 100_000) and time.monotonic() < deadline:
            assert child.poll() is None, "the download ended instead of waiting"
            time.sleep(0.02)
    finally:
        child.kill()
        child.wait()
    server.release.set()
    kept = part.stat().st_size
    assert 100_000 <= kept <= 200_000  # what the child had written when it died

    assert fetch_weights(server.url(path), cache=tmp_path, policy=ONCE).read_bytes() == data
    assert (server.requests[-1].range, server.requests[-1].nbytes) == (f"bytes={kept}-", N - kept)


def test_a_server_without_range_support_sends_everything_and_the_part_starts_over(server, tmp_path):
    path, data = fake_weights()
    server.files[path] = data
    server.ranges = False
    server.script(path, "cut:70000", "ok")
    assert fetch_weights(server.url(path), cache=tmp_path, policy=FAST).read_bytes() == data
    assert [(r.range, r.status) for r in server.requests] == [(None, 200), ("bytes=70000-", 200)]


def test_a_stale_part_of_another_file_is_detected_and_the_download_restarted(server, tmp_path):
    """A .part left by an earlier run of a different version of the file: resuming gives a wrong hash, so the
    download starts once more from the first byte (and is right)."""
    path, data = fake_weights()
    server.files[path] = data
    part = tmp_path / "weights" / (path.rsplit("/", 1)[1] + ".part")
    part.parent.mkdir()
    part.write_bytes(b"x" * 5000)
    assert fetch_weights(server.url(path), cache=tmp_path, policy=FAST).read_bytes() == data
    assert [r.range for r in server.requests] == ["bytes=5000-", None]


def test_a_complete_part_needs_no_more_bytes(server, tmp_path):
    """The run was killed after the last byte but before the rename: the server answers 416, nothing is sent."""
    path, data = fake_weights()
    server.files[path] = data
    part = tmp_path / "weights" / (path.rsplit("/", 1)[1] + ".part")
    part.parent.mkdir()
    part.write_bytes(data)
    assert fetch_weights(server.url(path), cache=tmp_path, policy=FAST).read_bytes() == data
    assert [(r.range, r.status, r.nbytes) for r in server.requests] == [(f"bytes={N}-", 416, 0)]


def test_server_errors_are_retried_and_client_errors_are_not(server, tmp_path):
    path, data = fake_weights()
    server.files[path] = data
    server.script(path, "503", "drop", "500", "ok")
    assert fetch_weights(server.url(path), cache=tmp_path, policy=FAST).read_bytes() == data
    assert server.hits(path) == 4

    with pytest.raises(DownloadError, match=r"HTTP 404 .*\(not retried\) \[1 attempt\]"):
        fetch_weights(server.url("/models/missing-0123abcd.pth"), cache=tmp_path, policy=FAST)
    server.script(path, "503")
    with pytest.raises(DownloadError, match=r"HTTP 503 .* \[4 attempts\]"):  # 1 + FAST.retries, then it stops
        fetch_weights(server.url(path), cache=tmp_path / "other", policy=FAST)


def test_download_file_fetches_a_byte_range_and_says_when_ranges_are_ignored(server, tmp_path):
    _, data = fake_weights()
    server.files["/archive.zip"] = data
    got = download_file(server.url("/archive.zip"), tmp_path / "slice", byte_range=(1000, 250_000), policy=FAST)
    assert got.read_bytes() == data[1000:250_000]
    server.ranges = False
    with pytest.raises(RangeNotSupported, match="ignores range requests"):
        download_file(server.url("/archive.zip"), tmp_path / "slice2", byte_range=(1000, 2000), policy=FAST)
    assert not (tmp_path / "slice2").exists() and not (tmp_path / "slice2.part").exists()


def test_weights_names_carry_their_hash_prefix_as_in_torch_hub():
    assert sha256_prefix_from_name("inception_v3_google-0cc3c7bd.pth") == "0cc3c7bd"
    assert sha256_prefix_from_name("efficientnet-lite0-57934424.pth") == "57934424"
    assert sha256_prefix_from_name("resnet18-f37072fd.pth") == "f37072fd"
    for name in ("model.pth", "inception_v3_google.pth", "net-.pth"):
        with pytest.raises(ValueError, match="carries no SHA-256 prefix"):
            sha256_prefix_from_name(name)


def test_cache_dir_and_mirror_follow_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_dir() == tmp_path / "home" / ".cache" / "minicap"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert cache_dir() == tmp_path / "home" / ".cache" / "minicap"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "minicap"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"

    url = onnx_build.INCEPTION_V3_WEIGHTS_URL
    assert mirror_url(url) == url
    monkeypatch.setenv(BASE_URL_ENV, "http://127.0.0.1:9/mirror/")
    assert mirror_url(url) == "http://127.0.0.1:9/mirror/models/inception_v3_google-0cc3c7bd.pth"
    assert mirror_url(url, "http://other:8000") == "http://other:8000/models/inception_v3_google-0cc3c7bd.pth"


# ----------------------------------------------------------------------------------------------- Inception v3


def test_offline_the_error_names_the_url_and_the_weights_option(tmp_path):
    offline = closed_port_url()
    with pytest.raises(DownloadError) as e:
        onnx_build.inception_v3_weights(base_url=offline, cache=tmp_path, policy=FAST, progress=False)
    message = str(e.value)
    assert "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth" in message
    assert offline.rstrip("/") + "/models/inception_v3_google-0cc3c7bd.pth" in message  # the URL actually tried
    assert "--weights PATH" in message and str(tmp_path / "weights" / "inception_v3_google-0cc3c7bd.pth") in message


@pytest.fixture
def no_backoff(monkeypatch):
    """The CLI uses the default policy (4 retries, 1 s back-off): sleep 0 s between attempts in tests."""
    monkeypatch.setattr(fetch, "retry_delay", lambda *args, **kwargs: 0.0)


def test_cli_encoder_build_downloads_the_inception_weights_with_no_flags(server, tmp_path, monkeypatch, capsys):
    """`minicap encoder build --arch inception_v3` fetches the weights itself (from the mirror the environment
    names, into $MINICAP_CACHE). The fake weights are not a .pth file, so the build stops there — after the
    download was checked and cached, with the reader's error naming the cached file."""
    path, data = fake_weights()
    server.files[path] = data
    monkeypatch.setattr(onnx_build, "INCEPTION_V3_WEIGHTS_URL", "https://download.pytorch.org" + path)
    monkeypatch.setenv(BASE_URL_ENV, server.base_url)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    out = tmp_path / "inception.onnx"

    assert main(["encoder", "build", "--arch", "inception_v3", "--out", str(out)]) == 2
    cached = tmp_path / "cache" / "weights" / path.rsplit("/", 1)[1]
    assert cached.read_bytes() == data
    assert str(cached) in capsys.readouterr().err  # the .pth reader refused the (fake) file
    assert not out.exists() and server.hits() == 1

    assert main(["encoder", "build", "--arch", "inception_v3", "--out", str(out)]) == 2
    assert server.hits() == 1  # the second run used the cache


def test_cli_refuses_wrong_inception_weights_and_explains_offline(server, tmp_path, monkeypatch, capsys, no_backoff):
    server.files["/models/inception_v3_google-0cc3c7bd.pth"] = b"not the real weights" * 1000
    monkeypatch.setenv(BASE_URL_ENV, server.base_url)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    out = tmp_path / "inception.onnx"

    assert main(["encoder", "build", "--arch", "inception_v3", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "which does not begin with 0cc3c7bd" in err and "It was removed" in err and "--weights PATH" in err
    assert list((tmp_path / "cache" / "weights").iterdir()) == [] and not out.exists()

    monkeypatch.setenv(BASE_URL_ENV, closed_port_url())
    assert main(["encoder", "build", "--arch", "inception_v3", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "could not download" in err and "[5 attempts]" in err
    assert "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth" in err and "--weights" in err


def test_cli_encoder_build_with_weights_given_never_downloads(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(BASE_URL_ENV, server.base_url)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    weights = Path(tmp_path / "mine.pth")
    weights.write_bytes(b"not a pth file")
    out = tmp_path / "x.onnx"
    assert main(["encoder", "build", "--arch", "inception_v3", "--weights", str(weights), "--out", str(out)]) == 2
    assert str(weights) in capsys.readouterr().err
    assert server.hits() == 0 and not (tmp_path / "cache").exists()
