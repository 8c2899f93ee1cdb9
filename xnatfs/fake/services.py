"""Everything outside the archive tree: login, tokens, import, search, workflows, xapi.

Also the authentication gate every request passes (:func:`authenticate`).
"""

from __future__ import annotations

import time
from importlib import resources
from urllib.parse import parse_qsl

from .auth import parse_basic
from .http import Request, Response, error_page, json_response, method_not_allowed, text_response
from .importer import import_service
from .workflows import search, workflow_answer

XNAT_VERSION = "1.8.10"
SCHEMA_FILES = {"xnat": "xnat.xsd"}
BROWSER_MARKERS = ("Mozilla", "Chrome", "Safari")

EXPIRED_PASSWORD_PAGE = """<!DOCTYPE html>
<html><head><title>XNAT - Change password</title></head>
<body><div id="login_area"><h2>Your password has expired</h2>
<p>Your password has expired. Please choose a new password.</p>
<form name="form1" method="post" action="/app/action/ModifyPassword">
<input type="password" name="xdat:user.primary_password"/></form></div></body></html>
"""


def unauthorized_page(server) -> Response:
    """Tomcat's answer to a non-browser client without a valid login."""
    body = (
        '<!DOCTYPE html><html lang="en"><head><title>HTTP Status 401 – Unauthorized</title>'
        "</head><body><h1>HTTP Status 401 – Unauthorized</h1></body></html>"
    )
    response = Response(401, body.encode(), "text/html;charset=utf-8")
    return response.header("WWW-Authenticate", f'Basic realm="{server.site_id}"')


def _is_browser(request: Request) -> bool:
    agent = request.headers.get("User-Agent") or ""
    return any(marker in agent for marker in BROWSER_MARKERS)


def authenticate(request: Request, server) -> Response | None:
    """Establish ``request.user``; returns the refusal to send when that fails.

    A live JSESSIONID cookie wins; otherwise HTTP Basic (user:password or a
    token alias:secret) logs in and starts a new session.
    """
    user = server.auth.session_user(request.cookie("JSESSIONID"))
    if user is not None:
        request.user = user
        return None
    credentials = parse_basic(request.headers.get("Authorization"))
    if credentials is not None:
        user = server.auth.check_password(*credentials)
        if user is None:
            return unauthorized_page(server)
        if server.expired_password and user == credentials[0]:
            return Response(200, EXPIRED_PASSWORD_PAGE.encode(), "text/html;charset=UTF-8")
        request.user = user
        request.new_session = server.auth.new_session(user)
        return None
    if _is_browser(request):
        return Response(302, b"").header("Location", "/app/template/Login.vm")
    return unauthorized_page(server)


def session_cookies(session_id: str, timeout: float) -> list[tuple[str, str]]:
    expiry = f'"{int(time.time() * 1000)},{int(timeout * 1000)}"'
    return [
        ("Set-Cookie", f"JSESSIONID={session_id}; Path=/; HttpOnly"),
        ("Set-Cookie", f"SESSION_EXPIRATION_TIME={expiry}; Path=/"),
    ]


def public_answer(request: Request, server, segments: list[str]) -> Response | None:
    """Answers that need no login (logging out, form login); None for everything else."""
    if segments == ["JSESSION"] and request.method == "DELETE":
        server.auth.end_session(request.cookie("JSESSIONID"))
        return Response(200)
    if segments == ["services", "auth"] and request.method in ("PUT", "POST"):
        return _form_login(request, server)
    return None


def _form_login(request: Request, server) -> Response:
    form = dict(parse_qsl(request.read_body(1024 * 1024).decode("utf-8", "replace")))
    username, password = form.get("username", ""), form.get("password", "")
    user = server.auth.check_password(username, password)
    if user is None:
        return error_page(401, "Login attempt failed. Please try again.")
    if server.expired_password and user == username:
        return Response(200, EXPIRED_PASSWORD_PAGE.encode(), "text/html;charset=UTF-8")
    session_id = server.auth.new_session(user)
    response = text_response(session_id)
    response.headers += session_cookies(session_id, server.auth.session_timeout)
    return response


def data_service(request: Request, server, segments: list[str]) -> Response | None:
    """The ``/data/...`` services outside the archive tree; None if ``segments`` is not one."""
    head = segments[0]
    if head == "JSESSION" and len(segments) == 1:
        if request.method not in ("GET", "POST", "HEAD"):
            return method_not_allowed(request, "GET, POST, DELETE")
        return text_response(request.new_session or request.cookie("JSESSIONID") or "")
    if head == "auth" and len(segments) == 1:
        return text_response(f"User '{request.user}' is logged in")
    if head == "services" and len(segments) >= 2:
        return _service(request, server, segments[1:])
    if head == "search" and len(segments) == 1:
        return search(request, server.store)
    if head == "search" and segments[1:] == ["elements"]:
        return _search_elements(request)
    if head == "search" and len(segments) == 3 and segments[1] == "elements":
        return _display_fields(request, segments[2])
    if head == "workflows" and len(segments) == 2:
        return workflow_answer(request, server.store, segments[1])
    return None


def _service(request: Request, server, rest: list[str]) -> Response:
    if rest == ["import"]:
        return import_service(request, server)
    if rest[0] == "tokens" and len(rest) >= 2:
        return _tokens(request, server, rest[1:])
    return error_page(404, "Unknown service.")


def _tokens(request: Request, server, rest: list[str]) -> Response:
    action = rest[0]
    if action == "issue" and request.method in ("GET", "HEAD"):
        user = request.user
        if rest[1:3] and rest[1] == "user":
            user = rest[2]
        token = server.auth.issue_token(user)
        return json_response(
            {
                "alias": token.alias,
                "xdatUserId": user,
                "secret": token.secret,
                "singleUse": False,
                "estimatedExpirationTime": int(token.expires * 1000),
                "timestamp": int(token.created * 1000),
                "enabled": True,
                "created": int(token.created * 1000),
                "id": token.token_id,
                "disabled": 0,
            }
        )
    if action == "validate" and len(rest) == 3:
        user = server.auth.token_user(rest[1], rest[2])
        return json_response({"valid": user} if user else {})
    return error_page(404, "Unknown token service.")


def _search_elements(request: Request) -> Response:
    rows = [
        {
            "ELEMENT_NAME": name,
            "COUNT": "0",
            "SINGULAR": singular,
            "PLURAL": singular + "s",
            "IS_EXPERIMENT": str(experiment).lower(),
            "IS_IMAGE_SESSION": str(image).lower(),
            "IS_IMAGE_SCAN": "false",
            "IS_SUBJECT_ASSESSOR": str(experiment).lower(),
            "IS_IMAGE_ASSESSOR": "false",
            "SECURED": "true",
            "SEARCHABLE": "true",
            "BROWSEABLE": "true",
        }
        for name, singular, experiment, image in (
            ("xnat:projectData", "Project", False, False),
            ("xnat:subjectData", "Subject", False, False),
            ("xnat:mrSessionData", "MR Session", True, True),
            ("xnat:ctSessionData", "CT Session", True, True),
            ("xnat:petSessionData", "PET Session", True, True),
        )
    ]
    body = {"ResultSet": {"Result": rows, "totalRecords": str(len(rows))}}
    return json_response(body)


SESSION_DISPLAY_FIELDS = (
    ("SESSION_ID", "ID", "string"),
    ("LABEL", "Label", "string"),
    ("PROJECT", "Project", "string"),
    ("SUBJECT_ID", "Subject", "string"),
    ("SUBJECT_LABEL", "Subject label", "string"),
    ("DATE", "Date", "date"),
    ("INSERT_DATE", "Inserted", "date"),
    ("MODALITY", "Modality", "string"),
)
DISPLAY_FIELDS = {
    "xnat:projectData": (
        ("ID", "ID", "string"),
        ("NAME", "Name", "string"),
        ("DESCRIPTION", "Description", "string"),
        ("SECONDARY_ID", "Running title", "string"),
        ("PI", "PI", "string"),
    ),
    "xnat:subjectData": (
        ("SUBJECT_ID", "ID", "string"),
        ("SUBJECT_LABEL", "Label", "string"),
        ("PROJECT", "Project", "string"),
        ("INSERT_DATE", "Inserted", "date"),
        ("INSERT_USER", "Creator", "string"),
    ),
    "xnat:mrSessionData": SESSION_DISPLAY_FIELDS,
    "xnat:ctSessionData": SESSION_DISPLAY_FIELDS,
    "xnat:petSessionData": SESSION_DISPLAY_FIELDS,
}


def _display_fields(request: Request, element: str) -> Response:
    fields = DISPLAY_FIELDS.get(element)
    if fields is None:
        return error_page(404, f"Unknown data type {element}.")
    rows = [
        {
            "FIELD_ID": field,
            "HEADER": header,
            "TYPE": kind,
            "DESC": "",
            "ELEMENT_NAME": element,
            "SRC": "0",
            "REQUIRES_VALUE": "false",
        }
        for field, header, kind in fields
    ]
    return json_response({"ResultSet": {"Result": rows, "totalRecords": str(len(rows))}})


def xapi(request: Request, server, rest: list[str]) -> Response:
    if rest == ["siteConfig", "buildInfo"]:
        return json_response(
            {
                "version": XNAT_VERSION,
                "buildNumber": "fake",
                "commit": "fake",
                "branch": "fake",
                "isDirty": "false",
                "buildDate": "Mon Jan 01 00:00:00 UTC 2024",
            }
        )
    if rest == ["siteConfig", "siteId"]:
        return text_response(server.site_id)
    if rest == ["siteConfig", "uptime"]:
        seconds = int(time.monotonic() - server.started_at)
        return json_response(
            {
                "days": seconds // 86400,
                "hours": seconds // 3600 % 24,
                "minutes": seconds // 60 % 60,
                "seconds": seconds % 60,
            }
        )
    if rest == ["schemas"]:
        return json_response(list(SCHEMA_FILES))
    if len(rest) == 2 and rest[0] == "schemas" and rest[1] in SCHEMA_FILES:
        text = resources.files(__package__).joinpath(SCHEMA_FILES[rest[1]]).read_text("utf-8")
        return Response(200, text.encode(), "application/xml;charset=UTF-8")
    if rest == ["access", "projects"]:
        return json_response([{"ID": p["id"], "role": "owner"} for p in server.store.projects()])
    if rest == ["users", "username"]:
        return text_response(request.user or "")
    return error_page(404, "Unknown xapi address.")
