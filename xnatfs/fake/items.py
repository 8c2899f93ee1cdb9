"""Single-item answers: XNAT's ``items/data_fields/children/meta`` JSON and its XML.

Values in ``data_fields`` are typed (numbers are JSON numbers), unlike
listings. Some IDs are sent twice, in the two spellings XNAT uses.
Children with no items are left out, as XNAT does.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from xml.sax.saxutils import escape, quoteattr

from .store import Store

XNAT_NS = "http://nrg.wustl.edu/xnat"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"

# Element names XNAT uses for its types in XML documents.
ELEMENT_NAMES = {
    "xnat:projectData": "xnat:Project",
    "xnat:subjectData": "xnat:Subject",
    "xnat:mrSessionData": "xnat:MRSession",
    "xnat:ctSessionData": "xnat:CTSession",
    "xnat:petSessionData": "xnat:PETSession",
    "xnat:mrScanData": "xnat:MRScan",
    "xnat:ctScanData": "xnat:CTScan",
    "xnat:petScanData": "xnat:PETScan",
    "xnat:resourceCatalog": "xnat:resourceCatalog",
}


def java_date(epoch: float | None = None) -> str:
    """``Date.toString()`` form, e.g. ``Fri Apr 17 13:48:24 EDT 2015``."""
    return time.strftime("%a %b %d %H:%M:%S %Z %Y", time.localtime(epoch))


def _started(insert_date: str) -> str:
    """``meta.start_date``: when this version of the item began, i.e. its row's insert_date
    (the store's ``2018-05-14 15:17:57.815`` form) in ``Date.toString()`` form. Stable from one
    answer to the next, as a real server's is."""
    return java_date(datetime.strptime(insert_date, "%Y-%m-%d %H:%M:%S.%f").timestamp())


def _meta(xsi_type: str, started: str, event_id: int | None = None) -> dict:
    meta = {"isHistory": False, "xsi:type": xsi_type, "start_date": _started(started)}
    if event_id is not None:
        meta["create_event_id"] = event_id
    return meta


def _children(*pairs: tuple[str, list]) -> list[dict]:
    return [{"field": name, "items": items} for name, items in pairs if items]


def _item(xsi_type: str, data_fields: dict, children: list[dict], started: str, event_id: int | None = None) -> dict:
    return {"children": children, "meta": _meta(xsi_type, started, event_id), "data_fields": data_fields}


def items_document(item: dict) -> dict:
    return {"items": [item]}


def project_item(store: Store, project) -> dict:
    fields = {
        "ID": project["id"],
        "secondary_ID": project["secondary_id"],
        "name": project["name"],
        "description": project["description"],
        "active": True,
    }
    pi = []
    if project["pi_firstname"] or project["pi_lastname"]:
        pi = [
            _item(
                "xnat:investigatorData",
                {"firstname": project["pi_firstname"], "lastname": project["pi_lastname"]},
                [],
                project["insert_date"],
            )
        ]
    resources = [resource_item(store, r) for r in store.resources("project", project["id"])]
    return _item(
        "xnat:projectData", fields, _children(("PI", pi), ("resources/resource", resources)), project["insert_date"]
    )


def subject_item(store: Store, subject) -> dict:
    fields = {"ID": subject["id"], "id": subject["id"], "label": subject["label"], "project": subject["project"]}
    for key, column in (("group", "grp"), ("src", "src")):
        if subject[column]:
            fields[key] = subject[column]
    experiments = [experiment_item(store, e) for e in store.experiments_of_subject(subject["id"])]
    shares = [
        _item(
            "xnat:projectParticipant",
            {"project": s["project"], "label": s["label"], "xnat_projectParticipant_id": s["share_id"]},
            [],
            subject["insert_date"],
        )
        for s in store.subject_shares(subject["id"])
    ]
    resources = [resource_item(store, r) for r in store.resources("subject", subject["id"])]
    return _item(
        "xnat:subjectData",
        fields,
        _children(
            ("experiments/experiment", experiments), ("sharing/share", shares), ("resources/resource", resources)
        ),
        subject["insert_date"],
    )


def experiment_item(store: Store, experiment) -> dict:
    extra = json.loads(experiment["fields"])
    fields = {
        "ID": experiment["id"],
        "id": experiment["id"],
        "label": experiment["label"],
        "project": experiment["project"],
        "subject_ID": experiment["subject_id"],
    }
    for key, value in (("date", experiment["date"]), ("time", experiment["time"]), ("UID", experiment["uid"])):
        if value:
            fields[key] = value
    fields.update(extra)
    shares = store.experiment_shares(experiment["id"])
    scans = [scan_item(store, s, experiment["insert_date"], shares) for s in store.scans(experiment["id"])]
    resources = [resource_item(store, r) for r in store.resources("experiment", experiment["id"])]
    share_items = [
        _item(
            "xnat:experimentData_share",
            {"project": s["project"], "label": s["label"], "xnat_experimentData_share_id": s["share_id"]},
            [],
            experiment["insert_date"],
        )
        for s in shares
    ]
    return _item(
        experiment["xsi_type"],
        fields,
        _children(("scans/scan", scans), ("resources/resource", resources), ("sharing/share", share_items)),
        experiment["insert_date"],
        event_id=_number(experiment["id"]),
    )


def scan_item(store: Store, scan, started: str, experiment_shares=()) -> dict:
    """``started``: its session's insert_date (scans keep no date of their own here)."""
    extra = json.loads(scan["fields"])
    add_params = extra.pop("addParam", {})
    fields = {
        "ID": scan["scan_id"],
        "type": scan["type"],
        "series_description": scan["series_description"],
        "quality": scan["quality"],
        "frames": scan["frames"],
        "image_session_ID": scan["experiment_id"],
        "xnat_imagescandata_id": scan["pk"],
        "xnat_imageScanData_id": scan["pk"],
    }
    if scan["uid"]:
        fields["UID"] = scan["uid"]
    if scan["note"]:
        fields["note"] = scan["note"]
    fields.update(extra)
    params = [
        _item("xnat:addField", {"name": name, "addField": value}, [], started) for name, value in add_params.items()
    ]
    files = [resource_item(store, r) for r in store.resources("scan", str(scan["pk"]))]
    shares = [
        _item("xnat:imageScanData_share", {"project": s["project"], "label": scan["scan_id"]}, [], started)
        for s in experiment_shares
    ]
    return _item(
        scan["xsi_type"],
        fields,
        _children(("parameters/addParam", params), ("file", files), ("sharing/share", shares)),
        started,
    )


def resource_item(store: Store, resource) -> dict:
    count, total = store.resource_totals(resource["id"])
    fields = {
        "label": resource["label"],
        "format": resource["format"],
        "content": resource["content"],
        "file_count": count,
        "file_size": total,
        "xnat_abstractresource_id": resource["id"],
        "xnat_abstractResource_id": resource["id"],
        "URI": str(store.archive_dir / str(resource["id"]) / f"{resource['label']}_catalog.xml"),
    }
    started = resource["insert_date"]
    tags = [
        _item("xnat:abstractResource_tag", {"tag": t}, [], started) for t in resource["tags"].split(",") if t.strip()
    ]
    return _item("xnat:resourceCatalog", fields, _children(("tags/tag", tags)), started)


def _number(accession: str) -> int:
    digits = "".join(ch for ch in accession if ch.isdigit())
    return int(digits) if digits else 0


# ---- XML ---------------------------------------------------------------


def item_xml(item: dict) -> str:
    """The item as an XNAT-style XML document (root element named after its type)."""
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + _element(item, root=True) + "\n"


_ATTRIBUTE_FIELDS = {"ID", "label", "project", "type", "UID"}


def _element(item: dict, root: bool = False, name: str | None = None) -> str:
    xsi_type = item["meta"]["xsi:type"]
    tag = name or ELEMENT_NAMES.get(xsi_type, xsi_type)
    attrs = []
    if root:
        attrs.append(f'xmlns:xnat="{XNAT_NS}" xmlns:xsi="{XSI_NS}"')
    else:
        attrs.append(f'xsi:type="{xsi_type}"')
    body = []
    for key, value in item["data_fields"].items():
        if key in _ATTRIBUTE_FIELDS and "/" not in key:
            attrs.append(f"{key}={quoteattr(_xml_text(value))}")
        elif key in ("id", "xnat_abstractResource_id", "xnat_imageScanData_id"):
            continue
        else:
            body.append(_nested_field(key, value))
    for child in item["children"]:
        container, _, member = child["field"].rpartition("/")
        members = "".join(_element(sub, name=f"xnat:{member or container}") for sub in child["items"])
        body.append(f"<xnat:{container}>{members}</xnat:{container}>" if container else members)
    return f"<{tag} {' '.join(attrs)}>{''.join(body)}</{tag}>"


def _nested_field(key: str, value) -> str:
    parts = key.split("/")
    inner = escape(_xml_text(value))
    for part in reversed(parts):
        inner = f"<xnat:{part}>{inner}</xnat:{part}>"
    return inner


def _xml_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
