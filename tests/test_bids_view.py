"""The BIDS view on a real mount of the fake server's "bids" sample.

One server and one mount are shared by the module (converting the whole
sample takes a few seconds); tests that need a server or mount of their own
(request counting, a dcm2bids config, a failing series, --no-bids) copy the
sample generated once.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dcm2niix
import nibabel
import numpy as np
import pytest

from mountutil import isolated_env, mounted, xnatfs_command
from waiting import wait_until
from xnatfs.bids.convert import converter_version
from xnatfs.fake import FakeXnat
from xnatfs.fake.store import Store

PROJECT = "BIDS01"
SESSIONS = {"MR1": "P01_MR1", "MR2": "P01_MR2"}
VALIDATOR = Path(sys.executable).parent / "bids-validator-deno"


def copy_sample(template: Path, data: Path) -> None:
    """The generated sample: the archive as hard links (the store never writes into an
    archive file), the rest (the database) copied."""
    shutil.copytree(template / "archive", data / "archive", copy_function=_link)
    for name in os.listdir(template):
        if name != "archive" and (template / name).is_file():
            shutil.copy2(template / name, data / name)


def _link(source, target):
    os.link(source, target)
    return target


@pytest.fixture(scope="module")
def bids_template(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bids-template")
    FakeXnat(folder, sample="bids").close()
    return folder


@pytest.fixture(scope="module")
def bids_server(bids_template, tmp_path_factory):
    data = tmp_path_factory.mktemp("bids-server") / "data"
    copy_sample(bids_template, data)
    server = FakeXnat(data).start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def view(bids_server, tmp_path_factory):
    """The mounted BIDS/ folder of the sample project, every datatype folder listed once."""
    base = tmp_path_factory.mktemp("bids-mount")
    with mounted(bids_server.url, base) as mount:
        root = mount.path / PROJECT / "BIDS"
        for _ in os.walk(root):
            pass
        yield root


@pytest.fixture
def fresh_server(bids_template, tmp_path):
    data = tmp_path / "server"
    copy_sample(bids_template, data)
    server = FakeXnat(data).start()
    yield server
    server.close()


def downloads(server) -> list[str]:
    """Requests for file contents (a file, or a zip of a resource, scan or session)."""
    found = []
    for _method, target, _status in server.requests:
        path, _, query = target.partition("?")
        if "/files/" in path or "format=zip" in query:
            found.append(target)
    return found


def scan_of(target: str) -> str:
    """``/scans/<id>/`` of a request for a scan's files."""
    return "/scans/" + target.split("/scans/", 1)[1].split("/", 1)[0] + "/"


def zipped_scans(server, experiment: str) -> list[str]:
    """The scans of ``experiment`` whose DICOM resource was asked for as a zip, once per request."""
    return [
        scan_of(target)
        for target in downloads(server)
        if "format=zip" in target and target.startswith(f"/data/experiments/{experiment}/scans/")
    ]


# The scans of P01_MR1 the view holds (1, the localizer, is left out), by datatype folder.
MR1_SCANS = {
    "anat": ["/scans/2/", "/scans/3/"],
    "fmap": ["/scans/4/", "/scans/5/"],
    "func": ["/scans/6/", "/scans/7/", "/scans/8/"],
    "dwi": ["/scans/9/"],
}


def view_files(root: Path) -> dict[str, int]:
    return {
        os.path.relpath(os.path.join(folder, name), root): os.stat(os.path.join(folder, name)).st_size
        for folder, _dirs, names in os.walk(root)
        for name in names
    }


def dicom_folder(store: Store, session: str, scan: str) -> Path:
    experiment = store.experiment_id(PROJECT, session)
    resource = store.find_resource("scan", str(store.scan(experiment, scan)["pk"]), "DICOM")
    return store.file_path(resource["id"], store.files(resource["id"])[0]["path"]).parent


def local_dcm2niix(folder: Path, out: Path) -> Path:
    """The stem of what the same dcm2niix writes for ``folder`` run by hand."""
    out.mkdir()
    subprocess.run(
        [dcm2niix.bin, "-z", "n", "-b", "y", "-ba", "y", "-f", "local", "-o", str(out), str(folder)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return out / "local"


# ---- what the view holds ------------------------------------------------------------


def test_the_view_is_a_bids_dataset_with_every_series_named(view):
    files = view_files(view)
    mr1, mr2 = "sub-P01/ses-MR1", "sub-P01/ses-MR2"
    expected = {
        "dataset_description.json",
        "README",
        "participants.tsv",
        "participants.json",
        "sub-P01/sub-P01_sessions.tsv",
        f"{mr1}/sub-P01_ses-MR1_scans.tsv",
        f"{mr2}/sub-P01_ses-MR2_scans.tsv",
        f"{mr1}/anat/sub-P01_ses-MR1_T1w.nii",
        f"{mr1}/anat/sub-P01_ses-MR1_T2w.nii",
        f"{mr1}/fmap/sub-P01_ses-MR1_dir-AP_epi.nii",
        f"{mr1}/fmap/sub-P01_ses-MR1_dir-PA_epi.nii",
        f"{mr1}/func/sub-P01_ses-MR1_task-nback_bold.nii",
        f"{mr1}/func/sub-P01_ses-MR1_task-rest_run-1_bold.nii",
        f"{mr1}/func/sub-P01_ses-MR1_task-rest_run-2_bold.nii",
        f"{mr1}/dwi/sub-P01_ses-MR1_dwi.nii",
        f"{mr1}/dwi/sub-P01_ses-MR1_dwi.bval",
        f"{mr1}/dwi/sub-P01_ses-MR1_dwi.bvec",
        f"{mr2}/anat/sub-P01_ses-MR2_T1w.nii",
        f"{mr2}/anat/sub-P01_ses-MR2_T2w.nii.gz",
        f"{mr2}/func/sub-P01_ses-MR2_task-rest_bold.nii",
        f"{mr2}/dwi/sub-P01_ses-MR2_dwi.nii",
    }
    assert expected <= set(files)
    images = [name for name in files if name.endswith((".nii", ".nii.gz"))]
    assert len(images) == 14  # the localizers and MR2's unusable T1w are left out
    assert all(name.rsplit(".nii", 1)[0] + ".json" in files for name in images)
    # Sizes are exact before anything is read.
    for name, size in files.items():
        with open(view / name, "rb") as handle:
            assert len(handle.read()) == size, name
    description = json.loads((view / "dataset_description.json").read_text())
    assert description["DatasetType"] == "raw"
    assert [tool["Name"] for tool in description["GeneratedBy"]] == ["xnatfs", "dcm2niix"]
    assert description["GeneratedBy"][1]["Version"] == converter_version()
    assert description["SourceDatasets"][0]["URL"].endswith(f"/data/projects/{PROJECT}")
    participants = (view / "participants.tsv").read_text().splitlines()
    assert participants[0].split("\t")[:3] == ["participant_id", "xnat_label", "xnat_accession"]
    assert participants[1].split("\t")[:2] == ["sub-P01", "P01"]
    bold = json.loads((view / mr1 / "func/sub-P01_ses-MR1_task-rest_run-1_bold.json").read_text())
    assert bold["TaskName"] == "rest" and bold["RepetitionTime"] == 2


def test_the_official_validator_finds_no_error(view, tmp_path):
    done = subprocess.run([str(VALIDATOR), str(view), "--json"], capture_output=True, text=True, timeout=120)
    issues = json.loads(done.stdout)["issues"]["issues"]
    errors = [issue for issue in issues if issue["severity"] == "error"]
    assert errors == [], errors
    assert done.returncode == 0
    # The warnings docs/LAYOUT.md lists, and no others.
    assert {issue["code"] for issue in issues} <= {
        "SIDECAR_KEY_RECOMMENDED",
        "TSV_ADDITIONAL_COLUMNS_UNDEFINED",
        "B0_FIELD_IDENTIFIER_RECOMMENDED",
        "JSON_KEY_RECOMMENDED",
        "TOO_FEW_AUTHORS",
        "NO_AUTHORS",
        "EVENTS_TSV_MISSING",
    }


def test_pybids_finds_every_image_with_its_entities(view):
    from bids import BIDSLayout

    layout = BIDSLayout(str(view), validate=False)
    found = {
        (f.entities["suffix"], f.entities["session"], f.entities.get("task"), f.entities.get("run"))
        for f in layout.get(extension=[".nii", ".nii.gz"], suffix=["T1w", "bold", "dwi"])
    }
    assert found == {
        ("T1w", "MR1", None, None),
        ("T1w", "MR2", None, None),
        ("bold", "MR1", "nback", None),
        ("bold", "MR1", "rest", 1),
        ("bold", "MR1", "rest", 2),
        ("bold", "MR2", "rest", None),
        ("dwi", "MR1", None, None),
        ("dwi", "MR2", None, None),
    }
    assert all(f.entities["subject"] == "P01" for f in layout.get(suffix="bold", extension=".nii"))
    assert layout.get_metadata(layout.get(suffix="bold", task="nback", extension=".nii")[0].path)["RepetitionTime"] == 2
    assert len(layout.get(suffix="dwi", extension=[".bval", ".bvec"])) == 4


@pytest.mark.parametrize(
    "session, scan, name",
    [
        ("P01_MR1", "7", "sub-P01/ses-MR1/func/sub-P01_ses-MR1_task-rest_run-1_bold"),
        ("P01_MR2", "7", "sub-P01/ses-MR2/dwi/sub-P01_ses-MR2_dwi"),
    ],
)
def test_images_and_sidecars_equal_a_local_dcm2niix_run(view, bids_server, tmp_path, session, scan, name):
    local = local_dcm2niix(dicom_folder(bids_server.store, session, scan), tmp_path / "out")
    mine, theirs = nibabel.load(str(view / f"{name}.nii")), nibabel.load(f"{local}.nii")
    assert mine.shape == theirs.shape
    assert np.array_equal(mine.affine, theirs.affine)
    assert np.array_equal(np.asarray(mine.dataobj), np.asarray(theirs.dataobj))
    sidecar = json.loads((view / f"{name}.json").read_text())
    expected = json.loads(Path(f"{local}.json").read_text())
    assert {key: value for key, value in sidecar.items() if key != "TaskName"} == expected
    if name.endswith("_dwi"):
        assert (view / f"{name}.bval").read_bytes() == Path(f"{local}.bval").read_bytes()
        assert (view / f"{name}.bvec").read_bytes() == Path(f"{local}.bvec").read_bytes()


def test_files_say_where_they_come_from(view):
    bold = view / "sub-P01/ses-MR1/func/sub-P01_ses-MR1_task-rest_run-2_bold.nii"
    assert os.getxattr(bold, "user.xnat.uri") == b"/data/experiments/XNAT_E00001/scans/8"
    assert os.getxattr(bold, "user.xnat.converter") == f"dcm2niix {converter_version()}".encode()
    assert os.getxattr(bold, "user.xnat.rule") == b"vendor:func"
    server_t2w = view / "sub-P01/ses-MR2/anat/sub-P01_ses-MR2_T2w.nii.gz"
    assert os.getxattr(server_t2w, "user.xnat.converter") == b"server NIFTI resource"
    assert os.getxattr(server_t2w, "user.xnat.uri") == b"/data/experiments/XNAT_E00002/scans/3"
    reproin = view / "sub-P01/ses-MR1/fmap/sub-P01_ses-MR1_dir-AP_epi.json"
    assert os.getxattr(reproin, "user.xnat.rule") == b"reproin"


def test_the_server_nifti_is_served_as_the_server_holds_it(view, bids_server):
    experiment = bids_server.store.experiment_id(PROJECT, "P01_MR2")
    resource = bids_server.store.find_resource("scan", str(bids_server.store.scan(experiment, "3")["pk"]), "NIFTI")
    server_bytes = bids_server.store.file_path(resource["id"], "3_T2w_SPC.nii.gz").read_bytes()
    assert (view / "sub-P01/ses-MR2/anat/sub-P01_ses-MR2_T2w.nii.gz").read_bytes() == server_bytes
    scans = (view / "sub-P01/ses-MR2/sub-P01_ses-MR2_scans.tsv").read_text()
    assert "anat/sub-P01_ses-MR2_T2w.nii.gz\tn/a\t3\t" in scans


def bids_check(view: Path, tmp_path) -> dict:
    """What ``xnatfs bids-check --json`` says of a view."""
    done = subprocess.run(
        xnatfs_command("bids-check", str(view), "--json"),
        capture_output=True,
        text=True,
        env=isolated_env(tmp_path),
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    answer: dict = json.loads(done.stdout)
    return answer


def test_bids_check_lists_the_localizers_and_the_unusable_scan(view, tmp_path):
    answer = bids_check(view, tmp_path)
    left_out = {(entry["session"], entry["scan"], entry["reason"]) for entry in answer["left_out"]}
    assert left_out == {
        ("sub-P01/ses-MR1", "1", "excluded"),
        ("sub-P01/ses-MR2", "1", "excluded"),
        ("sub-P01/ses-MR2", "8", "unusable"),
    }
    assert answer["failed"] == []
    text = subprocess.run(
        xnatfs_command("bids-check", str(view)), capture_output=True, text=True, env=isolated_env(tmp_path), timeout=60
    )
    assert "sub-P01/ses-MR2  scan 8 (T1w_MPRAGE): unusable" in text.stdout
    assert "3 series left out, 0 conversion(s) failed" in text.stdout


def test_bids_check_outside_a_view_says_so_in_one_line(view, tmp_path):
    done = subprocess.run(
        xnatfs_command("bids-check", str(view.parent / "P01")),
        capture_output=True,
        text=True,
        env=isolated_env(tmp_path),
        timeout=60,
    )
    assert done.returncode != 0
    assert len(done.stderr.strip().splitlines()) == 1
    assert "not in a BIDS view" in done.stderr


def test_the_view_is_read_only(view):
    session = view / "sub-P01/ses-MR1"
    attempts = [
        lambda: os.mkdir(session / "extra"),
        lambda: open(session / "new.txt", "w").close(),
        lambda: open(view / "README", "a").close(),
        lambda: os.unlink(view / "README"),
        lambda: os.rename(view / "README", view / "README2"),
        lambda: os.rmdir(session / "anat"),
        lambda: os.truncate(session / "anat/sub-P01_ses-MR1_T1w.nii", 0),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as raised:
            attempt()
        assert raised.value.errno == errno.EROFS
    assert (view / "README").stat().st_mode & 0o222 == 0


# ---- costs and options ------------------------------------------------------------


def test_listing_the_view_down_to_sessions_downloads_nothing(fresh_server, tmp_path):
    with mounted(fresh_server.url, tmp_path) as mount:
        root = mount.path / PROJECT / "BIDS"
        fresh_server.reset_counts()
        assert "sub-P01" in os.listdir(root)
        assert set(os.listdir(root / "sub-P01")) == {"sub-P01_sessions.tsv", "ses-MR1", "ses-MR2"}
        for session in ("ses-MR1", "ses-MR2"):
            names = os.listdir(root / "sub-P01" / session)
            assert {"anat", "func", "fmap", "dwi"} <= set(names)
            for name in names:
                os.stat(root / "sub-P01" / session / name)
        (root / "participants.tsv").read_bytes()
        (root / "sub-P01/ses-MR1/sub-P01_ses-MR1_scans.tsv").read_bytes()
        assert downloads(fresh_server) == []
        # Listing a datatype folder converts, from one zip per series.
        os.listdir(root / "sub-P01/ses-MR1/anat")
        fetched = downloads(fresh_server)
        assert fetched and all("format=zip" in target for target in fetched)
        assert {"/scans/2/", "/scans/3/"} <= {scan_of(target) for target in fetched}


def test_a_walk_of_the_project_converts_nothing(fresh_server, tmp_path):
    with mounted(fresh_server.url, tmp_path) as mount:
        fresh_server.reset_counts()
        walked = [Path(folder) for folder, _dirs, _files in os.walk(mount.path / PROJECT)]
        assert any(folder.name == "DICOM" for folder in walked)
        assert not any("BIDS" in folder.parts for folder in walked)
        assert downloads(fresh_server) == []
        # Named, the view is there.
        assert "sub-P01" in os.listdir(mount.path / PROJECT / "BIDS")


def test_a_dcm2bids_config_names_the_files(fresh_server, tmp_path):
    config = tmp_path / "dcm2bids_config.json"
    config.write_text(
        json.dumps(
            {
                "descriptions": [
                    {
                        "datatype": "anat",
                        "suffix": "T1w",
                        "custom_entities": "acq-mprage",
                        "criteria": {"SeriesDescription": "T1w_*"},
                    },
                    {
                        "datatype": "func",
                        "suffix": "bold",
                        "custom_entities": "task-rest",
                        "criteria": {"SeriesDescription": "fMRI_rest"},
                        "sidecar_changes": {"TaskName": "rest"},
                    },
                    # A field the listing lacks: one DICOM header of each series the description let through.
                    {"datatype": "dwi", "suffix": "dwi", "criteria": {"SeriesDescription": "DWI*", "Modality": "MR"}},
                ]
            }
        )
    )
    with mounted(fresh_server.url, tmp_path, args=("--bids-config", str(config))) as mount:
        session = mount.path / PROJECT / "BIDS/sub-P01/ses-MR1"
        fresh_server.reset_counts()
        assert sorted(os.listdir(session)) == ["anat", "dwi", "func", "sub-P01_ses-MR1_scans.tsv"]
        fetched = downloads(fresh_server)
        assert len(fetched) == 1 and "/scans/9/resources/" in fetched[0]
        assert os.listdir(session / "anat") == [
            "sub-P01_ses-MR1_acq-mprage_T1w.json",
            "sub-P01_ses-MR1_acq-mprage_T1w.nii",
        ]
        assert os.listdir(session / "func") == [
            "sub-P01_ses-MR1_task-rest_run-01_bold.json",
            "sub-P01_ses-MR1_task-rest_run-01_bold.nii",
            "sub-P01_ses-MR1_task-rest_run-02_bold.json",
            "sub-P01_ses-MR1_task-rest_run-02_bold.nii",
        ]
        assert os.getxattr(session / "anat/sub-P01_ses-MR1_acq-mprage_T1w.nii", "user.xnat.rule").startswith(
            b"dcm2bids"
        )


def test_a_config_that_cannot_be_used_stops_the_mount_with_one_line(fresh_server, tmp_path):
    config = tmp_path / "broken.json"
    config.write_text("{not json")
    (tmp_path / "mnt").mkdir()
    done = subprocess.run(
        xnatfs_command("mount", fresh_server.url, str(tmp_path / "mnt"), "--foreground", "--bids-config", str(config)),
        capture_output=True,
        text=True,
        timeout=60,
        env=isolated_env(tmp_path, XNAT_USER="admin", XNAT_PASS="admin"),
    )
    assert done.returncode != 0
    assert "not JSON" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def add_broken_series(server, kind: str) -> None:
    """Scan 10 of P01_MR1, typed ``kind``, holding three files that are no DICOM."""
    store = server.store
    experiment = store.experiment_id(PROJECT, "P01_MR1")
    pk = store.add_scan(experiment, "10", type=kind, series_description=kind)
    resource = store.ensure_resource("scan", str(pk), "DICOM", format="DICOM")
    for index in range(3):
        store.store_file(resource, f"slice{index}.dcm", b"this is no DICOM file\n" * 10)


def test_a_series_that_cannot_be_converted_is_left_out_and_reported(fresh_server, tmp_path):
    add_broken_series(fresh_server, "anat-T2w_acq-broken")
    with mounted(fresh_server.url, tmp_path) as mount:
        anat = mount.path / PROJECT / "BIDS/sub-P01/ses-MR1/anat"
        assert sorted(os.listdir(anat)) == [
            "sub-P01_ses-MR1_T1w.json",
            "sub-P01_ses-MR1_T1w.nii",
            "sub-P01_ses-MR1_T2w.json",
            "sub-P01_ses-MR1_T2w.nii",
        ]
        failed = bids_check(mount.path / PROJECT / "BIDS", tmp_path)["failed"]
        assert [(f["session"], f["scan"], f["reason"]) for f in failed] == [
            ("sub-P01/ses-MR1", "10", "conversion-failed")
        ]
        assert "dcm2niix" in failed[0]["detail"] or "NIfTI" in failed[0]["detail"]
        assert mount.log().count("cannot convert /data/experiments/") == 1


def test_listing_one_datatype_folder_converts_the_whole_session_ahead_each_series_once(fresh_server, tmp_path):
    experiment = fresh_server.store.experiment_id(PROJECT, "P01_MR1")
    every_scan = sorted(scan for scans in MR1_SCANS.values() for scan in scans)
    with mounted(fresh_server.url, tmp_path) as mount:
        session = mount.path / PROJECT / "BIDS/sub-P01/ses-MR1"
        assert sorted(os.listdir(session))[:4] == ["anat", "dwi", "fmap", "func"]
        fresh_server.reset_counts()
        assert len(os.listdir(session / "anat")) == 4
        # The other folders' series are fetched and converted before anything lists them.
        wait_until(lambda: sorted(zipped_scans(fresh_server, experiment)) == every_scan, "every series zipped")
        converted = f"converted /data/experiments/{experiment}/scans/"
        wait_until(lambda: mount.log().count(converted) == len(every_scan), "every series converted")
        files = {}
        for folder, _dirs, names in os.walk(session):
            for name in names:
                files[name] = (Path(folder) / name).read_bytes()
        assert len([name for name in files if name.endswith(".nii")]) == len(every_scan)
        # The walk found them converted: no series fetched or converted twice.
        assert sorted(zipped_scans(fresh_server, experiment)) == every_scan
        log = mount.log()
        assert [log.count(f"{converted}{scan[len('/scans/') :]}") for scan in every_scan] == [1] * len(every_scan)


def test_a_series_converted_ahead_that_fails_leaves_its_folder_with_the_others(fresh_server, tmp_path):
    add_broken_series(fresh_server, "func-bold_task-broken")
    with mounted(fresh_server.url, tmp_path) as mount:
        session = mount.path / PROJECT / "BIDS/sub-P01/ses-MR1"
        os.listdir(session / "anat")
        # The broken func series failed ahead, before its folder was listed.
        wait_until(lambda: "cannot convert /data/experiments/" in mount.log(), "the failed conversion's log line")
        func = sorted(os.listdir(session / "func"))
        assert func == [
            "sub-P01_ses-MR1_task-nback_bold.json",
            "sub-P01_ses-MR1_task-nback_bold.nii",
            "sub-P01_ses-MR1_task-rest_run-1_bold.json",
            "sub-P01_ses-MR1_task-rest_run-1_bold.nii",
            "sub-P01_ses-MR1_task-rest_run-2_bold.json",
            "sub-P01_ses-MR1_task-rest_run-2_bold.nii",
        ]
        for name in func:
            assert (session / "func" / name).read_bytes()
        failed = bids_check(mount.path / PROJECT / "BIDS", tmp_path)["failed"]
        assert [(f["session"], f["scan"], f["reason"]) for f in failed] == [
            ("sub-P01/ses-MR1", "10", "conversion-failed")
        ]
        assert mount.log().count("cannot convert /data/experiments/") == 1


def test_no_bids_hides_the_view_and_a_subject_named_bids_keeps_its_tagged_name(fresh_server, tmp_path):
    subject_id = fresh_server.store.add_subject(PROJECT, "BIDS")
    with mounted(fresh_server.url, tmp_path, args=("--no-bids",)) as mount:
        names = os.listdir(mount.path / PROJECT)
        assert "BIDS" not in names
        assert f"BIDS@{subject_id}" in names
    with mounted(fresh_server.url, tmp_path, name="with-view") as mount:
        names = os.listdir(mount.path / PROJECT)
        assert (mount.path / PROJECT / "BIDS" / "dataset_description.json").is_file()
        assert f"BIDS@{subject_id}" in names
        assert os.getxattr(mount.path / PROJECT / f"BIDS@{subject_id}", "user.xnat.label") == b"BIDS"


def test_prefetch_converts_ahead_and_reads_then_cost_nothing(fresh_server, tmp_path):
    with mounted(fresh_server.url, tmp_path) as mount:
        subject = mount.path / PROJECT / "BIDS/sub-P01"
        done = subprocess.run(
            xnatfs_command("prefetch", str(subject)),
            capture_output=True,
            text=True,
            env=isolated_env(tmp_path),
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        files = view_files(subject)
        assert len(files) == 35
        fresh_server.reset_counts()
        for name in files:
            (subject / name).read_bytes()
        assert downloads(fresh_server) == []


def test_a_request_waiting_for_a_conversion_longer_than_its_timeout_is_not_given_up():
    import threading

    import trio
    import trio.testing

    from xnatfs.bids.rules import BuiltinRules
    from xnatfs.fs.bidsview import BidsView
    from xnatfs.fs.deadlines import RequestDeadlines, bounded

    view = BidsView(None, None, None, BuiltinRules(), series=None, key_for=None, server_url="")
    release = threading.Event()
    calls = []

    def conversion() -> str:
        calls.append(1)
        release.wait(10)
        return "converted"

    async def request(deadlines: RequestDeadlines) -> list:
        async def waited() -> str:
            answer = await view._wait(("test",), conversion, thread=True)
            await bounded(trio.sleep(0))  # the budget is not spent: the wait was progress
            return answer

        return await deadlines.run(waited)

    async def main() -> list:
        deadlines = RequestDeadlines(0.4)
        answers = []
        async with trio.open_nursery() as nursery:
            view.nursery = nursery
            nursery.start_soon(deadlines.watch)

            async def ask() -> None:
                answers.append(await request(deadlines))

            async with trio.open_nursery() as askers:
                askers.start_soon(ask)
                askers.start_soon(ask)
                await trio.sleep(1.5)  # well past the 0.4 s timeout
                release.set()
            nursery.cancel_scope.cancel()
        return answers

    assert trio.run(main) == ["converted", "converted"]
    assert len(calls) == 1


def test_series_converted_ahead_take_turns_unless_a_listing_wants_them():
    import trio
    import trio.testing

    from xnatfs.bids.rules import BuiltinRules
    from xnatfs.fs.bidsview import AHEAD_AT_ONCE, BidsView

    view = BidsView(None, None, None, BuiltinRules(), series=None, key_for=None, server_url="")
    asking = AHEAD_AT_ONCE + 2

    async def main() -> tuple[dict[int, bool], dict[int, bool], dict[int, bool]]:
        wanted = [trio.Event() for _ in range(asking)]
        turns: dict[int, bool] = {}
        async with trio.open_nursery() as nursery:

            async def ask(index: int) -> None:
                turns[index] = await view._ahead_turn(wanted[index])

            for index in range(asking):
                nursery.start_soon(ask, index)
            await trio.testing.wait_all_tasks_blocked()
            first = dict(turns)
            waiting = [index for index in range(asking) if index not in turns]
            wanted[waiting[0]].set()  # a listing waits for it: it goes without a turn
            await trio.testing.wait_all_tasks_blocked()
            then = dict(turns)
            view._ahead_turns.release()  # a turn given back: the one left waiting takes it
        return first, then, turns

    first, then, final = trio.run(main)
    assert list(first.values()) == [True] * AHEAD_AT_ONCE
    assert list(then.values()).count(False) == 1 and len(then) == AHEAD_AT_ONCE + 1
    assert sorted(final.values()) == [False] + [True] * (AHEAD_AT_ONCE + 1)


def test_a_caller_killed_while_waiting_for_a_conversion_is_let_go_and_the_conversion_goes_on():
    import signal
    import threading

    import trio

    from test_fs_deadlines import zombie
    from xnatfs.bids.rules import BuiltinRules
    from xnatfs.fs.bidsview import BidsView
    from xnatfs.fs.deadlines import CallerKilled, RequestDeadlines, asked_by

    view = BidsView(None, None, None, BuiltinRules(), series=None, key_for=None, server_url="")
    release = threading.Event()

    def conversion() -> str:
        release.wait(20)
        return "converted"

    async def main(killed: int) -> list:
        deadlines = RequestDeadlines(30.0)
        outcomes = []
        async with trio.open_nursery() as nursery:
            view.nursery = nursery
            nursery.start_soon(deadlines.watch)

            async def ask(caller: int | None) -> None:
                async def request() -> str:
                    asked_by(caller)
                    return await view._wait(("test",), conversion, thread=True)

                try:
                    outcomes.append(await deadlines.run(request))
                except CallerKilled:
                    outcomes.append("let go")
                    release.set()  # only now: the other caller was still waiting

            with trio.fail_after(15):  # the conversion waits 20 s for its release
                async with trio.open_nursery() as askers:
                    askers.start_soon(ask, killed)
                    askers.start_soon(ask, None)
            nursery.cancel_scope.cancel()
        return outcomes

    with zombie(["sleep", "60"], signal.SIGKILL) as killed:
        assert trio.run(main, killed) == ["let go", "converted"]
