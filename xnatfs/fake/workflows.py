"""Workflows and the ``xdat:bundle`` search that finds them.

Only what clients use to find and dismiss stuck AutoRun pipelines: a search
rooted at ``wrk:workflowData`` with equality and LIKE criteria, the
workflow item, and setting its status.
"""

from __future__ import annotations

import fnmatch
import xml.etree.ElementTree as ET

from .http import BadRequest, Request, Response, error_page, json_response, method_not_allowed
from .items import java_date
from .store import Store
from .tables import table_response

WORKFLOW_FIELDS = {
    # search field name (lower case) -> workflow column
    "id": "experiment_id",
    "externalid": "project",
    "pipeline_name": "pipeline_name",
    "status": "status",
    "wrk_workflowdata_id": "id",
    "data_type": "data_type",
    "launch_time": "launch_time",
}
RESULT_COLUMNS = [
    "workflow_id",
    "wrk_workflowdata_id",
    "id",
    "externalid",
    "pipeline_name",
    "status",
    "data_type",
    "launch_time",
]


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_bundle(document: str) -> tuple[str, list[tuple[str, str, str]]]:
    """The root element and the (field, comparison, value) criteria of a search bundle."""
    try:
        root = ET.fromstring(document)
    except ET.ParseError as exc:
        raise BadRequest(f"Unreadable search document: {exc}") from exc
    root_element = ""
    criteria = []
    for node in root.iter():
        name = _local(node.tag)
        if name == "root_element_name":
            root_element = (node.text or "").strip()
        elif name == "criteria" and node.find("*") is not None:
            parts = {_local(child.tag): (child.text or "").strip() for child in node}
            if "schema_field" in parts:
                criteria.append((parts["schema_field"], parts.get("comparison_type", "="), parts.get("value", "")))
    if not root_element:
        raise BadRequest("The search document names no root element.")
    return root_element, criteria


def _criterion_matches(workflow, field: str, comparison: str, value: str) -> bool:
    column = WORKFLOW_FIELDS.get(field.rsplit("/", 1)[-1].lower())
    if column is None:
        return True
    actual = str(workflow[column])
    op = comparison.strip().upper()
    if op == "LIKE":
        pattern = value.replace("%", "*")
        if "*" not in pattern:
            pattern = f"*{pattern}*"
        return fnmatch.fnmatchcase(actual.lower(), pattern.lower())
    if op in ("!=", "<>"):
        return actual != value
    return actual == value


def search(request: Request, store: Store) -> Response:
    if request.method != "POST":
        return method_not_allowed(request, "POST")
    root_element, criteria = parse_bundle(request.read_body().decode("utf-8", "replace"))
    if root_element != "wrk:workflowData":
        return table_response(request, [], ["ID"], title="Search")
    rows = []
    for workflow in store.workflows():
        if all(_criterion_matches(workflow, *c) for c in criteria):
            rows.append(
                {
                    "workflow_id": workflow["id"],
                    "wrk_workflowdata_id": workflow["id"],
                    "id": workflow["experiment_id"],
                    "externalid": workflow["project"],
                    "pipeline_name": workflow["pipeline_name"],
                    "status": workflow["status"],
                    "data_type": workflow["data_type"],
                    "launch_time": workflow["launch_time"],
                }
            )
    return table_response(request, rows, RESULT_COLUMNS, title="Search")


def workflow_answer(request: Request, store: Store, workflow_id: str) -> Response:
    workflow = store.workflow(int(workflow_id)) if workflow_id.isdigit() else None
    if workflow is None:
        return error_page(404, f"Unable to find workflow {workflow_id}.")
    if request.method in ("GET", "HEAD"):
        item = {
            "children": [],
            "meta": {"isHistory": False, "xsi:type": "wrk:workflowData", "start_date": java_date()},
            "data_fields": {
                "wrk_workflowData_id": workflow["id"],
                "ID": workflow["experiment_id"],
                "ExternalID": workflow["project"],
                "data_type": workflow["data_type"],
                "pipeline_name": workflow["pipeline_name"],
                "status": workflow["status"],
                "launch_time": workflow["launch_time"],
            },
        }
        return json_response({"items": [item]})
    if request.method == "PUT":
        status = None
        for key, value in request.query_items:
            if key.rsplit("/", 1)[-1].lower() == "status":
                status = value
        if not status:
            return error_page(400, "Nothing to change: give wrk:workflowData/status.")
        store.set_workflow_status(workflow["id"], status)
        return Response(200)
    return method_not_allowed(request, "GET, HEAD, PUT")
