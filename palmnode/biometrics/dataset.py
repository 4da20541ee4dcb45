"""What ``palmnode eval`` measures on: a folder of images named by a regex, or rendered hands.

A *sample* is one presentation of one palm: a single image, or a pair of images of the same pose
under the two lights (``nir`` shows veins, ``surface`` shows lines). A *subject* is one palm: the
``id`` group, plus the ``hand`` group when there is one (a left and a right palm are different
biometric identities). Images are loaded (or rendered) only when a sample is encoded, one at a
time, so a dataset of any size costs almost no memory and rendered hands never touch the disk.
"""
from __future__ import annotations

import inspect
import os
import re
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

import attrs
import numpy as np

from palmnode.biometrics.types import MAX_FRAME_PIXELS, BadImage, check_frame, sixteen_to_8bit

#: the two lit channels of a sample: NIR light (the vein modality) and surface light (the line modality)
NIR, SURFACE = "nir", "surface"
#: the one channel of a folder without a channel/modality group; ``--modality`` says what it is
IMAGE = "image"

#: accepted spellings of a ``channel`` / ``modality`` group value
CHANNEL_NAMES = {
    **{v: NIR for v in ("nir", "ir", "infrared", "vein", "veins", "850", "940", "850nm", "940nm")},
    **{v: SURFACE for v in ("surface", "white", "wht", "vis", "visible", "rgb", "colour", "color", "line",
                            "lines", "print", "palmprint")},
}
_HANDS = {"l": "left", "left": "left", "r": "right", "right": "right"}
_KNOWN_GROUPS = {"id", "session", "sample", "hand", "channel", "modality"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm", ".ppm", ".webp", ".jp2"}
#: a file larger is refused unread: more than the engine's largest frame takes in any format OpenCV
#: decodes, uncompressed (4 channels of 8 bytes a pixel), plus room for metadata; a file is read
#: whole before it is decoded, so a video or disk image named like a sample would take its size in memory
MAX_FILE_BYTES = 32 * MAX_FRAME_PIXELS + (16 << 20)


class DatasetError(ValueError):
    """The dataset cannot be used at all; the message names the problem and the fix in one line."""


class UnreadableSample(Exception):
    """One sample cannot be loaded (counted as a failure to acquire, with this message as reason)."""


@attrs.frozen(order=True)
class SampleKey:
    subject: str
    session: str
    sample: str

    @property
    def label(self) -> str:
        return f"{display_name(self.subject)} s{display_name(self.session)} #{display_name(self.sample)}"


@attrs.frozen(eq=False)
class Sample:
    """One presentation of one palm; ``load(channels)`` returns {channel: 8-bit grey image}."""

    key: SampleKey
    loader: Callable[[tuple[str, ...]], dict[str, np.ndarray]]
    files: tuple[str, ...] = ()

    def load(self, channels: tuple[str, ...]) -> dict[str, np.ndarray]:
        return self.loader(channels)


@attrs.frozen(eq=False)
class Dataset:
    samples: tuple[Sample, ...]
    #: (``nir``, ``surface``) for paired data, (``image``,) for one image per sample
    channels: tuple[str, ...]
    source: str
    skipped_files: int = 0

    @property
    def subjects(self) -> list[str]:
        return sorted({s.key.subject for s in self.samples})

    @property
    def sessions(self) -> list[str]:
        return sort_sessions({s.key.session for s in self.samples})


def sort_sessions(values: Iterable[str]) -> list[str]:
    """Sessions in natural order: numerically when they are numbers, else as text."""
    return sorted(values, key=lambda v: (0, int(v), v) if v.isdigit() else (1, 0, v))


# ------------------------------------------------------------------------------------ folder


@attrs.frozen
class Numbering:
    """How a dataset numbers what its file names leave out (``palmnode eval`` options; both count
    from the pattern's numeric ``sample`` group, 1 first).

    ``samples_per_id`` N: the files carry no id, only a running number within their session
    (Tongji: ``session1/00001.bmp`` … ``06000.bmp``, 10 per palm): number n is palm (n−1)//N + 1,
    sample (n−1)%N + 1. ``samples_per_session`` K: the files carry no session, the first K samples
    of a palm are session 1, the next K session 2, … (CASIA-MS: samples 01–03, then 04–06).
    """

    samples_per_id: int | None = None
    samples_per_session: int | None = None

    def check(self, rx: re.Pattern[str]) -> None:
        for option, value, group in (("--samples-per-id", self.samples_per_id, "id"),
                                     ("--samples-per-session", self.samples_per_session, "session")):
            if value is None:
                continue
            if value < 1:
                raise DatasetError(f"{option} must be at least 1, got {value}")
            if group in rx.groupindex:
                raise DatasetError(f"{option} derives the {group} from the sample number: drop the "
                                   f"(?P<{group}>...) group from --pattern")
            if "sample" not in rx.groupindex:
                raise DatasetError(f"{option} needs a (?P<sample>\\d+) group in --pattern: the number it counts from")

    def apply(self, groups: dict[str, str], rel: str) -> dict[str, str]:
        """The groups with the id / session derived from the sample number."""
        if self.samples_per_id is None and self.samples_per_session is None:
            return groups
        text = groups.get("sample", "")
        if not text.isdigit() or int(text) < 1:
            raise DatasetError(f"{display_name(rel)}: sample {text!r} is not a number from 1 (needed to derive the "
                               f"{'id' if self.samples_per_id else 'session'})")
        n, out = int(text) - 1, dict(groups)
        if self.samples_per_id is not None:
            out["id"] = str(n // self.samples_per_id + 1)
            n %= self.samples_per_id
        if self.samples_per_session is not None:
            out["session"] = str(n // self.samples_per_session + 1)
            n %= self.samples_per_session
        out["sample"] = str(n + 1)
        return out


def compile_pattern(pattern: str, numbering: Numbering = Numbering()) -> re.Pattern[str]:
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise DatasetError(f"--pattern {pattern!r} is not a valid regular expression: {exc}") from None
    if "id" not in rx.groupindex and numbering.samples_per_id is None:
        raise DatasetError(f"--pattern {pattern!r} has no (?P<id>...) group: name the part of the file "
                           "name that tells whose palm it is (or number palms with --samples-per-id)")
    if "channel" in rx.groupindex and "modality" in rx.groupindex:
        raise DatasetError("--pattern has both a channel and a modality group: keep one")
    numbering.check(rx)
    return rx


def display_name(name: str) -> str:
    """A file name as one line of printable text: bytes that are not UTF-8 escaped (``caf\\xe9.png``),
    and control characters (``a\\nb.png``: a newline in a name split a message over two lines)."""
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def read_grey(path: str, bit_depth: int | None = None) -> np.ndarray:
    """``path`` as an 8-bit grey array, or :class:`UnreadableSample` naming the file.

    16-bit images (machine-vision NIR cameras save 10/12/14-bit data so) keep the top 8 of
    ``bit_depth`` bits; ``bit_depth`` None: of the sensor depth its largest value suggests
    (:func:`~palmnode.biometrics.types.sixteen_to_8bit`). Float images in 0..1 or 0..255 are scaled."""
    import cv2

    name = display_name(os.path.basename(path))
    # read by Python, decoded by OpenCV: cv2.imread takes the path as UTF-8 text and crashes on a
    # name that is not UTF-8; and a FIFO or device named like a sample would block the run
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise UnreadableSample(f"{name}: not a regular file")
        if info.st_size > MAX_FILE_BYTES:
            raise UnreadableSample(f"{name}: {info.st_size} bytes, more than an image of the {MAX_FRAME_PIXELS} "
                                   f"pixels the engine accepts can take (not read)")
        data = np.fromfile(path, np.uint8)
    except OSError as exc:
        raise UnreadableSample(f"{name}: cannot be read ({exc.strerror or exc})") from None
    try:
        image = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH) if data.size else None
    except cv2.error as exc:  # cv2 returns None for most bad files, and raises for a few
        if "CV_IO_MAX_IMAGE_PIXELS" in str(exc):
            raise UnreadableSample(f"{name}: larger than the {MAX_FRAME_PIXELS} pixels the engine "
                                   f"accepts (not decoded)") from None
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise UnreadableSample(f"{name}: cannot be read as an image ({reason})") from None
    if image is None:
        raise UnreadableSample(f"{name}: cannot be read as an image")
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16 and bit_depth is not None:
        if (top := int(image.max())) >> bit_depth:
            raise UnreadableSample(f"{name}: a value of {top} does not fit in --bit-depth {bit_depth} bits")
        return sixteen_to_8bit(image, bit_depth)
    try:
        return check_frame(image, name=name)
    except BadImage as exc:
        raise UnreadableSample(str(exc)) from None


def _folder_loader(files: dict[str, str], bit_depth: int | None) -> Callable[[tuple[str, ...]], dict[str, np.ndarray]]:
    def load(channels: tuple[str, ...]) -> dict[str, np.ndarray]:
        out = {}
        for channel in channels:
            if channel not in files:
                raise UnreadableSample(f"missing {channel} image (have only {', '.join(sorted(files))})")
            out[channel] = read_grey(files[channel], bit_depth)
        return out
    return load


def _list_files(root: Path) -> list[str]:
    """Relative paths of the files under ``root``, sorted, hidden ones left out; linked folders
    are followed (a dataset's sessions often are links), each real folder once (no link loops).
    A folder that cannot be listed is a :class:`DatasetError` (its images would be left out unseen)."""
    found = []
    seen: set[str] = set()
    for folder, dirs, names in os.walk(root, followlinks=True, onerror=_unlistable):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if not name.startswith("."):
                found.append(os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/"))
    return found


def _unlistable(exc: OSError) -> None:
    raise DatasetError(f"{display_name(str(exc.filename))}: the folder cannot be listed ({exc.strerror or exc}), "
                       "so its images would be left out: make it readable or move it out of the dataset")


def scan_folder(folder: str | os.PathLike, pattern: str, numbering: Numbering = Numbering(),
                bit_depth: int | None = None) -> Dataset:
    """Every file under ``folder`` whose relative path (or bare file name) matches ``pattern`` fully;
    16-bit images are read with ``bit_depth`` (:func:`read_grey`).

    Groups: ``id`` (required unless ``numbering`` derives it), ``session`` (default "1"),
    ``sample`` (default: the file's order within its subject and session), ``hand``
    (l/left/r/right; part of the subject), and one of ``channel`` / ``modality`` (values in
    :data:`CHANNEL_NAMES`) to pair NIR and surface images of one sample.
    """
    rx = compile_pattern(pattern, numbering)
    root = Path(folder)
    if not root.exists():
        raise DatasetError(f"{root}: no such folder")
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder: pass the folder holding the images")
    files = _list_files(root)
    if not files:
        raise DatasetError(f"{root} is empty: no image files to evaluate")
    channel_group = "channel" if "channel" in rx.groupindex else "modality" if "modality" in rx.groupindex else None
    grouped: dict[tuple[str, str, str | None], dict[str, str]] = {}
    order: dict[tuple[str, str], int] = {}
    skipped = 0
    for rel in files:
        match = rx.fullmatch(rel) or rx.fullmatch(rel.rsplit("/", 1)[-1])
        if match is None:
            skipped += 1
            continue
        g = numbering.apply({k: v for k, v in match.groupdict().items() if v is not None}, rel)
        if not g.get("id"):
            raise DatasetError(f"{display_name(rel)}: the id group matched nothing; make it match at least one character")
        subject = g["id"]
        if "hand" in g:
            subject = f"{subject}/{_HANDS.get(g['hand'].lower(), g['hand'])}"
        session = g.get("session", "1")
        if channel_group is None:
            channel = IMAGE
        else:
            value = g.get(channel_group, "")
            channel = CHANNEL_NAMES.get(value.lower())
            if channel is None:
                raise DatasetError(f"{display_name(rel)}: {channel_group} {value!r} is neither NIR nor surface "
                                   f"(use one of {', '.join(sorted(CHANNEL_NAMES))})")
        sample = g.get("sample")
        if sample is None:  # order within (subject, session, channel) pairs the channels up
            n = order.get((subject, session, channel), 0)
            order[(subject, session, channel)] = n + 1
            sample = str(n + 1)
        slot = grouped.setdefault((subject, session, sample), {})
        if channel in slot:
            raise DatasetError(f"{display_name(os.path.relpath(slot[channel], root))} and {display_name(rel)} are the same "
                               f"sample ({display_name(subject)} session {display_name(session)} sample {display_name(sample)} "
                               f"{channel}); add a sample group to --pattern")
        slot[channel] = str(root / rel)
    if not grouped:
        raise DatasetError(f"none of the {len(files)} files in {root} matches --pattern {pattern!r} "
                           f"(first file: {display_name(files[0])}); the pattern must match the whole file name")
    samples = tuple(
        Sample(key=SampleKey(subject, session, sample), loader=_folder_loader(chan, bit_depth), files=tuple(chan.values()))
        for (subject, session, sample), chan in sorted(grouped.items(), key=lambda kv: _natural(kv[0])))
    channels = (IMAGE,) if channel_group is None else tuple(
        c for c in (NIR, SURFACE) if any(c in slot for slot in grouped.values()))
    return Dataset(samples=samples, channels=channels, source=str(root), skipped_files=skipped)


def _natural(key: tuple[str, ...]) -> tuple:
    return tuple((0, int(p), p) if p.isdigit() else (1, 0, p) for p in key)


# ------------------------------------------------------------------------------------ synthetic


def synthetic(n: int, *, sessions: int = 2, captures: int = 3, rotation: str = "upright",
              hands: str = "right", seed: int = 0) -> Dataset:
    """``n`` rendered people (one or both palms each), ``sessions`` × ``captures`` samples per palm.

    Rendering happens inside ``Sample.load``: nothing is kept or written. Deterministic per seed.
    """
    if n < 1:
        raise DatasetError(f"--synthetic needs at least 1 identity, got {n}")
    if sessions < 1 or captures < 1:
        raise DatasetError("--sessions and --captures must be at least 1")
    if rotation not in ("upright", "any"):
        raise DatasetError(f"--rotation must be upright or any, got {rotation!r}")
    hand_list = {"left": ("left",), "right": ("right",), "both": ("left", "right")}.get(hands)
    if hand_list is None:
        raise DatasetError(f"--hands must be left, right or both, got {hands!r}")
    try:
        from palmnode.biometrics import synth
    except ImportError as exc:
        raise DatasetError(f"the synthetic hand renderer is not available ({exc})") from None
    samples = []
    for person in range(n):
        for h, hand in enumerate(hand_list):
            for session in range(1, sessions + 1):
                for capture in range(1, captures + 1):
                    entropy = (seed, person, h, session, capture)
                    samples.append(Sample(
                        key=SampleKey(f"{person:05d}/{hand}", str(session), str(capture)),
                        loader=_render_loader(synth, seed, person, hand, session, rotation, entropy)))
    return Dataset(samples=tuple(samples), channels=(NIR, SURFACE),
                   source=f"synthetic: {n} people, hands {hands}, {sessions} sessions × {captures} "
                          f"captures, rotation {rotation}, seed {seed}")


def identity_seed(seed: int, person: int) -> int:
    """Seed of person ``person`` in run ``seed`` (both palms of a person share it)."""
    return (seed * 1_000_003 + person) & 0x7FFF_FFFF


def _render_loader(synth, seed, person, hand, session, rotation, entropy):
    def load(channels: tuple[str, ...]) -> dict[str, np.ndarray]:
        identity = synth.Identity.from_seed(identity_seed(seed, person), hand)
        capture = _sample_capture(synth, np.random.default_rng(entropy), session, rotation)
        nir, surface = synth.render_pair(identity, capture)
        return {c: {NIR: nir, SURFACE: surface, IMAGE: nir}[c] for c in channels}
    return load


def _sample_capture(synth, rng, session: int, rotation: str):
    """``synth.sample_capture`` with the rotation option under whichever name the renderer takes."""
    params = inspect.signature(synth.sample_capture).parameters
    kwargs: dict = {"session": session}
    if "rotation" in params:
        kwargs["rotation"] = rotation
    elif "any_rotation" in params:
        kwargs["any_rotation"] = rotation == "any"
    elif "upright" in params:
        kwargs["upright"] = rotation == "upright"
    return synth.sample_capture(rng, **kwargs)
