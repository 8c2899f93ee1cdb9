"""Converting series of the "bids" sample with the real dcm2niix, outputs in the content cache."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import dcm2niix
import nibabel
import numpy as np
import pytest

from xnatfs.bids.convert import (
    Converter,
    Series,
    SeriesFile,
    converter_version,
    find_server_conversion,
)
from xnatfs.cache.content import CacheKey, ContentCache
from xnatfs.client.models import RemoteFile
from xnatfs.errors import XnatConversionError
from xnatfs.fake import FakeXnat
from xnatfs.fake.store import Store

SERVER = "http://xnat.test"
CACHE_BYTES = 256 << 20


@pytest.fixture(scope="module")
def bids_store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bids-sample")
    FakeXnat(folder, sample="bids").close()
    store = Store(folder)
    yield store
    store.close()


@pytest.fixture
def cache(tmp_path):
    cache = ContentCache(tmp_path / "cache", CACHE_BYTES)
    yield cache
    cache.close()


def dicom_folder(store: Store, session: str, scan: str) -> tuple[Path, list[RemoteFile]]:
    """The store's folder of a scan's DICOM files and their listing."""
    experiment = store.experiment_id("BIDS01", session)
    pk = store.scan(experiment, scan)["pk"]
    resource = store.find_resource("scan", str(pk), "DICOM")
    uri = f"/data/experiments/{experiment}/scans/{scan}/resources/DICOM"
    listing = [
        RemoteFile(
            path=f["path"],
            size=f["size"],
            uri=f"{uri}/files/{f['path']}",
            resource_label="DICOM",
            resource_uri=uri,
            digest=f["digest"],
        )
        for f in store.files(resource["id"])
    ]
    return store.file_path(resource["id"], listing[0].path).parent, listing


def cached_series(store: Store, cache: ContentCache, session: str, scan: str) -> Series:
    """A scan's series with every file put into ``cache`` as the series zip would."""
    folder, listing = dicom_folder(store, session, scan)
    series = Series.from_listing(listing[0].resource_uri, listing, lambda f: CacheKey(SERVER + f.uri, f.size, f.digest))
    for remote, file in zip(listing, series.files):
        cache.insert(file.key, folder / remote.path)
    return series


def whole(converted) -> bytes:
    data = converted.entry.pread(0, converted.size + 1)
    assert len(data) == converted.size
    return data


def sidecar(image) -> dict:
    return json.loads(whole(image.sidecar))


def nifti(image):
    return nibabel.Nifti1Image.from_bytes(whole(image.nifti))


def counting_binary(folder: Path, body: str = 'exec "{real}" "$@"') -> tuple[str, Path]:
    """A dcm2niix stand-in script that logs each conversion run (not ``-v``) and then does ``body``."""
    log = folder / "runs.log"
    script = folder / "dcm2niix-counted"
    script.write_text(
        "#!/bin/sh\n"
        f'[ "$1" = "-v" ] && exec "{dcm2niix.bin}" "$@"\n'
        f'echo run >> "{log}"\n' + body.format(real=dcm2niix.bin) + "\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script), log


def runs(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def cache_entries(cache: ContentCache) -> list[Path]:
    """Every file the cache holds."""
    return [Path(root) / name for root, _dirs, names in os.walk(cache.directory / "data") for name in names]


def test_bids_sample_layout(bids_store):
    assert [p["id"] for p in bids_store.projects()] == ["BIDS01"]
    assert [s["label"] for s in bids_store.subjects_in("BIDS01")] == ["P01"]
    series = {}
    for session in ("P01_MR1", "P01_MR2"):
        experiment = bids_store.experiment_id("BIDS01", session)
        series[session] = [
            (s["scan_id"], s["series_description"], s["quality"], s["frames"]) for s in bids_store.scans(experiment)
        ]
    common = [
        ("1", "Localizer", "usable", 9),
        ("2", "T1w_MPRAGE", "usable", 20),
        ("3", "T2w_SPC", "usable", 20),
        ("4", "fmap-epi_dir-AP", "usable", 12),
        ("5", "fmap-epi_dir-PA", "usable", 12),
    ]
    assert series["P01_MR1"] == common + [
        ("6", "func-bold_task-nback", "usable", 36),
        ("7", "fMRI_rest", "usable", 36),
        ("8", "fMRI_rest", "usable", 36),
        ("9", "DWI_dir3", "usable", 48),
    ]
    assert series["P01_MR2"] == common + [
        ("6", "fMRI_rest", "usable", 36),
        ("7", "DWI_dir3", "usable", 48),
        ("8", "T1w_MPRAGE", "unusable", 20),
    ]
    scan_pk = str(bids_store.scan(bids_store.experiment_id("BIDS01", "P01_MR2"), "3")["pk"])
    assert [r["label"] for r in bids_store.resources("scan", scan_pk)] == ["DICOM", "SNAPSHOTS", "NIFTI"]


def test_version_is_the_pinned_wheels():
    assert converter_version() == "v" + dcm2niix.__version__
    assert converter_version() == "v1.0.20260724"


def test_every_series_of_the_bids_sample_converts(bids_store, cache):
    converter = Converter(cache)
    results = {}
    for session, scans in (("P01_MR1", range(1, 10)), ("P01_MR2", range(1, 9))):
        for scan in scans:
            with converter.convert(cached_series(bids_store, cache, session, str(scan)), "test") as done:
                assert done.converter == "dcm2niix v1.0.20260724"
                results[session, scan] = [
                    (
                        image.suffix,
                        nifti(image).shape,
                        sidecar(image),
                        image.bval is not None and whole(image.bval),
                        image.bvec is not None,
                    )
                    for image in done.images
                ]
    assert [suffix for suffix, *_ in results["P01_MR1", 1]] == ["_i00001", "_i00004", "_i00007"]
    for key in (("P01_MR1", 2), ("P01_MR1", 3), ("P01_MR2", 8)):
        [(suffix, shape, meta, bval, bvec)] = results[key]
        assert (suffix, sorted(shape), bval, bvec) == ("", [20, 64, 64], False, False)  # sagittal or axial
        assert meta["SeriesDescription"] in ("T1w_MPRAGE", "T2w_SPC")
    for key in (("P01_MR1", 6), ("P01_MR1", 7), ("P01_MR1", 8), ("P01_MR2", 6)):
        [(_suffix, shape, meta, _bval, _bvec)] = results[key]
        assert shape == (64, 64, 12, 3)
        assert meta["RepetitionTime"] == 2 and len(meta["SliceTiming"]) == 12
    assert results["P01_MR1", 6][0][2]["SeriesDescription"] == "func-bold_task-nback"
    for key in (("P01_MR1", 9), ("P01_MR2", 7)):
        [(_suffix, shape, _meta, bval, bvec)] = results[key]
        assert shape == (64, 64, 12, 4)
        assert bval.split() == [b"0", b"1000", b"1000", b"1000"] and bvec
    for session in ("P01_MR1", "P01_MR2"):
        directions = [results[session, scan][0][2] for scan in (4, 5)]
        assert [d["PhaseEncodingDirection"] for d in directions] == ["j-", "j"]
        assert all(d["TotalReadoutTime"] > 0 for d in directions)


def test_outputs_equal_a_direct_run_and_sizes_are_exact(bids_store, cache, tmp_path):
    folder, _listing = dicom_folder(bids_store, "P01_MR1", "9")
    direct = tmp_path / "direct"
    direct.mkdir()
    subprocess.run(
        [dcm2niix.bin, "-z", "n", "-b", "y", "-ba", "y", "-f", "series", "-o", str(direct), str(folder)],
        check=True,
        capture_output=True,
    )
    with Converter(cache).convert(cached_series(bids_store, cache, "P01_MR1", "9"), "r") as done:
        [image] = done.images
        assert [f.name for f in image.files] == ["series.nii", "series.json", "series.bval", "series.bvec"]
        for converted in image.files:
            assert converted.size == os.path.getsize(converted.entry.path) == len(whole(converted))
        ours, theirs = nifti(image), nibabel.load(direct / "series.nii")
        assert ours.shape == theirs.shape
        assert np.allclose(ours.affine, theirs.affine)
        assert np.array_equal(np.asarray(ours.dataobj), np.asarray(theirs.dataobj))
        assert sidecar(image) == json.loads((direct / "series.json").read_text())
        assert whole(image.bvec) == (direct / "series.bvec").read_bytes()


def test_many_threads_asking_for_one_series_run_dcm2niix_once(bids_store, cache, tmp_path):
    binary, log = counting_binary(tmp_path)
    series = cached_series(bids_store, cache, "P01_MR1", "7")
    # A second cache object on the same folder stands for another process sharing it.
    other_cache = ContentCache(cache.directory, CACHE_BYTES)
    converters = [Converter(cache, binary=binary), Converter(other_cache, binary=binary)]
    results, errors = [], []
    start = threading.Barrier(8)

    def ask(index: int) -> None:
        start.wait()
        try:
            with converters[index % 2].convert(series, "rule-1") as done:
                results.append([(f.name, f.size, whole(f)) for f in done.files()])
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    other_cache.close()
    assert not errors
    assert len(results) == 8 and all(r == results[0] for r in results)
    assert runs(log) == 1
    # Another rule is another conversion.
    converters[0].convert(series, "rule-2").close()
    assert runs(log) == 2


CHILD = """
import json, sys
from xnatfs.bids.convert import Converter, Series, SeriesFile
from xnatfs.cache.content import CacheKey, ContentCache
folder, binary, files = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
series = Series("series", tuple(SeriesFile(name, CacheKey(*key)) for name, key in files))
sys.stdin.readline()   # go: all processes start converting together
with Converter(ContentCache(folder, 1 << 28), binary=binary).convert(series, "r") as done:
    print(json.dumps([[f.name, f.size, f.key.digest] for f in done.files()]))
"""


def test_processes_sharing_the_cache_folder_convert_once(bids_store, cache, tmp_path):
    binary, log = counting_binary(tmp_path)
    series = cached_series(bids_store, cache, "P01_MR1", "6")
    files = json.dumps([[f.name, list(f.key)] for f in series.files])
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(cache.directory), binary, files],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    for child in children:
        child.stdin.write("go\n")
        child.stdin.flush()
    answers = [child.communicate(timeout=120)[0] for child in children]
    assert all(child.returncode == 0 for child in children)
    assert len(set(answers)) == 1 and "series.nii" in answers[0]
    assert runs(log) == 1


def test_a_new_cache_object_on_the_folder_reuses_the_outputs(bids_store, tmp_path):
    binary, log = counting_binary(tmp_path)
    first = ContentCache(tmp_path / "cache", CACHE_BYTES)
    series = cached_series(bids_store, first, "P01_MR2", "7")
    with Converter(first, binary=binary).convert(series, "r") as done:
        before = [(f.name, f.size, whole(f)) for f in done.files()]
    first.close()
    again = ContentCache(tmp_path / "cache", CACHE_BYTES)
    try:
        converter = Converter(again, binary=binary)
        with converter.cached(series, "r") as found:
            assert [(f.name, f.size, whole(f)) for f in found.files()] == before
        with converter.convert(series, "r") as done:
            assert [(f.name, f.size, whole(f)) for f in done.files()] == before
        assert converter.cached(series, "another rule") is None
    finally:
        again.close()
    assert runs(log) == 1


def test_an_evicted_output_is_converted_again(bids_store, cache, tmp_path):
    binary, log = counting_binary(tmp_path)
    converter = Converter(cache, binary=binary)
    series = cached_series(bids_store, cache, "P01_MR1", "2")
    with converter.convert(series, "r") as done:
        dropped = done.images[0].sidecar.key
    cache.discard_uri(dropped.uri)
    assert converter.cached(series, "r") is None
    with converter.convert(series, "r") as done:
        assert json.loads(whole(done.images[0].sidecar))["SeriesDescription"] == "T1w_MPRAGE"
    assert runs(log) == 2


def test_a_series_that_is_not_dicom_fails_and_leaves_nothing(cache, tmp_path, caplog):
    texts = tmp_path / "texts"
    texts.mkdir()
    files = []
    for index in range(3):
        path = texts / f"note{index}.txt"
        path.write_bytes(b"not an image %d\n" % index)
        key = CacheKey(f"{SERVER}/data/experiments/E1/scans/9/resources/DICOM/files/{path.name}", path.stat().st_size)
        cache.insert(key, path)
        files.append(SeriesFile(path.name, key))
    inputs = set(cache_entries(cache))
    converter = Converter(cache)
    series = Series("/data/experiments/E1/scans/9/resources/DICOM", tuple(files))
    caplog.set_level("WARNING", logger="xnatfs.bids.convert")
    with pytest.raises(XnatConversionError) as failed:
        converter.convert(series, "r")
    assert failed.value.url == series.uri
    assert set(cache_entries(cache)) == inputs
    assert converter.cached(series, "r") is None
    assert [r.getMessage() for r in caplog.records if "cannot convert" in r.getMessage()] == [
        f"cannot convert {series.uri} (3 files): {failed.value.message}"
    ]
    assert not os.listdir(cache.directory / "tmp")


def test_a_file_missing_from_the_cache_is_an_error_not_a_download(cache):
    key = CacheKey(SERVER + "/data/x/files/1.dcm", 10, "0" * 32)
    with pytest.raises(XnatConversionError, match="not in the cache"):
        Converter(cache).convert(Series("/data/x", (SeriesFile("1.dcm", key),)), "r")


@pytest.mark.parametrize(
    "body, expected",
    [
        ("sleep 30", "took longer than 0.5 s"),
        ("kill -SEGV $$", "killed by signal 11"),
        ('"{real}" "$@" >/dev/null; exit 3', "exited with status 3"),
        # Outputs are stored before the manifest, which then overflows: they must go again.
        (
            '"{real}" "$@" >/dev/null; for i in $(seq 400); do echo "{{}}" > "${{12}}/extra_$i.json"; done',
            "too many files",
        ),
    ],
)
def test_a_crash_or_hang_of_the_converter_is_an_error_for_every_waiter(bids_store, cache, tmp_path, body, expected):
    binary, _log = counting_binary(tmp_path, body)
    converter = Converter(cache, binary=binary, timeout=0.5)
    series = cached_series(bids_store, cache, "P01_MR1", "2")
    inputs = set(cache_entries(cache))
    errors = []

    def ask() -> None:
        try:
            converter.convert(series, "r").close()
        except XnatConversionError as exc:
            errors.append(str(exc))

    started = time.monotonic()
    threads = [threading.Thread(target=ask) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert time.monotonic() - started < 30  # liveness: nobody waited for the 30 s sleep
    assert len(errors) == 3 and all(expected in e for e in errors)
    assert set(cache_entries(cache)) == inputs


def test_parallel_conversions_are_bounded(bids_store, cache, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    # Each run records how many runs are inside at its start (a file per running run).
    body = (
        'touch "{marks}/$$"; ls "{marks}" | wc -l >> "{marks}.seen"; '
        '"{real}" "$@"; status=$?; rm -f "{marks}/$$"; exit $status'
    ).replace("{marks}", str(marks))
    binary, log = counting_binary(tmp_path, body)
    converter = Converter(cache, binary=binary, max_parallel=1)
    series = [cached_series(bids_store, cache, "P01_MR1", str(n)) for n in (2, 3, 4, 5)]
    threads = [threading.Thread(target=lambda s=s: converter.convert(s, "r").close()) for s in series]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert runs(log) == 4
    assert [int(n) for n in Path(f"{marks}.seen").read_text().split()] == [1, 1, 1, 1]


def test_the_samples_server_nifti_is_recognised_and_matches_a_conversion(bids_store, cache):
    experiment = bids_store.experiment_id("BIDS01", "P01_MR2")
    pk = str(bids_store.scan(experiment, "3")["pk"])
    listings = {}
    for resource in bids_store.resources("scan", pk):
        uri = f"/data/experiments/{experiment}/scans/3/resources/{resource['label']}"
        listings[resource["label"]] = [
            RemoteFile(
                path=f["path"],
                size=f["size"],
                uri=f"{uri}/files/{f['path']}",
                resource_label=resource["label"],
                resource_uri=uri,
                digest=f["digest"],
            )
            for f in bids_store.files(resource["id"])
        ]
    found = find_server_conversion(listings)
    assert found.source == "server NIFTI resource"
    [image] = found.images
    assert (image.nifti.path, image.sidecar.path) == ("3_T2w_SPC.nii.gz", "3_T2w_SPC.json")
    nifti_resource = bids_store.find_resource("scan", pk, "NIFTI")
    theirs = nibabel.load(bids_store.file_path(nifti_resource["id"], image.nifti.path))
    with Converter(cache).convert(cached_series(bids_store, cache, "P01_MR2", "3"), "r") as done:
        ours = nifti(done.images[0])
        assert ours.shape == theirs.shape and np.allclose(ours.affine, theirs.affine)
        assert np.array_equal(np.asarray(ours.dataobj), np.asarray(theirs.dataobj))


def remote(path: str, resource: str = "NIFTI") -> RemoteFile:
    uri = f"/data/experiments/E1/scans/2/resources/{resource}/files/{path}"
    return RemoteFile(path=path, size=100, uri=uri, resource_label=resource, digest="a" * 32)


def test_server_conversions_are_recognised():
    nifti = [remote("2_T1w.nii.gz"), remote("2_T1w.json"), remote("2_T1w.nii"), remote("notes.txt")]
    found = find_server_conversion({"DICOM": [remote("1.dcm", "DICOM")], "nifti": nifti})
    assert found.resource_label == "NIFTI" and found.source == "server NIFTI resource"
    [image] = found.images
    assert (image.stem, image.nifti.path, image.sidecar.path, image.bval) == (
        "2_T1w",
        "2_T1w.nii.gz",
        "2_T1w.json",
        None,
    )

    dwi = [
        remote(n, "BIDS")
        for n in ("dwi.nii", "dwi.json", "dwi.bval", "dwi.bvec", "half.nii", "half.json", "half.bval", "bare.nii")
    ]
    found = find_server_conversion({"BIDS": dwi})
    assert [(i.stem, [f.path for f in i.files]) for i in found.images] == [
        ("dwi", ["dwi.nii", "dwi.json", "dwi.bval", "dwi.bvec"])
    ]
    # NIFTI is preferred to BIDS; a resource with no usable image does not count.
    assert find_server_conversion({"BIDS": dwi, "NIFTI": nifti}).resource_label == "NIFTI"
    assert find_server_conversion({"BIDS": dwi, "NIFTI": [remote("x.nii")]}).resource_label == "BIDS"
    assert find_server_conversion({"DICOM": [remote("1.dcm", "DICOM")]}) is None
    assert find_server_conversion({"NIFTI": [remote("a.nii.gz"), remote("b.json")]}) is None
