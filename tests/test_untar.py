"""
Tests for receiving and making tar streams: L{twisted_relay.untar.TarExtractor}
(push-style, suspicious extraction), L{twisted_relay.incoming_tree.IncomingTree}
(a hidden temporary folder renamed into place) and
L{twisted_relay.tarstream.TarReader} (the sender's archive made on the fly).

Archives are built in memory, by L{tarfile} or by L{TarReader}, or crafted
block by block when they must be hostile. No network.
"""

from __future__ import annotations

import io
import os
import random
import stat
import tarfile
from pathlib import Path
from typing import Iterator

import pytest

from twisted_relay.filenames import BadName
from twisted_relay.incoming import FileExists
from twisted_relay.incoming_tree import IncomingTree
from twisted_relay.tarstream import SourceChanged, TarReader
from twisted_relay.untar import MAX_METADATA, BadArchive, TarExtractor

BLOCK = tarfile.BLOCKSIZE
END = bytes(2 * BLOCK)

#: A fixed time for every file and folder of the sample tree.
MTIME = 1_000_000_000


# ---------------------------------------------------------------------------
# helpers: archives


def padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def member(
    name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", fmt: int = tarfile.PAX_FORMAT, **attrs: object
) -> bytes:
    """One member, header and padded data, as C{tarfile} writes it; no
    end marker. C{attrs} set any other L{tarfile.TarInfo} field."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data)
    info.mode = 0o644 if kind != tarfile.DIRTYPE else 0o755
    info.mtime = MTIME
    for key, value in attrs.items():
        setattr(info, key, value)
    return info.tobuf(format=fmt, encoding="utf-8", errors="surrogateescape") + padded(data)


def folder(name: str, **attrs) -> bytes:
    return member(name, tarfile.DIRTYPE, **attrs)


def archive(*members: bytes) -> bytes:
    return b"".join(members) + END


def meta_block(kind: bytes, payload: bytes, size: int | None = None) -> bytes:
    """A PAX ('x'), global PAX ('g') or GNU long-name ('L') header with
    C{payload} as its body, crafted as is, however malformed."""
    info = tarfile.TarInfo("././@PaxHeader" if kind != tarfile.GNUTYPE_LONGNAME else "././@LongLink")
    info.type = kind
    info.size = len(payload) if size is None else size
    return info.tobuf(format=tarfile.USTAR_FORMAT) + padded(payload)


def pax_record(key: str, value: str | bytes) -> bytes:
    """One well-formed PAX record: its length counts itself."""
    body = b" " + key.encode() + b"=" + (value if isinstance(value, bytes) else value.encode()) + b"\n"
    length = len(body) + 1
    while len(str(length).encode()) + len(body) != length:
        length += 1
    return str(length).encode() + body


def tarfile_archive(root: Path, names: list[str]) -> bytes:
    """What the tar module itself makes of C{names} under C{root}."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in names:
            tar.add(root / name, arcname=name)
    return buffer.getvalue()


def read_all(reader: TarReader, chunk: int) -> bytes:
    """Everything C{reader} produces, C{chunk} bytes at a time."""
    out = bytearray()
    buffer = memoryview(bytearray(chunk))
    while True:
        n = reader.readinto(buffer)
        if not n:
            return bytes(out)
        out += buffer[:n]


# ---------------------------------------------------------------------------
# helpers: feeding and comparing


def splits(data: bytes, how: str, seed: int = 0) -> Iterator[bytes]:
    """C{data} in pieces: all at once, byte by byte, or at random cuts."""
    if how == "whole":
        yield data
    elif how == "bytes":
        for i in range(len(data)):
            yield data[i : i + 1]
    elif how == "random":
        rng = random.Random(seed)
        at = 0
        while at < len(data):
            step = rng.choice([1, 7, 100, 511, 512, 513, rng.randint(1, 4 * BLOCK), rng.randint(1, 64 * 1024)])
            yield data[at : at + step]
            at += step
    else:  # pragma: no cover
        raise AssertionError(how)


def extract(data: bytes, dest: Path, entries: set[str], how: str = "whole", seed: int = 0) -> TarExtractor:
    """Feed C{data} to a new extractor into C{dest} and close it."""
    extractor = TarExtractor(str(dest), entries)
    for piece in splits(data, how, seed):
        extractor.write(memoryview(piece))
    extractor.close()
    return extractor


def snapshot(root: Path, with_times: bool = False) -> dict[str, tuple]:
    """Everything under C{root} by relative path: its kind, its bytes and
    permission bits for files, and mtimes if asked."""
    found: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            extra = (int(st.st_mtime),) if with_times else ()
            if stat.S_ISDIR(st.st_mode):
                found[rel] = ("dir", *extra)
            elif stat.S_ISREG(st.st_mode):
                found[rel] = ("file", Path(path).read_bytes(), stat.S_IMODE(st.st_mode), *extra)
            else:
                found[rel] = ("other", stat.S_IFMT(st.st_mode))
    return found


def everything(root: Path) -> dict[str, tuple]:
    """L{snapshot} of C{root} itself and everything in it, times included."""
    return {".": ("dir", int(root.stat().st_mtime)), **snapshot(root, with_times=True)}


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    """Every test runs under umask 022, whatever the caller's, so expected
    modes are fixed."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


# ---------------------------------------------------------------------------
# a sample tree, on disk


LONG = "long-" + "l" * 120 + "/" + "n" * 140 + ".txt"  # needs PAX: over 100 bytes


@pytest.fixture
def src(tmp_path: Path) -> Path:
    """A folder 'tree' with nested and empty folders, empty files, non-ASCII
    and long names and several modes, plus a file 'single.txt' beside it."""
    rng = random.Random(1)
    root = tmp_path / "src"
    tree = root / "tree"
    files = {
        "a.txt": (b"hello\n", 0o644),
        "empty.txt": (b"", 0o600),
        "run.sh": (b"#!/bin/sh\necho hi\n", 0o755),
        "block.bin": (rng.randbytes(BLOCK), 0o640),  # no padding after it
        "odd.bin": (rng.randbytes(1000), 0o644),
        "nested/deeper/deepest/leaf.bin": (rng.randbytes(3 * 1024 + 1), 0o644),
        "nested/deeper/empty": (b"", 0o644),
        "café/naïve 日本語 ✓.txt": ("unicode ✓\n".encode(), 0o644),
        LONG: (b"long\n", 0o644),
    }
    for rel, (data, mode) in files.items():
        path = tree / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(mode)
    for rel in ["empty-dir", "nested/empty-inside", "café/vide"]:
        (tree / rel).mkdir(parents=True)
    (root / "single.txt").write_bytes(b"just one\n")
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), (MTIME, MTIME))
    return root


# ---------------------------------------------------------------------------
# TarExtractor: good archives arrive identical, however they are cut


@pytest.mark.parametrize("maker", ["TarReader", "tarfile"])
@pytest.mark.parametrize(("how", "seed"), [("whole", 0), ("random", 1), ("random", 2), ("random", 3), ("bytes", 0)])
def test_extracted_tree_is_identical(src: Path, tmp_path: Path, maker: str, how: str, seed: int) -> None:
    """A folder and a file arrive as the same tree (names, bytes, modes, times) however the stream is cut."""
    names = ["tree", "single.txt"]
    if maker == "TarReader":
        data = read_all(TarReader([str(src / name) for name in names]), 64 * 1024)
    else:
        data = tarfile_archive(src, names)
    dest = tmp_path / "dest"
    dest.mkdir()
    extractor = extract(data, dest, set(names), how, seed)
    assert snapshot(dest, with_times=True) == snapshot(src, with_times=True)
    assert extractor.files == 10


def test_byte_by_byte_small_archive(tmp_path: Path) -> None:
    """A small archive fed one byte at a time gives the same files as fed at once."""
    data = archive(folder("top"), member("top/a", data=b"x" * 700), member("top/b", data=b""), folder("top/e"))
    trees = []
    for how in ("whole", "bytes"):
        dest = tmp_path / how
        dest.mkdir()
        extract(data, dest, {"top"}, how)
        trees.append(snapshot(dest))
    assert trees[0] == trees[1] == {
        "top": ("dir",),
        "top/a": ("file", b"x" * 700, 0o644),
        "top/b": ("file", b"", 0o644),
        "top/e": ("dir",),
    }


def test_file_modes_are_kept_but_tamed(tmp_path: Path) -> None:
    """Executable and private files keep their modes; set-uid, group/other write and owner-less modes are tamed."""
    data = archive(
        folder("top"),
        member("top/exe", data=b"1", mode=0o755),
        member("top/private", data=b"2", mode=0o600),
        member("top/group", data=b"3", mode=0o640),
        member("top/setuid", data=b"4", mode=0o4755),
        member("top/writable", data=b"5", mode=0o666),
        member("top/unreadable", data=b"6", mode=0o000),
    )
    dest = tmp_path / "dest"
    dest.mkdir()
    extract(data, dest, {"top"})
    modes = {name: stat.S_IMODE(os.lstat(dest / "top" / name).st_mode) for name in os.listdir(dest / "top")}
    assert modes == {
        "exe": 0o755,
        "private": 0o600,
        "group": 0o640,
        "setuid": 0o755,
        "writable": 0o644,
        "unreadable": 0o600,
    }
    assert stat.S_IMODE(os.lstat(dest / "top").st_mode) & 0o700 == 0o700


def test_modes_respect_the_receivers_umask(tmp_path: Path) -> None:
    """Under a strict umask (027) received files and folders are no more open than the receiver allows."""
    data = archive(folder("top", mode=0o777), member("top/exe", data=b"1", mode=0o755), member("top/doc", data=b"2"))
    dest = tmp_path / "dest"
    dest.mkdir()
    os.umask(0o027)
    extract(data, dest, {"top"})
    modes = {rel: stat.S_IMODE(os.lstat(dest / rel).st_mode) for rel in ["top", "top/exe", "top/doc"]}
    assert modes == {"top": 0o750, "top/exe": 0o750, "top/doc": 0o640}


def test_implicit_parent_folders_are_made(tmp_path: Path) -> None:
    """A file whose folders are not listed before it is still stored in the right place."""
    dest = tmp_path / "dest"
    dest.mkdir()
    extract(archive(member("top/a/b/c.txt", data=b"deep")), dest, {"top"})
    assert (dest / "top/a/b/c.txt").read_bytes() == b"deep"


def test_pax_size_and_path_are_used(tmp_path: Path) -> None:
    """A PAX header's path and size override the plain header's."""
    body = b"twelve bytes"
    plain = member("top/short-name", data=body)
    # Replace the member's own header with a PAX header plus a header that lies.
    pax = meta_block(tarfile.XHDTYPE, pax_record("path", "top/the real name é") + pax_record("size", str(len(body))))
    liar = tarfile.TarInfo("top/short-name")
    liar.size = 0
    data = pax + liar.tobuf(format=tarfile.USTAR_FORMAT) + plain[BLOCK:] + END
    dest = tmp_path / "dest"
    dest.mkdir()
    extract(data, dest, {"top"})
    assert snapshot(dest) == {"top": ("dir",), "top/the real name é": ("file", body, 0o644)}


def test_gnu_long_name_is_accepted(tmp_path: Path) -> None:
    """A GNU long-name header (as GNU tar writes) gives the file its long name."""
    name = "top/" + "g" * 200 + "/" + "h" * 180
    data = archive(member(name, data=b"gnu", fmt=tarfile.GNU_FORMAT))
    assert tarfile.GNUTYPE_LONGNAME in data[:BLOCK]  # the archive really uses one
    dest = tmp_path / "dest"
    dest.mkdir()
    extract(data, dest, {"top"}, "random", 5)
    assert (dest / name).read_bytes() == b"gnu"


def test_global_pax_header_is_ignored(tmp_path: Path) -> None:
    """A global PAX header, even one naming a path outside, changes nothing."""
    data = meta_block(tarfile.XGLTYPE, pax_record("path", "../escaped") + pax_record("comment", "c" * 600))
    data += archive(member("top", data=b"ok"))
    dest = tmp_path / "dest"
    dest.mkdir()
    extract(data, dest, {"top"}, "bytes")
    assert snapshot(dest) == {"top": ("file", b"ok", 0o644)}


def test_end_marker_may_be_followed_by_zero_padding(tmp_path: Path) -> None:
    """Zero blocks after the end marker (a tar record's padding) are fine."""
    dest = tmp_path / "dest"
    dest.mkdir()
    extract(archive(member("top", data=b"x")) + bytes(18 * BLOCK), dest, {"top"})
    assert (dest / "top").read_bytes() == b"x"


# ---------------------------------------------------------------------------
# TarExtractor: hostile archives are refused and touch nothing outside


def hostile_cases(outside: Path) -> dict[str, bytes]:
    """Archives that must be refused; C{outside} is an absolute path
    beside the destination that none of them may create or change."""
    victim = str(outside)
    return {
        "dotdot": archive(member("../x", data=b"evil")),
        "dotdot-inside": archive(folder("top"), member("top/../../x", data=b"evil")),
        "dotdot-folder": archive(folder("top/../../xdir")),
        "absolute": archive(member(victim, data=b"evil")),
        "absolute-under-entry": archive(folder("top"), member("/top/x", data=b"evil")),
        "dot-part": archive(member("top/./x", data=b"evil")),
        "empty-part": archive(member("top//x", data=b"evil")),
        "backslash": archive(member("top/..\\..\\x", data=b"evil")),
        "control-char": archive(member("top/a\x1b[2Jb", data=b"evil")),
        "symlink-outside": archive(folder("top"), member("top/link", tarfile.SYMTYPE, linkname="../../x")),
        "symlink-absolute": archive(folder("top"), member("top/link", tarfile.SYMTYPE, linkname=victim)),
        "symlink-inside": archive(
            folder("top"), member("top/f", data=b"ok"), member("top/link", tarfile.SYMTYPE, linkname="f")
        ),
        "symlink-then-write-through": archive(
            member("top", tarfile.SYMTYPE, linkname=str(outside.parent)), member("top/x", data=b"evil")
        ),
        "hardlink-outside": archive(folder("top"), member("top/hl", tarfile.LNKTYPE, linkname=victim)),
        "hardlink-inside": archive(
            folder("top"), member("top/f", data=b"ok"), member("top/hl", tarfile.LNKTYPE, linkname="top/f")
        ),
        "char-device": archive(folder("top"), member("top/null", tarfile.CHRTYPE, devmajor=1, devminor=3)),
        "block-device": archive(folder("top"), member("top/disk", tarfile.BLKTYPE, devmajor=8, devminor=0)),
        "fifo": archive(folder("top"), member("top/fifo", tarfile.FIFOTYPE)),
        "contiguous-file": archive(member("top", tarfile.CONTTYPE, data=b"x")),
        "gnu-sparse-file": archive(member("top", tarfile.GNUTYPE_SPARSE, data=b"x", fmt=tarfile.GNU_FORMAT)),
        "gnu-longlink-type": archive(meta_block(b"K", b"../../x\0") + member("top/l", tarfile.SYMTYPE, linkname="x")),
        "not-announced": archive(member("other", data=b"who asked")),
        "not-announced-nested": archive(folder("top"), member("other/x", data=b"who asked")),
        "duplicate-file": archive(folder("top"), member("top/f", data=b"one"), member("top/f", data=b"two")),
        "duplicate-top-file": archive(member("top", data=b"one"), member("top", data=b"two")),
        "file-then-folder": archive(folder("top"), member("top/f", data=b"one"), folder("top/f")),
        "folder-then-file": archive(folder("top"), folder("top/d"), member("top/d", data=b"two")),
        "pax-path-dotdot": archive(member("top/innocent", data=b"evil", pax_headers={"path": "../x"})),
        "pax-path-absolute": archive(member("top/innocent", data=b"evil", pax_headers={"path": victim})),
        "pax-too-large": meta_block(tarfile.XHDTYPE, b"", size=MAX_METADATA + 1),
        "pax-huge": meta_block(tarfile.XHDTYPE, b"", size=2**33 - 1),
        "pax-no-length": archive(meta_block(tarfile.XHDTYPE, b"path=top\n") + member("top")),
        "pax-bad-length": archive(meta_block(tarfile.XHDTYPE, b"1x path=top\n") + member("top")),
        "pax-length-too-short": archive(meta_block(tarfile.XHDTYPE, b"3 path=top\n") + member("top")),
        "pax-length-past-end": archive(meta_block(tarfile.XHDTYPE, b"99 path=top\n") + member("top")),
        "pax-no-newline": archive(meta_block(tarfile.XHDTYPE, b"11 path=top") + member("top")),
        "pax-no-equals": archive(meta_block(tarfile.XHDTYPE, b"11 pathtop\n") + member("top")),
        "pax-not-utf8": archive(meta_block(tarfile.XHDTYPE, pax_record("path", b"top\xff")) + member("top")),
        "pax-bad-size": archive(meta_block(tarfile.XHDTYPE, pax_record("size", "12abc")) + member("top")),
        "pax-non-ascii-digits": archive(meta_block(tarfile.XHDTYPE, pax_record("size", "١٢")) + member("top")),
        "pax-negative-size": archive(meta_block(tarfile.XHDTYPE, pax_record("size", "-1")) + member("top")),
        "longname-dotdot": archive(
            meta_block(tarfile.GNUTYPE_LONGNAME, b"top/../../x\0") + member("top/ok", data=b"evil")
        ),
        "longname-absolute": archive(meta_block(tarfile.GNUTYPE_LONGNAME, victim.encode() + b"\0") + member("top")),
        "longname-too-large": meta_block(tarfile.GNUTYPE_LONGNAME, b"", size=MAX_METADATA + 1),
        "bad-checksum": archive(member("top", data=b"x")[:148] + b"0000000\0" + member("top", data=b"x")[156:]),
        "garbage": archive(b"\xff" * BLOCK),
        "data-after-end": archive(member("top", data=b"x")) + member("top2", data=b"smuggled"),
        "garbage-after-end": archive(member("top", data=b"x")) + b"\x01" + bytes(BLOCK - 1),
        "partial-block-after-end": archive(member("top", data=b"x")) + b"\x01" * 100,
    }


HOSTILE = sorted(hostile_cases(Path("/placeholder/outside")))


@pytest.mark.parametrize("how", ["whole", "bytes"])
@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_archive_is_refused(tmp_path: Path, case: str, how: str) -> None:
    """A crafted archive is refused, and nothing outside the destination is created or changed."""
    parent = tmp_path / "parent"
    dest = parent / "dest"
    dest.mkdir(parents=True)
    (parent / "keep.txt").write_bytes(b"untouched")
    os.utime(parent / "keep.txt", (MTIME, MTIME))
    outside = parent / "victim"
    data = hostile_cases(outside)[case]
    before_parent = everything(parent)
    before_top = sorted(os.listdir(tmp_path))
    del before_parent["dest"]  # the destination itself may change

    with pytest.raises(BadArchive):
        extract(data, dest, {"top"}, how)

    after_parent = everything(parent)
    inside = {rel: what for rel, what in after_parent.items() if rel == "dest" or rel.startswith("dest/")}
    for rel in inside:
        del after_parent[rel]
    assert after_parent == before_parent
    assert sorted(os.listdir(tmp_path)) == before_top
    assert not os.path.lexists(outside)
    for name in ("x", "xdir"):  # where the '..' cases aim
        assert not os.path.lexists(parent / name) and not os.path.lexists(tmp_path / name)
    assert not os.path.lexists("/placeholder")
    # Nothing but plain files and folders, even inside.
    assert all(what[0] in ("dir", "file") for what in inside.values()), inside


def test_oversize_metadata_is_refused_before_its_body(tmp_path: Path) -> None:
    """An oversize PAX header is refused as soon as its header block arrives, without buffering the body."""
    extractor = TarExtractor(str(tmp_path), {"top"})
    with pytest.raises(BadArchive, match="too large"):
        extractor.write(meta_block(tarfile.XHDTYPE, b"", size=MAX_METADATA + 1))


def test_largest_metadata_block_is_accepted(tmp_path: Path) -> None:
    """A PAX header of exactly the largest allowed size is still accepted."""
    key = "comment"
    # "<n> comment=<value>\n" is n bytes long when the value fills the rest.
    record = f"{MAX_METADATA} {key}=".encode() + b"c" * (MAX_METADATA - len(f"{MAX_METADATA} {key}=") - 1) + b"\n"
    assert len(record) == MAX_METADATA
    dest = tmp_path / "dest"
    dest.mkdir()
    extract(archive(meta_block(tarfile.XHDTYPE, record) + member("top", data=b"ok")), dest, {"top"}, "random", 9)
    assert (dest / "top").read_bytes() == b"ok"


def test_member_beneath_a_file_is_refused(tmp_path: Path) -> None:
    """A member that would need a file to be a folder ('f', then 'f/g') is refused as a bad archive."""
    dest = tmp_path / "dest"
    dest.mkdir()
    data = archive(folder("top"), member("top/f", data=b"one"), member("top/f/g", data=b"two"))
    with pytest.raises(BadArchive):
        extract(data, dest, {"top"})


@pytest.mark.parametrize("mtime", [2**80, -(2**80)], ids=["far-future", "far-past"])
def test_absurd_mtime_is_refused_or_ignored(tmp_path: Path, mtime: int) -> None:
    """A header whose modification time is out of range is refused or ignored, never a crash."""
    dest = tmp_path / "dest"
    dest.mkdir()
    data = archive(
        folder("top", mtime=mtime, fmt=tarfile.GNU_FORMAT),
        member("top/f", data=b"x", fmt=tarfile.GNU_FORMAT, mtime=mtime),
    )
    try:
        extract(data, dest, {"top"})
    except BadArchive:
        return
    assert (dest / "top/f").read_bytes() == b"x"


# ---------------------------------------------------------------------------
# TarExtractor: archives that end early


def good_archive() -> bytes:
    return archive(folder("top"), member("top/a", data=b"a" * 700), member("top/b", data=b"b" * 10))


TRUNCATIONS = {
    "empty": 0,
    "mid-first-header": 100,
    "after-first-header": BLOCK,
    "mid-data": 2 * BLOCK + 300,
    "mid-padding": 2 * BLOCK + 700 + 10,
    "after-last-member": 6 * BLOCK,
    "mid-end-marker": 6 * BLOCK + 100,
}


@pytest.mark.parametrize("cut", sorted(TRUNCATIONS))
def test_truncated_archive_fails_at_close(tmp_path: Path, cut: str) -> None:
    """An archive cut short anywhere before its end marker is refused when the stream ends."""
    data = good_archive()
    assert len(data) == 8 * BLOCK
    extractor = TarExtractor(str(tmp_path), {"top"})
    extractor.write(data[: TRUNCATIONS[cut]])
    with pytest.raises(BadArchive, match="ended early"):
        extractor.close()


def test_truncated_pax_header_fails_at_close(tmp_path: Path) -> None:
    """An archive cut inside a PAX header's body is refused when the stream ends."""
    extractor = TarExtractor(str(tmp_path), {"top"})
    extractor.write(meta_block(tarfile.XHDTYPE, pax_record("path", "top"))[: BLOCK + 5])
    with pytest.raises(BadArchive):
        extractor.close()


def test_abort_closes_a_half_written_file(tmp_path: Path) -> None:
    """Aborting mid-file releases the open file, so the partial tree can be removed."""
    extractor = TarExtractor(str(tmp_path), {"top"})
    extractor.write(good_archive()[: 2 * BLOCK + 300])
    fds = len(os.listdir("/proc/self/fd"))
    extractor.abort()
    assert len(os.listdir("/proc/self/fd")) == fds - 1
    extractor.abort()  # twice is harmless


# ---------------------------------------------------------------------------
# IncomingTree


def listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def temps(folder: Path) -> list[str]:
    return [name for name in os.listdir(folder) if name.startswith(".filerelay-")]


def receive(tree: IncomingTree, data: bytes, how: str = "whole") -> None:
    for piece in splits(data, how, 4):
        tree.write(piece)


def test_tree_appears_only_at_commit(src: Path, tmp_path: Path) -> None:
    """A received folder stays hidden until commit, then appears whole, and no temporary folder remains."""
    reader = TarReader([str(src / "tree"), str(src / "single.txt")])
    data = read_all(reader, 4096)
    out = tmp_path / "out"
    out.mkdir()
    tree = IncomingTree(str(out), reader.entries, reader.size)
    assert len(temps(out)) == 1
    receive(tree, data, "random")
    assert [name for name in listing(out) if not name.startswith(".")] == []
    tree.commit()
    assert listing(out) == ["single.txt", "tree"]
    assert snapshot(out, with_times=True) == snapshot(src, with_times=True)
    assert tree.written == reader.size


def test_size_unknown_commit_takes_the_total(tmp_path: Path) -> None:
    """With no size announced, commit checks the sender's final count."""
    data = archive(member("top", data=b"abc"))
    tree = IncomingTree(str(tmp_path), ["top"], None)
    receive(tree, data)
    with pytest.raises(BadArchive):
        tree.commit(len(data) + 1)
    tree.discard()
    assert listing(tmp_path) == []
    tree = IncomingTree(str(tmp_path), ["top"], None)
    receive(tree, data)
    tree.commit(len(data))
    assert listing(tmp_path) == ["top"]


def test_existing_entry_refused_up_front(tmp_path: Path) -> None:
    """An entry that already exists is refused before anything is received, and is left as it was."""
    out = tmp_path / "out"
    (out / "dir").mkdir(parents=True)
    (out / "dir" / "mine.txt").write_bytes(b"mine")
    before = everything(out)
    with pytest.raises(FileExists):
        IncomingTree(str(out), ["new.txt", "dir"], 1024)
    assert everything(out) == before
    assert temps(out) == []


def test_existing_dangling_symlink_counts_as_existing(tmp_path: Path) -> None:
    """A dangling symbolic link of an entry's name is an existing entry too."""
    (tmp_path / "dir").symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileExists):
        IncomingTree(str(tmp_path), ["dir"], 1024)
    assert os.path.islink(tmp_path / "dir") and listing(tmp_path) == ["dir"]


@pytest.mark.parametrize("old", ["folder", "file"])
def test_overwrite_replaces_the_entry_whole(tmp_path: Path, old: str) -> None:
    """With --overwrite an existing folder or file is replaced by the new folder, with no old contents left in it."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "other.txt").write_bytes(b"not mine to touch")
    if old == "folder":
        (out / "dir" / "sub").mkdir(parents=True)
        (out / "dir" / "stale.txt").write_bytes(b"old")
        (out / "dir" / "new.txt").write_bytes(b"old version")
    else:
        (out / "dir").write_bytes(b"a file")
    data = archive(folder("dir"), member("dir/new.txt", data=b"new version"), folder("dir/empty"))
    tree = IncomingTree(str(out), ["dir"], len(data), overwrite=True)
    receive(tree, data)
    tree.commit()
    assert snapshot(out) == {
        "other.txt": ("file", b"not mine to touch", 0o644),
        "dir": ("dir",),
        "dir/new.txt": ("file", b"new version", 0o644),
        "dir/empty": ("dir",),
    }


def test_entry_appearing_during_transfer_is_not_replaced(tmp_path: Path) -> None:
    """An entry created while receiving (no --overwrite) is refused at commit and left alone."""
    data = archive(member("top", data=b"new"))
    tree = IncomingTree(str(tmp_path), ["top"], len(data))
    receive(tree, data)
    (tmp_path / "top").write_bytes(b"someone else's")
    with pytest.raises(FileExists):
        tree.commit()
    assert (tmp_path / "top").read_bytes() == b"someone else's"
    assert temps(tmp_path) == []


def test_discard_removes_the_temporary_folder(tmp_path: Path) -> None:
    """Discarding half a transfer leaves the output folder exactly as it was."""
    (tmp_path / "keep").write_bytes(b"k")
    before = everything(tmp_path)
    data = archive(folder("top"), member("top/a", data=os.urandom(5000)), member("top/b", data=b"b"))
    tree = IncomingTree(str(tmp_path), ["top"], len(data))
    receive(tree, data[: 3 * BLOCK + 17])
    tree.discard()
    assert everything(tmp_path) == before


def test_announced_entry_missing_is_refused(tmp_path: Path) -> None:
    """An archive lacking one of the announced entries is refused, and nothing is put in place."""
    data = archive(member("a.txt", data=b"a"))
    tree = IncomingTree(str(tmp_path), ["a.txt", "b.txt"], len(data))
    receive(tree, data)
    with pytest.raises(BadArchive, match="b.txt"):
        tree.commit()
    assert listing(tmp_path) == []


@pytest.mark.parametrize("delta", [-1, +1, -BLOCK])
def test_size_mismatch_is_refused(tmp_path: Path, delta: int) -> None:
    """An archive shorter or longer than announced is refused, and nothing is put in place."""
    data = archive(member("top", data=b"x" * 100)) + bytes(BLOCK)
    tree = IncomingTree(str(tmp_path), ["top"], len(data) - delta)
    with pytest.raises(BadArchive):
        receive(tree, data)
        tree.commit()
    tree.discard()
    assert listing(tmp_path) == []


def test_hostile_archive_through_tree_leaves_folder_as_it_was(tmp_path: Path) -> None:
    """A hostile archive received into a folder is refused and, once discarded, leaves the folder unchanged."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_bytes(b"k")
    before_out, before_top = everything(out), everything(tmp_path)
    data = archive(folder("top"), member("top/ok", data=b"fine"), member("top/../../x", data=b"evil"))
    tree = IncomingTree(str(out), ["top"], len(data))
    with pytest.raises(BadArchive):
        receive(tree, data)
    tree.discard()
    assert everything(out) == before_out
    assert everything(tmp_path) == before_top


@pytest.mark.parametrize(
    "entries",
    [["a", "a"], [".hidden"], ["a/b"], [".."], [""], ["a\nb"]],
    ids=["repeated", "hidden", "separator", "dotdot", "empty", "control"],
)
def test_unsafe_announced_entries_refused(tmp_path: Path, entries: list[str]) -> None:
    """Unsafe or repeated top-level names are refused before any folder is made."""
    with pytest.raises(BadName):
        IncomingTree(str(tmp_path), entries, 1024)
    assert listing(tmp_path) == []


# ---------------------------------------------------------------------------
# TarReader


@pytest.mark.parametrize("chunk", [1, 511, 512, 513, 4096, 256 * 1024])
def test_reader_size_is_exact(src: Path, chunk: int) -> None:
    """The announced archive size is exactly what is produced, whatever the read size."""
    reader = TarReader([str(src / "tree"), str(src / "single.txt")])
    data = read_all(reader, chunk)
    assert len(data) == reader.size
    assert len(data) % BLOCK == 0 and data.endswith(END)
    assert reader.readinto(memoryview(bytearray(10))) == 0  # and stays at the end
    reader.close()


def test_reader_output_is_a_plain_tar(src: Path) -> None:
    """The stream is an ordinary tar archive with the right members and no owner names."""
    reader = TarReader([str(src / "tree"), str(src / "single.txt")])
    assert reader.entries == ["tree", "single.txt"]
    data = read_all(reader, 100_000)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
        names = {m.name: ("dir" if m.isdir() else "file") for m in members}
        contents = {m.name: tar.extractfile(m).read() for m in members if m.isreg()}
    expected = {rel: what[0] for rel, what in snapshot(src).items()}
    assert names == expected
    assert contents == {rel: what[1] for rel, what in snapshot(src).items() if what[0] == "file"}
    assert all(m.uid == 0 and m.gid == 0 and m.uname == "" and m.gname == "" for m in members)
    # Parents come before their children, so folders exist when files arrive.
    order = [m.name for m in members]
    for i, name in enumerate(order):
        if "/" in name:
            assert name.rsplit("/", 1)[0] in order[:i]


def test_reader_skips_links_and_special_files(tmp_path: Path) -> None:
    """Symbolic links and fifos inside a folder are left out, and the caller is told about each."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "real.txt").write_bytes(b"real")
    (tree / "link").symlink_to("real.txt")
    (tree / "dirlink").symlink_to(tmp_path)
    os.mkfifo(tree / "fifo")
    skipped: list[str] = []
    reader = TarReader([str(tree)], on_skip=skipped.append)
    assert sorted(skipped) == sorted(str(tree / name) for name in ["link", "dirlink", "fifo"])
    assert sorted(reader.skipped) == sorted(skipped)
    data = read_all(reader, 4096)
    assert len(data) == reader.size
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert sorted(tar.getnames()) == ["tree", "tree/real.txt"]


def test_reader_skipped_top_level_is_not_announced(tmp_path: Path) -> None:
    """A top-level symbolic link that is skipped is not announced as an entry either."""
    (tmp_path / "real.txt").write_bytes(b"real")
    (tmp_path / "link").symlink_to("real.txt")
    skipped: list[str] = []
    reader = TarReader([str(tmp_path / "real.txt"), str(tmp_path / "link")], on_skip=skipped.append)
    assert skipped == [str(tmp_path / "link")]
    assert reader.entries == ["real.txt"]


def test_reader_output_round_trips_through_tree(src: Path, tmp_path: Path) -> None:
    """What TarReader makes of several paths, IncomingTree stores as the same tree."""
    paths = [str(src / "single.txt"), str(src / "tree" / "nested"), str(src / "tree" / "empty-dir")]
    reader = TarReader(paths)
    assert reader.entries == ["single.txt", "nested", "empty-dir"]
    out = tmp_path / "out"
    out.mkdir()
    tree = IncomingTree(str(out), reader.entries, reader.size)
    buffer = memoryview(bytearray(777))
    while n := reader.readinto(buffer):
        tree.write(buffer[:n])
    tree.commit()
    kept = ("nested", "empty-dir")
    expected = {rel: what for rel, what in snapshot(src / "tree").items() if rel.split("/")[0] in kept}
    expected["single.txt"] = snapshot(src)["single.txt"]
    assert snapshot(out) == expected


def test_reader_source_shrinking_raises(tmp_path: Path) -> None:
    """A file that gets shorter between listing and reading stops the stream with SourceChanged."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a.bin").write_bytes(os.urandom(10_000))
    (tree / "b.bin").write_bytes(b"b")
    reader = TarReader([str(tree)])
    (tree / "a.bin").write_bytes(os.urandom(5_000))
    with pytest.raises(SourceChanged):
        read_all(reader, 4096)
    reader.close()


def test_reader_source_growing_keeps_the_announced_size(tmp_path: Path) -> None:
    """A file that grows after listing is sent at its listed length, so the archive stays valid."""
    (tmp_path / "a.bin").write_bytes(b"a" * 600)
    reader = TarReader([str(tmp_path / "a.bin")])
    with open(tmp_path / "a.bin", "ab") as f:
        f.write(b"more")
    data = read_all(reader, 1000)
    assert len(data) == reader.size
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.extractfile("a.bin").read() == b"a" * 600


@pytest.mark.parametrize("second", ["other/x", "other/x/"])
def test_reader_duplicate_top_level_names_refused(tmp_path: Path, second: str) -> None:
    """Two paths with the same base name cannot be sent together."""
    for rel in ["one/x", "other/x"]:
        (tmp_path / rel).mkdir(parents=True)
    with pytest.raises(ValueError, match="'x'"):
        TarReader([str(tmp_path / "one/x"), str(tmp_path) + "/" + second])


def test_reader_missing_path_raises(tmp_path: Path) -> None:
    """A path that does not exist fails at once, before anything is read."""
    with pytest.raises(FileNotFoundError):
        TarReader([str(tmp_path / "nope")])
