"""kd_tf.photo_corpus without the network: a fixture .deb built here stands in for apt-get download."""

import hashlib
import json
import os
import re
import shutil
import struct
import subprocess

import cv2
import numpy as np
import pytest

from kd_tf import cli
from kd_tf import photo_corpus as pc

needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-deb") is None,
                                reason="dpkg-deb not on PATH (Debian/Ubuntu only): the fixture .deb needs it")
PACKAGE = "kdtf-fixture"
FOLDER = "usr/share/kdtf-fixture"


def _jpeg(image, quality):
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return encoded.tobytes()


def _png(image):
    ok, encoded = cv2.imencode(".png", image)
    assert ok
    return encoded.tobytes()


def _scene(height, width, seed):
    """A smooth colour image with some texture: JPEG-compressible, not flat."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 255 / width, y * 255 / height, (x + y) % 64 * 4], axis=-1)
    return np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)


def _eet(entries):
    """An Eet file (format 2): header, 6 big-endian int32 per entry, an empty dictionary, names, data."""
    names = b"".join(name.encode() + b"\0" for name, _, _ in entries)
    directory_end = 12 + 24 * len(entries)
    name_offset, data_offset = directory_end, directory_end + len(names)
    directory, data = b"", b""
    for name, payload, flags in entries:
        directory += struct.pack(">6i", data_offset + len(data), len(payload), len(payload), name_offset,
                                 len(name) + 1, flags)
        name_offset += len(name) + 1
        data += payload
    return struct.pack(">3i", pc.EET_MAGIC, len(entries), 0) + directory + names + data


@pytest.fixture(scope="module")
def fixture_deb(tmp_path_factory):
    """A .deb holding a q75 JPEG, a PNG, an .edj with two JPEG sizes and a file whose pinned hash is wrong."""
    root = tmp_path_factory.mktemp("deb")
    tree = root / "tree"
    folder = tree / FOLDER
    folder.mkdir(parents=True)
    low = _jpeg(_scene(48, 64, 0), 75)
    lossless_image = _scene(30, 40, 1)
    lossless = _png(lossless_image)
    big, small = _jpeg(_scene(24, 32, 2), 95), _jpeg(_scene(12, 16, 3), 95)
    edj = _eet([("edje/images/1", small, 0), ("edje/file", b"\x00compressed", 1), ("edje/images/0", big, 0)])
    files = {"low.jpg": low, "lossless.png": lossless, "wall.edj": edj, "tampered.jpg": _jpeg(_scene(8, 8, 4), 90)}
    for name, payload in files.items():
        (folder / name).write_bytes(payload)
    (tree / "DEBIAN").mkdir()
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {PACKAGE}\nVersion: 1.2-3\nArchitecture: all\nMaintainer: kd_tf tests <tests@example.org>\n"
        f"Description: photo corpus test fixture\n")
    deb = root / f"{PACKAGE}_1.2-3_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(tree), str(deb)], check=True,
                   capture_output=True)
    sha = lambda raw: hashlib.sha256(raw).hexdigest()
    photos = (
        pc.Photo(PACKAGE, f"{FOLDER}/low.jpg", sha(low), "CC0-1.0", "texture", "low"),
        pc.Photo(PACKAGE, f"{FOLDER}/lossless.png", sha(lossless), "CC0-1.0", "flower", "lossless"),
        pc.Photo(PACKAGE, f"{FOLDER}/wall.edj", sha(big), "BSD-2-clause", "sky", "wall", entry="edje/images/0"),
        pc.Photo(PACKAGE, f"{FOLDER}/tampered.jpg", "0" * 64, "CC0-1.0", "object", "tampered"),
    )
    return {"deb": deb, "photos": photos, "low": low, "lossless_image": lossless_image, "big": big}


class Downloads:
    """A stand-in for apt-get download: copies the fixture .deb and counts the calls."""

    def __init__(self, deb):
        self.deb, self.calls = deb, []

    def __call__(self, package, directory):
        self.calls.append(package)
        return shutil.copy(self.deb, directory / self.deb.name)


def _fetch(fixture, out, photos=None, work=None):
    """fetch with the fixture .deb; each progress line comes with the .deb files present at that moment."""
    download = Downloads(fixture["deb"])
    lines = []
    progress = lambda line: lines.append((line, sorted(p.name for p in work.rglob("*.deb")) if work else []))
    report = pc.fetch(out, download=download, photos=photos or fixture["photos"], workdir=work,
                      heldout=(f"{PACKAGE}__lossless",), progress=progress)
    return report, download, lines


def _size(path):
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    return image.shape[1], image.shape[0]


@needs_dpkg
def test_fetch_extracts_checks_halves_and_writes_the_manifest(fixture_deb, tmp_path):
    out, work = tmp_path / "corpus", tmp_path / "work"
    work.mkdir()
    report, download, lines = _fetch(fixture_deb, out, work=work)

    assert download.calls == [PACKAGE]
    assert sorted(report["fetched"]) == [f"{PACKAGE}__{s}" for s in ("lossless", "low", "wall")]
    assert [s["name"] for s in report["skipped"]] == [f"{PACKAGE}__tampered"]
    assert "sha256 mismatch" in report["skipped"][0]["reason"]
    assert any("skipped" in line and "tampered" in line for line, _ in lines)
    photo_lines = [debs for line, debs in lines if line.startswith(f"  {PACKAGE}__")]
    assert len(photo_lines) == 3 and photo_lines == [[]] * 3      # the .deb is gone once extracted
    assert report["packages"][PACKAGE] == {"version": "1.2-3", "photos": 4, "ready": 3, "fetched": 3,
                                           "skipped": 1, "megapixels": round(0.000768 + 0.0012 + 0.000768, 2)}
    assert os.listdir(work) == []                         # .deb and extracted tree deleted
    assert not (out / f"{PACKAGE}__tampered.png").exists()

    manifest = json.loads((out / "manifest.json").read_text())
    entries = {entry["name"]: entry for entry in manifest["photos"]}
    assert set(entries) == {f"{PACKAGE}__{s}" for s in ("lossless", "low", "wall")}
    low, lossless, wall = (entries[f"{PACKAGE}__{s}"] for s in ("low", "lossless", "wall"))
    assert low["jpeg_quality"] == 75 and low["downscaled"] and low["downscale_reason"] == "JPEG quality 75 < 90"
    assert (low["original_size"], low["prepared_size"]) == ("64x48", "32x24")
    assert _size(out / low["file"]) == (32, 24)
    assert lossless["jpeg_quality"] is None and not lossless["downscaled"] and lossless["source_format"] == "png"
    assert lossless["prepared_size"] == "40x30" and _size(out / lossless["file"]) == (40, 30)
    assert wall["source_entry"] == "edje/images/0" and wall["original_size"] == "32x24"   # not the 16x12 entry
    assert wall["jpeg_quality"] == 95 and not wall["downscaled"]
    assert {e["role"] for e in (low, wall)} == {"train"} and lossless["role"] == "heldout2"
    assert low == {**low, "package": PACKAGE, "package_version": "1.2-3", "source_path": f"/{FOLDER}/low.jpg",
                   "source_sha256": fixture_deb["photos"][0].sha256, "licence": "CC0-1.0", "kind": "texture",
                   "file": f"{PACKAGE}__low.png"}

    # the halved photo is the 2x2 area average of the decoded JPEG; the PNG is copied exactly
    decoded = cv2.imdecode(np.frombuffer(fixture_deb["low"], np.uint8), cv2.IMREAD_COLOR).astype(np.float32)
    expected = cv2.resize(decoded, (32, 24), interpolation=cv2.INTER_AREA)
    assert np.abs(cv2.imread(str(out / low["file"])).astype(np.float32) - expected).max() <= 0.5 + 1e-3
    np.testing.assert_array_equal(cv2.imread(str(out / lossless["file"])), fixture_deb["lossless_image"])
    saved = json.loads((out / "fetch_report.json").read_text())
    assert report["report_path"] == str(out / "fetch_report.json") and saved["skipped"] == report["skipped"]
    assert re.search(r"\| total +\| +\| 3/4 +\| 3 +\| 1 ", report["table"])


@needs_dpkg
def test_load_corpus_returns_each_role_as_float_rgb(fixture_deb, tmp_path):
    _fetch(fixture_deb, tmp_path)
    train = pc.load_corpus(tmp_path, role="train")
    heldout = pc.load_corpus(tmp_path, role="heldout2")
    assert set(train) == {f"{PACKAGE}__low", f"{PACKAGE}__wall"} and set(heldout) == {f"{PACKAGE}__lossless"}
    image = heldout[f"{PACKAGE}__lossless"]
    assert image.dtype == np.float32 and image.shape == (30, 40, 3)
    np.testing.assert_allclose(image, fixture_deb["lossless_image"][..., ::-1] / 255.0, atol=1e-6)
    with pytest.raises(ValueError, match=r"role='test'; accepted: train, heldout2"):
        pc.load_corpus(tmp_path, role="test")

    (tmp_path / f"{PACKAGE}__wall.png").unlink()
    with pytest.raises(FileNotFoundError, match=rf"{PACKAGE}__wall\.png.*photos fetch --out"):
        pc.load_corpus(tmp_path, role="train")
    with pytest.raises(FileNotFoundError, match=r"no manifest\.json.*python -m kd_tf photos fetch"):
        pc.load_corpus(tmp_path / "empty")


@needs_dpkg
def test_fetch_resumes_without_redoing_prepared_photos(fixture_deb, tmp_path):
    _fetch(fixture_deb, tmp_path)
    low_png = tmp_path / f"{PACKAGE}__low.png"
    before = low_png.stat().st_mtime_ns
    (tmp_path / f"{PACKAGE}__wall.png").unlink()

    report, download, _ = _fetch(fixture_deb, tmp_path)
    assert download.calls == [PACKAGE]                      # wall.png is missing: the package is needed
    assert report["fetched"] == [f"{PACKAGE}__wall"]
    assert sorted(report["reused"]) == [f"{PACKAGE}__lossless", f"{PACKAGE}__low"]
    assert low_png.stat().st_mtime_ns == before

    complete = fixture_deb["photos"][:3]                    # every photo ready: no download at all
    report, download, _ = _fetch(fixture_deb, tmp_path, photos=complete)
    assert download.calls == [] and report["fetched"] == [] and len(report["reused"]) == 3
    assert report["packages"][PACKAGE]["version"] == "1.2-3"

    repinned = (dataclass_replace(complete[0], sha256="f" * 64),) + complete[1:]   # a new pinned hash: redone
    report, download, _ = _fetch(fixture_deb, tmp_path, photos=repinned)
    assert download.calls == [PACKAGE] and [s["name"] for s in report["skipped"]] == [f"{PACKAGE}__low"]


def dataclass_replace(photo, **changes):
    import dataclasses

    return dataclasses.replace(photo, **changes)


def test_fetch_without_apt_says_so_in_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(shutil, "which", lambda tool: None if tool == "apt-get" else f"/usr/bin/{tool}")
    with pytest.raises(ValueError, match=r"photos fetch needs apt-get and dpkg-deb .*not found on PATH: apt-get\."):
        pc.fetch(tmp_path)
    assert cli.main(["photos", "fetch", "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: photos fetch needs apt-get") and "\n" not in error
    monkeypatch.setattr(shutil, "which", lambda tool: None)         # a given .deb still needs dpkg-deb
    with pytest.raises(ValueError, match=r"not found on PATH: dpkg-deb\."):
        pc.fetch(tmp_path, download=lambda package, directory: directory)


def test_unknown_package_is_named_with_the_accepted_ones(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda tool: f"/usr/bin/{tool}")
    with pytest.raises(ValueError, match=r"unknown package\(s\) gnome-backgrounds; accepted: enlightenment-data, "):
        pc.fetch(tmp_path, packages=["mate-backgrounds", "gnome-backgrounds"])


@needs_dpkg
def test_photos_list_summarises_the_manifest(fixture_deb, tmp_path, capsys):
    _fetch(fixture_deb, tmp_path)
    assert cli.main(["photos", "list", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert re.search(rf"\| {PACKAGE} +\| 1\.2-3 +\| 2 +\| 1 +\| 1 +\| 0 ", printed)
    assert f"report: {tmp_path / 'manifest.json'}" in printed
    summary = pc.describe(tmp_path)
    assert (summary["photos"], summary["train"], summary["heldout2"], summary["missing"]) == (3, 2, 1, 0)


@pytest.mark.parametrize("quality", [30, 50, 75, 89, 90, 95, 100])
def test_jpeg_quality_is_recovered_from_the_luminance_table(quality):
    assert pc.estimate_jpeg_quality(_jpeg(_scene(16, 16, 5), quality)) == quality


def test_png_has_no_jpeg_quality():
    assert pc.estimate_jpeg_quality(_png(_scene(8, 8, 6))) is None


def test_halve_averages_2x2_blocks_and_drops_an_odd_edge():
    image = np.arange(5 * 7 * 3, dtype=np.float32).reshape(5, 7, 3)
    halved = pc.halve(image)
    assert halved.shape == (2, 3, 3)
    np.testing.assert_allclose(halved, image[:4, :6].reshape(2, 2, 3, 2, 3).mean(axis=(1, 3)), rtol=1e-6)


def test_eet_reader_finds_jpeg_entries_and_refuses_other_files():
    jpeg = _jpeg(_scene(8, 8, 7), 90)
    raw = _eet([("edje/images/0", jpeg, 0), ("edje/images/1", b"\xff\xd8\xff" + b"x" * 9, 1)])
    assert pc.eet_jpeg(raw, "edje/images/0") == jpeg
    with pytest.raises(ValueError, match=r"no stored JPEG entry 'edje/images/1'; its JPEG entries: \['edje/images/0'\]"):
        pc.eet_jpeg(raw, "edje/images/1")                   # flags 1: compressed, not a plain JPEG
    with pytest.raises(ValueError, match=r"x.edj: magic 0x89504E47; expected 0x1EE70F42"):
        pc.eet_entries(_png(_scene(8, 8, 8)), "x.edj")
    with pytest.raises(ValueError, match=r"entry 0 points outside the file"):
        pc.eet_entries(raw[:60])


def test_table_pins_83_photos_from_8_packages_and_a_varied_heldout_set():
    names = [photo.name for photo in pc.PHOTOS]
    assert len(names) == 83 and len(set(names)) == 83
    assert list(dict.fromkeys(photo.package for photo in pc.PHOTOS)) == list(pc.PACKAGES)
    assert all(re.fullmatch(r"[0-9a-f]{64}", photo.sha256) for photo in pc.PHOTOS)
    assert len({photo.sha256 for photo in pc.PHOTOS}) == 83
    assert all((photo.entry is not None) == photo.path.endswith(".edj") for photo in pc.PHOTOS)
    assert not any(stem in name for name in names for stem in ("Dunes", "Squiggle", "umang", "Fossa", "origami"))
    kinds = {photo.name: photo.kind for photo in pc.PHOTOS}
    assert 8 <= len(pc.HELDOUT2) == len(set(pc.HELDOUT2)) and set(pc.HELDOUT2) <= set(names)
    assert {"texture", "colour", "people", "animal", "landscape"} <= {kinds[name] for name in pc.HELDOUT2}
    assert set(pc.ALWAYS_HALVE) <= set(names)


def test_default_corpus_dir_follows_kd_tf_photos(monkeypatch, tmp_path):
    monkeypatch.setenv("KD_TF_PHOTOS", str(tmp_path / "corpus"))
    assert pc.default_corpus_dir() == tmp_path / "corpus"
    monkeypatch.delenv("KD_TF_PHOTOS")
    assert pc.default_corpus_dir() == pc.Path.home() / ".cache" / "kd_tf" / "photos"
