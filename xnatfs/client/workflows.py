"""Finding XNAT's AutoRun workflows, which block renames while they are open.

XNAT starts an ``xnat_tools/AutoRun.xml`` workflow when a session is
archived, and it can stay "Queued" forever; while it is open, renaming the
session or its subject answers 409. The search service is the only way to
find its ID: ``POST /data/search`` with an ``xdat:bundle`` document.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any, cast

AUTORUN_PIPELINE = "xnat_tools/AutoRun.xml"
XDAT_NS = "http://nrg.wustl.edu/security"
# Statuses after which a workflow no longer blocks anything.
FINISHED_STATUSES = frozenset({"complete", "failed", "failed (dismissed)", "killed"})
# The search service's column names for the workflow's primary key differ by version.
_ID_KEYS = ("workflow_id", "wrk_workflowdata_id", "wrk_workflowData_id", "wrk:workflowdata/wrk_workflowdata_id")


def _add(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, f"{{{XDAT_NS}}}{tag}", attrs)
    if text is not None:
        element.text = text
    return element


def autorun_search(item_id: str, project: str) -> bytes:
    """The ``xdat:bundle`` that finds AutoRun workflows of one item in one project."""
    ET.register_namespace("xdat", XDAT_NS)
    bundle = ET.Element(
        f"{{{XDAT_NS}}}bundle",
        {
            "ID": "@wrk:workflowData",
            "brief-description": "",
            "description": "",
            "allow-diff-columns": "0",
            "secure": "false",
        },
    )
    _add(bundle, "root_element_name", "wrk:workflowData")
    for sequence, field in enumerate(("pipeline_name", "wrk_workflowData_id", "status")):
        column = _add(bundle, "search_field")
        _add(column, "element_name", "wrk:workflowData")
        _add(column, "field_ID", field)
        _add(column, "sequence", str(sequence))
        _add(column, "type", "string")
        _add(column, "header", f"wrk:workflowData/{field}")
    where = _add(bundle, "search_where", method="AND")
    for schema_field, comparison, value in (
        ("wrk:workflowData/ID", "LIKE", item_id),
        ("wrk:workflowData/ExternalID", "=", project),
        ("wrk:workflowData/pipeline_name", "=", AUTORUN_PIPELINE),
    ):
        criteria = _add(where, "criteria", override_value_formatting="0")
        _add(criteria, "schema_field", schema_field)
        _add(criteria, "comparison_type", comparison)
        _add(criteria, "value", value)
    return cast(bytes, ET.tostring(bundle, encoding="utf-8", xml_declaration=True))


def workflow_id(row: dict[str, Any]) -> str:
    """The workflow's ID in a search answer row, or ""."""
    lowered = {str(key).lower(): value for key, value in row.items()}
    for key in _ID_KEYS:
        value = lowered.get(key.lower())
        if value not in (None, ""):
            return str(value)
    return ""


def is_open(row: dict[str, Any]) -> bool:
    """True unless the row says the workflow has finished (rows without a status count as open)."""
    lowered = {str(key).lower(): value for key, value in row.items()}
    status = lowered.get("status", lowered.get("wrk:workflowdata/status"))
    return not status or str(status).strip().lower() not in FINISHED_STATUSES
