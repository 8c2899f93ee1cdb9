"""The ``BIDS/`` folder of every project: a read-only BIDS dataset, converted on demand.

The names come from :mod:`xnatfs.bids` (labels, rules, plans, dataset
files); this module turns them into kinds of folders and files of the tree
(:mod:`xnatfs.fs.nodes`) and does the I/O they need.

What costs what:

- ``BIDS/``, ``sub-*/`` and ``ses-*/`` are built from the listings the mount
  has anyway (subjects, experiments, a session's structure and its file
  listing): nothing is converted, no file is downloaded. A rule that needs a
  DICOM field the listing lacks reads the header of one file of that series
  (dcm2niix ``-b o`` on it), once per listing.
- A datatype folder (``anat/``, ``func/``, ...) is listed by converting that
  session's series of that datatype: each series is fetched into the content
  cache as one zip (:class:`~xnatfs.fs.series.SeriesFetcher`), then
  :class:`~xnatfs.bids.convert.Converter` runs dcm2niix in a worker thread
  (a bounded number at a time; a conversion done before, by this mount or
  another sharing the cache, is found in the cache). Every size is exact
  before anything is read. A scan whose server holds a ``NIFTI``/``BIDS``
  resource is served from it instead.
- The first datatype folder of a session listed starts all of the
  session's series the plan names (that folder's first), so a walk finds
  the next folders converted or under way; each outcome is kept for its
  folder's listing, which takes it as if it had converted then.
- The deadline of a request (:mod:`xnatfs.fs.deadlines`) counts a
  conversion in progress as progress: the request waits for it, each
  conversion being bounded by the converter's own timeout and each download
  by the HTTP timeouts; a caller killed meanwhile is let go at once. The
  conversions run in the mount's background nursery, so a listing given up
  still leaves them to finish for the next.
- A series that cannot be converted is left out of the listing with one log
  line and kept in :attr:`BidsView.failures`, which ``xnatfs bids-check``
  shows beside the scans the plan left out.

Sidecars are the converter's JSON with the plan's changes (``TaskName``,
``IntendedFor``, a config's ``sidecar_changes``) applied, held in memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, TypeAlias, cast

import trio

from xnatfs import __version__
from xnatfs.bids import dataset
from xnatfs.bids.convert import Converter, Series, SeriesFile, ServerConversion, find_server_conversion
from xnatfs.bids.labels import session_labels, subject_labels
from xnatfs.bids.outcome import Reason
from xnatfs.bids.plan import BidsTarget, LeftOut, SessionPlan, plan_session
from xnatfs.bids.rules import RuleSet
from xnatfs.cache.content import CachedFile, CacheKey, ContentCache
from xnatfs.client import paths
from xnatfs.client.budget import current_budget
from xnatfs.client.contract import ArchiveClient
from xnatfs.client.models import Experiment, ExperimentContents, Project, RemoteFile, Scan, Subject
from xnatfs.errors import XnatConversionError, XnatError, XnatNotFound
from xnatfs.fs.deadlines import bounded
from xnatfs.fs.keys import ExperimentContentsKey, ExperimentFilesKey, ExperimentsKey, ListingKey, SubjectsKey
from xnatfs.fs.nodes import DirNode, FileNode, Listing, ListingContext, Node, ProjectDir
from xnatfs.fs.reading import HotFiles, ReadHandle
from xnatfs.fs.series import SeriesFetcher

if TYPE_CHECKING:
    from xnatfs.fs.operations import XnatOperations
    from xnatfs.fs.tree import Tree

logger = logging.getLogger(__name__)

# A converted image: (NIfTI key, sidecar bytes, bval key, bvec key).
ConvertedImage: TypeAlias = tuple[CacheKey, bytes | None, CacheKey | None, CacheKey | None]

NIFTI = ".nii"
DICOM_LABEL = "DICOM"
# How many sessions' conversions started ahead wait for their folders' listings (an older one is dropped).
AHEAD_SESSIONS = 8
# Series converted ahead whose folder no listing waits for yet: at most this many fetched or converted at once.
AHEAD_AT_ONCE = 8
# How often a request waiting for conversions is told that they still run.
PROGRESS_SECONDS = 1.0
# Names the bytes of a file made in memory, for the kernel's page-cache bookkeeping (never a server URI).
MEMORY_KEY_SCHEME = "xnatfs-bids-memory:"
_ECHO = re.compile(r"_e(\d+)$")
READ_ONLY_WHY = "the BIDS view is read-only"


@dataclass(frozen=True)
class LeftOutSeries:
    """A scan not in the view, for ``bids-check``."""

    session: str  # the session folder, "sub-…/ses-…"
    scan_id: str
    description: str
    reason: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {
            "session": self.session,
            "scan": self.scan_id,
            "description": self.description,
            "reason": self.reason,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class ConversionSource:
    """What a converted file comes from, to convert it again if the cache let it go."""

    series: Series
    rule: str
    files: tuple[RemoteFile, ...]


class BidsView:
    """What the view's folders and files use: the converter, the cache, the server.

    One per mount; ``nursery`` is set when the mount starts serving
    (conversions run there); ``rules`` is the rule set (built-in or a
    dcm2bids config).
    """

    def __init__(
        self,
        connection: ArchiveClient,
        cache: ContentCache,
        converter: Converter,
        rules: RuleSet,
        *,
        series: SeriesFetcher,
        key_for: Callable[[RemoteFile], CacheKey],
        server_url: str,
        max_parallel: int = 2,
    ):
        self.connection = connection
        self.cache = cache
        self.converter = converter
        self.rules = rules
        self.series = series
        self.key_for = key_for
        self.server_url = server_url
        self.nursery: trio.Nursery | None = None
        self.limiter = trio.CapacityLimiter(max_parallel + 1)
        # (project, scan URI) → why its conversion failed, until it succeeds
        self.failures: dict[tuple[str, str], LeftOutSeries] = {}
        self._flights: dict[tuple[Hashable, ...], _Flight] = {}
        # (experiment ID, id of its file listing) → its conversions started ahead, oldest first
        self._ahead: OrderedDict[tuple[str, int], _SessionAhead] = OrderedDict()
        # Series no listing waits for yet, fetched and converted at once (each zip holds a worker thread).
        self._ahead_turns = trio.Semaphore(AHEAD_AT_ONCE)

    def folder(self, project: ProjectDir) -> BidsRootDir:
        return BidsRootDir(mtime=project.mtime, read_only=True, project=project.project, view=self)

    # ---- planning ---------------------------------------------------------

    async def plan(
        self, subject: str, session: str, contents: ExperimentContents, files: Sequence[RemoteFile]
    ) -> SessionPlan:
        """The session's plan; a rule wanting a DICOM field reads one header (in a worker thread)."""
        by_resource = _by_resource(files)

        def header(scan: Scan) -> Mapping[str, Any]:
            dicom = _dicom_files(scan, by_resource)
            if not dicom:
                raise XnatConversionError("the scan has no DICOM files", url=scan.uri)
            first = min(dicom, key=lambda remote: remote.path)
            with self._open_server_file(first) as entry:
                return self.converter.header(entry, name=first.uri)

        def planned() -> SessionPlan:
            plan = plan_session(subject, session, contents.scans, self.rules, header_lookup=header, extension=NIFTI)
            return _with_sources_only(plan, by_resource)

        session_plan: SessionPlan = await self._wait(
            ("plan", id(contents), id(files), subject, session), planned, thread=True
        )
        return session_plan

    # ---- converting -------------------------------------------------------

    async def datatype_files(
        self, plan: SessionPlan, datatype: str, files: Sequence[RemoteFile], parent: BidsDatatypeDir
    ) -> dict[str, Node]:
        """The files of one datatype folder, converting what is not converted yet."""
        by_resource = _by_resource(files)

        async def build() -> dict[str, Node]:
            found: dict[str, Node] = {}
            project = parent.session.experiment.project
            ahead = self._converting_ahead(plan, datatype, files, by_resource, parent)

            async def one(target: BidsTarget) -> None:
                failure_key = (project, target.scan.uri or f"{plan.folder}/{target.scan.id}")
                flight = ahead.take(target) if ahead is not None else None
                try:
                    if flight is None:
                        found.update(await self._target_files(plan, target, by_resource, parent.mtime))
                    else:
                        found.update(await flight.result())
                except XnatError as exc:
                    self._failed(plan, target, exc, failure_key)
                else:
                    self.failures.pop(failure_key, None)

            async with trio.open_nursery() as nursery:
                for target in plan.targets_of(datatype):
                    nursery.start_soon(one, target)
            return dict(sorted(found.items()))

        # Keyed by the listing, not the plan object: every caller listing the folder meanwhile shares one build.
        built: dict[str, Node] = await self._wait(
            ("files", parent.session.experiment.id, datatype, id(files)), build, thread=False
        )
        return built

    def _converting_ahead(
        self,
        plan: SessionPlan,
        datatype: str,
        files: Sequence[RemoteFile],
        by_resource: Mapping[str, Sequence[RemoteFile]],
        parent: BidsDatatypeDir,
    ) -> _SessionAhead | None:
        """The session's conversions, all started at the first listing of one of its datatype folders.

        A walk lists the other datatype folders next: their series are then
        fetched and converted while this one is listed, :data:`AHEAD_AT_ONCE`
        at a time until a listing wants one (dcm2niix keeps its own bound).
        The folder listed now goes first; each outcome waits, errors included,
        for its own folder's listing, which reports it as it would have
        converting it then. Kept for :data:`AHEAD_SESSIONS` sessions.
        """
        if self.nursery is None:
            return None
        key = (parent.session.experiment.id, id(files))
        ahead = self._ahead.get(key)
        if ahead is not None:
            return ahead
        for older in [k for k in self._ahead if k[0] == key[0]]:
            del self._ahead[older]
        while len(self._ahead) >= AHEAD_SESSIONS:
            self._ahead.popitem(last=False)
        ahead = self._ahead[key] = _SessionAhead(files)
        datatypes = plan.datatypes()
        index = datatypes.index(datatype) if datatype in datatypes else 0
        # Every datatype folder of a session has the session's modification time.
        mtime = parent.mtime
        for name in datatypes[index:] + datatypes[:index]:
            for target in plan.targets_of(name):
                flight = ahead.flights[_SessionAhead.key_of(target)] = _Flight()

                async def convert(target: BidsTarget = target, flight: _Flight = flight) -> dict[str, Node]:
                    holds_turn = await self._ahead_turn(flight.wanted)
                    try:
                        return await self._target_files(plan, target, by_resource, mtime)
                    finally:
                        if holds_turn:
                            self._ahead_turns.release()

                self.nursery.start_soon(self._run, "conversion ahead", flight, convert, False)
        logger.debug("BIDS view: converting %d series of %s ahead", len(ahead.flights), plan.folder)
        return ahead

    async def _ahead_turn(self, wanted: trio.Event) -> bool:
        """Wait until one of :data:`AHEAD_AT_ONCE` turns is free, or until a listing wants the
        conversion now; True when a turn is held (to be released)."""
        holds_turn = False
        async with trio.open_nursery() as race:

            async def take_turn() -> None:
                nonlocal holds_turn
                await self._ahead_turns.acquire()
                holds_turn = True
                race.cancel_scope.cancel()

            async def asked_for() -> None:
                await wanted.wait()
                race.cancel_scope.cancel()

            race.start_soon(take_turn)
            race.start_soon(asked_for)
        return holds_turn

    def _failed(self, plan: SessionPlan, target: BidsTarget, exc: XnatError, failure_key: tuple[str, str]) -> None:
        scan = target.scan
        if not isinstance(exc, XnatConversionError):
            # The converter logs its own failures; anything else gets its one line here.
            logger.warning("BIDS view: scan %s of %s left out: %s", scan.id, plan.folder, exc)
        self.failures[failure_key] = LeftOutSeries(
            plan.folder, scan.id, scan.series_description or scan.type, "conversion-failed", str(exc)
        )

    async def _target_files(
        self,
        plan: SessionPlan,
        target: BidsTarget,
        by_resource: Mapping[str, Sequence[RemoteFile]],
        mtime: float,
    ) -> dict[str, Node]:
        scan = target.scan
        server = find_server_conversion({r.label: by_resource.get(r.uri, ()) for r in scan.resources})
        if server is not None:
            return await self._server_files(target, server, mtime)
        dicom = _dicom_files(scan, by_resource)
        if not dicom:
            raise XnatNotFound("the scan has no DICOM files", url=scan.uri)
        resource_uri = dicom[0].resource_uri
        if self.nursery is not None:
            await self.series.fetch_whole(self.nursery, resource_uri, dicom)
        source = ConversionSource(Series.from_listing(resource_uri, dicom, self.key_for), target.rule, tuple(dicom))
        images = await trio.to_thread.run_sync(
            self._convert_blocking, source, target.sidecar_changes, limiter=self.limiter
        )
        origin = _origin(target, self.converter.converter)
        found: dict[str, Node] = {}
        for stem, image in _named_images(target, images, plan):
            nifti_key, sidecar, bval, bvec = image
            found[stem + NIFTI] = BidsConvertedFile(
                mtime=mtime, read_only=True, key=nifti_key, source=source, view=self, origin=origin
            )
            if sidecar is not None:
                found[stem + ".json"] = BidsBytesFile(mtime=mtime, read_only=True, data=sidecar, origin=origin)
            for extension, key in ((".bval", bval), (".bvec", bvec)):
                if key is not None:
                    found[stem + extension] = BidsConvertedFile(
                        mtime=mtime, read_only=True, key=key, source=source, view=self, origin=origin
                    )
        return found

    def _convert_blocking(
        self, source: ConversionSource, changes: Mapping[str, Any]
    ) -> list[tuple[str, ConvertedImage]]:
        """``(dcm2niix suffix, (nifti key, sidecar bytes, bval key, bvec key))`` per image."""
        by_key = {self.key_for(remote): remote for remote in source.files}

        def open_file(file: SeriesFile) -> CachedFile:
            remote = by_key[file.key]
            return self.cache.fetch(file.key, self._download(remote))

        with self.converter.convert(source.series, source.rule, open_file) as conversion:
            images: list[tuple[str, ConvertedImage]] = []
            for image in conversion.images:
                sidecar = None
                if image.sidecar is not None:
                    sidecar = _changed_sidecar(image.sidecar.entry.pread(0, image.sidecar.size), changes)
                images.append(
                    (
                        image.suffix,
                        (
                            image.nifti.key,
                            sidecar,
                            image.bval.key if image.bval is not None else None,
                            image.bvec.key if image.bvec is not None else None,
                        ),
                    )
                )
            return images

    async def reconverted(self, source: ConversionSource) -> None:
        """Convert again (an output was evicted from the cache since it was listed)."""
        await self._wait(
            ("again", source.series.uri, source.rule), lambda: self._convert_blocking(source, {}), thread=True
        )

    async def _server_files(self, target: BidsTarget, server: ServerConversion, mtime: float) -> dict[str, Node]:
        image = server.images[0]
        origin = _origin(target, server.source)
        nifti_extension = ".nii.gz" if image.nifti.path.lower().endswith(".nii.gz") else NIFTI
        stem = target.stem
        found: dict[str, Node] = {
            stem + nifti_extension: BidsServerFile(mtime=mtime, read_only=True, file=image.nifti, origin=origin)
        }
        for extension, remote in ((".bval", image.bval), (".bvec", image.bvec)):
            if remote is not None:
                found[stem + extension] = BidsServerFile(mtime=mtime, read_only=True, file=remote, origin=origin)
        if target.sidecar_changes:

            def changed() -> bytes:
                with self._open_server_file(image.sidecar) as entry:
                    return _changed_sidecar(entry.pread(0, image.sidecar.size), target.sidecar_changes)

            data = await trio.to_thread.run_sync(changed, limiter=self.limiter)
            found[stem + ".json"] = BidsBytesFile(mtime=mtime, read_only=True, data=data, origin=origin)
        else:
            found[stem + ".json"] = BidsServerFile(mtime=mtime, read_only=True, file=image.sidecar, origin=origin)
        return found

    def _open_server_file(self, remote: RemoteFile) -> CachedFile:
        """A server file open in the content cache, downloaded if need be (blocks)."""
        return self.cache.fetch(self.key_for(remote), self._download(remote))

    def _download(self, remote: RemoteFile) -> Callable[[BinaryIO], None]:
        """What writes ``remote``'s bytes into a content cache entry."""

        def download(out: BinaryIO) -> None:
            self.connection.download(remote.uri, out)

        return download

    # ---- waiting ----------------------------------------------------------

    async def _wait(self, key: tuple[Hashable, ...], work: Callable[[], Any], *, thread: bool) -> Any:
        """``work`` run once for every caller asking for ``key`` at the same time.

        It runs in the mount's nursery, so a caller given up does not stop
        it; while it runs, the caller's request budget is kept from running
        out: work in progress is progress (each piece of it has its own bound).
        """
        flight = self._flights.get(key)
        if flight is None:
            flight = self._flights[key] = _Flight()
            if self.nursery is None:
                await self._run_shared(key, flight, work, thread)
            else:
                self.nursery.start_soon(self._run_shared, key, flight, work, thread)
        budget = current_budget()
        # Progress is told more often than the budget could run out; the wait
        # itself is bounded only so that a caller killed meanwhile is let go.
        interval = PROGRESS_SECONDS if budget is None else min(PROGRESS_SECONDS, budget.seconds / 2)
        while not flight.done.is_set():
            if budget is not None:
                budget.progress()
            with trio.move_on_after(interval):
                await bounded(flight.done.wait())
        if flight.error is not None:
            raise flight.error
        return flight.value

    async def _run_shared(
        self, key: tuple[Hashable, ...], flight: _Flight, work: Callable[[], Any], thread: bool
    ) -> None:
        try:
            await self._run(str(key[0]), flight, work, thread)
        finally:
            del self._flights[key]

    async def _run(self, what: str, flight: _Flight, work: Callable[[], Any], thread: bool) -> None:
        try:
            if thread:
                flight.value = await trio.to_thread.run_sync(work, limiter=self.limiter)
            else:
                flight.value = await work()
        except XnatError as exc:
            flight.error = exc
        except Exception as exc:
            logger.exception("BIDS view: %s failed", what)
            flight.error = XnatConversionError(f"{type(exc).__name__}: {exc}")
        finally:
            flight.done.set()

    # ---- bids-check -------------------------------------------------------

    async def check(self, tree: Tree, root: BidsRootDir) -> dict[str, list[dict[str, str]]]:
        """Every scan of the project's sessions not in the view, and why; conversions that failed."""
        left_out: list[LeftOutSeries] = []
        for subject in (await tree.children(root)).entries.values():
            if not isinstance(subject, BidsSubjectDir):
                continue
            for session in (await tree.children(subject)).entries.values():
                if not isinstance(session, BidsSessionDir):
                    continue
                contents, files = [await tree.raw(key) for key in session.listing_keys()]
                # A session's listing keys are its contents and its files, in this order.
                plan = await self.plan(
                    session.subject_label,
                    session.session_label,
                    cast(ExperimentContents, contents),
                    cast(list[RemoteFile], files),
                )
                left_out += [
                    LeftOutSeries(
                        plan.folder,
                        entry.scan.id,
                        entry.scan.series_description or entry.scan.type,
                        str(entry.reason),
                        entry.detail,
                    )
                    for entry in plan.left_out
                ]
        failed = [failure for (project, _), failure in sorted(self.failures.items()) if project == root.project.id]
        return {"left_out": [entry.as_dict() for entry in left_out], "failed": [entry.as_dict() for entry in failed]}


class _Flight:
    __slots__ = ("done", "error", "value", "wanted")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.value: Any = None
        self.error: XnatError | None = None
        # Set once a listing waits for it: work started ahead then goes without waiting for a turn.
        self.wanted = trio.Event()

    async def result(self) -> Any:
        await self.done.wait()
        if self.error is not None:
            raise self.error
        return self.value


class _SessionAhead:
    """One session's conversions started together, each kept until its folder's listing takes it.

    ``files`` is the file listing they were planned from, held so that its
    ``id`` (part of the key) names it alone while this lives.
    """

    __slots__ = ("files", "flights")

    def __init__(self, files: Sequence[RemoteFile]):
        self.files = files
        self.flights: dict[tuple[str, str, str, str], _Flight] = {}

    @staticmethod
    def key_of(target: BidsTarget) -> tuple[str, str, str, str]:
        return (target.scan.uri or target.scan.id, target.rule, target.datatype, target.stem)

    def take(self, target: BidsTarget) -> _Flight | None:
        """The conversion started ahead for ``target``, once, now wanted; None if there is none (left)."""
        flight = self.flights.pop(self.key_of(target), None)
        if flight is not None:
            flight.wanted.set()
        return flight


def _by_resource(files: Sequence[RemoteFile]) -> dict[str, list[RemoteFile]]:
    grouped: dict[str, list[RemoteFile]] = defaultdict(list)
    for remote in files:
        grouped[remote.resource_uri].append(remote)
    return grouped


def _with_sources_only(plan: SessionPlan, by_resource: Mapping[str, Sequence[RemoteFile]]) -> SessionPlan:
    """The plan with targets that have nothing to convert or serve left out (``no-files``),
    so no datatype folder is shown that could only be empty."""
    entries = []
    for entry in plan.entries:
        if isinstance(entry, BidsTarget):
            scan = entry.scan
            has_server = find_server_conversion({r.label: by_resource.get(r.uri, ()) for r in scan.resources})
            if has_server is None and not _dicom_files(scan, by_resource):
                entry = LeftOut(
                    scan, Reason.NO_FILES, "no DICOM files and no NIFTI or BIDS resource", entry.rule, entry.header_used
                )
        entries.append(entry)
    return SessionPlan(plan.subject, plan.session, tuple(entries))


def _dicom_files(scan: Scan, by_resource: Mapping[str, Sequence[RemoteFile]]) -> list[RemoteFile]:
    """The files of the scan's DICOM resource (else of its first resource labelled like DICOM)."""
    for resource in scan.resources:
        if resource.label.upper() == DICOM_LABEL:
            return list(by_resource.get(resource.uri, ()))
    for resource in scan.resources:
        if "DICOM" in resource.label.upper() or resource.format.upper() == "DICOM":
            return list(by_resource.get(resource.uri, ()))
    return []


def _changed_sidecar(data: bytes, changes: Mapping[str, Any]) -> bytes:
    if not changes:
        return data
    try:
        sidecar = json.loads(data)
    except ValueError as exc:
        raise XnatConversionError(f"unreadable sidecar: {exc}") from None
    sidecar.update(changes)
    return (json.dumps(sidecar, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _origin(target: BidsTarget, converter: str) -> tuple[tuple[str, str], ...]:
    scan = target.scan
    return (("uri", scan.uri), ("converter", converter), ("rule", target.rule))


def _named_images(
    target: BidsTarget, images: list[tuple[str, ConvertedImage]], plan: SessionPlan
) -> list[tuple[str, ConvertedImage]]:
    """``(stem, image)`` for the images a series gave: one image takes the planned
    name; echoes (dcm2niix ``_eN``) get ``echo-N``; of anything else the first is shown."""
    if len(images) == 1:
        return [(target.stem, images[0][1])]
    echoes = [(_ECHO.search(suffix), image) for suffix, image in images]
    matched = [(found, image) for found, image in echoes if found is not None]
    if len(matched) == len(echoes):
        return [(target.variant(echo=found.group(1)), image) for found, image in matched]
    logger.warning(
        "BIDS view: scan %s of %s gave %d images; only the first is shown as %s",
        target.scan.id,
        plan.folder,
        len(images),
        target.stem,
    )
    return [(target.stem, images[0][1])]


# ---- the kinds of folders -------------------------------------------------------


@dataclass(frozen=True, eq=False, kw_only=True, slots=True)
class BidsDir(DirNode):
    view: BidsView
    why_read_only = READ_ONLY_WHY


@dataclass(frozen=True, eq=False, kw_only=True, slots=True)
class BidsRootDir(BidsDir):
    """``<project>/BIDS/``: the dataset files and one ``sub-<label>/`` per subject with sessions."""

    project: Project

    def listing_keys(self) -> tuple[ListingKey, ...]:
        return (SubjectsKey(self.project.id), ExperimentsKey(self.project.id))

    def identity(self) -> Hashable:
        return self.project.id

    def subjects(self, context: ListingContext, raws: tuple[Any, ...]) -> list[tuple[str, Subject, list[Experiment]]]:
        per_subject = context.by_subject(raws[1])
        subjects = [s for s in raws[0] if per_subject.get(s.id)]
        known = {s.id for s in subjects}
        for subject_id, exps in per_subject.items():
            if subject_id and subject_id not in known:
                subjects.append(
                    Subject(
                        id=subject_id, label=exps[0].subject_label or subject_id, project=exps[0].project, shared=True
                    )
                )
        labels = subject_labels(subjects)
        return [(labels[s.id], s, per_subject[s.id]) for s in subjects]

    def entries(self, context: ListingContext, raws: tuple[Any, ...]) -> Listing:
        view = self.view
        found: dict[str, Node] = {}
        rows = []
        for label, subject, _experiments in sorted(self.subjects(context, raws), key=lambda row: row[0]):
            rows.append(dataset.ParticipantRow(label, subject))
            found[f"sub-{label}"] = BidsSubjectDir(
                mtime=self.mtime,
                read_only=True,
                view=view,
                project_id=self.project.id,
                subject=subject,
                subject_label=label,
            )
        files = {
            "dataset_description.json": dataset.dataset_description(
                self.project,
                server_url=view.server_url,
                xnatfs_version=__version__,
                converter_version=view.converter.version,
            ),
            "README": dataset.readme(self.project, server_url=view.server_url),
            "participants.json": dataset.participants_json(),
            "participants.tsv": dataset.participants_tsv(rows),
        }
        origin = (("uri", self.project.uri or paths.project(self.project.id)),)
        listing = {
            name: BidsBytesFile(mtime=self.mtime, read_only=True, data=data, origin=origin)
            for name, data in files.items()
        }
        return Listing(listing | found)

    def xattr_values(self) -> dict[str, str]:
        return {"uri": self.project.uri or paths.project(self.project.id), "view": "BIDS"}


@dataclass(frozen=True, eq=False, kw_only=True, slots=True)
class BidsSubjectDir(BidsDir):
    project_id: str
    subject: Subject
    subject_label: str  # the BIDS label, without "sub-"

    def listing_keys(self) -> tuple[ListingKey, ...]:
        return (ExperimentsKey(self.project_id),)

    def identity(self) -> Hashable:
        return (self.project_id, self.subject.id)

    def entries(self, context: ListingContext, raws: tuple[Any, ...]) -> Listing:
        mine = context.by_subject(raws[0]).get(self.subject.id, [])
        labels = session_labels(mine, self.subject.label)
        found: dict[str, Node] = {}
        rows = []
        for experiment in sorted(mine, key=lambda e: labels[e.id]):
            label = labels[experiment.id]
            rows.append(dataset.SessionRow(label, experiment))
            found[f"ses-{label}"] = BidsSessionDir(
                mtime=self.mtime,
                read_only=True,
                view=self.view,
                experiment=experiment,
                subject_label=self.subject_label,
                session_label=label,
            )
        name = f"sub-{self.subject_label}_sessions.tsv"
        sessions = BidsBytesFile(
            mtime=self.mtime,
            read_only=True,
            data=dataset.sessions_tsv(rows),
            origin=(("uri", self.subject.uri or paths.subject_by_id(self.subject.id)),),
        )
        return Listing({name: sessions} | found)

    def xattr_values(self) -> dict[str, str]:
        return {"uri": self.subject.uri or paths.subject_by_id(self.subject.id), "label": self.subject.label}


@dataclass(frozen=True, eq=False, kw_only=True, slots=True)
class BidsSessionDir(BidsDir):
    experiment: Experiment
    subject_label: str
    session_label: str

    @property
    def uri(self) -> str:
        return paths.experiment(self.experiment.id)

    def listing_keys(self) -> tuple[ListingKey, ...]:
        return (ExperimentContentsKey(self.experiment.id), ExperimentFilesKey(self.experiment.id))

    def identity(self) -> Hashable:
        return self.experiment.id

    async def derived(self, raws: tuple[Any, ...]) -> tuple[Any, ...]:
        plan = await self.view.plan(self.subject_label, self.session_label, raws[0], raws[1])
        return raws + (plan,)

    def entries(self, context: ListingContext, raws: tuple[Any, ...]) -> Listing:
        _contents, files, plan = raws
        by_resource = _by_resource(files)
        imaging: dict[str, list[str]] = {}
        for target in plan.targets:
            server = find_server_conversion({r.label: by_resource.get(r.uri, ()) for r in target.scan.resources})
            if server is not None and server.images[0].nifti.path.lower().endswith(".nii.gz"):
                imaging[target.scan.id] = [target.path(".nii.gz")]
        found: dict[str, Node] = {}
        scans = dataset.scans_tsv(
            plan, server_url=self.view.server_url, session_date=self.experiment.date, files=imaging, extension=NIFTI
        )
        found[f"sub-{self.subject_label}_ses-{self.session_label}_scans.tsv"] = BidsBytesFile(
            mtime=self.mtime, read_only=True, data=scans, origin=(("uri", self.uri),)
        )
        for datatype in plan.datatypes():
            found[datatype] = BidsDatatypeDir(
                mtime=self.mtime, read_only=True, view=self.view, session=self, datatype=datatype
            )
        return Listing(found)

    def xattr_values(self) -> dict[str, str]:
        return {"uri": self.uri, "label": self.experiment.label}


@dataclass(frozen=True, eq=False, kw_only=True, slots=True)
class BidsDatatypeDir(BidsDir):
    """``anat/``, ``func/``, ...: listing it converts the session's series of that datatype."""

    session: BidsSessionDir
    datatype: str

    def listing_keys(self) -> tuple[ListingKey, ...]:
        return self.session.listing_keys()

    def identity(self) -> Hashable:
        return (self.session.experiment.id, self.datatype)

    async def derived(self, raws: tuple[Any, ...]) -> tuple[Any, ...]:
        session = self.session
        plan = await self.view.plan(session.subject_label, session.session_label, raws[0], raws[1])
        return (await self.view.datatype_files(plan, self.datatype, raws[1], self),)

    def entries(self, context: ListingContext, raws: tuple[Any, ...]) -> Listing:
        return Listing(dict(raws[0]))

    def xattr_values(self) -> dict[str, str]:
        return {"uri": self.session.uri, "datatype": self.datatype}


# ---- the kinds of files ----------------------------------------------------------


@dataclass(frozen=True, eq=False, kw_only=True, slots=True)
class BidsBytesFile(Node):
    """A small file made by the view (dataset files, tables, sidecars), held in memory."""

    data: bytes
    origin: tuple[tuple[str, str], ...] = ()

    is_dir = False
    why_read_only = READ_ONLY_WHY

    @property
    def size(self) -> int:
        return len(self.data)

    async def reader(self, ops: XnatOperations, inode: int) -> BytesHandle:
        return BytesHandle(self.data)

    def xattr_values(self) -> dict[str, str]:
        return dict(self.origin)


@dataclass(frozen=True, eq=False, kw_only=True, slots=True)
class BidsConvertedFile(Node):
    """A converter output in the content cache (``key`` has its exact size)."""

    key: CacheKey
    source: ConversionSource
    view: BidsView
    origin: tuple[tuple[str, str], ...] = ()

    is_dir = False
    why_read_only = READ_ONLY_WHY

    @property
    def size(self) -> int:
        return self.key.size

    async def reader(self, ops: XnatOperations, inode: int) -> ReadHandle:
        handle = await ReadHandle.from_cache(ops.cache, self.key, ops.limiter, ops.hot)
        if handle is None:
            await self.view.reconverted(self.source)
            handle = await ReadHandle.from_cache(ops.cache, self.key, ops.limiter, ops.hot)
        if handle is None:
            raise XnatConversionError("the converted file is gone from the cache", url=self.source.series.uri)
        return handle

    def xattr_values(self) -> dict[str, str]:
        return dict(self.origin)


@dataclass(frozen=True, eq=False, kw_only=True, slots=True)
class BidsServerFile(FileNode):
    """A file of the scan's server conversion (a ``NIFTI``/``BIDS`` resource), served as it is."""

    origin: tuple[tuple[str, str], ...] = ()

    why_read_only = READ_ONLY_WHY

    async def reader(self, ops: XnatOperations, inode: int) -> ReadHandle:
        # No series zip: the file stands alone in the view, not among its resource's files.
        return await ops.server_file_handle(None, self.file)

    def xattr_values(self) -> dict[str, str]:
        return dict(self.origin)


class BytesHandle:
    """An open file whose bytes are in memory."""

    def __init__(self, data: bytes):
        self.data = data
        digest = hashlib.md5(data, usedforsecurity=False).hexdigest()
        self.key = CacheKey(MEMORY_KEY_SCHEME + digest, len(data), digest)

    async def read(self, offset: int, length: int, limiter: trio.CapacityLimiter) -> bytes:
        return self.data[offset : offset + length]

    def read_blocking(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length]

    async def close(self, limiter: trio.CapacityLimiter, hot: HotFiles | None = None) -> None:
        return None


__all__ = [
    "BidsBytesFile",
    "BidsConvertedFile",
    "BidsDatatypeDir",
    "BidsRootDir",
    "BidsServerFile",
    "BidsSessionDir",
    "BidsSubjectDir",
    "BidsView",
    "LeftOutSeries",
]
