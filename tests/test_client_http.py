"""The client's HTTP behaviour against the fake XNAT: sessions, retries, errors, ranges."""

import io
import threading
import time

import pytest

from fakeutil import fault_seed
from xnatfs.client import XnatConnection
from xnatfs.client.budget import Budget, bounded_by
from xnatfs.client.changes import SentChanges, watching_changes
from xnatfs.client.http import MAX_RENEWALS_PER_REQUEST, XnatSession, parse_json
from xnatfs.errors import (
    XnatAnswerTooLarge,
    XnatAuthError,
    XnatError,
    XnatPermissionError,
    XnatServerError,
    XnatTimeout,
    XnatUnavailable,
)

SCAN_DICOM = "/data/experiments/XNAT_E00001/scans/2/resources/DICOM"


def connect(server, **options):
    options.setdefault("backoff", 0.01)
    return XnatConnection(server.url, server.username, server.password, **options)


def logins(server):
    return server.count("POST", "/data/JSESSION")


def first_file(conn, resource=SCAN_DICOM):
    remote = conn.list_files(resource)[0]
    return remote, remote_bytes(conn, remote)


def remote_bytes(conn, remote):
    out = io.BytesIO()
    conn.download(remote.uri, out)
    return out.getvalue()


def stored_bytes(server, experiment_id, scan_id, label, relpath):
    scan = server.store.scan(experiment_id, scan_id)
    resource = server.store.find_resource("scan", str(scan["pk"]), label)
    return server.store.file_path(resource["id"], relpath).read_bytes()


# -- sessions ------------------------------------------------------------------


def test_one_login_serves_many_requests_and_close_logs_out(fake_xnat):
    with connect(fake_xnat) as conn:
        for _ in range(3):
            conn.list_projects()
        assert logins(fake_xnat) == 1
    assert fake_xnat.count("DELETE", "/data/JSESSION") == 1


def test_close_skips_the_logout_after_a_request_the_server_left_unanswered(fake_xnat):
    with connect(fake_xnat, timeout=5.0, retries=0) as conn:
        conn.list_projects()
        session_id = conn.session._jsession
        fake_xnat.set_faults(stall_ms=2_000, stall_rate=1.0)
        with bounded_by(Budget(0.3)), pytest.raises(XnatTimeout):
            conn.list_projects()
        fake_xnat.set_faults()
    # A logout would have waited a whole timeout on a server that had stopped answering.
    assert fake_xnat.count("DELETE", "/data/JSESSION") == 0
    assert fake_xnat.auth.session_user(session_id) == fake_xnat.username


def test_expired_session_is_renewed_transparently(fake_xnat):
    with connect(fake_xnat) as conn:
        fake_xnat.session_timeout = 0.3
        conn.list_projects()
        time.sleep(0.5)
        assert [p.id for p in conn.list_projects()] == ["STUDY01", "STUDY02"]
        assert logins(fake_xnat) == 2
        assert ("GET", "/data/projects?format=json", 401) in fake_xnat.requests


def test_only_one_thread_logs_in_again_after_expiry(fake_xnat):
    with connect(fake_xnat) as conn:
        fake_xnat.session_timeout = 0.3
        conn.list_projects()
        time.sleep(0.5)
        errors = []
        barrier = threading.Barrier(16)

        def work():
            try:
                barrier.wait()
                conn.list_subjects("STUDY01")
            except Exception as exc:  # collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert errors == []
        assert logins(fake_xnat) == 2


def test_session_expiring_again_during_retries_is_renewed_again(fake_xnat):
    fake_xnat.session_timeout = 0.2
    with connect(fake_xnat, backoff=0.5) as conn:
        time.sleep(0.3)
        fake_xnat.reset_counts()
        # Answers: 401 (expired), login, 503, then after a pause longer than the
        # session timeout 401 again, a second login, and the listing.
        rates = {"error_rate": 0.5, "error_statuses": (503,)}
        fake_xnat.set_faults(**rates, seed=fault_seed([None, None, 503, None, None, None], **rates))
        assert [p.id for p in conn.list_projects()] == ["STUDY01", "STUDY02"]
        fake_xnat.set_faults()
    assert [status for _m, _t, status in fake_xnat.requests][:6] == [401, 200, 503, 401, 200, 200]


def test_sessions_ended_before_their_first_use_still_get_answers(fake_xnat):
    with connect(fake_xnat) as conn:
        fake_xnat.session_timeout = 0.0  # every session is over before its first use
        fake_xnat.reset_counts()
        assert [p.id for p in conn.list_projects()] == ["STUDY01", "STUDY02"]
        # Each renewal's session ended too; the last try carried the credentials.
        assert logins(fake_xnat) == MAX_RENEWALS_PER_REQUEST
        listings = [status for method, target, status in fake_xnat.requests if method == "GET"]
        assert listings == [401] * MAX_RENEWALS_PER_REQUEST + [200]


def test_threads_whose_fresh_sessions_end_at_once_all_get_answers(fake_xnat):
    with connect(fake_xnat) as conn:
        fake_xnat.session_timeout = 0.0  # another thread's fresh session is over when used
        errors = []
        answers = []
        barrier = threading.Barrier(8)

        def work():
            try:
                barrier.wait()
                answers.append([s.label for s in conn.list_subjects("STUDY01")])
            except Exception as exc:  # collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        assert len(answers) == 8 and all(answer == answers[0] for answer in answers) and answers[0]


def test_wrong_password_is_an_auth_error_without_the_password(fake_xnat):
    with pytest.raises(XnatAuthError) as caught:
        XnatConnection(fake_xnat.url, "admin", "not-the-password-123")
    assert "not-the-password-123" not in str(caught.value)
    assert caught.value.status == 401


def test_expired_password_page_is_detected(fake_xnat):
    fake_xnat.expired_password = True
    with pytest.raises(XnatAuthError, match="expired"):
        connect(fake_xnat)


def test_credentials_refused_on_renewal_is_a_permission_error(fake_xnat):
    with connect(fake_xnat) as conn:
        fake_xnat.session_timeout = 0.2
        time.sleep(0.4)
        fake_xnat.expired_password = True
        with pytest.raises(XnatPermissionError):
            conn.list_projects()


def test_credentials_from_the_environment(fake_xnat, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XNAT_USER", fake_xnat.username)
    monkeypatch.setenv("XNAT_PASS", fake_xnat.password)
    with XnatConnection(fake_xnat.url, backoff=0.01) as conn:
        assert conn.username == fake_xnat.username
        assert conn.list_projects()


def test_credentials_from_a_netrc_file(fake_xnat, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XNAT_USER", raising=False)
    monkeypatch.delenv("XNAT_PASS", raising=False)
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login {fake_xnat.username} password {fake_xnat.password}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    with XnatConnection(fake_xnat.url, backoff=0.01) as conn:
        assert conn.auth.source == str(netrc)
        assert conn.list_subjects("STUDY01")


def test_alias_token_issued_by_the_server_logs_in(fake_xnat):
    with connect(fake_xnat) as conn:
        token = conn.issue_token()
    assert token.expires is None or token.expires > time.time()
    with XnatConnection(fake_xnat.url, token.alias, token.secret, backoff=0.01) as conn:
        assert conn.list_projects()


def test_no_credentials_anywhere_gives_a_clear_auth_error(fake_xnat, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("XNAT_USER", "XNAT_PASS", "NETRC", "XNATFS_TOKENS", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    with XnatConnection(fake_xnat.url, backoff=0.01) as conn:
        assert conn.username is None
        with pytest.raises(XnatAuthError, match="no credentials"):
            conn.list_projects()


def test_repr_shows_url_and_user_only(fake_xnat):
    with connect(fake_xnat) as conn:
        assert repr(conn) == f"<XnatConnection {fake_xnat.url} user=admin>"
        assert "password=<hidden>" in repr(conn.auth)


# -- retries ---------------------------------------------------------------------


def test_injected_503s_are_retried(fake_xnat):
    with connect(fake_xnat, retries=8) as conn:
        fake_xnat.set_faults(error_rate=0.5, error_statuses=(503,), seed=7)
        for _ in range(10):
            assert len(conn.list_subjects("STUDY01")) == 3
        fake_xnat.set_faults()
    assert any(status == 503 for _m, _p, status in fake_xnat.requests)


def test_persistent_503_gives_up_after_the_retries(fake_xnat):
    with connect(fake_xnat, retries=2) as conn:
        fake_xnat.reset_counts()
        fake_xnat.set_faults(error_rate=1.0, error_statuses=(503,))
        with pytest.raises(XnatServerError) as caught:
            conn.list_projects()
        fake_xnat.set_faults()
    assert caught.value.status == 503
    assert "/data/projects" in caught.value.url
    assert fake_xnat.count("GET", "/data/projects") == 3


def test_dropped_connections_are_retried(fake_xnat):
    with connect(fake_xnat, retries=10) as conn:
        fake_xnat.set_faults(drop_rate=0.4, seed=3)
        for _ in range(8):
            assert len(conn.list_experiments("STUDY01")) == 4
        fake_xnat.set_faults()


def test_truncated_listing_is_retried(fake_xnat):
    with connect(fake_xnat, retries=10) as conn:
        fake_xnat.set_faults(truncate_rate=0.5, seed=11)
        for _ in range(8):
            assert len(conn.list_files(SCAN_DICOM)) == 20
        fake_xnat.set_faults()


def test_truncated_download_is_resumed_to_the_exact_bytes(fake_xnat):
    with connect(fake_xnat, retries=20) as conn:
        remote = conn.list_files(SCAN_DICOM)[0]
        expected = stored_bytes(fake_xnat, "XNAT_E00001", "2", "DICOM", remote.path)
        fake_xnat.set_faults(truncate_rate=0.5, drop_rate=0.2, seed=5)
        for _ in range(5):
            assert remote_bytes(conn, remote) == expected
        fake_xnat.set_faults()


def test_truncation_that_never_ends_is_a_server_error(fake_xnat):
    with connect(fake_xnat, retries=2) as conn:
        remote = conn.list_files(SCAN_DICOM)[0]
        fake_xnat.set_faults(truncate_rate=1.0)
        with pytest.raises(XnatServerError, match=r"incomplete|short|closed"):
            conn.download(remote.uri, io.BytesIO())
        fake_xnat.set_faults()


def test_a_post_that_may_have_reached_the_server_is_not_repeated(fake_xnat):
    with connect(fake_xnat, retries=5) as conn:
        fake_xnat.reset_counts()
        fake_xnat.set_faults(error_rate=1.0, error_statuses=(503,))
        with pytest.raises(XnatServerError) as caught:
            conn.session.request(
                "POST",
                "/data/services/import",
                params={"project": "STUDY01"},
                data=io.BytesIO(b"PK\x05\x06" + b"\0" * 18),
                headers={"Content-Type": "application/zip"},
            )
        fake_xnat.set_faults()
    assert caught.value.status == 503
    assert fake_xnat.count("POST", "/data/services/import") == 1


def test_stalled_answers_time_out_and_are_retried(fake_xnat):
    with connect(fake_xnat, timeout=0.3, retries=1) as conn:
        fake_xnat.set_faults(stall_ms=1000, stall_rate=1.0)
        started = time.monotonic()
        with pytest.raises(XnatServerError, match="timed out"):
            conn.list_projects()
        fake_xnat.set_faults()
        assert time.monotonic() - started < 5
        assert conn.list_projects()


def test_read_timeouts_grow_on_each_retry(fake_xnat):
    with connect(fake_xnat, timeout=0.25, retries=3) as conn:
        fake_xnat.set_faults(stall_ms=400, stall_rate=1.0)
        assert [p.id for p in conn.list_projects()] == ["STUDY01", "STUDY02"]
        fake_xnat.set_faults()


def test_unreachable_server_is_a_server_error(fake_xnat):
    conn = connect(fake_xnat, retries=1)
    fake_xnat.stop()
    with pytest.raises(XnatServerError, match="connection failed") as caught:
        conn.list_projects()
    assert caught.value.status is None
    conn.close()


def test_web_page_where_json_was_expected_is_an_error(fake_xnat):
    session = XnatSession(fake_xnat.url)
    response = session.request("GET", "/data/JSESSION", ok=(200, 401))
    with pytest.raises(XnatServerError):
        parse_json(response)
    session.close()


def test_addresses_on_other_servers_are_refused(fake_xnat):
    with connect(fake_xnat) as conn, pytest.raises(ValueError):
        conn.download("http://elsewhere.example.org/data/x", io.BytesIO())


# -- ranges ----------------------------------------------------------------------


@pytest.mark.parametrize("honour_range", [True, False])
def test_partial_download_with_and_without_range_support(fake_xnat, honour_range):
    fake_xnat.honour_range = honour_range
    with connect(fake_xnat) as conn:
        remote = conn.list_files(SCAN_DICOM)[0]
        expected = stored_bytes(fake_xnat, "XNAT_E00001", "2", "DICOM", remote.path)
        out = io.BytesIO()
        assert conn.download(remote.uri, out, offset=100, length=1000) == 1000
        assert out.getvalue() == expected[100:1100]
        assert conn.supports_range is honour_range
        tail = io.BytesIO()
        assert conn.download(remote.uri, tail, offset=len(expected) - 10) == 10
        assert tail.getvalue() == expected[-10:]
        beyond = io.BytesIO()
        assert conn.download(remote.uri, beyond, offset=len(expected) + 5, length=10) == 0


def test_ranged_download_resumes_after_truncation(fake_xnat):
    fake_xnat.honour_range = True
    with connect(fake_xnat, retries=20) as conn:
        remote = conn.list_files(SCAN_DICOM)[0]
        expected = stored_bytes(fake_xnat, "XNAT_E00001", "2", "DICOM", remote.path)
        fake_xnat.set_faults(truncate_rate=0.6, seed=2)
        out = io.BytesIO()
        assert conn.download(remote.uri, out, offset=7, length=len(expected) - 20) == len(expected) - 20
        fake_xnat.set_faults()
        assert out.getvalue() == expected[7:-13]


@pytest.mark.parametrize("honour_range", [True, False])
def test_a_download_resumed_after_the_file_changed_is_refused(fake_xnat, honour_range):
    # Over a megabyte, so that part of the body arrives before the cut.
    old, new = bytes(range(256)) * 12288, bytes(reversed(range(256))) * 12288
    fake_xnat.store.put_file("XNAT_E00001", "RAW", "big.bin", old, mtime=time.time() - 60)
    fake_xnat.honour_range = honour_range
    with connect(fake_xnat, backoff=0.5) as conn:
        [remote] = conn.list_files("/data/experiments/XNAT_E00001/resources/RAW")
        fake_xnat.reset_counts()
        fake_xnat.set_faults(truncate_rate=1.0)
        out = io.BytesIO()
        outcome = []

        def fetch():
            try:
                conn.download(remote.uri, out)
            except XnatError as exc:
                outcome.append(exc)

        worker = threading.Thread(target=fetch)
        worker.start()
        deadline = time.monotonic() + 10
        while not fake_xnat.count("GET", remote.uri):
            assert time.monotonic() < deadline
            time.sleep(0.005)
        # The client is waiting to resume the cut body: change the file meanwhile.
        fake_xnat.store.put_file("XNAT_E00001", "RAW", "big.bin", new)
        fake_xnat.set_faults()
        worker.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], XnatServerError)
    assert "changed" in str(outcome[0])
    assert fake_xnat.count("GET", remote.uri) == 2
    assert 0 < len(out.getvalue()) < len(old) and old.startswith(out.getvalue())


def test_parallel_downloads_share_one_session(fake_xnat):
    with connect(fake_xnat) as conn:
        files = conn.list_files("/data/experiments/XNAT_E00001/scans/4/resources/DICOM")
        assert len(files) >= 32
        results = {}

        def fetch(remote):
            results[remote.path] = remote_bytes(conn, remote)

        threads = [threading.Thread(target=fetch, args=(remote,)) for remote in files]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert {path: len(data) for path, data in results.items()} == {f.path: f.size for f in files}
        assert logins(fake_xnat) == 1


def test_a_closed_connection_refuses_further_requests(fake_xnat):
    conn = connect(fake_xnat)
    conn.close()
    fake_xnat.reset_counts()
    with pytest.raises(XnatError, match="closed"):
        conn.list_projects()
    assert fake_xnat.count() == 0


def test_password_never_reaches_logs_or_messages(tmp_path, caplog):
    import base64
    import logging

    from xnatfs.fake import FakeXnat

    password = "S3cr3t-Pa55word"
    basic = base64.b64encode(f"alice:{password}".encode()).decode()
    caplog.set_level(logging.DEBUG)
    with FakeXnat(tmp_path / "data", users={"alice": password}, session_timeout=0.2) as server:
        messages = []
        with XnatConnection(server.url, "alice", password, backoff=0.01) as conn:
            conn.list_projects()
            time.sleep(0.4)
            conn.list_projects()  # renewed login
            messages += [repr(conn), str(conn.auth), repr(conn.session)]
            try:
                conn.list_subjects("NOPE")
            except XnatError as exc:
                messages.append(str(exc))
        try:
            XnatConnection(server.url, "alice", password + "x")
        except XnatAuthError as exc:
            messages.append(str(exc))
    text = caplog.text + "\n".join(messages)
    assert "logging in again" in caplog.text
    assert password not in text and basic not in text


# -- the retry policy for 500, bounded answers, budgets, failing fast ---------------


def test_a_read_answered_500_is_retried_twice_and_a_change_never(fake_xnat):
    with connect(fake_xnat) as conn:
        rates = {"error_rate": 0.5, "error_statuses": (500,)}
        fake_xnat.set_faults(**rates, seed=fault_seed([500, 500, None], **rates))
        fake_xnat.reset_counts()
        assert [p.id for p in conn.list_projects()] == ["STUDY01", "STUDY02"]
        assert [status for _m, _t, status in fake_xnat.requests] == [500, 500, 200]

        fake_xnat.set_faults(**rates, seed=fault_seed([500, 500, 500, None], **rates))
        fake_xnat.reset_counts()
        with pytest.raises(XnatServerError) as caught:
            conn.list_projects()
        assert caught.value.status == 500
        assert fake_xnat.count("GET") == 3

        fake_xnat.set_faults(**rates, seed=fault_seed([500, None], **rates))
        fake_xnat.reset_counts()
        with pytest.raises(XnatServerError):
            conn.session.request("POST", "/data/projects/STUDY01/subjects/RETRY500")
        assert fake_xnat.count("POST", "/data/projects/STUDY01/subjects") == 1
        fake_xnat.set_faults()


def test_an_endless_answer_is_refused_at_the_bound(fake_xnat):
    with connect(fake_xnat) as conn:
        conn.session.max_answer_bytes = 1 << 20
        fake_xnat.endless_answers = "/data/projects/STUDY01/subjects"
        with pytest.raises(XnatAnswerTooLarge):
            conn.session.get_json("/data/projects/STUDY01/subjects")
        fake_xnat.endless_answers = None
        assert conn.session.get_json("/data/projects/STUDY01/subjects")["ResultSet"]["Result"]


def test_changes_that_may_have_reached_the_server_are_counted(fake_xnat):
    with connect(fake_xnat, timeout=1.0, retries=0) as conn:
        sent = SentChanges()
        with watching_changes(sent):
            conn.list_subjects("STUDY01")  # and the login before it
        assert sent.count == 0
        with watching_changes(sent):
            conn.create_subject("STUDY01", "SUB079")
        assert sent.count == 1
        conn.create_subject("STUDY01", "SUB080")  # not watched
        assert sent.count == 1
        fake_xnat.set_faults(stall_ms=3_000, stall_rate=1.0)
        with watching_changes(sent), pytest.raises(XnatTimeout):
            conn.create_subject("STUDY01", "SUB081")
        assert sent.count == 2  # unanswered: the server may have made it
        fake_xnat.close()
        with watching_changes(sent), pytest.raises(XnatServerError):
            conn.create_subject("STUDY01", "SUB082")
        assert sent.count == 2  # no connection: nothing reached the server


def test_a_silent_server_gives_up_within_the_budget_and_then_fails_fast(fake_xnat):
    with connect(fake_xnat, timeout=5.0, retries=5) as conn:
        conn.session.breaker.cool_off = 1.0
        fake_xnat.set_faults(stall_ms=10_000, stall_rate=1.0)
        started = time.monotonic()
        with bounded_by(Budget(0.5)), pytest.raises(XnatTimeout):
            conn.list_projects()
        # Generous: without the budget the retries would wait for over a minute.
        assert time.monotonic() - started < 5.0
        for _ in range(2):
            with bounded_by(Budget(0.3)), pytest.raises(XnatTimeout):
                conn.list_projects()
        assert conn.session.breaker.is_open
        fake_xnat.reset_counts()
        with pytest.raises(XnatUnavailable):
            conn.list_projects()
        assert fake_xnat.count() == 0
        fake_xnat.set_faults()
        deadline = time.monotonic() + 10
        while conn.session.breaker.is_open:
            assert time.monotonic() < deadline, "the breaker did not close once the server answered"
            try:
                conn.list_projects()
            except XnatUnavailable:
                time.sleep(0.1)
        assert [p.id for p in conn.list_projects()] == ["STUDY01", "STUDY02"]
