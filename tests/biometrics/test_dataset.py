"""Datasets: a folder named by a regex (groups, pairing, errors) and the synthetic source."""
from __future__ import annotations

import os
import re
import sys
import types

import cv2
import numpy as np
import pytest

import palmnode.biometrics
from palmnode.biometrics import dataset as ds


def touch_images(folder, names, value=100):
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), np.full((20, 20), value, np.uint8))


def test_groups_session_sample_and_skipped(tmp_path):
    touch_images(tmp_path, ["7_1_1.png", "7_1_2.png", "7_2_1.png", "12_1_1.png"])
    (tmp_path / "readme.txt").write_text("x")
    (tmp_path / ".hidden.png").write_bytes(b"")
    d = ds.scan_folder(tmp_path, r"(?P<id>\d+)_(?P<session>\d)_(?P<sample>\d+)\.png")
    assert [s.key.label for s in d.samples] == ["7 s1 #1", "7 s1 #2", "7 s2 #1", "12 s1 #1"]
    assert d.channels == (ds.IMAGE,) and d.skipped_files == 1
    assert d.subjects == ["12", "7"] and d.sessions == ["1", "2"]
    img = d.samples[0].load((ds.IMAGE,))[ds.IMAGE]
    assert img.dtype == np.uint8 and img.shape == (20, 20)


def test_hand_is_part_of_the_subject_and_subfolders_match(tmp_path):
    touch_images(tmp_path, ["p01/L/s1_a.jpg", "p01/R/s1_a.jpg", "p01/r/s2_b.jpg"])
    d = ds.scan_folder(tmp_path, r"p(?P<id>\d+)/(?P<hand>[LRlr])/s(?P<session>\d)_(?P<sample>\w)\.jpg")
    assert sorted({s.key.subject for s in d.samples}) == ["01/left", "01/right"]
    assert len(d.samples) == 3


def test_channels_pair_into_one_sample(tmp_path):
    touch_images(tmp_path, ["1_1_1_940.bmp", "1_1_1_WHITE.bmp", "1_1_2_940.bmp"])
    d = ds.scan_folder(tmp_path, r"(?P<id>\d)_(?P<session>\d)_(?P<sample>\d)_(?P<modality>\w+)\.bmp")
    assert d.channels == (ds.NIR, ds.SURFACE)
    first, second = d.samples
    assert set(first.load((ds.NIR, ds.SURFACE))) == {ds.NIR, ds.SURFACE}
    with pytest.raises(ds.UnreadableSample, match="missing surface image"):
        second.load((ds.NIR, ds.SURFACE))


def test_channels_pair_by_order_without_a_sample_group(tmp_path):
    touch_images(tmp_path, ["a_nir_1.png", "a_nir_2.png", "a_surface_1.png", "a_surface_2.png"])
    d = ds.scan_folder(tmp_path, r"(?P<id>a)_(?P<channel>nir|surface)_\d\.png")
    assert [s.key.sample for s in d.samples] == ["1", "2"]
    assert all(len(s.files) == 2 for s in d.samples)


def test_unreadable_image_names_the_file(tmp_path):
    (tmp_path / "1_1_1.png").write_bytes(b"\x89PNG garbage")
    d = ds.scan_folder(tmp_path, r"(?P<id>\d)_(?P<session>\d)_(?P<sample>\d)\.png")
    with pytest.raises(ds.UnreadableSample, match=r"1_1_1.png: cannot be read as an image"):
        d.samples[0].load((ds.IMAGE,))


def test_linked_folders_are_followed_once(tmp_path):
    touch_images(tmp_path / "store" / "s2", ["1_2_1.png"])
    touch_images(tmp_path / "data" / "s1", ["1_1_1.png"])
    (tmp_path / "data" / "s2").symlink_to(tmp_path / "store" / "s2")     # a session kept elsewhere
    (tmp_path / "data" / "s1" / "loop").symlink_to(tmp_path / "data")    # and a loop
    d = ds.scan_folder(tmp_path / "data", r"s\d/(?P<id>\d)_(?P<session>\d)_(?P<sample>\d)\.png")
    assert [(s.key.session, s.files[0].split("/")[-2]) for s in d.samples] == [("1", "s1"), ("2", "s2")]


def test_a_folder_that_cannot_be_listed_is_an_error_not_left_out(tmp_path, monkeypatch):
    """os.walk passed over a folder it could not list (another user's, mode 0700): its samples were
    left out of the counts without a word (a session dropped), and an unreadable dataset folder
    was reported 'empty'. (Permissions do not stop root, so the listing fails by hand here.)"""
    touch_images(tmp_path / "data" / "s1", ["1_1_1.png"])
    touch_images(tmp_path / "data" / "s2", ["1_2_1.png"])
    scandir = os.scandir

    def denied(path="."):
        if os.fspath(path).endswith("s2"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)
    monkeypatch.setattr(os, "scandir", denied)
    with pytest.raises(ds.DatasetError) as exc:
        ds.scan_folder(tmp_path / "data", r"s\d/(?P<id>\d)_(?P<session>\d)_(?P<sample>\d)\.png")
    assert str(exc.value) == (f"{tmp_path / 'data' / 's2'}: the folder cannot be listed (Permission denied), so its "
                              "images would be left out: make it readable or move it out of the dataset")


def test_a_file_name_that_is_not_utf8_is_read_and_a_fifo_is_refused(tmp_path):
    """cv2.imread took the path as UTF-8 text and crashed the process (a segfault) on a name
    unpacked from a Latin-1 zip; a FIFO named like a sample blocked the run forever."""
    import cv2

    frame = np.full((48, 64), 77, np.uint8)
    latin = os.path.join(os.fsencode(tmp_path), b"caf\xe9_1_1.png")
    ok, png = cv2.imencode(".png", frame)
    with open(latin, "wb") as f:
        f.write(png.tobytes())
    path = os.fsdecode(latin)                      # as os.walk gives it: with a surrogate
    assert np.array_equal(ds.read_grey(path), frame)
    assert ds.display_name(os.path.basename(path)) == "caf\\xe9_1_1.png"
    os.mkfifo(tmp_path / "9_1_1.png")
    with pytest.raises(ds.UnreadableSample, match=r"^9_1_1.png: not a regular file$"):
        ds.read_grey(str(tmp_path / "9_1_1.png"))


def test_a_control_character_in_a_name_is_shown_escaped_on_one_line(tmp_path):
    """A newline (or an escape sequence) in a file name went into the messages as it was: the
    one-line failure to acquire and the one-line errors were split over two lines."""
    (tmp_path / "new\nline_1_1.png").write_text("not an image")
    (tmp_path / "x\x1b[31m_1_1.png").write_text("not an image")
    d = ds.scan_folder(tmp_path, r"(?P<id>[^_]+)_(?P<session>\d)_(?P<sample>\d)\.png")
    assert [s.key.label for s in d.samples] == ["new\\nline s1 #1", "x\\x1b[31m s1 #1"]
    with pytest.raises(ds.UnreadableSample) as exc:
        d.samples[0].load((ds.IMAGE,))
    assert str(exc.value) == "new\\nline_1_1.png: cannot be read as an image"
    with pytest.raises(ds.DatasetError) as exc:
        ds.scan_folder(tmp_path, r"(?P<id>\d+)\.jpg")
    assert "(first file: new\\nline_1_1.png)" in str(exc.value) and "\n" not in str(exc.value)


def test_an_image_over_the_engines_size_is_refused_before_it_is_decoded(tmp_path):
    """OpenCV refuses a header declaring more than OPENCV_IO_MAX_IMAGE_PIXELS before allocating,
    but reads that limit when cv2 is first imported: palmnode sets it to the engine's limit. With
    OpenCV's default (2^30) a few-KB 30000x30000 PNG was decoded into 900 MB, for 14 s. In a fresh
    process, as `palmnode eval` reads a folder."""
    import subprocess

    path = tmp_path / "1_1_1.png"
    cv2.imwrite(str(path), np.zeros((4097, 4096), np.uint8))         # one row over 4096 x 4096
    read = subprocess.run(
        [sys.executable, "-c", "import sys; from palmnode.biometrics.dataset import read_grey\n"
                               "try: read_grey(sys.argv[1])\n"
                               "except Exception as exc: print(type(exc).__name__, exc)", str(path)],
        capture_output=True, text=True, timeout=60)
    assert read.stdout.strip() == ("UnreadableSample 1_1_1.png: larger than the 16777216 pixels the "
                                   "engine accepts (not decoded)"), read


def test_a_file_larger_than_any_image_is_refused_unread(tmp_path):
    """A file was read whole before it was decoded: a video or disk image named like a sample took
    its size in memory (1.5 GB of RSS for a 1.5 GB file, more than the machine for a larger one)."""
    path = tmp_path / "1_1_1.png"
    with open(path, "wb") as f:
        f.truncate(ds.MAX_FILE_BYTES + 1)          # sparse: no disk, but too big to read
    assert ds.MAX_FILE_BYTES >= 4096 * 4096 * 4 * 8  # any image the engine accepts still fits
    with pytest.raises(ds.UnreadableSample, match=rf"^1_1_1.png: {ds.MAX_FILE_BYTES + 1} bytes, more than an "
                                                  r"image of the 16777216 pixels the engine accepts can take \(not read\)$"):
        ds.read_grey(str(path))


@pytest.mark.parametrize("pattern, message", [
    (r"(?P<who>\d)_\d_\d\.png", "no (?P<id>...) group"),
    (r"(?P<id>\d", "not a valid regular expression"),
    (r"(?P<id>\d)_(?P<channel>\d)_(?P<modality>\d)\.png", "both a channel and a modality group"),
    (r"(?P<id>\d)_(?P<channel>\d)_\d\.png", "channel '1' is neither NIR nor surface"),
    (r"(?P<id>\d?)_\d_\d\.png|(?P<x>z)", None),
])
def test_pattern_errors(tmp_path, pattern, message):
    touch_images(tmp_path, ["1_1_1.png"])
    if message is None:
        ds.scan_folder(tmp_path, pattern)  # an optional id that matched is fine
        return
    with pytest.raises(ds.DatasetError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        ds.scan_folder(tmp_path, pattern)


def test_folder_errors(tmp_path):
    with pytest.raises(ds.DatasetError, match="no such folder"):
        ds.scan_folder(tmp_path / "x", r"(?P<id>.+)")
    (tmp_path / "f.png").write_bytes(b"")
    with pytest.raises(ds.DatasetError, match="is not a folder"):
        ds.scan_folder(tmp_path / "f.png", r"(?P<id>.+)")
    with pytest.raises(ds.DatasetError, match=r"none of the 1 files .* \(first file: f.png\)"):
        ds.scan_folder(tmp_path, r"(?P<id>\d+)\.jpg")


def test_tongji_numbering_derives_palm_and_sample_from_the_running_number(tmp_path):
    # Tongji: 10 images per palm, numbered through each session folder, palm i the same in both
    touch_images(tmp_path, [f"session{s}/{n:05d}.bmp" for s in (1, 2) for n in range(1, 31)])
    d = ds.scan_folder(tmp_path, r"session(?P<session>\d)/(?P<sample>\d+)\.bmp", ds.Numbering(samples_per_id=10))
    assert d.subjects == ["1", "2", "3"] and d.sessions == ["1", "2"] and len(d.samples) == 60
    by_file = {f.rsplit("/", 2)[-2] + "/" + f.rsplit("/", 1)[-1]: s.key.label for s in d.samples for f in s.files}
    assert by_file["session1/00001.bmp"] == "1 s1 #1" and by_file["session1/00010.bmp"] == "1 s1 #10"
    assert by_file["session2/00011.bmp"] == "2 s2 #1" and by_file["session2/00030.bmp"] == "3 s2 #10"


def test_casia_numbering_splits_a_palms_samples_into_sessions(tmp_path):
    # CASIA-MS: six samples per palm and light, 01-03 of the first session, 04-06 of the second
    touch_images(tmp_path, [f"007_{h}_{c}_{n:02d}.jpg" for h in "lr" for c in ("940", "WHT") for n in range(1, 7)])
    d = ds.scan_folder(tmp_path, r"(?P<id>\d+)_(?P<hand>[lr])_(?P<channel>940|WHT)_(?P<sample>\d+)\.jpg",
                       ds.Numbering(samples_per_session=3))
    assert d.subjects == ["007/left", "007/right"] and d.sessions == ["1", "2"]
    assert d.channels == (ds.NIR, ds.SURFACE) and len(d.samples) == 12  # NIR and white paired
    assert [s.key.label for s in d.samples if s.key.subject == "007/left"] == [
        "007/left s1 #1", "007/left s1 #2", "007/left s1 #3", "007/left s2 #1", "007/left s2 #2", "007/left s2 #3"]


@pytest.mark.parametrize("pattern,numbering,message", [
    (r"(?P<id>\d+)_(?P<sample>\d+)\.png", ds.Numbering(samples_per_id=10), "drop the (?P<id>...) group"),
    (r"(?P<id>\d+)_(?P<session>\d)_(?P<sample>\d+)\.png", ds.Numbering(samples_per_session=3),
     "drop the (?P<session>...) group"),
    (r"s(?P<session>\d)/\d+\.png", ds.Numbering(samples_per_id=10), "needs a (?P<sample>\\d+) group"),
    (r"(?P<sample>\d+)\.png", ds.Numbering(samples_per_id=0), "--samples-per-id must be at least 1"),
])
def test_numbering_errors(tmp_path, pattern, numbering, message):
    touch_images(tmp_path, ["1_1_1.png"])
    with pytest.raises(ds.DatasetError, match=re.escape(message)):
        ds.scan_folder(tmp_path, pattern, numbering)


def test_numbering_needs_a_number(tmp_path):
    touch_images(tmp_path, ["s1/a.png"])
    with pytest.raises(ds.DatasetError, match=r"s1/a.png: sample 'a' is not a number from 1"):
        ds.scan_folder(tmp_path, r"s(?P<session>\d)/(?P<sample>\w)\.png", ds.Numbering(samples_per_id=10))


def test_sessions_sort_naturally():
    assert ds.sort_sessions(["10", "2", "1", "b", "a"]) == ["1", "2", "10", "a", "b"]


@pytest.fixture
def fake_synth(monkeypatch):
    """A stand-in renderer recording what eval asks of it."""
    calls = []

    class Identity:
        def __init__(self, seed, hand):
            self.seed, self.hand = seed, hand

        @classmethod
        def from_seed(cls, seed, hand=None):
            return cls(seed, hand)

    def sample_capture(rng, *, session=1, rotation="upright", jpeg=True):
        calls.append((session, rotation))
        return (session, float(rng.random()))

    def render_pair(identity, capture):
        v = (identity.seed * 7 + int(capture[1] * 100)) % 250
        return np.full((48, 64), v, np.uint8), np.full((48, 64), 255 - v, np.uint8)

    fake = types.SimpleNamespace(Identity=Identity, sample_capture=sample_capture, render_pair=render_pair)
    monkeypatch.setitem(sys.modules, "palmnode.biometrics.synth", fake)
    monkeypatch.setattr(palmnode.biometrics, "synth", fake, raising=False)
    return calls


def test_synthetic_layout_and_determinism(fake_synth):
    d = ds.synthetic(3, sessions=2, captures=3, hands="both", rotation="any", seed=5)
    assert len(d.samples) == 3 * 2 * 2 * 3
    assert d.channels == (ds.NIR, ds.SURFACE)
    assert len(d.subjects) == 6 and d.subjects[0] == "00000/left"
    assert d.sessions == ["1", "2"]
    a = d.samples[4].load((ds.NIR, ds.SURFACE))
    b = ds.synthetic(3, sessions=2, captures=3, hands="both", rotation="any", seed=5).samples[4].load((ds.NIR,))
    assert np.array_equal(a[ds.NIR], b[ds.NIR])
    assert fake_synth[0] == (2, "any")  # samples[4] is session 2 of the first palm
    other = ds.synthetic(3, sessions=2, captures=3, hands="both", rotation="any", seed=6).samples[4].load((ds.NIR,))
    assert not np.array_equal(a[ds.NIR], other[ds.NIR])


@pytest.mark.parametrize("kwargs, message", [
    ({"n": 0}, "at least 1 identity"),
    ({"n": 2, "rotation": "sideways"}, "--rotation"),
    ({"n": 2, "hands": "three"}, "--hands"),
    ({"n": 2, "captures": 0}, "--captures"),
])
def test_synthetic_errors(fake_synth, kwargs, message):
    with pytest.raises(ds.DatasetError, match=message):
        ds.synthetic(**kwargs)


def hand_frame() -> np.ndarray:
    """An 8-bit frame with the range of a lit hand (dark background, palm up to ~230)."""
    y, x = np.mgrid[0:60, 0:80]
    return (15 + (x * 3 + y) % 216).astype(np.uint8)


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_sixteen_bit_images_keep_the_sensors_top_bits(tmp_path, ext):
    """A 12-bit camera's frame saved as 16-bit comes back as its top 8 bits whether the values sit
    low (0..4095) or at the top of the 16 bits, and dim or not; not nearly black (cv2's own
    16 -> 8 keeps the top byte of 16)."""
    frame = hand_frame()
    rng = np.random.default_rng(0)
    low = (frame.astype(np.uint16) << 4) | rng.integers(0, 16, frame.shape).astype(np.uint16)
    cv2.imwrite(str(tmp_path / f"low.{ext}"), low)
    cv2.imwrite(str(tmp_path / f"top.{ext}"), low << 4)
    dim = frame // 2  # brightest pixel 115: its 12-bit values need 11 bits, the sensor has 12
    cv2.imwrite(str(tmp_path / f"dim.{ext}"), dim.astype(np.uint16) << 4)
    for name, expected in (("low", frame), ("top", frame), ("dim", dim)):
        assert np.array_equal(ds.read_grey(str(tmp_path / f"{name}.{ext}")), expected), name
    assert np.array_equal(ds.read_grey(str(tmp_path / f"low.{ext}"), bit_depth=12), frame)
    # the bit depth given: a 12-bit frame read as 16-bit data is as dark as it is
    assert np.array_equal(ds.read_grey(str(tmp_path / f"low.{ext}"), bit_depth=16), frame >> 4)
    with pytest.raises(ds.UnreadableSample, match=rf"low.{ext}: a value of \d+ does not fit in --bit-depth 10 bits"):
        ds.read_grey(str(tmp_path / f"low.{ext}"), bit_depth=10)


def test_float_images_are_scaled_and_nan_is_named(tmp_path):
    frame = hand_frame()
    cv2.imwrite(str(tmp_path / "unit.tif"), frame.astype(np.float32) / 255.0)
    assert np.abs(ds.read_grey(str(tmp_path / "unit.tif")).astype(int) - frame).max() <= 1
    nan = frame.astype(np.float32)
    nan[5, 5] = np.nan
    cv2.imwrite(str(tmp_path / "nan.tif"), nan)
    with pytest.raises(ds.UnreadableSample, match="nan.tif holds NaN or infinite values"):
        ds.read_grey(str(tmp_path / "nan.tif"))


def test_a_folder_reads_its_sixteen_bit_images_with_the_bit_depth_given(tmp_path):
    cv2.imwrite(str(tmp_path / "1_1_1.png"), hand_frame().astype(np.uint16) << 2)  # 10-bit values
    pattern = r"(?P<id>\d)_(?P<session>\d)_(?P<sample>\d)\.png"
    sample = ds.scan_folder(tmp_path, pattern).samples[0]
    assert np.array_equal(sample.load((ds.IMAGE,))[ds.IMAGE], hand_frame())
    sample = ds.scan_folder(tmp_path, pattern, bit_depth=12).samples[0]
    assert np.array_equal(sample.load((ds.IMAGE,))[ds.IMAGE], hand_frame() >> 2)
