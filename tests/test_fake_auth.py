"""The fake XNAT's logins: JSESSION, Basic, alias tokens, form login, timeouts, expired passwords."""

from __future__ import annotations

import re
import time

import requests

PROJECTS = "/data/projects?format=json"


def login(server) -> requests.Session:
    session = requests.Session()
    answer = session.post(server.url + "/data/JSESSION", auth=(server.username, server.password))
    assert answer.status_code == 200
    return session


def test_jsession_login_sets_cookies_and_returns_id(fake_xnat):
    session = requests.Session()
    answer = session.post(fake_xnat.url + "/data/JSESSION", auth=("admin", "admin"))
    assert answer.status_code == 200
    assert re.fullmatch(r"[0-9A-F]{32}", answer.text)
    assert session.cookies["JSESSIONID"] == answer.text
    expiry = session.cookies["SESSION_EXPIRATION_TIME"]
    stamp, timeout = expiry.strip('"').split(",")
    assert int(timeout) == 900000
    assert abs(int(stamp) / 1000 - time.time()) < 60
    assert session.get(fake_xnat.url + PROJECTS).status_code == 200
    assert session.get(fake_xnat.url + "/data/JSESSION").text == answer.text


def test_wrong_password_is_401_with_basic_challenge(fake_xnat):
    answer = requests.post(fake_xnat.url + "/data/JSESSION", auth=("admin", "wrong"))
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"] == 'Basic realm="XNAT"'
    assert "JSESSIONID" not in answer.cookies


def test_no_credentials_is_401_for_programs_and_302_for_browsers(fake_xnat):
    plain = requests.get(fake_xnat.url + PROJECTS)
    assert plain.status_code == 401
    assert plain.headers["WWW-Authenticate"].startswith("Basic realm=")
    assert plain.text.startswith("<!DOCTYPE")
    browser = requests.get(
        fake_xnat.url + PROJECTS, allow_redirects=False, headers={"User-Agent": "Mozilla/5.0 (X11; Linux x86_64)"}
    )
    assert browser.status_code == 302
    assert "Login" in browser.headers["Location"]


def test_unknown_session_cookie_is_401(fake_xnat):
    answer = requests.get(fake_xnat.url + PROJECTS, cookies={"JSESSIONID": "0" * 32})
    assert answer.status_code == 401


def test_basic_auth_works_on_any_request_and_starts_a_session(fake_xnat):
    answer = requests.get(fake_xnat.url + PROJECTS, auth=("admin", "admin"))
    assert answer.status_code == 200
    assert re.fullmatch(r"[0-9A-F]{32}", answer.cookies["JSESSIONID"])


def test_logout_ends_the_session(fake_xnat):
    session = login(fake_xnat)
    assert session.delete(fake_xnat.url + "/data/JSESSION").status_code == 200
    assert session.get(fake_xnat.url + PROJECTS).status_code == 401


def test_idle_session_expires(fake_xnat):
    fake_xnat.session_timeout = 0.3
    session = login(fake_xnat)
    assert session.get(fake_xnat.url + PROJECTS).status_code == 200
    time.sleep(0.2)
    # Use keeps the session alive: the timeout counts idle time.
    assert session.get(fake_xnat.url + PROJECTS).status_code == 200
    time.sleep(0.45)
    assert session.get(fake_xnat.url + PROJECTS).status_code == 401
    renewed = session.post(fake_xnat.url + "/data/JSESSION", auth=("admin", "admin"))
    assert renewed.status_code == 200
    assert session.get(fake_xnat.url + PROJECTS).status_code == 200


def test_server_side_logout_of_everyone(fake_xnat):
    session = login(fake_xnat)
    fake_xnat.auth.end_all_sessions()
    assert session.get(fake_xnat.url + PROJECTS).status_code == 401


def test_expired_password_login_answers_html_page(fake_xnat):
    fake_xnat.expired_password = True
    answer = requests.post(fake_xnat.url + "/data/JSESSION", auth=("admin", "admin"))
    assert answer.status_code == 200
    assert answer.text.lstrip().startswith("<!DOCTYPE html>")
    assert "password has expired" in answer.text
    assert "JSESSIONID" not in answer.cookies


def test_alias_tokens(fake_xnat):
    session = login(fake_xnat)
    token = session.get(fake_xnat.url + "/data/services/tokens/issue").json()
    assert set(token) >= {
        "alias",
        "xdatUserId",
        "secret",
        "singleUse",
        "estimatedExpirationTime",
        "timestamp",
        "enabled",
        "created",
        "id",
        "disabled",
    }
    assert token["xdatUserId"] == "admin"
    hours = (token["estimatedExpirationTime"] - token["created"]) / 3600000
    assert 47 <= hours <= 49
    with_token = requests.get(fake_xnat.url + PROJECTS, auth=(token["alias"], token["secret"]))
    assert with_token.status_code == 200
    valid = session.get(f"{fake_xnat.url}/data/services/tokens/validate/{token['alias']}/{token['secret']}")
    assert valid.json() == {"valid": "admin"}
    invalid = session.get(f"{fake_xnat.url}/data/services/tokens/validate/{token['alias']}/nope")
    assert invalid.json() == {}
    assert requests.get(fake_xnat.url + PROJECTS, auth=(token["alias"], "nope")).status_code == 401


def test_token_logins_ignore_the_expired_password_mode(fake_xnat):
    token = login(fake_xnat).get(fake_xnat.url + "/data/services/tokens/issue").json()
    fake_xnat.expired_password = True
    assert requests.get(fake_xnat.url + PROJECTS, auth=(token["alias"], token["secret"])).status_code == 200


def test_form_login_and_auth_check(fake_xnat):
    session = requests.Session()
    answer = session.put(fake_xnat.url + "/data/services/auth", data={"username": "admin", "password": "admin"})
    assert answer.status_code == 200
    assert session.cookies["JSESSIONID"] == answer.text
    check = session.get(fake_xnat.url + "/data/auth")
    assert "User 'admin' is logged in" in check.text
    refused = requests.put(fake_xnat.url + "/data/services/auth", data={"username": "admin", "password": "bad"})
    assert refused.status_code == 401
    assert "<h3>" in refused.text


def test_build_info_needs_login(fake_xnat):
    assert requests.get(fake_xnat.url + "/xapi/siteConfig/buildInfo").status_code == 401
    info = requests.get(fake_xnat.url + "/xapi/siteConfig/buildInfo", auth=("admin", "admin")).json()
    assert info["version"].startswith("1.")


def test_several_users(tmp_path):
    from xnatfs.fake import FakeXnat

    with FakeXnat(tmp_path / "d", users={"alice": "a1", "bob": "b2"}) as server:
        assert server.username == "alice"
        assert requests.get(server.url + PROJECTS, auth=("bob", "b2")).status_code == 200
        assert requests.get(server.url + PROJECTS, auth=("admin", "admin")).status_code == 401
        who = requests.get(server.url + "/data/auth", auth=("bob", "b2")).text
        assert "User 'bob'" in who


def test_readonly_users_may_read_but_not_write(tmp_path):
    from xnatfs.fake import FakeXnat

    with FakeXnat(tmp_path / "d", users={"admin": "admin", "guest": "guest"}, readonly_users=("guest",)) as server:
        server.store.add_project("P1")
        assert requests.get(server.url + PROJECTS, auth=("guest", "guest")).status_code == 200
        refused = requests.put(server.url + "/data/projects/P1/subjects/S1", auth=("guest", "guest"))
        assert refused.status_code == 403
        assert server.store.subject_id("P1", "S1") is None
        assert requests.put(server.url + "/data/projects/P1/subjects/S1", auth=("admin", "admin")).status_code == 201
        server.readonly_users.discard("guest")
        assert requests.put(server.url + "/data/projects/P1/subjects/S2", auth=("guest", "guest")).status_code == 201
