"""The raw listings the mount is built from, each named by a key that loads it.

A key is a small immutable value: equal keys name the same server listing, so
it is what the :class:`~xnatfs.cache.listing.ListingCache` keeps listings
under, and what a change made through the mount forgets. ``load(client)``
asks the server for the listing (blocking, in a worker thread).

============================  =============================================
key                           client call
============================  =============================================
ProjectsKey()                 list_projects()
SubjectsKey(P)                list_subjects(P)
ExperimentsKey(P)             list_experiments(P)   (all subjects at once)
SubjectKey(P, S)              find_subject(P, S)    (one subject, by label)
SubjectExperimentsKey(P, S)   list_subject_experiments(P, S)
ExperimentContentsKey(E)      get_experiment_contents(E)
ExperimentFilesKey(E)         list_files(experiment, all_levels=True)
ResourcesKey(owner_uri)       list_resources(owner_uri)
ResourceFilesKey(uri)         list_files(resource_uri)
ProjectContentsSearch(P)      list_project_contents(P)
SubjectResourcesSearch(P)     list_subject_resources(P)
============================  =============================================

The two searches answer :class:`ExperimentContentsKey` of every session and
:class:`ResourcesKey` of every subject of a project at once; such a key
names its search (``search``) and picks its own answer out of it
(``from_search``). When the tree uses a search is up to
:mod:`xnatfs.fs.walks`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, MutableMapping
from typing import Any, NamedTuple, Self

from xnatfs.client import paths
from xnatfs.client.contract import ArchiveClient
from xnatfs.client.models import Experiment, Resource
from xnatfs.errors import XnatNotFound


class ListingKey(tuple[Any, ...]):
    """A raw listing: what the server is asked, and under what it is kept.

    Held as ``(kind, *values)``: keys are looked up on every request, and a
    tuple is hashed and compared without running Python code, while the
    kind in front keeps keys of different kinds apart.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(map(repr, self[1:]))})"

    def load(self, client: ArchiveClient) -> object:
        """The listing, asked of the server (blocks)."""
        raise NotImplementedError

    def search(self, project: str) -> SearchKey | None:
        """The project-wide search that holds this listing too, if any."""
        return None

    def from_search(self, found: dict[Any, Any], memo: MutableMapping[Any, Any]) -> object | None:
        """This listing out of what its search found; None if the search left it out.

        ``memo`` keeps values built from one answer, so a listing taken from
        the same answer is the same object each time.
        """
        return None


class PerProjectKey(ListingKey):
    """A listing or search of one project, held as ``(kind, project)``."""

    __slots__ = ()

    def __new__(cls, project: str) -> Self:
        return tuple.__new__(cls, (cls, project))

    @property
    def project(self) -> str:
        project: str = self[1]
        return project


class ProjectsKey(ListingKey):
    __slots__ = ()

    def __new__(cls) -> Self:
        return tuple.__new__(cls, (cls,))

    def load(self, client: ArchiveClient) -> object:
        return client.list_projects()


class SubjectsKey(PerProjectKey):
    __slots__ = ()

    def load(self, client: ArchiveClient) -> object:
        return client.list_subjects(self.project)


class ExperimentsKey(PerProjectKey):
    __slots__ = ()

    def load(self, client: ArchiveClient) -> object:
        return client.list_experiments(self.project)


class PerSubjectKey(ListingKey):
    """A listing of one subject of a project, by its label there: ``(kind, project, label)``."""

    __slots__ = ()

    def __new__(cls, project: str, label: str) -> Self:
        return tuple.__new__(cls, (cls, project, label))

    @property
    def project(self) -> str:
        project: str = self[1]
        return project

    @property
    def label(self) -> str:
        label: str = self[2]
        return label


class SubjectKey(PerSubjectKey):
    """One subject's record (or None: the project has no subject of that label)."""

    __slots__ = ()

    def load(self, client: ArchiveClient) -> object:
        return client.find_subject(self.project, self.label)


class SubjectSessions(NamedTuple):
    """A subject's sessions from the subject's own listing: every one of them is the subject's."""

    experiments: tuple[Experiment, ...]


class SubjectExperimentsKey(PerSubjectKey):
    """One subject's sessions, without the rest of its project's (a :class:`SubjectSessions`)."""

    __slots__ = ()

    def load(self, client: ArchiveClient) -> object:
        try:
            return SubjectSessions(tuple(client.list_subject_experiments(self.project, self.label)))
        except XnatNotFound:
            # No such subject: it has no sessions, and whoever asked for it hears so from SubjectKey.
            return SubjectSessions(())


class PerExperimentKey(ListingKey):
    """A listing of one session, held as ``(kind, experiment ID)``."""

    __slots__ = ()

    def __new__(cls, experiment_id: str) -> Self:
        return tuple.__new__(cls, (cls, experiment_id))

    @property
    def experiment_id(self) -> str:
        experiment_id: str = self[1]
        return experiment_id


class ExperimentContentsKey(PerExperimentKey):
    """A session's structure: its scans, their resources, its own resources."""

    __slots__ = ()

    def load(self, client: ArchiveClient) -> object:
        return client.get_experiment_contents(self.experiment_id)

    def search(self, project: str) -> SearchKey | None:
        return ProjectContentsSearch(project)

    def from_search(self, found: dict[Any, Any], memo: MutableMapping[Any, Any]) -> object | None:
        return found.get(self.experiment_id)


class ExperimentFilesKey(PerExperimentKey):
    """Every file of a session and of its scans, in one listing."""

    __slots__ = ()

    def load(self, client: ArchiveClient) -> object:
        return client.list_files(paths.experiment(self.experiment_id), all_levels=True)


class ResourcesKey(ListingKey):
    """The resources of a project or a subject (``owner_uri``)."""

    __slots__ = ()

    def __new__(cls, owner_uri: str) -> Self:
        return tuple.__new__(cls, (cls, owner_uri))

    @property
    def owner_uri(self) -> str:
        owner_uri: str = self[1]
        return owner_uri

    def load(self, client: ArchiveClient) -> object:
        return client.list_resources(self.owner_uri)

    def search(self, project: str) -> SearchKey | None:
        return SubjectResourcesSearch(project) if paths.subject_of(self.owner_uri) is not None else None

    def from_search(self, found: dict[Any, Any], memo: MutableMapping[Any, Any]) -> object | None:
        labels = found.get(paths.subject_of(self.owner_uri))
        if labels is None:
            return None
        built = memo.get(self)
        if built is None or built[0] is not labels:
            built = (
                labels,
                tuple(Resource(label=label, uri=paths.resource(self.owner_uri, label)) for label in labels),
            )
            memo[self] = built
        return built[1]


class ResourceFilesKey(ListingKey):
    """The files of one resource, from the resource's own listing."""

    __slots__ = ()

    def __new__(cls, resource_uri: str) -> Self:
        return tuple.__new__(cls, (cls, resource_uri))

    @property
    def resource_uri(self) -> str:
        resource_uri: str = self[1]
        return resource_uri

    def load(self, client: ArchiveClient) -> object:
        return client.list_files(self.resource_uri)


def files_key(resource_uri: str) -> ListingKey:
    """The raw listing that holds the files of a resource.

    A resource of a session or of its scans is listed with the whole
    session; any other resource by itself.
    """
    experiment_id = paths.owning_experiment(resource_uri)
    if experiment_id is not None:
        return ExperimentFilesKey(experiment_id)
    return ResourceFilesKey(resource_uri)


class SearchAnswer:
    """What a project-wide search found (None: the server cannot do it), and when it was asked."""

    __slots__ = ("found", "started")

    def __init__(self, started: float, found: dict[Any, Any] | None) -> None:
        self.started = started
        self.found = found

    def __len__(self) -> int:
        # Its weight in the listing cache: one row per session (or subject) answered.
        return len(self.found) if self.found is not None else 0

    @classmethod
    def taken(cls, search: Callable[[], dict[Any, Any] | None]) -> SearchAnswer:
        started = time.monotonic()
        return cls(started, search())


class SearchKey(ListingKey):
    """A project-wide search; its listing is a :class:`SearchAnswer`."""

    __slots__ = ()

    def load(self, client: ArchiveClient) -> SearchAnswer:
        raise NotImplementedError


class ProjectContentsSearch(SearchKey, PerProjectKey):
    __slots__ = ()

    def load(self, client: ArchiveClient) -> SearchAnswer:
        return SearchAnswer.taken(lambda: client.list_project_contents(self.project))


class SubjectResourcesSearch(SearchKey, PerProjectKey):
    __slots__ = ()

    def load(self, client: ArchiveClient) -> SearchAnswer:
        return SearchAnswer.taken(lambda: client.list_subject_resources(self.project))
