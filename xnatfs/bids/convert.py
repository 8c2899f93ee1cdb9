"""Converting a DICOM series to NIfTI with dcm2niix, outputs kept in the content cache.

This module blocks (it runs a subprocess and does disk I/O); the file system
calls it from a worker thread, never on the event loop.

Converter
    The ``dcm2niix`` binary of the pinned PyPI wheel (``dcm2niix.bin``), whose
    version :func:`converter_version` reads from ``dcm2niix -v``; it is part
    of every conversion's key, so a new converter never serves old outputs.

Input: :class:`Series`
    The series' files as the content cache holds them: one
    :class:`SeriesFile` (name in the resource, :class:`CacheKey`) per DICOM
    file, the keys being those the file system gives any server file
    (server + file URI, listed size, listed MD5). :meth:`Series.from_listing`
    builds it from a resource listing. The caller makes sure the files are in
    the cache (the series zip) or passes ``open_file`` to fetch them; the
    converter never reads the FUSE mount.

Output: :class:`Conversion`
    ``images``: one :class:`ConvertedImage` per NIfTI dcm2niix wrote (most
    series give one; a localizer of three planes gives three, a multi-echo
    series one per echo), each with its uncompressed ``.nii``, its ``.json``
    sidecar and, for diffusion, ``.bval`` and ``.bvec``. Every
    :class:`ConvertedFile` has its exact size and is open (pinned) in the
    cache, to be read with ``file.entry.pread``; close the conversion when
    done. NIfTI is written uncompressed (``.nii``): conversion is faster,
    the bytes are the same on every run, and readers can seek in it.

Keys and the cache
    A conversion's key (:meth:`Converter.conversion_key`) is derived from the
    sizes and MD5s of the series' files (their order and names do not
    matter), the converter's version and ``rule``, an opaque string the
    caller chooses (the BIDS mapping rule, say). Under it the cache holds a
    manifest of fixed size (:data:`MANIFEST_BYTES`, JSON padded with spaces)
    naming each output's size and MD5; each output is an entry of its own,
    ``<manifest URI>/<file name>``. Because the manifest's size is known
    before the conversion runs, the manifest is filled through
    :meth:`ContentCache.fetch`, whose machinery makes a conversion run once:
    callers in one process share one fill, other processes sharing the
    cache folder wait on its lock file and then find the manifest, and a
    failed fill leaves nothing (outputs already stored are dropped again).
    An output evicted since its manifest was written makes the next caller
    convert again.

Failures
    A non-zero exit, a crash, a timeout (:attr:`Converter.timeout`) or no
    NIfTI written raise :class:`xnatfs.errors.XnatConversionError`, logged
    once (a warning with the series and the converter's last message) by the
    thread that ran the conversion; every caller waiting for it gets the
    same error. A failure is not remembered: the next call tries again, so
    the caller keeps its own list of series that failed (for ``bids-check``).
    At most ``max_parallel`` conversions run at once in a :class:`Converter`;
    building one runs ``dcm2niix -v`` once per binary and process, and
    raises XnatConversionError when the binary cannot run.

Server conversions
    :func:`find_server_conversion` recognises files XNAT already converted
    for a scan (a ``NIFTI`` or ``BIDS`` resource holding ``.nii``/``.nii.gz``
    with ``.json`` sidecars, and ``.bval``/``.bvec``), which the view serves
    as ordinary server files, under the cache keys it gives any server file,
    instead of converting.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import dcm2niix

from xnatfs.cache.content import CachedFile, CacheKey, ContentCache
from xnatfs.client.models import RemoteFile
from xnatfs.errors import XnatConversionError

logger = logging.getLogger(__name__)

CONVERTER_NAME = "dcm2niix"
DEFAULT_TIMEOUT = 300.0
DEFAULT_MAX_PARALLEL = 2
# Fixed, so the manifest's cache key is known before the conversion runs.
MANIFEST_BYTES = 16384
MANIFEST_FORMAT = 1
# Where manifests and outputs live in the cache's key space (never a server URI).
KEY_SCHEME = "xnatfs-convert:"
# dcm2niix names every output "<OUTPUT_STEM><suffix>.<extension>".
OUTPUT_STEM = "series"
_EXTENSIONS = (".nii", ".json", ".bval", ".bvec")
_VERSION = re.compile(r"\bv(\d+\.\d+\.\d+\w*)")
# How much of the converter's output a failure's log line and message keep.
_MESSAGE_CHARS = 300


@functools.cache
def converter_version(binary: str = dcm2niix.bin) -> str:
    """The version ``binary`` reports, e.g. ``"v1.0.20260724"``."""
    try:
        done = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise XnatConversionError(f"cannot run {binary}: {exc}") from exc
    found = _VERSION.findall(done.stdout + done.stderr)
    if not found:
        raise XnatConversionError(f"{binary} -v reported no version")
    return "v" + found[-1]


@dataclass(frozen=True)
class SeriesFile:
    """One DICOM file of a series: its path in the resource and its cache key."""

    name: str
    key: CacheKey


@dataclass(frozen=True)
class Series:
    """A series to convert: ``uri`` names it in messages (the scan resource)."""

    uri: str
    files: tuple[SeriesFile, ...]

    @classmethod
    def from_listing(
        cls, resource_uri: str, files: Iterable[RemoteFile], key_for: Callable[[RemoteFile], CacheKey]
    ) -> Series:
        """The series of a resource listing, with the keys the caller caches files under."""
        return cls(resource_uri, tuple(SeriesFile(f.path, key_for(f)) for f in files))


@dataclass(frozen=True)
class ConvertedFile:
    """One output file, open (pinned) in the cache; ``name`` is dcm2niix's
    (``series.nii``, ``series_i00004.json``, ...)."""

    name: str
    size: int
    key: CacheKey
    entry: CachedFile


@dataclass(frozen=True)
class ConvertedImage:
    """One NIfTI with its companions. ``suffix`` is what dcm2niix added to
    the stem: "" for a series' only image, ``_i00004`` for one plane of a
    localizer, ``_e2`` for a second echo, ``_ph`` for phase, ..."""

    suffix: str
    nifti: ConvertedFile
    sidecar: ConvertedFile | None
    bval: ConvertedFile | None
    bvec: ConvertedFile | None

    @property
    def files(self) -> tuple[ConvertedFile, ...]:
        return tuple(f for f in (self.nifti, self.sidecar, self.bval, self.bvec) if f is not None)


@dataclass(frozen=True)
class Conversion:
    """The outputs of one series under one rule; close it when done."""

    key: CacheKey
    converter: str  # e.g. "dcm2niix v1.0.20260724"
    rule: str
    images: tuple[ConvertedImage, ...]

    def files(self) -> tuple[ConvertedFile, ...]:
        return tuple(f for image in self.images for f in image.files)

    def close(self) -> None:
        for converted in self.files():
            converted.entry.close()

    def __enter__(self) -> Conversion:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class Converter:
    """Runs dcm2niix on series held by ``cache`` and keeps the outputs there.

    Safe to share between threads. ``max_parallel`` bounds the conversions
    running at once in this object; ``timeout`` (seconds) bounds each one;
    ``scratch_dir`` is where the series is laid out and converted (the
    system's temporary folder by default).
    """

    def __init__(
        self,
        cache: ContentCache,
        *,
        binary: str = dcm2niix.bin,
        max_parallel: int = DEFAULT_MAX_PARALLEL,
        timeout: float = DEFAULT_TIMEOUT,
        scratch_dir: Path | str | None = None,
    ):
        if max_parallel < 1:
            raise ValueError(f"max_parallel must be at least 1, got {max_parallel}")
        self.cache = cache
        self.binary = binary
        self.timeout = timeout
        self.scratch_dir = scratch_dir
        self.version = converter_version(binary)
        self.converter = f"{CONVERTER_NAME} {self.version}"
        self._slots = threading.BoundedSemaphore(max_parallel)

    def conversion_key(self, series: Series, rule: str) -> CacheKey:
        """The cache key of the series' manifest under ``rule``."""
        contents = sorted(f"{f.key.size}:{f.key.digest.lower() or f.key.uri}" for f in series.files)
        identity = json.dumps([self.converter, rule, contents]).encode()
        return CacheKey(KEY_SCHEME + hashlib.sha256(identity).hexdigest(), MANIFEST_BYTES)

    def cached(self, series: Series, rule: str) -> Conversion | None:
        """The conversion if the cache holds it whole, without converting or downloading."""
        key = self.conversion_key(series, rule)
        manifest = self.cache.lookup(key)
        if manifest is None:
            return None
        with manifest:
            return self._open_outputs(key, rule, manifest)

    def convert(
        self, series: Series, rule: str, open_file: Callable[[SeriesFile], CachedFile] | None = None
    ) -> Conversion:
        """The series converted: from the cache, or by running dcm2niix once
        however many callers ask at once.

        ``open_file`` returns a file of the series open in the cache
        (fetching it if need be); by default a file must already be cached.
        Raises XnatConversionError when the series cannot be converted.
        """
        if not series.files:
            raise XnatConversionError("the series has no files", url=series.uri)
        key = self.conversion_key(series, rule)
        opener = open_file or self._cached_file
        for _attempt in range(2):
            manifest = self.cache.fetch(key, lambda out: self._fill_manifest(series, key, opener, out))
            with manifest:
                found = self._open_outputs(key, rule, manifest)
            if found is not None:
                return found
            # An output was evicted after its manifest was written: convert again.
            self.cache.discard_uri(key.uri)
        raise XnatConversionError("the cache keeps dropping this series' outputs", url=series.uri)

    def header(self, file: CachedFile, *, name: str = "") -> dict:
        """The sidecar fields dcm2niix reads from one DICOM file (``-b o``: no image
        is written), as a dcm2bids config's criteria see them."""
        with tempfile.TemporaryDirectory(prefix="xnatfs-header-", dir=self.scratch_dir) as scratch:
            source = Path(scratch) / "dicom"
            target = Path(scratch) / "out"
            source.mkdir()
            target.mkdir()
            os.symlink(file.path, source / "000000.dcm")
            series = Series(name or str(file.path), ())
            with self._slots:
                self._run_converter(series, source, target, "o")
            sidecars = sorted(target.glob("*.json"))
            if not sidecars:
                raise self._failure(series, "dcm2niix read no DICOM header", _tail(_listing(target)))
            try:
                return json.loads(sidecars[0].read_text(encoding="utf-8", errors="replace"))
            except ValueError as exc:
                raise self._failure(series, f"dcm2niix wrote an unreadable sidecar: {exc}", "") from None

    # -- converting ---------------------------------------------------------

    def _cached_file(self, file: SeriesFile) -> CachedFile:
        entry = self.cache.lookup(file.key)
        if entry is None:
            raise XnatConversionError(f"{file.name} is not in the cache", url=file.key.uri)
        return entry

    def _fill_manifest(self, series: Series, key: CacheKey, opener: Callable[[SeriesFile], CachedFile], out) -> None:
        """Convert, store every output, then write the manifest to ``out``
        (the cache's fill of the manifest entry, which keeps it only if this returns)."""
        stored: list[CacheKey] = []
        try:
            with tempfile.TemporaryDirectory(prefix="xnatfs-convert-", dir=self.scratch_dir) as scratch:
                outputs = self._run(series, opener, Path(scratch))
                records = []
                for path in outputs:
                    data = path.read_bytes()
                    output_key = CacheKey(
                        f"{key.uri}/{path.name}", len(data), hashlib.md5(data, usedforsecurity=False).hexdigest()
                    )
                    stored.append(output_key)
                    # The bytes are in hand and hashed: adopted as they are, no second read or MD5.
                    entry = self.cache.insert_bytes(output_key, data, checked=True)
                    if entry is not None:
                        entry.close()
                    records.append({"name": path.name, "size": output_key.size, "md5": output_key.digest})
            out.write(_manifest_bytes(self.converter, records, series.uri))
            logger.debug("converted %s (%d files): %d outputs", series.uri, len(series.files), len(records))
        except BaseException:
            for output_key in stored:
                self.cache.discard_uri(output_key.uri)
            raise

    def _run(self, series: Series, opener: Callable[[SeriesFile], CachedFile], scratch: Path) -> list[Path]:
        source = scratch / "dicom"
        target = scratch / "out"
        source.mkdir()
        target.mkdir()
        entries = []
        try:
            for index, file in enumerate(series.files):
                entry = opener(file)
                entries.append(entry)
                # Pinned entries stay put while open, so a link to them is safe to read.
                os.symlink(entry.path, source / f"{index:06d}.dcm")
            with self._slots:
                self._run_converter(series, source, target)
        finally:
            for entry in entries:
                entry.close()
        outputs = sorted(p for p in target.iterdir() if p.suffix in _EXTENSIONS and p.is_file())
        if not any(p.suffix == ".nii" for p in outputs):
            raise self._failure(series, "dcm2niix wrote no NIfTI", _tail(_listing(target)))
        return outputs

    def _run_converter(self, series: Series, source: Path, target: Path, sidecars: str = "y") -> None:
        command = [
            self.binary,
            "-z",
            "n",
            "-b",
            sidecars,
            "-ba",
            "y",
            "-i",
            "n",
            "-f",
            OUTPUT_STEM,
            "-o",
            str(target),
            str(source),
        ]
        try:
            # A session of its own, so that a timeout kills whatever the converter started too
            # (a child still holding the output pipe would keep us waiting).
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                start_new_session=True,
            )
        except OSError as exc:
            raise self._failure(series, f"cannot run dcm2niix: {exc}", "") from None
        with process:
            try:
                output, _ = process.communicate(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                output, _ = process.communicate()
                raise self._failure(series, f"dcm2niix took longer than {self.timeout:g} s", output) from None
        if process.returncode != 0:
            how = (
                f"dcm2niix was killed by signal {-process.returncode}"
                if process.returncode < 0
                else f"dcm2niix exited with status {process.returncode}"
            )
            raise self._failure(series, how, output)

    def _failure(self, series: Series, what: str, output: str) -> XnatConversionError:
        detail = _tail(output)
        message = f"{what}: {detail}" if detail else what
        logger.warning("cannot convert %s (%d files): %s", series.uri, len(series.files), message)
        return XnatConversionError(message, url=series.uri)

    # -- reading back -------------------------------------------------------

    def _open_outputs(self, key: CacheKey, rule: str, manifest: CachedFile) -> Conversion | None:
        """Every output the manifest names, open; None if one is missing."""
        records = _read_manifest(manifest, key)
        opened: dict[str, ConvertedFile] = {}
        for record in records:
            output_key = CacheKey(f"{key.uri}/{record['name']}", record["size"], record["md5"])
            entry = self.cache.lookup(output_key)
            if entry is None:
                for converted in opened.values():
                    converted.entry.close()
                return None
            opened[record["name"]] = ConvertedFile(record["name"], record["size"], output_key, entry)
        return Conversion(key, self.converter, rule, _group_images(opened))


def _manifest_bytes(converter: str, records: list[dict], series_uri: str) -> bytes:
    text = json.dumps(
        {"format": MANIFEST_FORMAT, "converter": converter, "outputs": records}, separators=(",", ":")
    ).encode()
    if len(text) > MANIFEST_BYTES:
        raise XnatConversionError(f"dcm2niix wrote too many files ({len(records)})", url=series_uri)
    return text + b" " * (MANIFEST_BYTES - len(text))


def _read_manifest(manifest: CachedFile, key: CacheKey) -> list[dict]:
    try:
        content = json.loads(manifest.pread(0, MANIFEST_BYTES))
        if content["format"] != MANIFEST_FORMAT:
            raise ValueError(f"format {content['format']}")
        return [{"name": str(r["name"]), "size": int(r["size"]), "md5": str(r["md5"])} for r in content["outputs"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise XnatConversionError(f"unreadable conversion manifest: {exc}", url=key.uri) from exc


def _group_images(files: Mapping[str, ConvertedFile]) -> tuple[ConvertedImage, ...]:
    images = []
    for name, nifti in sorted(files.items()):
        stem, extension = os.path.splitext(name)
        if extension != ".nii":
            continue
        images.append(
            ConvertedImage(
                suffix=stem[len(OUTPUT_STEM) :],
                nifti=nifti,
                sidecar=files.get(stem + ".json"),
                bval=files.get(stem + ".bval"),
                bvec=files.get(stem + ".bvec"),
            )
        )
    return tuple(images)


def _tail(output: str) -> str:
    """The converter's last meaningful line(s), short enough for one log line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return " | ".join(lines[-2:])[-_MESSAGE_CHARS:]


def _listing(folder: Path) -> str:
    names = sorted(p.name for p in folder.iterdir())
    return f"output folder holds {names}" if names else ""


# -- conversions the server already holds ----------------------------------

# Resource labels XNAT's converters write, in order of preference.
SERVER_CONVERSION_LABELS = ("NIFTI", "BIDS")


@dataclass(frozen=True)
class ServerImage:
    """A NIfTI the server holds, with its sidecar and (diffusion) bval/bvec."""

    stem: str  # the name without extension, as listed in the resource
    nifti: RemoteFile
    sidecar: RemoteFile
    bval: RemoteFile | None
    bvec: RemoteFile | None

    @property
    def files(self) -> tuple[RemoteFile, ...]:
        return tuple(f for f in (self.nifti, self.sidecar, self.bval, self.bvec) if f is not None)


@dataclass(frozen=True)
class ServerConversion:
    """The images of one server resource that can stand in for converting the scan.

    ``source`` says so in an xattr: ``"server NIFTI resource"``. Each file is
    served as any server file is, under the cache key the file system gives it.
    """

    resource_label: str
    images: tuple[ServerImage, ...]

    @property
    def source(self) -> str:
        return f"server {self.resource_label} resource"


def find_server_conversion(resources: Mapping[str, Sequence[RemoteFile]]) -> ServerConversion | None:
    """The converted images a scan's resources already hold, or None.

    ``resources`` maps a resource label to its file listing (only the
    labels of :data:`SERVER_CONVERSION_LABELS` are looked at, case aside;
    the first that qualifies wins). An image qualifies with a NIfTI
    (``.nii.gz`` preferred to ``.nii`` of the same name) and its ``.json``;
    ``.bval`` and ``.bvec`` are taken when both are there, and a NIfTI with
    only one of them is left out (a diffusion image without its gradients
    would mislead).
    """
    by_label = {label.upper(): files for label, files in resources.items()}
    for label in SERVER_CONVERSION_LABELS:
        images = _server_images(by_label.get(label, ()))
        if images:
            return ServerConversion(label, images)
    return None


def _server_images(files: Sequence[RemoteFile]) -> tuple[ServerImage, ...]:
    by_stem: dict[str, dict[str, RemoteFile]] = {}
    for remote in files:
        name = remote.path
        for extension in (".nii.gz", ".nii", ".json", ".bval", ".bvec"):
            if name.lower().endswith(extension):
                by_stem.setdefault(name[: -len(extension)], {})[extension] = remote
                break
    images = []
    for stem, parts in sorted(by_stem.items()):
        nifti = parts.get(".nii.gz") or parts.get(".nii")
        sidecar = parts.get(".json")
        if nifti is None or sidecar is None or (".bval" in parts) != (".bvec" in parts):
            continue
        images.append(ServerImage(stem, nifti, sidecar, parts.get(".bval"), parts.get(".bvec")))
    return tuple(images)


__all__ = [
    "CONVERTER_NAME",
    "MANIFEST_BYTES",
    "SERVER_CONVERSION_LABELS",
    "Conversion",
    "ConvertedFile",
    "ConvertedImage",
    "Converter",
    "Series",
    "SeriesFile",
    "ServerConversion",
    "ServerImage",
    "XnatConversionError",
    "converter_version",
    "find_server_conversion",
]
