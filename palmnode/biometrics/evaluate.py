"""``palmnode eval``: accuracy of the engine on a folder of images or on rendered hands.

Three layers, so everything but the engine itself is testable with fakes:
- the *pipeline* (:class:`EnginePipeline`): one sample's frames -> a template, or a failure with a
  reason (ROI not found, quality too low, unreadable image) that counts as a failure to acquire;
- the *scorer* (:class:`MatcherScorer`): a block of probes × a block of gallery templates
  -> one float32 score matrix per modality (``surface``, ``vein``, ``fused``); a probe is a
  template or, by default, the template's probe variants (variants.py: the ROI re-cut at small
  rotations and scales), scored as the best variant (``matcher.match_probe``) for genuine and
  impostor pairs alike;
- the *protocols* (:func:`all_vs_all`, :func:`cross_session`) stream the blocks into genuine and
  impostor score arrays and one search outcome per probe, and :func:`report` turns them into the
  JSON sections with :mod:`palmnode.biometrics.metrics`.

Output: one JSON object on the last line of stdout; progress on stderr.
"""
from __future__ import annotations

import argparse
import errno
import json
import math
import os
import sys
import time
import traceback
import types
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import attrs
import numpy as np

from palmnode.cliargs import bit_depth, count, finite, non_negative
from palmnode.progress import Progress
from palmnode.biometrics import metrics
from palmnode.biometrics.dataset import (IMAGE, NIR, SURFACE, Dataset, DatasetError, Numbering, SampleKey,
                                         UnreadableSample, display_name, scan_folder, synthetic)

DEFAULT_PATTERN = r"(?P<id>[^_/]+)_(?P<session>\d+)_(?P<sample>\d+)\.\w+"
MODALITIES = ("surface", "vein", "fused")
#: score-matrix entries per block (per modality): bounds the memory of a protocol run
BLOCK_ENTRIES = 2_000_000
ROI_SIZE = 128


class EvalError(Exception):
    """A mistake a user can fix; printed as one line, exit status 1."""


# ------------------------------------------------------------------------------------ progress


@attrs.frozen(eq=False)
class Encoded:
    """A usable sample: its template, when asked for its ROI images by modality (for the sheet),
    and, for a sample used as a probe when probe variants are on, its ``variants.ProbeTemplates``."""

    template: Any
    rois: dict[str, np.ndarray] = attrs.field(factory=dict)
    probe: Any = None

    @property
    def as_probe(self) -> Any:
        """What this sample is matched as when it is the probe: its variants, else its template."""
        return self.template if self.probe is None else self.probe


@attrs.frozen
class Failed:
    """A failure to acquire: ``reason`` is a short key (``no_hand``, ``low_quality``, ``unreadable``...)."""

    reason: str
    detail: str = ""


class Pipeline(Protocol):
    """Frames -> :class:`Encoded` | :class:`Failed`. A pipeline with a true ``makes_probe_variants``
    also takes ``probe=True`` and then fills ``Encoded.probe``."""

    def __call__(self, vein_frame: np.ndarray | None, surface_frame: np.ndarray | None) -> Encoded | Failed: ...


class Scorer(Protocol):
    modalities: tuple[str, ...]

    def score_block(self, probes: Sequence[Any], gallery: Sequence[Any]) -> dict[str, np.ndarray]: ...


class EnginePipeline:
    """The real engine as one function: frames -> :class:`Encoded` | :class:`Failed`.

    Whole-hand frames: ROI from the NIR frame (the surface frame when there is none), the same ROI
    warped out of both frames, quality on the frame the ROI came from, then features. With
    ``roi_given`` the frames already are ROIs: resized to 128×128 and encoded, no ROI or quality step.
    Called with ``probe=True`` it also encodes the probe variants ``variants`` (re-cut from the frames
    with the ROI, or from the given ROIs) into ``Encoded.probe``; ``variant_seconds`` sums their time.
    """

    makes_probe_variants = True

    def __init__(self, *, roi_given: bool = False, min_quality: float | None = None,
                 variants: Sequence[Any] | None = None, policy: Any = None, limits: Any = None) -> None:
        from palmnode.biometrics import features, quality, roi, types
        from palmnode.biometrics import variants as probe_variants

        self.roi, self.quality, self.features, self.types = roi, quality, features, types
        self.probe_variants = probe_variants
        self.variants = tuple(probe_variants.VARIANTS if variants is None else variants)
        self.variant_seconds = 0.0
        self.roi_given = roi_given
        #: the gate's quality policy and ROI limits (a gate config's [quality] / [roi]: --config)
        self.policy = quality.DEFAULT_POLICY if policy is None else policy
        self.limits = roi.DEFAULT_LIMITS if limits is None else limits
        self.min_quality = min_quality

    def _accept(self, q) -> tuple[bool, str]:
        if self.min_quality is not None:
            return q.score >= self.min_quality, f"quality {q.score:.2f} below {self.min_quality:.2f}"
        return self.policy.accepts(q), (f"quality {q.score:.2f} (sharpness {q.sharpness:.2f}, exposure "
                                        f"{q.exposure:.2f}, completeness {q.completeness:.2f}) below the quality policy")

    def __call__(self, vein_frame, surface_frame, *, probe: bool = False):
        import cv2

        try:
            vein = None if vein_frame is None else self.types.check_frame(vein_frame, name="NIR image")
            surface = None if surface_frame is None else self.types.check_frame(surface_frame, name="surface image")
        except self.types.BadImage as exc:
            return Failed("bad_image", str(exc))
        if self.roi_given:
            size = (ROI_SIZE, ROI_SIZE)
            vein_roi = None if vein is None else cv2.resize(vein, size, interpolation=cv2.INTER_AREA)
            surface_roi = None if surface is None else cv2.resize(surface, size, interpolation=cv2.INTER_AREA)
        else:
            if vein is not None and surface is not None and vein.shape != surface.shape:
                return Failed("bad_image", f"NIR image is {vein.shape[1]}×{vein.shape[0]}, surface image "
                              f"{surface.shape[1]}×{surface.shape[0]}: the ROI found in one is cut from the "
                              "other, so a pair must be one camera's frames (or give --roi-given ROIs)")
            base = vein if vein is not None else surface
            found = self.roi.extract_roi(base, limits=self.limits)
            if isinstance(found, self.types.RoiFailure):
                return Failed(found.reason.value, found.detail)
            vein_roi = None if vein is None else self.roi.warp(vein, found)
            surface_roi = None if surface is None else self.roi.warp(surface, found)
            q = self.quality.assess(base, found, vein_roi if vein is not None else surface_roi,
                                    policy=self.policy, limits=self.limits)
            ok, why = self._accept(q)
            if not ok:
                return Failed("low_quality", why)
        try:
            template = self.features.encode(surface_roi, vein_roi)
        except self.types.BadImage as exc:  # too little palm texture: a failure to acquire, as at the gate
            return Failed("bad_image", str(exc))
        rois = {k: v for k, v in (("vein", vein_roi), ("surface", surface_roi)) if v is not None}
        variants = None
        if probe:
            t0 = time.perf_counter()
            if self.roi_given:
                variants = self.probe_variants.from_rois(surface_roi, vein_roi, self.variants, base=template)
            else:
                variants = self.probe_variants.from_frames(surface, vein, found, self.variants, base=template)
            self.variant_seconds += time.perf_counter() - t0
        return Encoded(template, rois, variants)


class MatcherScorer:
    """Blocks of comparisons with the engine's matcher.

    Uses, in this order, whichever the matcher offers: ``match_matrix(probes, gallery)`` (an object
    with ``surface``/``vein``/``fused`` arrays of shape P×G), ``match_many(probe, gallery)`` (the
    same with arrays of length G, one probe at a time), ``match_probe_records`` over the gallery
    packed once per block (``pack_records``: the matcher's 1:N kernels, one call per probe variant
    and modality, no Python per pair), else ``match(a, b)`` (``match_probe`` for a probe with
    variants) pair by pair. A probe is a template or a ``variants.ProbeTemplates``: then each
    score is its best variant's (the same rule for genuine and impostor pairs).
    """

    def __init__(self, modalities: tuple[str, ...], matcher: Any = None) -> None:
        if matcher is None:
            try:
                from palmnode.biometrics import matcher
            except ImportError as exc:
                raise EvalError(f"the matcher is not available yet ({exc})") from None
        self.matcher = matcher
        self.modalities = modalities

    def score_block(self, probes, gallery):
        probes, gallery = list(probes), list(gallery)
        matrix = getattr(self.matcher, "match_matrix", None)
        if matrix is not None:
            scores = matrix(probes, gallery)
            return {m: np.asarray(getattr(scores, m), dtype=np.float32).reshape(len(probes), len(gallery))
                    for m in self.modalities}
        out = {m: np.empty((len(probes), len(gallery)), dtype=np.float32) for m in self.modalities}
        many = getattr(self.matcher, "match_many", None)
        if many is None and all(hasattr(self.matcher, n) for n in ("match_probe_records", "pack_records")):
            many = _RecordsKernel(self.matcher, gallery)
        for i, p in enumerate(probes):
            if many is not None:
                row = many(p, gallery)
                for m in self.modalities:
                    out[m][i] = np.asarray(getattr(row, m), dtype=np.float32)
                continue
            one = self.matcher.match_probe if _has_variants(p) else self.matcher.match
            for j, g in enumerate(gallery):
                s = one(p, g)
                for m in self.modalities:
                    out[m][i, j] = getattr(s, m)
        return out


def _has_variants(probe: Any) -> bool:
    return hasattr(probe, "templates") and hasattr(probe, "variants")


class _RecordsKernel:
    """One probe (template or probe variants) against many templates with the matcher's own 1:N
    kernels over packed records (the gallery's layout): ``matcher.match_probe``'s numbers exactly."""

    def __init__(self, matcher: Any, gallery: Sequence[Any]) -> None:
        from palmnode.biometrics.variants import ProbeTemplates

        self.m = matcher
        self.single = ProbeTemplates.single
        self.records, self.flags = matcher.pack_records(gallery)
        self.idx = np.arange(len(gallery), dtype=np.int64)

    def __call__(self, probe: Any, _gallery: Any) -> Any:
        probe = probe if _has_variants(probe) else self.single(probe)
        s, v, f = self.m.match_probe_records(probe, self.records, self.idx, self.flags)
        return types.SimpleNamespace(surface=s, vein=v, fused=f)


# ------------------------------------------------------------------------------------ encoding


@attrs.frozen(eq=False)
class Encodings:
    """One outcome per sample (same order as ``keys``)."""

    keys: list[SampleKey]
    outcomes: list[Encoded | Failed]

    def usable(self, keep: Callable[[SampleKey], bool] = lambda k: True) -> tuple[list[SampleKey], list[Any]]:
        pairs = [(k, o.template) for k, o in zip(self.keys, self.outcomes) if isinstance(o, Encoded) and keep(k)]
        return [k for k, _ in pairs], [t for _, t in pairs]

    def probes(self, keep: Callable[[SampleKey], bool] = lambda k: True) -> tuple[list[SampleKey], list[Any]]:
        """Like :meth:`usable`, each sample as a probe: its variants where they were made."""
        pairs = [(k, o.as_probe) for k, o in zip(self.keys, self.outcomes) if isinstance(o, Encoded) and keep(k)]
        return [k for k, _ in pairs], [p for _, p in pairs]


def frames_for(modality: str, channels: tuple[str, ...]) -> tuple[tuple[str, ...], Callable]:
    """(channels to load, loaded -> (vein frame, surface frame)) for ``modality`` over a dataset's channels."""
    if channels == (IMAGE,):
        want_vein, want_surface = modality in ("vein", "both"), modality in ("surface", "both")
        return (IMAGE,), lambda f: (f[IMAGE] if want_vein else None, f[IMAGE] if want_surface else None)
    need = {"vein": (NIR,), "surface": (SURFACE,), "both": (NIR, SURFACE)}[modality]
    for c in need:
        if c not in channels:
            raise EvalError(f"--modality {modality} needs {c} images, but the pattern found only "
                            f"{', '.join(channels)} images")
    return need, lambda f: (f.get(NIR), f.get(SURFACE))


#: failures to acquire named on stderr, one line each (the JSON counts them all by reason)
MAX_FAILURES_LISTED = 50


def encode_all(dataset: Dataset, pipeline: Pipeline, modality: str, *, keep_rois: set[SampleKey] = frozenset(),
               debug_dir: Path | None = None, stream=None,
               probe_variants: Callable[[SampleKey], bool] | None = None) -> Encodings:
    """Run ``pipeline`` over every sample; an unreadable sample or a pipeline error is a :class:`Failed`.
    ``probe_variants``: the samples that are probes somewhere (their variants are encoded too)."""
    stream = sys.stderr if stream is None else stream
    channels, views = frames_for(modality, dataset.channels)
    progress = Progress("encoding", len(dataset.samples), stream=stream)
    keys, outcomes = [], []
    reported_error = False
    for sample in dataset.samples:
        try:
            loaded = sample.load(channels)
            if debug_dir is not None:
                _write_debug(debug_dir, sample.key, loaded)
            if probe_variants is not None and probe_variants(sample.key):
                outcome = pipeline(*views(loaded), probe=True)
            else:
                outcome = pipeline(*views(loaded))
        except UnreadableSample as exc:
            outcome = Failed("unreadable", str(exc))
        except EvalError:  # a debug frame that cannot be written: the run's problem, not the sample's
            raise
        except Exception as exc:  # an engine bug must not lose the whole run: count it, show it once
            if not reported_error:
                reported_error = True
                stream.write(f"engine error on {sample.key.label} (counted as a failure to acquire; "
                             f"further ones are only counted):\n{traceback.format_exc()}")
            outcome = Failed("engine_error", f"{type(exc).__name__}: {exc}")
        if isinstance(outcome, Encoded) and sample.key not in keep_rois:
            outcome = Encoded(outcome.template, probe=outcome.probe)
        keys.append(sample.key)
        outcomes.append(outcome)
        progress.update()
    progress.close()
    failed = [(k, o) for k, o in zip(keys, outcomes) if isinstance(o, Failed)]
    for key, outcome in failed[:MAX_FAILURES_LISTED]:   # which files, so a user can find them
        stream.write(f"eval: failed to acquire {key.label}: {outcome.reason}"
                     f"{': ' + outcome.detail if outcome.detail else ''}\n")
    if len(failed) > MAX_FAILURES_LISTED:
        stream.write(f"eval: ... and {len(failed) - MAX_FAILURES_LISTED} more failures to acquire\n")
    return Encodings(keys, outcomes)


def make_debug_folder(folder: Path) -> None:
    """The debug folder, 0700 whatever the umask (tightened if it exists): raw palm images go there."""
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(folder, 0o700)
    except OSError as exc:
        raise EvalError(f"cannot create the debug folder {folder}: {exc.strerror}") from None


def _write_debug(folder: Path, key: SampleKey, frames: dict[str, np.ndarray]) -> None:
    """One sample's frames as PNGs in ``folder`` (made once, before the run: :func:`run`), each
    0600 whatever the umask (a raw palm image), a file of an earlier run too."""
    import cv2

    # one flat name: a pattern's session or sample group can span folders as the subject's hand does
    stem = "_".join(part.replace("/", "_") for part in (key.subject, key.session, key.sample))
    for channel, image in frames.items():
        # written by Python: cv2.imwrite takes the path as UTF-8 text and crashes on a name that is not
        path = folder / f"{stem}_{channel}.png"
        try:
            ok, png = cv2.imencode(".png", image)
            if not ok:
                raise OSError(f"cannot encode {path}")
            # O_NOFOLLOW: a link planted at a frame's name (a folder others could write before it was
            # made 0700) would have the run overwrite whatever file it points to
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o600)   # the umask may take from 0600, an earlier run's file kept its mode
                f.write(png.tobytes())
        except OSError as exc:
            why = ("a symbolic link is in its place: remove it" if exc.errno == errno.ELOOP and os.path.islink(path)
                   else exc.strerror or exc)
            raise EvalError(f"cannot write the debug frame {display_name(str(path))}: {why}") from None


# ------------------------------------------------------------------------------------ protocols


@attrs.frozen(eq=False)
class ProtocolScores:
    """What one protocol measured, per modality: genuine/impostor scores and one search per probe."""

    genuine: dict[str, np.ndarray]
    impostor: dict[str, np.ndarray]
    searches: dict[str, metrics.SearchOutcomes]


def _block_rows(columns: int) -> int:
    return max(1, BLOCK_ENTRIES // max(1, columns))


def _labels(keys: Sequence[SampleKey]) -> np.ndarray:
    index: dict[str, int] = {}
    return np.array([index.setdefault(k.subject, len(index)) for k in keys], dtype=np.int64)


def all_vs_all(keys: Sequence[SampleKey], templates: Sequence[Any], scorer: Scorer, *, stream=None,
               probes: Sequence[Any] | None = None) -> ProtocolScores:
    """Every unordered pair of usable samples once (i < j), scored as sample i (the row: as the
    probe, ``probes[i]`` when given, e.g. its variants) against sample j's template; each sample
    also searched against all the others (its mates = the other samples of its subject)."""
    n = len(templates)
    rows_as = templates if probes is None else probes
    if len(rows_as) != n:
        raise ValueError("all_vs_all: one probe per template")
    mods = scorer.modalities
    if n == 0:
        return _empty(mods)
    lab = _labels(keys)
    own = {m: np.full(n, -np.inf) for m in mods}
    other = {m: np.full(n, -np.inf) for m in mods}
    gen: dict[str, list] = {m: [] for m in mods}
    imp: dict[str, list] = {m: [] for m in mods}
    rows = _block_rows(n)
    progress = Progress("all-vs-all", n * (n - 1) // 2, stream=stream)
    for a in range(0, n, rows):
        b = min(n, a + rows)
        block = scorer.score_block(rows_as[a:b], templates[a:])
        upper = np.arange(a, n)[None, :] > np.arange(a, b)[:, None]
        same = lab[a:b, None] == lab[None, a:]
        mated, nonmated = upper & same, upper & ~same
        for m in mods:
            s = np.asarray(block[m], dtype=np.float32)
            finite = np.isfinite(s)  # NaN: a modality one of the two templates lacks
            gen[m].append(s[mated & finite])
            imp[m].append(s[nonmated & finite])
            for mask, best in ((mated, own[m]), (nonmated, other[m])):
                masked = np.where(mask & finite, s, -np.inf)
                np.maximum(best[a:b], masked.max(axis=1), out=best[a:b])
                np.maximum(best[a:], masked.max(axis=0), out=best[a:])
        progress.update(int(upper.sum()))
    progress.close()
    has_mate = np.bincount(lab)[lab] > 1
    searches = {m: metrics.SearchOutcomes.from_arrays(np.where(has_mate, own[m], np.nan), other[m]) for m in mods}
    return ProtocolScores({m: _cat(gen[m]) for m in mods}, {m: _cat(imp[m]) for m in mods}, searches)


def cross_session(gallery_keys: Sequence[SampleKey], gallery: Sequence[Any], probe_keys: Sequence[SampleKey],
                  probes: Sequence[Any], scorer: Scorer, *, stream=None) -> ProtocolScores:
    """Each probe against every enrolled template: verification pairs, and a search whose mate is
    the probe's subject's best template (NaN when that subject is not enrolled)."""
    index: dict[str, int] = {}
    glab = np.array([index.setdefault(k.subject, len(index)) for k in gallery_keys], dtype=np.int64)
    plab = np.array([index.get(k.subject, -1) for k in probe_keys], dtype=np.int64)
    mods = scorer.modalities
    own = {m: np.full(len(probes), -np.inf) for m in mods}
    other = {m: np.full(len(probes), -np.inf) for m in mods}
    gen: dict[str, list] = {m: [] for m in mods}
    imp: dict[str, list] = {m: [] for m in mods}
    if not probes or not gallery:
        searches = {m: metrics.SearchOutcomes.from_arrays(np.full(len(probes), np.nan), np.full(len(probes), -np.inf))
                    for m in mods}
        return ProtocolScores({m: np.zeros(0, np.float32) for m in mods},
                              {m: np.zeros(0, np.float32) for m in mods}, searches)
    rows = _block_rows(len(gallery))
    progress = Progress("cross-session", len(probes) * len(gallery), stream=stream)
    for a in range(0, len(probes), rows):
        b = min(len(probes), a + rows)
        block = scorer.score_block(probes[a:b], gallery)
        same = plab[a:b, None] == glab[None, :]
        for m in mods:
            s = np.asarray(block[m], dtype=np.float32)
            finite = np.isfinite(s)
            gen[m].append(s[same & finite])
            imp[m].append(s[~same & finite])
            own[m][a:b] = np.where(same & finite, s, -np.inf).max(axis=1, initial=-np.inf)
            other[m][a:b] = np.where(~same & finite, s, -np.inf).max(axis=1, initial=-np.inf)
        progress.update((b - a) * len(gallery))
    progress.close()
    enrolled = plab >= 0
    searches = {m: metrics.SearchOutcomes.from_arrays(np.where(enrolled, own[m], np.nan), other[m]) for m in mods}
    return ProtocolScores({m: _cat(gen[m]) for m in mods}, {m: _cat(imp[m]) for m in mods}, searches)


def _empty(mods) -> ProtocolScores:
    nothing = {m: np.zeros(0, np.float32) for m in mods}
    return ProtocolScores(nothing, dict(nothing), {m: metrics.SearchOutcomes.from_arrays([], []) for m in mods})


def _cat(chunks: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


# ------------------------------------------------------------------------------------ report


def _num(x: float | None, digits: int = 6) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return round(float(x), digits)


def rate_key(target: float) -> str:
    """1e-2 -> "1e-2" (the JSON key of a target rate)."""
    mantissa, exponent = f"{target:e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def modality_report(scores: ProtocolScores, modality: str, det: dict | None = None) -> dict:
    """EER, FNMR at each FMR target, rank-1 and FNIR at FPIR for one modality's scores; when
    ``det`` is given its DET curve is stored there under the modality (the scores are sorted once)."""
    out: dict[str, Any] = {}
    gen, imp = scores.genuine[modality], scores.impostor[modality]
    if gen.size == 0 or imp.size == 0:
        missing = "genuine" if gen.size == 0 else "impostor"
        out["error"] = (f"no {missing} comparisons: " + ("every subject has one usable sample"
                        if missing == "genuine" else "the data holds only one subject"))
    else:
        s = metrics.ScoreSet.from_arrays(gen, imp)
        e = metrics.eer(s)
        out["eer"] = _num(e.rate)
        out["eer_threshold"] = _num(e.threshold)
        if det is not None:
            det[modality] = metrics.det_curve(s)
        table = {}
        for target in metrics.FMR_TARGETS:
            p = metrics.fnmr_at_fmr(s, target)
            if isinstance(p, metrics.NotSupported):
                table[rate_key(target)] = {"fnmr": None, "not_supported": p.note}
            else:
                table[rate_key(target)] = {"fnmr": _num(p.fnmr), "fmr": _num(p.fmr, 9),
                                           "threshold": _num(p.threshold, 9)}
        out["fnmr_at_fmr"] = table
    o = scores.searches[modality]
    out["rank1"] = _num(metrics.rank1_rate(o))
    ident = {}
    for target in metrics.FPIR_TARGETS:
        p = metrics.fnir_at_fpir(o, target)
        if p is None:
            ident[rate_key(target)] = {"fnir": None, "not_supported": "no mated searches"}
        elif isinstance(p, metrics.NotSupported):
            ident[rate_key(target)] = {"fnir": None, "not_supported": p.note}
        else:
            ident[rate_key(target)] = {"fnir": _num(p.fnir), "fpir": _num(p.fpir, 9),
                                       "threshold": _num(p.threshold, 9)}
    out["fnir_at_fpir"] = ident
    return out


def failure_report(keys: Sequence[SampleKey], outcomes: Sequence[Encoded | Failed],
                   enrol: Callable[[SampleKey], bool]) -> dict:
    """FTA over ``keys`` (all the protocol's samples), FTE over subjects with samples where ``enrol``."""
    failed = [o for o in outcomes if isinstance(o, Failed)]
    by_subject: dict[str, bool] = {}
    for k, o in zip(keys, outcomes):
        if enrol(k):
            by_subject[k.subject] = by_subject.get(k.subject, False) or isinstance(o, Encoded)
    fte = sum(1 for ok in by_subject.values() if not ok)
    return {
        "fta": _num(len(failed) / len(keys)) if keys else None,
        "fta_count": len(failed),
        "fte": _num(fte / len(by_subject)) if by_subject else None,
        "fte_count": fte,
        "reasons": dict(Counter(o.reason for o in failed).most_common()),
    }


def _counts(keys: Sequence[SampleKey], scores: ProtocolScores, modality: str, templates: int) -> dict:
    o = scores.searches[modality]
    return {"identities": len({k.subject for k in keys}), "images": len(keys), "templates": templates,
            "genuine": int(scores.genuine[modality].size), "impostor": int(scores.impostor[modality].size),
            "mated_searches": o.mated_searches, "nonmated_searches": o.nonmated_searches}


# ------------------------------------------------------------------------------------ options & run


@attrs.frozen
class EvalOptions:
    folder: str | None = None
    pattern: str = DEFAULT_PATTERN
    samples_per_id: int | None = None
    samples_per_session: int | None = None
    synthetic: int | None = None
    roi_given: bool = False
    bit_depth: int | None = None  # of 16-bit images; None: from each image's largest value (types.sensor_bits)
    config: str | None = None  # a gate config whose [quality] / [roi] thresholds to use
    modality: str | None = None  # vein | surface | both; None: both when the data has both lights
    protocol: str = "auto"  # auto | all_vs_all | cross_session | both
    out: str = "eval-out"
    sessions: int = 2
    captures: int = 3
    rotation: str = "upright"
    hands: str = "right"
    seed: int = 0
    min_quality: float | None = None
    debug_dir: str | None = None
    sheet: int = 48
    calibration_out: str | None = None
    probe_variants: bool = True

    @classmethod
    def from_namespace(cls, ns: argparse.Namespace) -> EvalOptions:
        names = {f.name for f in attrs.fields(cls)}
        return cls(**{k: v for k, v in vars(ns).items() if k in names})


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``palmnode eval`` options, added to ``parser`` (a subparser of the palmnode command)."""
    parser.add_argument("folder", nargs="?", help="folder of images (searched recursively)")
    parser.add_argument("--pattern", default=DEFAULT_PATTERN,
                        help="regex the file name (or path under FOLDER) must match fully; named groups: id "
                        "(required unless --samples-per-id), session, sample, hand, channel or modality (nir/surface). "
                        f"Default: {DEFAULT_PATTERN}")
    parser.add_argument("--samples-per-id", type=count, metavar="N", help="the files number their samples "
                        "without an id (Tongji: session1/00001.bmp ...): sample n of a session is palm (n-1)//N+1")
    parser.add_argument("--samples-per-session", type=count, metavar="K", help="the files carry no session: "
                        "a palm's samples 1..K are session 1, K+1..2K session 2, ... (CASIA-MS: 3)")
    parser.add_argument("--synthetic", type=count, metavar="N", help="evaluate on N rendered people instead "
                        "of a folder (rendered in memory, never written)")
    parser.add_argument("--roi-given", action="store_true", help="the images already are palm ROIs")
    parser.add_argument("--config", metavar="TOML", help="use the capture thresholds ([quality] and [roi] "
                        "tables) of this gate config instead of the engine's defaults")
    parser.add_argument("--bit-depth", type=bit_depth, metavar="BITS", help="16-bit images: the bits the camera "
                        "gives (12 for values 0..4095); their top 8 are used. Default: the fewest of 8, 10, 12, 14, 16 "
                        "that hold each image's largest value")
    parser.add_argument("--modality", choices=("vein", "surface", "both"), help="which modality to measure; "
                        "with one image per sample, what that image is (vein = NIR). Default: both when the "
                        "pattern pairs NIR and surface images or with --synthetic, else vein")
    parser.add_argument("--protocol", choices=("auto", "all_vs_all", "cross_session", "both"), default="auto",
                        help="default auto: all-vs-all, plus cross-session when there are two sessions or more")
    parser.add_argument("--out", default="eval-out", help="folder for the DET plots and the ROI contact "
                        "sheet (default eval-out)")
    parser.add_argument("--sessions", type=count, default=2, help="synthetic: sessions per palm (default 2)")
    parser.add_argument("--captures", type=count, default=3, help="synthetic: captures per session (default 3)")
    parser.add_argument("--rotation", choices=("upright", "any"), default="upright",
                        help="synthetic: hands upright (±small) or at any in-plane angle")
    parser.add_argument("--hands", choices=("left", "right", "both"), default="right",
                        help="synthetic: which palms each person presents (both = two subjects per person)")
    parser.add_argument("--seed", type=non_negative, default=0,
                        help="synthetic: seed of every identity and capture (0 or more)")
    parser.add_argument("--min-quality", type=finite, default=None,
                        help="refuse samples whose quality score is below this (default: the engine's policy)")
    parser.add_argument("--debug-dir", default=None, help="also write every loaded or rendered frame here "
                        "as PNG (raw palm images: only for debugging; the folder 0700, each file 0600)")
    parser.add_argument("--sheet", type=int, default=48, help="ROIs on the contact sheet (default 48, 0 = none)")
    parser.add_argument("--calibration-out", default=None, metavar="PATH",
                        help="also write the impostor score calibration (JSON) a gate sets its decision "
                        "threshold from: fused scores of the cross-session protocol (else all-vs-all)")
    parser.add_argument("--probe-variants", action=argparse.BooleanOptionalAction, default=True,
                        help="match each probe as its best variant: its ROI re-cut at small rotations and "
                        "scales (palmnode.biometrics.variants.VARIANTS), the same for genuine and impostor "
                        "pairs, as the gate searches (default on; --no-probe-variants: the ROI as found only)")
    return parser


def load_dataset(options: EvalOptions) -> Dataset:
    if options.synthetic is not None:
        if options.folder is not None:
            raise EvalError("give either a FOLDER or --synthetic N, not both")
        if options.roi_given:
            raise EvalError("--roi-given does not apply to --synthetic (the renderer draws whole hands)")
        for flag, value in (("--samples-per-id", options.samples_per_id),
                            ("--samples-per-session", options.samples_per_session),
                            ("--bit-depth", options.bit_depth)):
            if value is not None:
                raise EvalError(f"{flag} describes the files of a FOLDER; it does not apply to --synthetic")
        return synthetic(options.synthetic, sessions=options.sessions, captures=options.captures,
                         rotation=options.rotation, hands=options.hands, seed=options.seed)
    if options.folder is None:
        raise EvalError("give a FOLDER of images (with --pattern) or --synthetic N")
    return scan_folder(options.folder, options.pattern, Numbering(options.samples_per_id, options.samples_per_session),
                       options.bit_depth)


def capture_thresholds(options: EvalOptions) -> tuple[Any, Any]:
    """(quality policy, ROI limits) of ``--config``; (None, None): the engine's defaults."""
    if options.config is None:
        return None, None
    if options.roi_given:
        raise EvalError("--config's thresholds do not apply to --roi-given (no ROI or quality step)")
    from palmnode import config

    try:
        return config.capture_thresholds(options.config)
    except config.ConfigError as exc:
        raise EvalError(str(exc)) from None


def choose_modality(options: EvalOptions, dataset: Dataset) -> str:
    if options.modality is not None:
        return options.modality
    return "both" if dataset.channels != (IMAGE,) and len(dataset.channels) == 2 else \
        "surface" if dataset.channels == (SURFACE,) else "vein"


def scored_modalities(modality: str) -> tuple[str, ...]:
    return MODALITIES if modality == "both" else (modality,)


def sheet_keys(keys: Sequence[SampleKey], tiles: int) -> set[SampleKey]:
    """Up to ``tiles`` samples for the contact sheet: all sessions of the first few subjects."""
    if tiles <= 0:
        return set()
    subjects = sorted({k.subject for k in keys})
    per = max(2, tiles // max(1, min(8, len(subjects))))
    chosen: list[SampleKey] = []
    taken: Counter[str] = Counter()
    for k in sorted(keys):
        if len(chosen) >= tiles:
            break
        if taken[k.subject] < per:
            taken[k.subject] += 1
            chosen.append(k)
    return set(chosen)


def run(options: EvalOptions, *, pipeline: Pipeline | None = None, scorer: Scorer | None = None,
        stream=None) -> dict:
    """The whole evaluation; returns the JSON report (plots are written to ``options.out``)."""
    from palmnode import stopsignals
    from palmnode.biometrics import det_plot

    stream = sys.stderr if stream is None else stream
    started = time.monotonic()
    dataset = load_dataset(options)
    modality = choose_modality(options, dataset)
    mods = scored_modalities(modality)
    sessions = dataset.sessions
    protocol = options.protocol
    if protocol == "cross_session" and len(sessions) < 2:
        raise EvalError(f"cross-session needs two sessions, the data has one ({sessions[0]}); "
                        "add a session group to --pattern")
    run_avsa = protocol in ("auto", "all_vs_all", "both")
    run_cross = protocol in ("cross_session", "both") or (protocol == "auto" and len(sessions) >= 2)
    frames_for(modality, dataset.channels)  # refuse a modality the data lacks before any work
    out = Path(options.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EvalError(f"cannot create the output folder {out}: {exc.strerror}") from None
    debug_dir = Path(options.debug_dir) if options.debug_dir else None
    if debug_dir is not None:
        make_debug_folder(debug_dir)
    policy, limits = capture_thresholds(options)
    if pipeline is None:
        pipeline = EnginePipeline(roi_given=options.roi_given, min_quality=options.min_quality,
                                  policy=policy, limits=limits)
    first = sessions[0]
    with_variants = options.probe_variants and bool(getattr(pipeline, "makes_probe_variants", False))
    # probes: every sample in all-vs-all (the row side), the later sessions' in cross-session
    is_probe = (lambda k: True) if run_avsa else (lambda k: k.session != first)
    scorer = scorer if scorer is not None else MatcherScorer(mods)
    stream.write(f"eval: {len(dataset.samples)} samples of {len(dataset.subjects)} palms, sessions "
                 f"{', '.join(sessions)}, modality {modality} ({dataset.source})\n")
    keys_all = [s.key for s in dataset.samples]
    wanted_rois = sheet_keys(keys_all, options.sheet)
    enc = encode_all(dataset, pipeline, modality, keep_rois=wanted_rois,
                     debug_dir=debug_dir, stream=stream,
                     probe_variants=is_probe if with_variants else None)
    stopsignals.check()  # a Ctrl-C or SIGTERM C code swallowed: stop between the stages, before any plot
    report: dict[str, Any] = {
        "dataset": {"source": dataset.source, "samples": len(dataset.samples), "palms": len(dataset.subjects),
                    "sessions": sessions, "channels": list(dataset.channels), "modality": modality,
                    "roi_given": options.roi_given, "skipped_files": dataset.skipped_files,
                    "capture_thresholds": options.config or "engine defaults"},
    }
    stages = {"encode": round(time.monotonic() - started, 2)}
    report["probe_variants"] = _variants_report(pipeline, enc) if with_variants else None
    plots: dict[str, str] = {}
    curves_by_protocol = {}
    if run_avsa:
        keys, templates = enc.usable()
        scores = all_vs_all(keys, templates, scorer, stream=stream, probes=enc.probes()[1])
        curves_by_protocol["all_vs_all"] = {}
        report["all_vs_all"] = _section(enc.keys, enc.outcomes, lambda k: True, keys, scores, mods,
                                        curves_by_protocol["all_vs_all"])
        calibration_scores = scores.impostor[mods[-1]], scores.impostor.get("vein") if mods[-1] == "fused" else None
        del scores
        stages["all_vs_all"] = round(time.monotonic() - started - sum(stages.values()), 2)
        stopsignals.check()
    if run_cross:
        gkeys, gallery = enc.usable(lambda k: k.session == first)
        pkeys, probes = enc.probes(lambda k: k.session != first)
        t_scoring = time.monotonic()
        scores = cross_session(gkeys, gallery, pkeys, probes, scorer, stream=stream)
        stages["cross_session_scoring"] = round(time.monotonic() - t_scoring, 2)
        probe_side = [(k, o) for k, o in zip(enc.keys, enc.outcomes) if k.session != first]
        curves_by_protocol["cross_session"] = {}
        section = _section([k for k, _ in probe_side], [o for _, o in probe_side], lambda k: False,
                           pkeys, scores, mods, curves_by_protocol["cross_session"])
        calibration_scores = scores.impostor[mods[-1]], scores.impostor.get("vein") if mods[-1] == "fused" else None
        del scores
        enrol_side = [(k, o) for k, o in zip(enc.keys, enc.outcomes) if k.session == first]
        enrol_fail = failure_report([k for k, _ in enrol_side], [o for _, o in enrol_side], lambda k: True)
        section["failures"]["fte"] = enrol_fail["fte"]
        section["failures"]["fte_count"] = enrol_fail["fte_count"]
        section["failures"]["enrol_fta"] = enrol_fail["fta"]
        section["enrol_session"] = first
        section["probe_sessions"] = sessions[1:]
        section["counts"]["gallery_templates"] = len(gallery)
        report["cross_session"] = section
    elif protocol == "auto":
        report["cross_session"] = {"skipped": f"one session ({sessions[0]}): cross-session needs two"}
    stopsignals.check()
    for name, det in curves_by_protocol.items():
        curves = {}
        for m, curve in det.items():
            eer = report[name]["modalities"][m].get("eer")
            curves[m if eer is None else f"{m} (EER {100 * eer:.3g}%)"] = curve
        if curves:
            path = out / f"det_{name}.png"
            plots[f"det_{name}"] = _write_plot(det_plot.write_det, path, curves,
                                               title=f"DET, {name.replace('_', '-')} ({dataset.source})")
    if wanted_rois:
        tiles = [(k.label, o) for k, o in zip(enc.keys, enc.outcomes) if k in wanted_rois]
        path = out / "roi_contact_sheet.png"
        plots["roi_contact_sheet"] = _write_plot(det_plot.write_contact_sheet, path, [
            (label, o.rois if isinstance(o, Encoded) else o.reason) for label, o in tiles])
    report["plots"] = plots
    if options.calibration_out:
        report["calibration"] = write_calibration(Path(options.calibration_out), calibration_scores[0], mods[-1],
                                                 vein=calibration_scores[1])
    report["seconds"] = round(time.monotonic() - started, 2)
    report["seconds_by_stage"] = stages
    return report


def _write_plot(write: Callable[..., Any], path: Path, *args: Any, **kwargs: Any) -> str:
    """``write(path, ...)``; a folder that cannot be written is a one-line :class:`EvalError`."""
    try:
        write(path, *args, **kwargs)
    except OSError as exc:
        raise EvalError(f"cannot write the plot {path}: {exc.strerror or exc}") from None
    return str(path)


def _variants_report(pipeline: Any, enc: Encodings) -> dict:
    """The probe variants in use, how many each probe kept, and what encoding them cost."""
    made = [o.probe for o in enc.outcomes if isinstance(o, Encoded) and o.probe is not None]
    kept = Counter(len(p.templates) for p in made)
    seconds = getattr(pipeline, "variant_seconds", None)
    return {
        "variants": [[v.angle_deg, v.scale] for v in getattr(pipeline, "variants", ())],
        "probes": len(made),
        "templates_per_probe": {str(n): c for n, c in sorted(kept.items())},
        "encode_ms_per_probe": _num(1e3 * seconds / len(made), 3) if made and seconds is not None else None,
    }


CALIBRATION_KEEP = 20_000  # impostor tail kept: FMR down from ~1e-3 at a few million impostors


def write_calibration(path: Path, impostor: np.ndarray, modality: str, vein: np.ndarray | None = None) -> dict:
    """Save the impostor tail a gate turns into its decision threshold (``matcher.Calibration``),
    and, given the vein similarity's impostor scores (both modalities measured), the vein tail its
    vein check's floor comes from (IdentifyPolicy.vein_floor)."""
    from palmnode.biometrics.matcher import Calibration

    if impostor.size == 0:
        raise EvalError("no impostor scores to calibrate from: evaluate at least two palms")
    cal = Calibration.from_impostors(impostor, keep=CALIBRATION_KEEP)
    if vein is not None:
        cal = attrs.evolve(cal, vein=Calibration.from_impostors(vein, keep=CALIBRATION_KEEP))
    from palmnode.private_files import replace_file

    try:  # whole or not at all (a Ctrl-C or a full disk mid-way left a truncated calibration)
        replace_file(path, cal.to_json().encode(), 0o644)
    except OSError as exc:
        raise EvalError(f"cannot write the calibration {path}: {exc.strerror}") from None
    return {"path": str(path), "modality": modality, "impostors": cal.n, "min_fmr": cal.min_fmr,
            "vein_impostors": None if cal.vein is None else cal.vein.n}


def _section(keys, outcomes, enrol, usable_keys, scores: ProtocolScores, mods, det: dict) -> dict:
    return {
        "counts": _counts(keys, scores, mods[0], len(usable_keys)),
        "failures": failure_report(keys, outcomes, enrol),
        "modalities": {m: modality_report(scores, m, det) for m in mods},
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="palmnode eval", description=DESCRIPTION)
    return add_arguments(parser)


DESCRIPTION = ("Measure accuracy on a folder of palm images (identity, session and sample from a file-name "
               "regex) or on rendered hands (--synthetic N): all-vs-all and cross-session protocols, EER, "
               "FNMR at FMR 1e-2..1e-6 as far as the impostor pairs allow, rank-1, FNIR at FPIR 1e-2, FTA/FTE, "
               "per modality and fused. One JSON object on the last line of stdout; a DET plot and an ROI "
               "contact sheet in --out. See docs/eval.md.")


def main(args: argparse.Namespace | EvalOptions | Sequence[str] | None = None, *,
         pipeline: Pipeline | None = None, scorer: Scorer | None = None) -> int:
    """``palmnode eval``: parsed arguments (from :func:`add_arguments`), options, or an argv list."""
    if isinstance(args, EvalOptions):
        options = args
    elif isinstance(args, argparse.Namespace):
        options = EvalOptions.from_namespace(args)
    else:
        options = EvalOptions.from_namespace(build_parser().parse_args(args))
    try:
        report = run(options, pipeline=pipeline, scorer=scorer)
    except (EvalError, DatasetError) as exc:
        print(f"palmnode eval: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the plots and calibration are each whole or absent (det_plot._write_png)
        from palmnode import stopsignals

        return stopsignals.interrupted("eval")
    from palmnode import stopsignals

    if stopsignals.noted() in stopsignals.STOP_SIGNALS:  # one that reached no KeyboardInterrupt: stopsignals.interrupt
        return stopsignals.interrupted("eval")
    print(json.dumps(report, allow_nan=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
