"""COCO's official caption files, fetched by minicap itself: only the captions member of the annotations archive.

COCO publishes its captions inside two annotation archives of about 240 MB each, next to much larger instance and
keypoint files:

    http://images.cocodataset.org/annotations/annotations_trainval2017.zip   annotations/captions_train2017.json
                                                                             annotations/captions_val2017.json
    http://images.cocodataset.org/annotations/annotations_trainval2014.zip   annotations/captions_train2014.json
                                                                             annotations/captions_val2014.json

A zip archive is read from its end, so one member can be fetched without the rest, by HTTP range requests:

    1. the last 64 KiB    the End Of Central Directory record (EOCD: 22 bytes + a comment of up to 65,535):
                          where the central directory starts and how long it is
    2. central directory  46 bytes + name (+ extra, comment) per member: compression method, CRC-32, compressed
                          and uncompressed sizes, and the offset of the member's local header
    3. local header       30 bytes + name + extra field, then the member's compressed bytes (its name and extra
                          lengths may differ from the central directory's, so it is read, not assumed)
    4. compressed bytes   `download_file(byte_range=...)`: resumable from a `.part`, like any download
    5. inflate            raw DEFLATE (zlib, wbits=-15) or stored; CRC-32 and size checked against step 2

A server that ignores range requests answers step 1 with the whole archive (HTTP 200 instead of 206). Then the
whole archive is downloaded (resumably), both caption files are taken out of it with `zipfile` (which checks their
CRC-32 too), and the archive is deleted. ZIP64 archives (over 4 GiB or 65,535 members) take that route as well.

The cache. `cache_dir()/coco/captions_val2017.json`, beside `captions_val2017.json.source.json` recording where it
came from, its CRC-32 and its size. A cached file is used only while it still matches them; otherwise it is
removed and fetched again.
"""

from __future__ import annotations

import json
import os
import struct
import urllib.parse
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

from minicap.safe_io import atomic_write, atomic_write_json
from minicap.vision.fetch import (
    DEFAULT_POLICY,
    DownloadError,
    RangeNotSupported,
    RetryPolicy,
    cache_dir,
    download_file,
    fetch_range,
    mirror_url,
)

__all__ = [
    "COCO_CAPTION_FILES",
    "CaptionSource",
    "ZipEntry",
    "ZipLayoutError",
    "fetch_coco_captions",
    "fetch_zip_member",
    "find_end_of_central_directory",
    "parse_central_directory",
]

ANNOTATIONS_URL = "http://images.cocodataset.org/annotations/"


class CaptionSource(NamedTuple):
    """Where one split's official captions are: an archive URL and the member's name inside it."""

    archive_url: str
    member: str


COCO_CAPTION_FILES: dict[str, CaptionSource] = {
    f"{part}{year}": CaptionSource(
        f"{ANNOTATIONS_URL}annotations_trainval{year}.zip", f"annotations/captions_{part}{year}.json"
    )
    for year in ("2017", "2014")
    for part in ("train", "val")
}

TAIL_BYTES = 22 + 65_535  # the EOCD with the longest comment a zip may have: the record is always in the tail
CHUNK_BYTES = 1 << 20


# ----------------------------------------------------------------------------------------------- the zip layout
# Little-endian records (PKWARE APPNOTE.TXT, sections 4.3.7, 4.3.12 and 4.3.16); H = 2 bytes, L = 4 bytes.

# EOCD:    signature, disk, disk of the central directory, entries on this disk, entries, its size, its offset,
#          comment length
# CENTRAL: signature, version made by, version needed, flags, method, time, date, CRC-32, compressed size, size,
#          name length, extra length, comment length, disk, internal attributes, external attributes, header offset
# LOCAL:   signature, version needed, flags, method, time, date, CRC-32, compressed size, size, name length,
#          extra length
EOCD = struct.Struct("<4s4H2LH")  # 22 bytes
CENTRAL = struct.Struct("<4s6H3L5H2L")  # 46 bytes
LOCAL = struct.Struct("<4s5H3L2H")  # 30 bytes
EOCD_SIG, CENTRAL_SIG, LOCAL_SIG = b"PK\x05\x06", b"PK\x01\x02", b"PK\x03\x04"
ZIP64_LOCATOR_SIG = b"PK\x06\x07"  # just before the EOCD in a ZIP64 archive
STORED, DEFLATED = 0, 8


class ZipLayoutError(ValueError):
    """The bytes are not the zip structure expected (not a zip, damaged, or a kind this reader does not handle)."""


class ZipEntry(NamedTuple):
    """One central directory record: what is needed to find, inflate and check a member."""

    name: str
    flags: int  # bit 0: encrypted; bit 3: sizes in a data descriptor after the data (the central ones are right)
    method: int  # 0 stored, 8 deflated
    crc32: int
    compressed_size: int
    size: int
    header_offset: int  # where the member's local header starts (relative to the archive's first byte)


class CentralDirectory(NamedTuple):
    """What the EOCD says: where the central directory is and how many records it holds."""

    offset: int
    size: int
    entries: int
    eocd_at: int  # position of the EOCD record inside the bytes it was found in


def find_end_of_central_directory(tail: bytes) -> CentralDirectory:
    """Find the EOCD record in the last bytes of an archive and read it.

    The record is the last thing in a zip file, followed only by its comment, so it is searched for backwards; a
    candidate counts only if its comment length reaches exactly to the end (a comment may contain the signature).
    Raises `ZipLayoutError` if there is none, or if the archive is ZIP64 or spans several disks.
    """
    at = len(tail)
    while (at := tail.rfind(EOCD_SIG, 0, at)) >= 0:
        if at + EOCD.size <= len(tail):
            _, disk, cd_disk, here, entries, cd_size, cd_offset, comment = EOCD.unpack_from(tail, at)
            if at + EOCD.size + comment == len(tail):
                if disk != 0 or cd_disk != 0 or here != entries:
                    raise ZipLayoutError("the archive spans several disks")
                if 0xFFFF in (here, entries) or 0xFFFFFFFF in (cd_size, cd_offset) or _zip64_locator(tail, at):
                    raise ZipLayoutError("the archive is ZIP64 (over 4 GiB or 65,535 members)")
                return CentralDirectory(cd_offset, cd_size, entries, at)
    raise ZipLayoutError("no End Of Central Directory record in its last bytes: not a zip archive, or cut short")


def _zip64_locator(tail: bytes, eocd_at: int) -> bool:
    """ZIP64 archives put a 20-byte locator right before the EOCD (whose fields may then look ordinary)."""
    return eocd_at >= 20 and tail[eocd_at - 20 : eocd_at - 16] == ZIP64_LOCATOR_SIG


def parse_central_directory(data: bytes, entries: int) -> dict[str, ZipEntry]:
    """The `entries` records of a central directory, by member name. Raises `ZipLayoutError` if they are not there."""
    members: dict[str, ZipEntry] = {}
    at = 0
    for i in range(entries):
        if data[at : at + 4] != CENTRAL_SIG or at + CENTRAL.size > len(data):
            raise ZipLayoutError(f"central directory record {i} of {entries} is missing or damaged (offset {at})")
        fields = CENTRAL.unpack_from(data, at)
        flags, method, crc, csize, size = fields[3], fields[4], fields[7], fields[8], fields[9]
        name_len, extra_len, comment_len, offset = fields[10], fields[11], fields[12], fields[16]
        raw_name = data[at + CENTRAL.size : at + CENTRAL.size + name_len]
        name = raw_name.decode("utf-8" if flags & 0x800 else "cp437")  # bit 11: the name is UTF-8
        if 0xFFFFFFFF in (csize, size, offset):
            raise ZipLayoutError(f"member {name!r} has ZIP64 sizes or offset")
        members[name] = ZipEntry(name, flags, method, crc, csize, size, offset)
        at += CENTRAL.size + name_len + extra_len + comment_len
    return members


def _data_offset(header: bytes, entry: ZipEntry, header_at: int, name: bytes) -> int:
    """Where the member's compressed bytes start: after its local header's 30 bytes, name and extra field.

    `header` is the local header and the name that follows it; the name must be the member's (else the central
    directory pointed somewhere else: a damaged archive).
    """
    if len(header) < LOCAL.size or header[:4] != LOCAL_SIG:
        raise ZipLayoutError(f"no local header for {entry.name!r} at offset {header_at}")
    name_len, extra_len = LOCAL.unpack_from(header)[9:11]
    if header[LOCAL.size : LOCAL.size + name_len] != name:
        raise ZipLayoutError(f"the local header at offset {header_at} is not {entry.name!r}'s")
    return header_at + LOCAL.size + name_len + extra_len


# ----------------------------------------------------------------------------------------------- one member by range


def _inflate_to(raw: Path, entry: ZipEntry, dest: Path) -> None:
    """Inflate (or copy, if stored) the compressed bytes in `raw` into `dest`, atomically; check CRC-32 and size.

    Raises `DownloadError` on a mismatch (nothing is written to `dest` then).
    """
    inflater = zlib.decompressobj(-15) if entry.method == DEFLATED else None  # -15: raw DEFLATE, no zlib header
    crc, size = 0, 0
    try:
        with open(raw, "rb") as src, atomic_write(dest, "wb") as out:
            while chunk := src.read(1 << 16):  # 64 KiB in: at most ~64 MB out (DEFLATE expands 1032:1 at most)
                data = inflater.decompress(chunk) if inflater is not None else chunk
                crc, size = zlib.crc32(data, crc), size + len(data)
                if size > entry.size:
                    raise ValueError(f"it inflates to more than the {entry.size} bytes the central directory says")
                out.write(data)
            if inflater is not None:
                data = inflater.flush()
                crc, size = zlib.crc32(data, crc), size + len(data)
                out.write(data)
                if not inflater.eof:
                    raise ValueError("the DEFLATE stream ends early")
            if (crc, size) != (entry.crc32, entry.size):
                raise ValueError(
                    f"inflated to {size} bytes with CRC-32 {crc:08x}; the central directory says {entry.size} bytes "
                    f"with CRC-32 {entry.crc32:08x}"
                )
    except (ValueError, zlib.error) as e:
        raise DownloadError(f"{entry.name}: {e}") from None


def fetch_zip_member(
    url: str,
    member: str,
    dest: str | os.PathLike,
    *,
    policy: RetryPolicy = DEFAULT_POLICY,
    progress: bool = False,
) -> ZipEntry:
    """Fetch one member of the zip archive at `url` into `dest` by range requests, without the rest of the archive.

    The compressed bytes are downloaded to `dest` + ".zipdata" (resumable through its `.part`), inflated into `dest`
    atomically and checked, then removed. Returns the member's central directory record.

    Raises `RangeNotSupported` if the server ignores range requests, `ZipLayoutError` if the archive cannot be read
    this way (not a zip, ZIP64, ...), `DownloadError` for network failures, a missing member, an encrypted or
    unsupported one, or a CRC-32/size mismatch.
    """
    dest = Path(dest)
    tail = fetch_range(url, -TAIL_BYTES, policy=policy)
    cd = find_end_of_central_directory(tail.data)
    # Offsets in the zip are relative to the archive's start; data prepended to it (a self-extractor's stub)
    # shifts them all. The central directory ends where the EOCD begins, which tells the shift.
    shift = tail.start + cd.eocd_at - (cd.offset + cd.size)
    if shift < 0:
        raise ZipLayoutError(f"{url}: the central directory would end after the EOCD record: damaged archive")
    cd_start = cd.offset + shift
    if cd_start >= tail.start:
        listing = tail.data[cd_start - tail.start : cd_start - tail.start + cd.size]
    else:
        listing = fetch_range(url, cd_start, cd_start + cd.size, policy=policy).data
    members = parse_central_directory(listing, cd.entries)

    entry = members.get(member)
    if entry is None:
        raise DownloadError(f"{url} has no member {member!r}; it has: {', '.join(sorted(members)) or 'none'}")
    if entry.flags & 1:
        raise DownloadError(f"{url}: member {member!r} is encrypted")
    if entry.method not in (STORED, DEFLATED):
        raise DownloadError(f"{url}: member {member!r} uses compression method {entry.method}, not stored/deflate")
    if entry.compressed_size == 0:
        raise DownloadError(f"{url}: member {member!r} is empty")

    header_at = entry.header_offset + shift
    name = member.encode("utf-8" if entry.flags & 0x800 else "cp437")
    header = fetch_range(url, header_at, header_at + LOCAL.size + len(name), policy=policy).data
    start = _data_offset(header, entry, header_at, name)
    raw = dest.with_name(dest.name + ".zipdata")
    if not (raw.is_file() and raw.stat().st_size == entry.compressed_size):  # complete if a run died while inflating
        download_file(url, raw, byte_range=(start, start + entry.compressed_size), policy=policy, progress=progress)
    try:
        _inflate_to(raw, entry, dest)
    finally:
        raw.unlink(missing_ok=True)  # checked or not, it has served: a wrong one must be fetched afresh
    return entry


# ----------------------------------------------------------------------------------------------- COCO's captions


def _source_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".source.json")


def _crc32_file(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            crc = zlib.crc32(chunk, crc)
    return crc


def _record(dest: Path, source: CaptionSource, fetched_from: str, crc32: int, size: int) -> None:
    """Write DEST.source.json: what a later run checks the cached DEST against."""
    record = {"archive": source.archive_url, "member": source.member, "fetched_from": fetched_from}
    atomic_write_json(_source_path(dest), {**record, "crc32": f"{crc32:08x}", "size": size})


def _cached(dest: Path, log: Callable[[str], Any]) -> bool:
    """True if DEST and its record exist and DEST still has the recorded size and CRC-32. A DEST that fails the
    check (or has no record) is removed, so it will be fetched again."""
    if not dest.exists():
        return False
    try:
        record = json.loads(_source_path(dest).read_text(encoding="utf-8"))
        if dest.stat().st_size == record["size"] and f"{_crc32_file(dest):08x}" == record["crc32"]:
            return True
        problem = "its size or CRC-32 no longer matches " + _source_path(dest).name
    except (OSError, ValueError, KeyError, TypeError) as e:
        problem = f"its record {_source_path(dest).name} is missing or unreadable ({type(e).__name__})"
    log(f"note: cached {dest} failed its check ({problem}): fetching it again")
    dest.unlink(missing_ok=True)
    _source_path(dest).unlink(missing_ok=True)
    return False


def _captions_from_whole_archive(url: str, folder: Path, policy: RetryPolicy, progress: bool) -> None:
    """Download the whole archive at `url` (resumably), copy out every COCO captions member it has into `folder`
    (with records), then delete the archive. `zipfile` checks each member's CRC-32 as it reads it."""
    archive_name = PurePosixPath(urllib.parse.urlsplit(url).path).name
    archive = download_file(url, folder / archive_name, policy=policy, progress=progress)
    try:
        with zipfile.ZipFile(archive) as zf:
            names = set(zf.namelist())
            wanted = [s for s in COCO_CAPTION_FILES.values() if s.archive_url.endswith("/" + archive_name)]
            for source in (s for s in wanted if s.member in names):
                info = zf.getinfo(source.member)
                dest = folder / PurePosixPath(source.member).name
                with zf.open(info) as src, atomic_write(dest, "wb") as out:
                    while chunk := src.read(CHUNK_BYTES):
                        out.write(chunk)
                _record(dest, source, url, info.CRC, info.file_size)
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        problem = f"{url} did not arrive as a readable zip archive ({e}); it was removed: run again"
        raise DownloadError(problem) from None
    finally:
        archive.unlink(missing_ok=True)


def fetch_coco_captions(
    split: str,
    *,
    cache: str | os.PathLike | None = None,
    base_url: str | None = None,
    policy: RetryPolicy = DEFAULT_POLICY,
    progress: bool = True,
    log: Callable[[str], Any] = print,
) -> Path:
    """The official COCO captions file of `split` ('train2017', 'val2017', 'train2014', 'val2014'), cached.

    Returns `<cache>/coco/captions_<split>.json` (`cache` defaults to `cache_dir()`). The first call fetches only
    that member of COCO's annotations archive by range requests (`fetch_zip_member`); if the server ignores ranges
    or the archive cannot be read that way, the whole archive is downloaded and both of its caption files kept.
    Later calls check the cached file against its recorded CRC-32 and size and make no request. `base_url` (or
    $MINICAP_DOWNLOAD_BASE_URL) is a mirror of images.cocodataset.org keeping the path /annotations/<archive>.
    Raises `ValueError` for an unknown split, `DownloadError` (an OSError) when the file cannot be fetched.
    """
    source = COCO_CAPTION_FILES.get(split)
    if source is None:
        raise ValueError(f"unknown COCO split {split!r}: choose one of {', '.join(COCO_CAPTION_FILES)}")
    folder = Path(cache if cache is not None else cache_dir()) / "coco"
    dest = folder / PurePosixPath(source.member).name
    if _cached(dest, log):
        log(f"captions: {dest} (cached)")
        return dest
    url = mirror_url(source.archive_url, base_url)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        entry = fetch_zip_member(url, source.member, dest, policy=policy, progress=progress)
        _record(dest, source, url, entry.crc32, entry.size)
        log(
            f"captions: {source.member} from {url}: {entry.compressed_size / 1e6:.1f} MB fetched by range requests, "
            f"{entry.size / 1e6:.1f} MB -> {dest}"
        )
    except (RangeNotSupported, ZipLayoutError) as e:
        log(f"note: {e}; downloading the whole archive instead")
        _captions_from_whole_archive(url, folder, policy, progress)
        if not dest.exists():
            raise DownloadError(f"{url} has no member {source.member!r}") from None
        log(f"captions: {source.member} from the whole archive {url} -> {dest}")
    return dest
