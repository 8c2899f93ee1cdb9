"""The kinds of entries in the mounted tree.

A node says which XNAT object an entry stands for and carries what ``stat``
and ``getxattr`` need, taken from the listing it came from. Nodes are
immutable snapshots; a refreshed listing produces new ones. ``key`` names
the directory a node stands for, independent of the snapshot, and is what
listings are memoised under.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xnatfs.client import paths
from xnatfs.client.models import Experiment, Project, RemoteFile, Resource, Scan, Subject


@dataclass(frozen=True, eq=False, kw_only=True, slots=True)
class Node:
    mtime: float                 # seconds since the epoch
    read_only: bool = False      # shared into the project it is shown under
    nlink: int = 1               # 2 + sub-directories where known; 1 means "not counted"

    is_dir = True

    @property
    def key(self) -> tuple:
        raise NotImplementedError


@dataclass(frozen=True, eq=False, kw_only=True, slots=True)
class RootDir(Node):
    @property
    def key(self) -> tuple:
        return ("root",)


@dataclass(frozen=True, eq=False, kw_only=True, slots=True)
class ProjectDir(Node):
    project: Project

    @property
    def uri(self) -> str:
        return self.project.uri or paths.project(self.project.id)

    @property
    def key(self) -> tuple:
        return ("project", self.project.id)


@dataclass(frozen=True, eq=False, kw_only=True, slots=True)
class SubjectDir(Node):
    project_id: str              # the project the subject is shown under
    subject: Subject

    @property
    def uri(self) -> str:
        return paths.subject(self.subject.project, self.subject.id)

    @property
    def key(self) -> tuple:
        return ("subject", self.project_id, self.subject.id)


@dataclass(frozen=True, eq=False, kw_only=True, slots=True)
class ExperimentDir(Node):
    project_id: str
    subject_label: str           # the subject's label in project_id
    experiment: Experiment

    @property
    def uri(self) -> str:
        return paths.experiment(self.experiment.id)

    @property
    def key(self) -> tuple:
        return ("experiment", self.project_id, self.experiment.id)


@dataclass(frozen=True, eq=False, kw_only=True, slots=True)
class ScansDir(Node):
    experiment: ExperimentDir

    @property
    def key(self) -> tuple:
        return ("scans", self.experiment.experiment.id)


@dataclass(frozen=True, eq=False, kw_only=True, slots=True)
class ScanDir(Node):
    experiment: ExperimentDir
    scan: Scan

    @property
    def uri(self) -> str:
        return self.scan.uri or paths.scan(self.experiment.experiment.id, self.scan.id)

    @property
    def key(self) -> tuple:
        return ("scan", self.experiment.experiment.id, self.scan.id)


@dataclass(frozen=True, eq=False, kw_only=True, slots=True)
class ResourcesDir(Node):
    """``RESOURCES/`` of a project, subject or experiment.

    ``owner_uri`` is the address resources are listed and created under;
    ``experiment`` is set at experiment level, where the resources come from
    the experiment's item JSON instead of a listing of their own.
    """

    owner_uri: str
    experiment: ExperimentDir | None = None

    @property
    def key(self) -> tuple:
        return ("resources", self.owner_uri)


@dataclass(frozen=True, eq=False, kw_only=True, slots=True)
class ResourceDir(Node):
    """A resource folder; at experiment and scan level its files come from the
    experiment-wide file listing, elsewhere from the resource's own listing."""

    resource: Resource
    experiment_id: str = ""

    @property
    def key(self) -> tuple:
        return ("resource", self.resource.uri)


@dataclass(frozen=True, eq=False, kw_only=True, slots=True)
class FolderDir(Node):
    """A sub-folder inside a resource; ``subpath`` holds the safe names leading to it."""

    resource: Resource
    experiment_id: str = ""
    subpath: tuple[str, ...] = ()

    @property
    def key(self) -> tuple:
        return ("folder", self.resource.uri, self.subpath)


@dataclass(frozen=True, eq=False, kw_only=True, slots=True)
class FileNode(Node):
    file: RemoteFile

    is_dir = False

    @property
    def size(self) -> int:
        return self.file.size

    @property
    def key(self) -> tuple:
        return ("file", self.file.uri)


@dataclass
class Listing:
    """The entries of one directory by safe name; ``aliases`` resolve but are not listed."""

    entries: dict[str, Node]
    aliases: dict[str, Node] = field(default_factory=dict)
    _order: list[str] | None = field(default=None, repr=False)
    _position: dict[str, int] = field(default_factory=dict, repr=False)

    def get(self, name: str) -> Node | None:
        node = self.entries.get(name)
        return node if node is not None else self.aliases.get(name)

    @property
    def subdir_count(self) -> int:
        return sum(1 for node in self.entries.values() if node.is_dir)

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
        return [self.entries[entry] for entry in self._order[start + 1:start + 1 + count]]
