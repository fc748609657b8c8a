"""Tests for minicap.vision.annotations: COCO's caption files taken out of an annotations archive by HTTP range
requests (or from the whole archive when the server ignores ranges), cached and checked, and `minicap data download
--split`. The archives are small zips built here with `zipfile` — stored and deflated members, a comment — served by
the local server of tests/fake_http.py; nothing touches the internet."""

from __future__ import annotations

import io
import json
import random
import struct
import zipfile
from pathlib import Path

import pytest
from fake_http import closed_port_url, serve
from PIL import Image

from minicap.cli import main
from minicap.vision.annotations import (
    COCO_CAPTION_FILES,
    ZipLayoutError,
    fetch_coco_captions,
    find_end_of_central_directory,
    parse_central_directory,
)
from minicap.vision.download import ImageRecord, select_images
from minicap.vision.fetch import BASE_URL_ENV, CACHE_ENV, DownloadError, RetryPolicy

FAST = RetryPolicy(retries=3, timeout=5.0, backoff=0.001)
ONCE = RetryPolicy(retries=0, timeout=5.0, backoff=0.001)
ARCHIVE_2017 = "/annotations/annotations_trainval2017.zip"
VAL, TRAIN = "annotations/captions_val2017.json", "annotations/captions_train2017.json"


@pytest.fixture(autouse=True)
def no_user_settings(monkeypatch):
    """A developer's own mirror or cache must not leak into the tests."""
    monkeypatch.delenv(BASE_URL_ENV, raising=False)
    monkeypatch.delenv(CACHE_ENV, raising=False)


@pytest.fixture
def server():
    with serve() as s:
        yield s


# ----------------------------------------------------------------------------------------------- test data

WORDS = "a an the man woman dog cat bus train red blue small large sitting standing on in near with of".split()


def captions_json(split: str, n_images: int, seed: int) -> bytes:
    """A COCO captions file for `n_images` images of `split` (ids 1..n), five random captions each."""
    rng = random.Random(seed)
    images, annotations = [], []
    for i in range(1, n_images + 1):
        w, h = 32 + i % 4 * 8, 24 + i % 3 * 8
        name = f"{i:012d}.jpg"
        url = f"http://images.cocodataset.org/{split}/{name}"
        images.append({"id": i, "file_name": name, "coco_url": url, "width": w, "height": h, "license": 1})
        for k in range(5):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14)))
            annotations.append({"image_id": i, "id": i * 10 + k, "caption": text})
    coco = {"info": {"description": f"test {split}"}, "licenses": [], "images": images, "annotations": annotations}
    return json.dumps(coco).encode()


def make_archive(members: list[tuple[str, bytes, int]], comment: bytes = b"") -> bytes:
    """A zip archive of (name, data, zipfile.ZIP_STORED | ZIP_DEFLATED) members, in order."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data, method in members:
            zf.writestr(zipfile.ZipInfo(name, date_time=(2017, 9, 1, 0, 0, 0)), data, compress_type=method)
        zf.comment = comment
    return buf.getvalue()


BIG = random.Random(0).randbytes(400_000)  # a large member the captions fetch must not download


def coco_2017_archive(comment: bytes = b"COCO test archive") -> tuple[bytes, dict[str, bytes]]:
    """Like annotations_trainval2017.zip: a large instances file first, val captions deflated, train captions
    stored, keypoints last; and an archive comment."""
    files = {VAL: captions_json("val2017", 200, seed=1), TRAIN: captions_json("train2017", 120, seed=2)}
    archive = make_archive(
        [
            ("annotations/instances_val2017.json", BIG, zipfile.ZIP_STORED),
            (VAL, files[VAL], zipfile.ZIP_DEFLATED),
            (TRAIN, files[TRAIN], zipfile.ZIP_STORED),
            ("annotations/person_keypoints_val2017.json", b'{"keypoints": []}' * 100, zipfile.ZIP_DEFLATED),
        ],
        comment=comment,
    )
    return archive, files


def cache_listing(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "coco").iterdir())


# ----------------------------------------------------------------------------------------------- the zip layout


def test_central_directory_is_read_from_the_tail_as_zipfile_reads_it():
    """A comment holding the EOCD signature must not fool the backward search. (It fools Python's zipfile, which
    takes the last signature it finds: so zipfile reads the same archive with a plain comment to compare.)"""
    tricky, _ = coco_2017_archive(comment=b"COCO test archive PK\x05\x06 not a record")
    plain, _ = coco_2017_archive()
    tail = tricky[-70_000:]
    cd = find_end_of_central_directory(tail)
    start = len(tricky) - len(tail)
    listing = parse_central_directory(tail[cd.offset - start : cd.offset - start + cd.size], cd.entries)
    infos = zipfile.ZipFile(io.BytesIO(plain)).infolist()
    assert cd.entries == len(infos) and start + cd.eocd_at == cd.offset + cd.size
    for info in infos:
        entry = listing[info.filename]
        assert (entry.method, entry.crc32, entry.compressed_size, entry.size, entry.header_offset) == (
            info.compress_type,
            info.CRC,
            info.compress_size,
            info.file_size,
            info.header_offset,
        )


def test_what_is_not_a_plain_zip_is_refused_by_name():
    with pytest.raises(ZipLayoutError, match="no End Of Central Directory"):
        find_end_of_central_directory(b"<html>not found</html>" * 100)
    archive, _ = coco_2017_archive()
    with pytest.raises(ZipLayoutError, match="no End Of Central Directory"):
        find_end_of_central_directory(archive[:-30])  # cut short
    eocd = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    with pytest.raises(ZipLayoutError, match="ZIP64"):
        find_end_of_central_directory(b"x" * 100 + eocd)
    locator = b"PK\x06\x07" + bytes(16)
    with pytest.raises(ZipLayoutError, match="ZIP64"):
        find_end_of_central_directory(
            b"x" * 100 + locator + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, 46, 0, 0)
        )
    with pytest.raises(ZipLayoutError, match="record 0 of 2 is missing or damaged"):
        parse_central_directory(b"garbage" * 10, 2)


def test_the_official_archives_and_members():
    assert COCO_CAPTION_FILES["val2017"] == (
        "http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
        "annotations/captions_val2017.json",
    )
    assert COCO_CAPTION_FILES["train2014"] == (
        "http://images.cocodataset.org/annotations/annotations_trainval2014.zip",
        "annotations/captions_train2014.json",
    )
    assert sorted(COCO_CAPTION_FILES) == ["train2014", "train2017", "val2014", "val2017"]


# ----------------------------------------------------------------------------------------------- by range requests


@pytest.mark.parametrize("split, member", [("val2017", VAL), ("train2017", TRAIN)])  # deflated, stored
def test_only_the_captions_member_is_fetched_by_range_requests(server, tmp_path, split, member):
    archive, files = coco_2017_archive()
    server.files[ARCHIVE_2017] = archive
    logs: list[str] = []
    got = fetch_coco_captions(
        split, cache=tmp_path, base_url=server.base_url, policy=FAST, progress=False, log=logs.append
    )

    assert got == tmp_path / "coco" / f"captions_{split}.json" and got.read_bytes() == files[member]
    assert all(r.status == 206 for r in server.requests) and len(server.requests) == 3  # tail, local header, data
    info = zipfile.ZipFile(io.BytesIO(archive)).getinfo(member)
    tail, header = 22 + 65_535, 30 + len(member)
    assert server.served() == tail + header + info.compress_size  # nothing else: the big member never came
    assert server.served() < len(archive) // 2
    assert cache_listing(tmp_path) == [got.name, got.name + ".source.json"]  # no .zipdata, no .part
    record = json.loads((tmp_path / "coco" / f"{got.name}.source.json").read_text())
    assert record["member"] == member and record["size"] == len(files[member])
    assert record["archive"] == "http://images.cocodataset.org/annotations/annotations_trainval2017.zip"
    assert "fetched by range requests" in logs[-1]


def test_cached_captions_are_reused_while_they_match_their_record(server, tmp_path):
    archive, files = coco_2017_archive()
    server.files[ARCHIVE_2017] = archive
    kwargs = dict(cache=tmp_path, base_url=server.base_url, policy=FAST, progress=False)
    got = fetch_coco_captions("val2017", **kwargs, log=lambda _: None)
    n = server.hits()

    logs: list[str] = []
    assert fetch_coco_captions("val2017", **kwargs, log=logs.append) == got
    assert server.hits() == n and "(cached)" in logs[-1]

    damaged = bytearray(got.read_bytes())
    damaged[1000] ^= 0x20  # same size, other bytes: only the CRC-32 tells
    got.write_bytes(bytes(damaged))
    logs.clear()
    assert fetch_coco_captions("val2017", **kwargs, log=logs.append).read_bytes() == files[VAL]
    assert server.hits() == n + 3 and "failed its check" in logs[0]


@pytest.mark.parametrize("layout", ["long central directory", "data before the archive"])
def test_a_central_directory_beyond_the_tail_and_shifted_offsets_are_followed(server, tmp_path, layout):
    """2,000 members make a central directory longer than the 64 KiB tail: one more range request reads it. Bytes
    prepended to the archive (as in a self-extracting one) shift every offset; the EOCD's position tells by how
    much."""
    captions = captions_json("val2017", 50, seed=3)
    members = [(VAL, captions, zipfile.ZIP_DEFLATED)]
    if layout == "long central directory":
        members += [(f"annotations/extra/member_{i:05d}.json", b"{}", zipfile.ZIP_STORED) for i in range(2000)]
    archive = make_archive(members)
    if layout == "data before the archive":
        archive = b"#!/bin/sh stub\n" * 5000 + archive
    assert zipfile.ZipFile(io.BytesIO(archive)).read(VAL) == captions  # zipfile agrees the archive is fine
    server.files[ARCHIVE_2017] = archive
    got = fetch_coco_captions("val2017", cache=tmp_path, base_url=server.base_url, policy=FAST, log=lambda _: None)
    assert got.read_bytes() == captions
    assert len(server.requests) == (4 if layout == "long central directory" else 3)


def test_a_killed_member_download_resumes_from_its_part_file(server, tmp_path):
    """The member's compressed bytes stop after 5,000 (no retries: as if killed); the next run fetches the small
    pieces again (tail, local header) and only the rest of the member's bytes."""
    archive, files = coco_2017_archive()
    server.files[ARCHIVE_2017] = archive
    member = zipfile.ZipFile(io.BytesIO(archive)).getinfo(VAL)
    assert member.compress_size > 10_000
    kwargs = dict(cache=tmp_path, base_url=server.base_url, progress=False, log=lambda _: None)

    server.script(ARCHIVE_2017, "ok", "ok", "cut:5000", "ok")  # tail, local header, data (cut), then all fine
    with pytest.raises(DownloadError, match=r"the 5000 bytes received are kept in .*zipdata\.part"):
        fetch_coco_captions("val2017", policy=ONCE, **kwargs)
    assert cache_listing(tmp_path) == ["captions_val2017.json.zipdata.part"]

    first_run = len(server.requests)
    assert fetch_coco_captions("val2017", policy=ONCE, **kwargs).read_bytes() == files[VAL]
    data = server.requests[-1]
    data_start = int(server.requests[2].range.split("=")[1].split("-")[0])
    assert len(server.requests) - first_run == 3
    assert data.range == f"bytes={data_start + 5000}-{data_start + member.compress_size - 1}"
    assert data.nbytes == member.compress_size - 5000  # not one byte of the member fetched twice
    assert cache_listing(tmp_path) == ["captions_val2017.json", "captions_val2017.json.source.json"]


def test_a_run_killed_while_inflating_reuses_the_complete_member_bytes(server, tmp_path):
    archive, files = coco_2017_archive()
    server.files[ARCHIVE_2017] = archive
    info = zipfile.ZipFile(io.BytesIO(archive)).getinfo(VAL)
    data_at = info.header_offset + 30 + len(VAL)
    (tmp_path / "coco").mkdir()
    (tmp_path / "coco" / "captions_val2017.json.zipdata").write_bytes(archive[data_at : data_at + info.compress_size])
    got = fetch_coco_captions("val2017", cache=tmp_path, base_url=server.base_url, policy=FAST, log=lambda _: None)
    assert got.read_bytes() == files[VAL]
    assert len(server.requests) == 2  # tail and local header only
    assert cache_listing(tmp_path) == ["captions_val2017.json", "captions_val2017.json.source.json"]


def test_server_errors_and_truncations_on_range_requests_are_retried(server, tmp_path):
    archive, files = coco_2017_archive()
    server.files[ARCHIVE_2017] = archive
    server.script(ARCHIVE_2017, "503", "cut:100", "ok", "500", "ok", "cut:2000", "ok")
    got = fetch_coco_captions("val2017", cache=tmp_path, base_url=server.base_url, policy=FAST, log=lambda _: None)
    assert got.read_bytes() == files[VAL]


@pytest.mark.parametrize("member, method", [(VAL, zipfile.ZIP_DEFLATED), (TRAIN, zipfile.ZIP_STORED)])
def test_a_damaged_member_is_refused_and_nothing_is_kept(server, tmp_path, member, method):
    archive, _ = coco_2017_archive()
    info = zipfile.ZipFile(io.BytesIO(archive)).getinfo(member)
    data_at = info.header_offset + 30 + len(member)  # zipfile writes no local extra field here
    damaged = bytearray(archive)
    damaged[data_at + info.compress_size // 2] ^= 0xFF
    server.files[ARCHIVE_2017] = bytes(damaged)
    split = "val2017" if member == VAL else "train2017"
    with pytest.raises(DownloadError, match=member):
        fetch_coco_captions(split, cache=tmp_path, base_url=server.base_url, policy=FAST, log=lambda _: None)
    assert cache_listing(tmp_path) == []


def test_unknown_split_missing_member_and_offline_errors_say_what_and_where(server, tmp_path):
    with pytest.raises(ValueError, match="unknown COCO split 'test2017'.*val2017"):
        fetch_coco_captions("test2017", cache=tmp_path)

    server.files[ARCHIVE_2017] = make_archive([("annotations/instances_val2017.json", b"{}", zipfile.ZIP_STORED)])
    with pytest.raises(DownloadError, match=r"has no member 'annotations/captions_val2017.json'; it has: annotations/"):
        fetch_coco_captions("val2017", cache=tmp_path, base_url=server.base_url, policy=FAST, log=lambda _: None)

    offline = closed_port_url()
    with pytest.raises(DownloadError, match=r"could not download http://127\.0\.0\.1:\d+/annotations/annotations_tr"):
        fetch_coco_captions("val2017", cache=tmp_path, base_url=offline, policy=ONCE, log=lambda _: None)


# ----------------------------------------------------------------------------------------------- without ranges


def test_a_server_without_ranges_gets_the_whole_archive_once_and_both_caption_files_are_kept(server, tmp_path):
    archive, files = coco_2017_archive()
    server.files[ARCHIVE_2017] = archive
    server.ranges = False
    logs: list[str] = []
    kwargs = dict(cache=tmp_path, base_url=server.base_url, policy=FAST, progress=False)
    got = fetch_coco_captions("val2017", **kwargs, log=logs.append)
    assert got.read_bytes() == files[VAL]
    assert "the server ignores range requests" in logs[0] and "downloading the whole archive" in logs[0]
    assert [r.status for r in server.requests] == [200, 200]  # the tail request, then the whole archive
    assert cache_listing(tmp_path) == [  # the archive itself was deleted
        "captions_train2017.json",
        "captions_train2017.json.source.json",
        "captions_val2017.json",
        "captions_val2017.json.source.json",
    ]
    n = server.hits()
    assert fetch_coco_captions("train2017", **kwargs, log=logs.append).read_bytes() == files[TRAIN]
    assert server.hits() == n  # it came with the archive


def test_a_damaged_whole_archive_is_refused_and_removed(server, tmp_path):
    archive, _ = coco_2017_archive()
    info = zipfile.ZipFile(io.BytesIO(archive)).getinfo(TRAIN)  # stored: a flipped byte reaches the CRC check
    damaged = bytearray(archive)
    damaged[info.header_offset + 30 + len(TRAIN) + 10] ^= 0xFF
    server.files[ARCHIVE_2017] = bytes(damaged)
    server.ranges = False
    with pytest.raises(DownloadError, match="did not arrive as a readable zip archive.*removed"):
        fetch_coco_captions("train2017", cache=tmp_path, base_url=server.base_url, policy=FAST, log=lambda _: None)
    assert "annotations_trainval2017.zip" not in cache_listing(tmp_path)
    assert "captions_train2017.json" not in cache_listing(tmp_path)


# ----------------------------------------------------------------------------------------------- selection, CLI


def test_an_offset_gives_disjoint_subsets_of_one_split():
    records = [ImageRecord(i, f"{i}.jpg", f"http://h/{i}.jpg", 8, 8) for i in range(1, 101)]
    for seed in (None, 0):
        val = select_images(records, 20, seed)
        test = select_images(records, 20, seed, offset=20)
        assert len(val) == len(test) == 20 and not {r.image_id for r in val} & {r.image_id for r in test}
        assert sorted(val + test) == select_images(records, 40, seed)
        assert len(select_images(records, None, seed, offset=90)) == 10
    assert select_images(records, 5, None, offset=100) == []
    with pytest.raises(ValueError, match="offset must be at least 0"):
        select_images(records, 5, 0, offset=-1)


def jpeg(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.linear_gradient("L").resize((width, height)).convert("RGB").save(buf, format="JPEG")
    return buf.getvalue()


def test_cli_data_download_split_needs_no_captions_file(server, tmp_path, monkeypatch, capsys):
    """`--split val2017` with no other flag: captions from the (mirrored) archive into $MINICAP_CACHE, photos from
    the same mirror; a second folder with --offset gets different photos of the same split."""
    archive, files = coco_2017_archive()
    server.files[ARCHIVE_2017] = archive
    for im in json.loads(files[VAL])["images"]:
        server.files[f"/val2017/{im['file_name']}"] = jpeg(im["width"], im["height"])
    monkeypatch.setenv(BASE_URL_ENV, server.base_url)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    fast = ["--no-progress", "--backoff", "0.001", "--workers", "2"]

    val, test = tmp_path / "coco-val", tmp_path / "coco-test"
    assert (
        main(["data", "download", "--split", "val2017", "--limit", "5", "--seed", "0", "--out", str(val), *fast]) == 0
    )
    printed = capsys.readouterr().out
    assert "fetched by range requests" in printed and "downloaded 5" in printed
    args = ["--limit", "5", "--seed", "0", "--offset", "5", "--out", str(test)]
    assert main(["data", "download", "--split", "val2017", *args, *fast]) == 0
    assert "(cached)" in capsys.readouterr().out

    ids = [{im["id"] for im in json.loads((d / "captions.json").read_text())["images"]} for d in (val, test)]
    assert len(ids[0]) == len(ids[1]) == 5 and not ids[0] & ids[1]
    assert len(list((val / "images").iterdir())) == 5

    offline = ["data", "download", "--split", "val2014", "--limit", "5", "--out", str(tmp_path / "x"), *fast]
    monkeypatch.setenv(BASE_URL_ENV, closed_port_url())
    assert main([*offline, "--retries", "0"]) == 2
    assert "annotations/annotations_trainval2014.zip" in capsys.readouterr().err
    for bad in (["--split", "val2017", "--captions", "c.json"], [], ["--split", "test2015"]):
        with pytest.raises(SystemExit) as exc:
            main(["data", "download", *bad, "--limit", "5", "--out", str(tmp_path / "y")])
        assert exc.value.code == 2
