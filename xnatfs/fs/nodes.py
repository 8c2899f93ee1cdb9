"""The kinds of entries in the mounted tree, and what each knows of itself.

A node says which XNAT object an entry stands for and carries what ``stat``
and ``getxattr`` need, taken from the listing it came from. Nodes are
immutable snapshots; a refreshed listing produces new ones.

Each kind of folder knows the raw listings it is derived from
(:meth:`DirNode.listing_keys`, keys of :mod:`xnatfs.fs.keys`) and how its
entries are built from them (:meth:`DirNode.entries`); every kind knows its
extended attributes (:meth:`Node.xattr_values`) and its write policy: what
a user may create, delete or rename there and the XNAT call that does it
(:meth:`Node.mkdir`, :meth:`Node.rmdir`, :meth:`Node.rename`,
:meth:`Node.create_target`, :meth:`Node.unlink`, through a
:class:`WriteContext`), refused unless the kind allows it. The tree
(:mod:`xnatfs.fs.tree`) loads and memoises listings for any kind alike, so a
new kind of folder is a new class here and nothing else.
"""

from __future__ import annotations

import dataclasses
import errno
import re
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeAlias

import pyfuse3

from xnatfs.cache.spool import UploadTarget
from xnatfs.client import paths
from xnatfs.client.contract import ArchiveClient
from xnatfs.client.models import Experiment, ExperimentContents, Project, RemoteFile, Resource, Scan, Subject
from xnatfs.fs import names
from xnatfs.fs.errno import refused
from xnatfs.fs.keys import (
    ExperimentContentsKey,
    ExperimentFilesKey,
    ExperimentsKey,
    ListingKey,
    PerSubjectKey,
    ProjectContentsSearch,
    ProjectsKey,
    ResourceFilesKey,
    ResourcesKey,
    SubjectExperimentsKey,
    SubjectKey,
    SubjectResourcesSearch,
    SubjectSessions,
    SubjectsKey,
    files_key,
)

if TYPE_CHECKING:
    from xnatfs.fs.local import LocalFile, Overlay
    from xnatfs.fs.operations import XnatOperations
    from xnatfs.fs.reading import FileReader
    from xnatfs.fs.settings import MountSettings

VALID_LABEL = re.compile(r"^[A-Za-z0-9_-]+$")


# A resource's files: a folder maps its safe names to sub-folders and files.
FileTree: TypeAlias = dict[str, "FileTree | RemoteFile"]


class ListingContext(Protocol):
    """What building a folder's entries may use of the tree."""

    started_at: float

    def renamed(self, where: str, raw: str, shown: str) -> None:
        """Hear of a server name not shown as it is."""

    def by_subject(self, experiments: Sequence[Experiment]) -> dict[str, list[Experiment]]:
        """A project's experiments by subject ID, worked out once per raw listing."""

    def file_tree(self, resource_uri: str, files: Sequence[RemoteFile], *, grouped: bool) -> FileTree:
        """A resource's files as nested dicts of safe names, worked out once per raw listing."""

    def searchable(self, key: ListingKey, project: str) -> None:
        """Note that a walk of ``project`` may answer ``key`` from the project's search."""

    def project_views(self, project: ProjectDir) -> dict[str, Node]:
        """The other views a project folder shows beside its subjects (``BIDS/``), by name."""


class ListingSource(Protocol):
    """Where a node completing itself gets a raw listing from."""

    async def direct(self, key: ListingKey) -> object:
        """The listing from its own request, never from a search."""


class WriteContext(Protocol):
    """What a node's write policy may use of the mount."""

    client: ArchiveClient
    settings: MountSettings
    overlay: Overlay

    async def change(self, stale: Sequence[ListingKey], function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A blocking client call that changes the server, in a worker thread under the
        request's bound; the raw listings ``stale`` are forgotten after it, so the next
        look asks the server, unless it failed before anything that changes the server
        was sent (see :meth:`Mutations.change`)."""

    def forget(self, *keys: ListingKey) -> None:
        """Drop raw listings a change made stale, so the next look asks the server."""

    async def listing(self, node: Node) -> Listing:
        """A folder's entries as the mount shows them (our own changes included)."""

    def resource_gone(self, resource_uri: str) -> None:
        """A resource was deleted: what is held of its files goes too."""

    async def delete_remote(self, remote: RemoteFile) -> None:
        """Delete a server file, and what is held of it here."""

    async def delete_staged(self, local: LocalFile) -> None:
        """Delete a file of ours, and the server's file of that name if it took its place."""


class NewFile(NamedTuple):
    """Where a file created in a folder is staged and sent."""

    target: UploadTarget
    container: str  # the overlay's key for the folder's files
    relpath: str  # the file's path in the container
    experiment_id: str = ""  # a zip for import: the session its scans appear in


def import_container(experiment_uri: str) -> str:
    """Where zips written into an experiment's SCANS/ are kept in the overlay."""
    return f"{experiment_uri}/SCANS"


def check_label(label: str, what: str) -> None:
    """Refuse a label XNAT would not take, or that the mount would show under another name."""
    if not VALID_LABEL.match(label):
        raise refused(errno.EINVAL, "%s refused: XNAT labels hold only letters, digits, _ and -: %r", what, label)
    if label in names.RESERVED:
        # XNAT would take it, but the mount would show it as <label>@<ID>, beside its own folder.
        raise refused(errno.EINVAL, "%s refused: %s is the name of the mount's own folders", what, label)


def check_relabel(same_parent: bool, replaces: Node | None) -> None:
    """A subject or experiment is renamed only within its folder, and not onto another entry."""
    if not same_parent:
        raise pyfuse3.FUSEError(errno.EXDEV)
    if replaces is not None:
        raise pyfuse3.FUSEError(errno.EEXIST)


def timestamp(value: datetime | None, default: float) -> float:
    """Seconds since the epoch for an XNAT date (server local time), or ``default``."""
    if value is None:
        return default
    try:
        return value.timestamp()
    except (OverflowError, OSError, ValueError):
        return default


@dataclass(frozen=True, eq=False, kw_only=True, slots=True)
class Node:
    mtime: float  # seconds since the epoch
    read_only: bool = False  # shared into the project it is shown under
    nlink: int = 1  # 2 + sub-directories where known; 1 means "not counted"

    is_dir = True
    why_read_only = "shared here from another project; change it there"
    volatile = False  # its attributes change under the same snapshot: never reused
    reads_ahead = False  # opening it during a walk loads what the walk wants next
    loaded_ahead = False  # loaded ahead when the folder holding it is opened during a walk
    holds_series = False  # its folders are series: listing it is how walks and browsers reach them

    def xattr_values(self) -> dict[str, str]:
        """``user.xnat.*`` names (without the prefix) → values; empty values mean "none"."""
        return {}

    async def described(self, source: ListingSource) -> Node:
        """This node with every server record of it, for its extended attributes."""
        return self

    @property
    def size(self) -> int:
        """A file's length in bytes; a folder has none."""
        return 0

    async def reader(self, ops: XnatOperations, inode: int) -> FileReader:
        """An open handle on a file's bytes; a folder has none."""
        raise pyfuse3.FUSEError(errno.EISDIR)

    @property
    def walked_project(self) -> str | None:
        """The project a walk through this node goes through, if it is one."""
        return None

    @property
    def series_key(self) -> ListingKey | None:
        """The session-wide file listing a scan resource's files come from, if they do."""
        return None

    @property
    def series(self) -> Resource | None:
        """The scan resource this folder shows, whose series zip may start when it is named."""
        return None

    @property
    def remote_path(self) -> str | None:
        """The path of the server file this entry shows, in its resource; None for anything else."""
        return None

    @property
    def staged(self) -> LocalFile | None:
        """The file of ours this entry shows (written through the mount); None for anything else."""
        return None

    @property
    def on_server(self) -> bool:
        """A file whose name holds a file on the server (a server file, or one of ours that replaced it)."""
        return False

    @property
    def container(self) -> str | None:
        """The overlay container a file is in (its resource, or a session's imports); None for folders."""
        return None

    # ---- write policy: what a user may change here, and the XNAT call that does it. Each
    # kind allows what XNAT can do; the defaults refuse. Callers have checked that the
    # mount and the node are writable and that a new name can be stored.

    @property
    def file_place(self) -> tuple[str, tuple[str, ...]] | None:
        """``(resource URI, sub-folder path)`` where files created here go; None: none can be."""
        return None

    @property
    def overlay_place(self) -> tuple[str, tuple[str, ...]] | None:
        """``(container, sub-folder path)`` under which the overlay keeps what is written here."""
        return self.file_place

    def create_target(self, name: str, server: str) -> NewFile:
        """Where a file ``name`` created in this folder goes."""
        place = self.file_place
        if place is None:
            raise refused(errno.EPERM, "creating %s refused: files live in resources (and *.zip in SCANS/)", name)
        resource_uri, subpath = place
        relpath = "/".join(subpath + (name,))
        return NewFile(
            UploadTarget(kind="file", resource_uri=resource_uri, relpath=relpath, server=server), resource_uri, relpath
        )

    async def mkdir(self, context: WriteContext, name: str) -> None:
        """Create the folder ``name`` in this one."""
        raise refused(errno.EPERM, "mkdir %s refused: XNAT has nothing to create there", name)

    async def rmdir(self, context: WriteContext, parent: DirNode, name: str) -> None:
        """Delete this folder, listed as ``name`` in ``parent``."""
        raise refused(errno.EPERM, "rmdir %s refused: XNAT cannot delete that", name)

    async def rename(
        self, context: WriteContext, parent: DirNode, new: str, *, same_parent: bool, replaces: Node | None
    ) -> None:
        """Give this folder the name ``new``; ``replaces`` is what has that name now."""
        # XNAT moves nothing: mv copies and deletes instead.
        raise pyfuse3.FUSEError(errno.EXDEV)

    async def unlink(self, context: WriteContext) -> None:
        """Delete this file."""
        raise pyfuse3.FUSEError(errno.EPERM)


@dataclass(frozen=True, eq=False, kw_only=True, slots=True)
class DirNode(Node):
    """A folder: listed from raw listings, its entries memoised per listing."""

    # Worked out on first use: a snapshot's keys never change, and a warm
    # request then builds nothing to find its listing.
    _listed: tuple[tuple[ListingKey, ...], Hashable] | None = field(default=None, init=False, repr=False)

    def listing_keys(self) -> tuple[ListingKey, ...]:
        """The raw listings this folder's entries are derived from."""
        raise NotImplementedError

    def identity(self) -> Hashable:
        """What tells this folder from other folders of its kind."""
        raise NotImplementedError

    def own_keys(self) -> tuple[ListingKey, ...] | None:
        """Smaller raw listings that hold this folder's entries and no one else's.

        The tree lists the folder from these instead of :meth:`listing_keys`
        when those are not held and its project is not being walked (a walk
        wants the project-wide listings: one request instead of one per
        folder). None: the folder has no listing of its own.
        """
        return None

    def child_keys(self, name: str) -> tuple[ListingKey, ...] | None:
        """Raw listings that tell what the entry ``name`` is without listing this folder
        (read by :meth:`child_from`); None: only the folder's listing can tell."""
        return None

    def child_from(self, context: ListingContext, name: str, raws: tuple[Any, ...]) -> Node | None:
        """The entry ``name`` out of the raw listings :meth:`child_keys` named; None when
        there is none. It is the node the folder's own listing shows under ``name``."""
        raise NotImplementedError

    def answers_child(self, key: ListingKey) -> bool:
        """Whether ``key`` is one that :meth:`child_keys` names for some entry here: a
        refresh of the folder drops those too, found or not, whatever the name."""
        return False

    def stale_keys(self, *names: str) -> tuple[ListingKey, ...]:
        """The raw listings a change of this folder's entries ``names`` (made, deleted,
        renamed) makes stale: forgotten so the next look asks the server."""
        keys = self.listing_keys() + (self.own_keys() or ())
        for name in names:
            keys += self.child_keys(name) or ()
        return keys

    def refreshed_keys(self) -> tuple[ListingKey, ...]:
        """The raw listings to drop so the folder is asked for again (``xnatfs refresh``)."""
        return self.listing_keys() + (self.own_keys() or ()) + self.companion_keys()

    def companion_keys(self) -> tuple[ListingKey, ...]:
        """Raw listings the folders below will want: loaded beside this folder's own,
        but its entries do not wait for them."""
        return ()

    def entries(self, context: ListingContext, raws: tuple[Any, ...]) -> Listing:
        """The folder's entries, from the raw listings named by :meth:`listing_keys`."""
        raise NotImplementedError

    async def derived(self, raws: tuple[Any, ...]) -> tuple[Any, ...]:
        """What :meth:`entries` is built from: the raw listings, or what a kind of
        folder works out from them first (a conversion, say); asked only when the
        raw listings changed."""
        return raws

    def listed(self) -> tuple[tuple[ListingKey, ...], Hashable]:
        """``(listing keys, memo key)``: what the entries come from, and what they are kept under."""
        listed = self._listed
        if listed is None:
            # One experiment can be shown writable in its own project and read-only in
            # a project it is shared into; their listings differ only in that.
            listed = (self.listing_keys(), (type(self), self.identity(), self.read_only))
            object.__setattr__(self, "_listed", listed)
        return listed

    @property
    def memo_key(self) -> Hashable:
        return self.listed()[1]


@dataclass(frozen=True, eq=False, kw_only=True, slots=True)
class RootDir(DirNode):
    def listing_keys(self) -> tuple[ListingKey, ...]:
        return (ProjectsKey(),)

    def identity(self) -> Hashable:
        return ()

    def entries(self, context: ListingContext, raws: tuple[Any, ...]) -> Listing:
        ordered = sorted(raws[0], key=lambda p: p.id)
        dir_names = names.make_unique([names.safe_component(p.id) for p in ordered])
        found: dict[str, Node] = {}
        for name, project in zip(dir_names, ordered):
            if name != project.id:
                context.renamed("projects", project.id, name)
            found[name] = ProjectDir(mtime=context.started_at, project=project)
        return Listing(found)


@dataclass(frozen=True, eq=False, kw_only=True, slots=True)
class ProjectDir(DirNode):
    project: Project

    @property
    def uri(self) -> str:
        return self.project.uri or paths.project(self.project.id)

    @property
    def walked_project(self) -> str | None:
        return self.project.id

    def listing_keys(self) -> tuple[ListingKey, ...]:
        return (SubjectsKey(self.project.id), ExperimentsKey(self.project.id))

    def refreshed_keys(self) -> tuple[ListingKey, ...]:
        # Project-wide searches answer the sessions below; they must be asked again too.
        project_id = self.project.id
        return self.listing_keys() + (ProjectContentsSearch(project_id), SubjectResourcesSearch(project_id))

    def child_keys(self, name: str) -> tuple[ListingKey, ...] | None:
        if name in names.PROJECT_RESERVED:
            return ()  # the project's own folders: nothing to ask
        if not VALID_LABEL.match(name):
            # Not a label XNAT takes: a name the listing made up (label@ID, a sanitised label).
            return None
        project_id = self.project.id
        return (SubjectKey(project_id, name), SubjectExperimentsKey(project_id, name))

    def answers_child(self, key: ListingKey) -> bool:
        return isinstance(key, PerSubjectKey) and key.project == self.project.id

    def child_from(self, context: ListingContext, name: str, raws: tuple[Any, ...]) -> Node | None:
        if name == names.RESOURCES:
            return self._resources_dir(context)
        if not raws:
            return context.project_views(self).get(name)
        subject, sessions = raws
        if subject is None:
            return None
        return self._subject_dir(context, subject, len(sessions.experiments))

    async def mkdir(self, context: WriteContext, name: str) -> None:
        check_label(name, "creating a subject")
        await context.change(self.stale_keys(name), context.client.create_subject, self.project.id, name)

    async def rmdir(self, context: WriteContext, parent: DirNode, name: str) -> None:
        await delete_record(context, parent, name, context.client.delete_project, self.project.id)

    def identity(self) -> Hashable:
        return self.project.id

    def entries(self, context: ListingContext, raws: tuple[Any, ...]) -> Listing:
        project_id = self.project.id
        per_subject = context.by_subject(raws[1])
        subjects = list(raws[0])
        known = {s.id for s in subjects}
        # An experiment shared without its subject still needs a folder to live in.
        for subject_id, exps in per_subject.items():
            if subject_id and subject_id not in known:
                first = exps[0]
                subjects.append(
                    Subject(id=subject_id, label=first.subject_label or subject_id, project=first.project, shared=True)
                )
                known.add(subject_id)
        dir_names = names.label_names([(s.label, s.id) for s in subjects], names.PROJECT_RESERVED)
        found: dict[str, Node] = {}
        for name, subject in zip(dir_names, subjects):
            if name != subject.label:
                context.renamed(f"subjects of {project_id}", subject.label, name)
            found[name] = self._subject_dir(context, subject, len(per_subject.get(subject.id, ())))
        found[names.RESOURCES] = self._resources_dir(context)
        # Views are opened by name, never listed: a walk of the project (find, ls -R, a
        # file manager) would otherwise convert every session of it.
        return Listing(found, aliases=context.project_views(self))

    def _subject_dir(self, context: ListingContext, subject: Subject, sessions: int) -> SubjectDir:
        project_id = self.project.id
        return SubjectDir(
            mtime=timestamp(subject.insert_date, context.started_at),
            read_only=subject.shared or subject.project != project_id,
            nlink=3 + sessions,
            project_id=project_id,
            subject=subject,
        )

    def _resources_dir(self, context: ListingContext) -> ResourcesDir:
        return ResourcesDir(mtime=context.started_at, owner_uri=self.uri)

    def xattr_values(self) -> dict[str, str]:
        project = self.project
        return {
            "id": project.id,
            "uri": self.uri,
            "xsi_type": "xnat:projectData",
            "name": project.name,
            "secondary_id": project.secondary_id,
        }


@dataclass(frozen=True, eq=False, kw_only=True, slots=True)
class SubjectDir(DirNode):
    project_id: str  # the project the subject is shown under
    subject: Subject

    reads_ahead = True

    @property
    def uri(self) -> str:
        return paths.subject(self.subject.project, self.subject.id)

    @property
    def walked_project(self) -> str | None:
        return self.project_id

    def listing_keys(self) -> tuple[ListingKey, ...]:
        return (ExperimentsKey(self.project_id),)

    def own_keys(self) -> tuple[ListingKey, ...] | None:
        if self.subject.shared:
            # Shared into the project (or only some sessions of it were): the project's
            # listing says which of its sessions are shown here.
            return None
        return (SubjectExperimentsKey(self.project_id, self.subject.label),)

    async def mkdir(self, context: WriteContext, name: str) -> None:
        check_label(name, "creating an experiment")
        await context.change(
            self.stale_keys(name),
            context.client.create_experiment,
            self.project_id,
            self.subject.label,
            name,
            xsi_type=context.settings.experiment_type,
        )

    async def rmdir(self, context: WriteContext, parent: DirNode, name: str) -> None:
        await delete_record(context, parent, name, context.client.delete_subject, self.project_id, self.subject.label)

    async def rename(
        self, context: WriteContext, parent: DirNode, new: str, *, same_parent: bool, replaces: Node | None
    ) -> None:
        check_relabel(same_parent, replaces)
        check_label(new, "renaming a subject")
        await context.change(
            parent.stale_keys(self.subject.label, new),
            context.client.rename_subject,
            self.project_id,
            self.subject.label,
            new,
        )

    def identity(self) -> Hashable:
        return (self.project_id, self.subject.id)

    def entries(self, context: ListingContext, raws: tuple[Any, ...]) -> Listing:
        listed = raws[0]
        if isinstance(listed, SubjectSessions):
            mine: Sequence[Experiment] = listed.experiments
        else:
            mine = context.by_subject(listed).get(self.subject.id, [])
        dir_names = names.label_names([(e.label, e.id) for e in mine], names.RESERVED)
        found: dict[str, Node] = {}
        for name, experiment in zip(dir_names, mine):
            if name != experiment.label:
                context.renamed(f"experiments of {self.project_id}/{self.subject.label}", experiment.label, name)
            context.searchable(ExperimentContentsKey(experiment.id), self.project_id)
            found[name] = ExperimentDir(
                mtime=timestamp(experiment.insert_date, self.mtime),
                read_only=self.read_only or experiment.shared or experiment.project != self.project_id,
                nlink=4,
                project_id=self.project_id,
                subject_label=self.subject.label,
                experiment=experiment,
            )
        context.searchable(ResourcesKey(self.uri), self.project_id)
        found[names.RESOURCES] = ResourcesDir(mtime=self.mtime, read_only=self.read_only, owner_uri=self.uri)
        return Listing(found)

    def xattr_values(self) -> dict[str, str]:
        subject = self.subject
        return {
            "id": subject.id,
            "uri": subject.uri or paths.subject_by_id(subject.id),
            "xsi_type": "xnat:subjectData",
            "label": subject.label,
            "project": subject.project,
        }


@dataclass(frozen=True, eq=False, kw_only=True, slots=True)
class ExperimentDir(DirNode):
    project_id: str
    subject_label: str  # the subject's label in project_id
    experiment: Experiment

    loaded_ahead = True

    @property
    def uri(self) -> str:
        return paths.experiment(self.experiment.id)

    def listing_keys(self) -> tuple[ListingKey, ...]:
        return (ExperimentContentsKey(self.experiment.id),)

    def companion_keys(self) -> tuple[ListingKey, ...]:
        # The scans' folders are named by the contents alone: a scan's resource can be
        # looked up (and its series zip started) while the file listing is on its way.
        return (ExperimentFilesKey(self.experiment.id),)

    def identity(self) -> Hashable:
        return (self.project_id, self.experiment.id)

    async def rmdir(self, context: WriteContext, parent: DirNode, name: str) -> None:
        await delete_record(
            context, parent, name, context.client.delete_experiment, self.project_id, self.experiment.id
        )

    async def rename(
        self, context: WriteContext, parent: DirNode, new: str, *, same_parent: bool, replaces: Node | None
    ) -> None:
        check_relabel(same_parent, replaces)
        check_label(new, "renaming an experiment")
        await context.change(
            parent.stale_keys(self.experiment.label, new),
            context.client.rename_experiment,
            self.project_id,
            self.subject_label,
            self.experiment.label,
            new,
        )

    def entries(self, context: ListingContext, raws: tuple[Any, ...]) -> Listing:
        contents = raws[0]
        mtime = self.mtime
        if self.experiment.insert_date is None:
            mtime = timestamp(contents.insert_date, self.mtime)
        return Listing(
            {
                names.SCANS: ScansDir(
                    mtime=mtime, read_only=self.read_only, nlink=2 + len(contents.scans), experiment=self
                ),
                names.RESOURCES: ResourcesDir(
                    mtime=mtime,
                    read_only=self.read_only,
                    nlink=2 + len(contents.resources),
                    owner_uri=self.uri,
                    experiment=self,
                ),
            }
        )

    def xattr_values(self) -> dict[str, str]:
        experiment = self.experiment
        return {
            "id": experiment.id,
            "uri": experiment.uri or self.uri,
            "xsi_type": experiment.xsi_type,
            "label": experiment.label,
            "project": experiment.project,
            "date": experiment.date,
            "subject_id": experiment.subject_id,
        }


@dataclass(frozen=True, eq=False, kw_only=True, slots=True)
class ScansDir(DirNode):
    experiment: ExperimentDir

    def listing_keys(self) -> tuple[ListingKey, ...]:
        return (ExperimentContentsKey(self.experiment.experiment.id),)

    def identity(self) -> Hashable:
        return self.experiment.experiment.id

    @property
    def overlay_place(self) -> tuple[str, tuple[str, ...]] | None:
        return (import_container(self.experiment.uri), ())

    def create_target(self, name: str, server: str) -> NewFile:
        # A zip written here is a DICOM import into the session.
        if not name.lower().endswith(".zip"):
            return Node.create_target(self, name, server)
        session = self.experiment
        target = UploadTarget(
            kind="dicom-import",
            project=session.project_id,
            subject=session.subject_label,
            experiment=session.experiment.label,
            server=server,
        )
        return NewFile(target, import_container(session.uri), name, session.experiment.id)

    def entries(self, context: ListingContext, raws: tuple[Any, ...]) -> Listing:
        scans = list(raws[0].scans)
        order = sorted(range(len(scans)), key=lambda i: (names.scan_dir_name(scans[i].id, scans[i].type), i))
        dir_names = names.make_unique([names.scan_dir_name(scans[i].id, scans[i].type) for i in order])
        found: dict[str, Node] = {}
        aliases: dict[str, Node] = {}
        for name, index in zip(dir_names, order):
            scan = scans[index]
            if name != names.scan_dir_name(scan.id, scan.type) or names.safe_label(scan.id) != scan.id:
                context.renamed(f"scans of {self.experiment.experiment.id}", scan.id, name)
            found[name] = ScanDir(
                mtime=self.mtime,
                read_only=self.read_only,
                nlink=2 + len(scan.resources),
                experiment=self.experiment,
                scan=scan,
            )
        for scan_node in list(found.values()):
            assert isinstance(scan_node, ScanDir)  # all that was put in
            bare = names.safe_label(scan_node.scan.id)
            if bare not in found and bare not in aliases:
                aliases[bare] = scan_node
        return Listing(found, aliases)

    def xattr_values(self) -> dict[str, str]:
        return {"uri": paths.scans_of(self.experiment.uri)}


@dataclass(frozen=True, eq=False, kw_only=True, slots=True)
class ScanDir(DirNode):
    experiment: ExperimentDir
    scan: Scan

    holds_series = True

    @property
    def uri(self) -> str:
        return self.scan.uri or paths.scan(self.experiment.experiment.id, self.scan.id)

    def listing_keys(self) -> tuple[ListingKey, ...]:
        return (ExperimentContentsKey(self.experiment.experiment.id),)

    def identity(self) -> Hashable:
        return (self.experiment.experiment.id, self.scan.id)

    async def mkdir(self, context: WriteContext, name: str) -> None:
        await context.change(self.listing_keys(), context.client.create_resource, self.uri, name)

    def entries(self, context: ListingContext, raws: tuple[Any, ...]) -> Listing:
        scan = next((s for s in raws[0].scans if s.id == self.scan.id), self.scan)
        return resource_entries(self, context, scan.resources, self.experiment.experiment.id, self.uri)

    def xattr_values(self) -> dict[str, str]:
        scan = self.scan
        return {
            "id": scan.id,
            "uri": self.uri,
            "xsi_type": scan.xsi_type,
            "type": scan.type,
            "series_description": scan.series_description,
            "quality": scan.quality,
        }

    async def described(self, source: ListingSource) -> Node:
        # A scan from a project-wide search lacks its xsi type; the session's own listing has it.
        if self.scan.xsi_type:
            return self
        contents = await source.direct(ExperimentContentsKey(self.experiment.experiment.id))
        assert isinstance(contents, ExperimentContents)
        scan = next((s for s in contents.scans if s.id == self.scan.id), None)
        return self if scan is None else dataclasses.replace(self, scan=scan)


@dataclass(frozen=True, eq=False, kw_only=True, slots=True)
class ResourcesDir(DirNode):
    """``RESOURCES/`` of a project, subject or experiment.

    ``owner_uri`` is the address resources are listed and created under;
    ``experiment`` is set at experiment level, where the resources come from
    the experiment's item JSON instead of a listing of their own.
    """

    owner_uri: str
    experiment: ExperimentDir | None = None

    def listing_keys(self) -> tuple[ListingKey, ...]:
        if self.experiment is not None:
            return (ExperimentContentsKey(self.experiment.experiment.id),)
        return (ResourcesKey(self.owner_uri),)

    def identity(self) -> Hashable:
        return self.owner_uri

    async def mkdir(self, context: WriteContext, name: str) -> None:
        await context.change(self.listing_keys(), context.client.create_resource, self.owner_uri, name)

    def entries(self, context: ListingContext, raws: tuple[Any, ...]) -> Listing:
        if self.experiment is not None:
            return resource_entries(self, context, raws[0].resources, self.experiment.experiment.id, self.owner_uri)
        return resource_entries(self, context, raws[0], "", self.owner_uri)

    def xattr_values(self) -> dict[str, str]:
        return {"uri": paths.resources_of(self.owner_uri)}


def resource_entries(
    parent: Node, context: ListingContext, resources: Sequence[Resource], experiment_id: str, owner_uri: str
) -> Listing:
    """The resource folders of a scan or of a RESOURCES/ folder."""
    resources = list(resources)
    dir_names = names.resource_names([(r.label, r.id) for r in resources])
    found: dict[str, Node] = {}
    for name, resource in zip(dir_names, resources):
        if name != resource.label:
            context.renamed(f"resources of {owner_uri}", resource.label, name)
        found[name] = ResourceDir(
            mtime=parent.mtime, read_only=parent.read_only, resource=resource, experiment_id=experiment_id
        )
    return Listing(found)


class InResource:
    """What a resource folder and the folders inside it share: files are written there."""

    __slots__ = ()
    resource: Resource

    @property
    def subpath(self) -> tuple[str, ...]:
        """The safe names leading from the resource to this folder."""
        raise NotImplementedError

    @property
    def file_place(self) -> tuple[str, tuple[str, ...]] | None:
        return (self.resource.uri, self.subpath)

    async def mkdir(self, context: WriteContext, name: str) -> None:
        # XNAT has no empty folders: this one is ours until a file is written into it.
        context.overlay.add_folder(self.resource.uri, self.subpath + (name,))


async def check_empty(context: WriteContext, folder: Node) -> None:
    if (await context.listing(folder)).entries:
        raise pyfuse3.FUSEError(errno.ENOTEMPTY)


async def delete_record(
    context: WriteContext, parent: DirNode, name: str, delete: Callable[..., Any], *args: Any
) -> None:
    """Delete a project, subject or experiment (only on a mount that allows it)."""
    if not context.settings.allow_delete:
        raise refused(
            errno.EPERM,
            "rmdir %s refused: deleting projects, subjects and experiments needs a mount with --allow-delete",
            name,
        )
    await context.change(parent.stale_keys(name), delete, *args)


@dataclass(frozen=True, eq=False, kw_only=True, slots=True)
class ResourceDir(InResource, DirNode):
    """A resource folder; at experiment and scan level its files come from the
    experiment-wide file listing, elsewhere from the resource's own listing."""

    resource: Resource
    experiment_id: str = ""

    @property
    def subpath(self) -> tuple[str, ...]:
        return ()

    @property
    def series_key(self) -> ListingKey | None:
        return ExperimentFilesKey(self.experiment_id) if self.experiment_id else None

    @property
    def series(self) -> Resource | None:
        return self.resource if self.experiment_id and paths.is_scan_resource(self.resource.uri) else None

    def listing_keys(self) -> tuple[ListingKey, ...]:
        return (files_listing_key(self),)

    def identity(self) -> Hashable:
        return self.resource.uri

    def entries(self, context: ListingContext, raws: tuple[Any, ...]) -> Listing:
        return folder_entries(self, context, raws[0])

    async def rmdir(self, context: WriteContext, parent: DirNode, name: str) -> None:
        await check_empty(context, self)
        await context.change(parent.listing_keys(), context.client.delete_resource, self.resource.uri)
        context.resource_gone(self.resource.uri)

    def xattr_values(self) -> dict[str, str]:
        resource = self.resource
        return {
            "id": resource.id,
            "uri": resource.uri,
            "xsi_type": "xnat:resourceCatalog",
            "label": resource.label,
            "format": resource.format,
            "content": resource.content,
        }

    async def described(self, source: ListingSource) -> Node:
        # A resource from a project-wide search has its label only; its owner's own listing has the rest.
        if self.resource.id:
            return self
        if self.experiment_id:
            contents = await source.direct(ExperimentContentsKey(self.experiment_id))
            assert isinstance(contents, ExperimentContents)
            known = list(contents.resources) + [r for scan in contents.scans for r in scan.resources]
        else:
            listed = await source.direct(ResourcesKey(paths.resource_owner(self.resource.uri)))
            assert isinstance(listed, list)
            known = listed
        resource = next((r for r in known if r.uri == self.resource.uri), None)
        return self if resource is None else dataclasses.replace(self, resource=resource)


@dataclass(frozen=True, eq=False, kw_only=True, slots=True)
class FolderDir(InResource, DirNode):
    """A sub-folder inside a resource; ``subpath`` holds the safe names leading to it."""

    resource: Resource
    experiment_id: str = ""
    subpath: tuple[str, ...] = ()

    @property
    def series_key(self) -> ListingKey | None:
        return ExperimentFilesKey(self.experiment_id) if self.experiment_id else None

    def listing_keys(self) -> tuple[ListingKey, ...]:
        return (files_listing_key(self),)

    def identity(self) -> Hashable:
        return (self.resource.uri, self.subpath)

    def entries(self, context: ListingContext, raws: tuple[Any, ...]) -> Listing:
        return folder_entries(self, context, raws[0])

    async def rmdir(self, context: WriteContext, parent: DirNode, name: str) -> None:
        await check_empty(context, self)
        context.overlay.drop_folder(self.resource.uri, self.subpath)
        # A folder the server listed lives on in the cached listing (its files are only
        # hidden); reloading the listing lets it go now instead of after the TTL.
        context.forget(files_key(self.resource.uri))


def files_listing_key(folder: ResourceDir | FolderDir) -> ListingKey:
    if folder.experiment_id:
        return ExperimentFilesKey(folder.experiment_id)
    return ResourceFilesKey(folder.resource.uri)


def folder_entries(folder: ResourceDir | FolderDir, context: ListingContext, files: Sequence[RemoteFile]) -> Listing:
    """The files and sub-folders at ``folder.subpath`` of a resource."""
    tree = context.file_tree(folder.resource.uri, files, grouped=bool(folder.experiment_id))
    subpath = folder.subpath
    for part in subpath:
        inner = tree.get(part)
        if not isinstance(inner, dict):
            return Listing({})
        tree = inner
    found: dict[str, Node] = {}
    for name, item in tree.items():
        if isinstance(item, dict):
            found[name] = FolderDir(
                mtime=folder.mtime,
                read_only=folder.read_only,
                nlink=2 + sum(1 for child in item.values() if isinstance(child, dict)),
                resource=folder.resource,
                experiment_id=folder.experiment_id,
                subpath=subpath + (name,),
            )
        else:
            found[name] = FileNode(mtime=folder.mtime, read_only=folder.read_only, file=item)
    return Listing(found)


@dataclass(frozen=True, eq=False, kw_only=True, slots=True)
class FileNode(Node):
    file: RemoteFile

    is_dir = False

    @property
    def size(self) -> int:
        return self.file.size

    @property
    def remote_path(self) -> str | None:
        return self.file.path

    @property
    def on_server(self) -> bool:
        return True

    @property
    def container(self) -> str | None:
        return self.file.resource_uri

    async def unlink(self, context: WriteContext) -> None:
        await context.delete_remote(self.file)

    async def reader(self, ops: XnatOperations, inode: int) -> FileReader:
        """An open handle on the bytes (see :class:`xnatfs.fs.reading.ReadHandle`)."""
        return await ops.server_file_handle(inode, self.file)

    def xattr_values(self) -> dict[str, str]:
        remote = self.file
        return {
            "uri": remote.uri,
            "format": remote.format,
            "content": remote.content,
            "digest": remote.digest,
            "tags": remote.tags,
            "resource": remote.resource_label,
            "path": remote.path,
        }


@dataclass
class Listing:
    """The entries of one directory by safe name; ``aliases`` resolve but are not listed.

    A listing is never changed once built (a changed folder gets a new
    one), so what is worked out of it is kept with it.
    """

    entries: dict[str, Node]
    aliases: dict[str, Node] = field(default_factory=dict)
    _order: list[str] | None = field(default=None, repr=False)
    _position: dict[str, int] = field(default_factory=dict, repr=False)
    _subdirs: int | None = field(default=None, repr=False)
    _named: list[tuple[str, bytes, Node]] | None = field(default=None, repr=False)

    def get(self, name: str) -> Node | None:
        node = self.entries.get(name)
        return node if node is not None else self.aliases.get(name)

    @property
    def subdir_count(self) -> int:
        if self._subdirs is None:
            self._subdirs = sum(1 for node in self.entries.values() if node.is_dir)
        return self._subdirs

    def named(self) -> list[tuple[str, bytes, Node]]:
        """``(name, name as the kernel gets it, node)`` in listing order, for ``readdir``."""
        if self._named is None:
            self._named = [(name, name.encode("utf-8"), node) for name, node in self.entries.items()]
        return self._named

    def position(self, name: str) -> int | None:
        """Where ``name`` is in listing order."""
        if self._order is None:
            self._order = list(self.entries)
            self._position = {entry: index for index, entry in enumerate(self._order)}
        return self._position.get(name)

    def after(self, name: str, count: int) -> list[Node]:
        """Up to ``count`` entries listed after ``name``."""
        start = self.position(name)
        if start is None:
            return []
        assert self._order is not None  # position() set it
        return [self.entries[entry] for entry in self._order[start + 1 : start + 1 + count]]
