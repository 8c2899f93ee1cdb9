"""What the file system asks of an XNAT client: the ``ArchiveClient`` protocol.

The tree, the series fetcher and the uploader are written against this and
nothing more; :class:`xnatfs.client.connection.XnatConnection` is the client
that talks HTTP to a real server, and any object with these calls can stand
in for it. Every call blocks (the file system runs them in worker threads)
and raises ``XnatError`` children. Addresses are server paths made by
:mod:`xnatfs.client.paths`.
"""

from __future__ import annotations

from typing import BinaryIO, Protocol, runtime_checkable

from xnatfs.client.models import Experiment, ExperimentContents, Project, RemoteFile, Resource, Subject
from xnatfs.client.parts import PartPlan, PartTarget


@runtime_checkable
class ArchiveClient(Protocol):
    # ---- listings ------------------------------------------------------

    def list_projects(self) -> list[Project]: ...

    def list_subjects(self, project: str) -> list[Subject]: ...

    def list_experiments(self, project: str, subject: str | None = None) -> list[Experiment]: ...

    def find_subject(self, project: str, label: str) -> Subject | None: ...

    def list_subject_experiments(self, project: str, subject: str) -> list[Experiment]: ...

    def get_experiment_contents(self, experiment_id: str) -> ExperimentContents: ...

    def list_project_contents(self, project: str) -> dict[str, ExperimentContents] | None: ...

    def list_subject_resources(self, project: str) -> dict[str, tuple[str, ...]] | None: ...

    def list_resources(self, parent_uri: str) -> list[Resource]: ...

    def list_files(self, uri: str, all_levels: bool = False) -> list[RemoteFile]: ...

    # ---- reading -------------------------------------------------------

    @property
    def supports_range(self) -> bool | None: ...

    def download(self, uri: str, fileobj: BinaryIO, *, offset: int = 0, length: int | None = None) -> int: ...

    def download_in_parts(self, uri: str, target: PartTarget, plan: PartPlan) -> None: ...

    def download_zip(self, uri: str, fileobj: BinaryIO) -> int: ...

    # ---- writing -------------------------------------------------------

    def upload_file(
        self,
        resource_uri: str,
        relpath: str,
        fileobj: BinaryIO | bytes,
        *,
        overwrite: bool = True,
        retries: int | None = None,
    ) -> None: ...

    def delete_file(self, resource_uri: str, relpath: str, *, retries: int | None = None) -> None: ...

    def import_dicom_zip(self, project: str, subject: str, experiment: str, fileobj: BinaryIO) -> list[str]: ...

    def create_subject(self, project: str, label: str, *, exist_ok: bool = False) -> str: ...

    def create_experiment(
        self, project: str, subject: str, label: str, xsi_type: str = "xnat:mrSessionData", *, exist_ok: bool = False
    ) -> str: ...

    def create_resource(self, parent_uri: str, label: str) -> None: ...

    def delete_resource(self, resource_uri: str) -> None: ...

    def delete_project(self, project: str) -> None: ...

    def delete_subject(self, project: str, subject: str) -> None: ...

    def delete_experiment(self, project: str, experiment_id: str) -> None: ...

    def rename_subject(self, project: str, old_name: str, new_name: str, rename_exp: bool = False) -> None: ...

    def rename_experiment(self, project: str, subject: str, old_name: str, new_name: str) -> None: ...
