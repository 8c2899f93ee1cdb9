"""Extended attributes: the XNAT identity of each entry (``user.xnat.*``)."""

from __future__ import annotations

from xnatfs.client import paths
from xnatfs.fs.inodes import InodeEntry
from xnatfs.fs.local import LocalFileNode
from xnatfs.fs.nodes import (
    ExperimentDir,
    FileNode,
    Node,
    ProjectDir,
    ResourceDir,
    ResourcesDir,
    ScanDir,
    ScansDir,
    SubjectDir,
)

PREFIX = "user.xnat."
PREFIX_BYTES = PREFIX.encode()


def xattrs_for(node: Node) -> dict[str, str]:
    """Attribute name → value for ``node``; empty values are left out (ENODATA)."""
    values: dict[str, str] = {}
    if isinstance(node, ProjectDir):
        project = node.project
        values = {"id": project.id, "uri": node.uri, "xsi_type": "xnat:projectData",
                  "name": project.name, "secondary_id": project.secondary_id}
    elif isinstance(node, SubjectDir):
        subject = node.subject
        values = {"id": subject.id, "uri": subject.uri or paths.subject_by_id(subject.id),
                  "xsi_type": "xnat:subjectData", "label": subject.label, "project": subject.project}
    elif isinstance(node, ExperimentDir):
        experiment = node.experiment
        values = {"id": experiment.id, "uri": experiment.uri or node.uri, "xsi_type": experiment.xsi_type,
                  "label": experiment.label, "project": experiment.project, "date": experiment.date,
                  "subject_id": experiment.subject_id}
    elif isinstance(node, ScansDir):
        values = {"uri": paths.scans_of(node.experiment.uri)}
    elif isinstance(node, ScanDir):
        scan = node.scan
        values = {"id": scan.id, "uri": node.uri, "xsi_type": scan.xsi_type, "type": scan.type,
                  "series_description": scan.series_description, "quality": scan.quality}
    elif isinstance(node, ResourcesDir):
        values = {"uri": paths.resources_of(node.owner_uri)}
    elif isinstance(node, ResourceDir):
        resource = node.resource
        values = {"id": resource.id, "uri": resource.uri, "xsi_type": "xnat:resourceCatalog",
                  "label": resource.label, "format": resource.format, "content": resource.content}
    elif isinstance(node, FileNode):
        remote = node.file
        values = {"uri": remote.uri, "format": remote.format, "content": remote.content,
                  "digest": remote.digest, "tags": remote.tags, "resource": remote.resource_label,
                  "path": remote.path}
    elif isinstance(node, LocalFileNode):
        local = node.local
        values = {"upload": local.state, "upload_error": local.error, "target": local.target.describe()}
    return {PREFIX + name: value for name, value in values.items() if value}


def encoded_xattrs(entry: InodeEntry) -> dict[bytes, bytes]:
    """:func:`xattrs_for` of the entry's node as the kernel wants them (UTF-8).

    Worked out once per node snapshot; a local file's upload state changes
    under the same node, so its attributes are worked out on every call.
    """
    node = entry.node
    if isinstance(node, LocalFileNode):
        return _encoded(node)
    if entry.xattrs_of is not node:
        entry.xattrs = _encoded(node)
        entry.xattrs_of = node
    return entry.xattrs


def _encoded(node: Node) -> dict[bytes, bytes]:
    return {name.encode("utf-8"): value.encode("utf-8") for name, value in xattrs_for(node).items()}
