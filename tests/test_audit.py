"""`faceattr audit`: the quantification maths on hand-computed cases, the collection kinds
(folder, tar, zip, path lists), counted failures, resuming an interrupted audit, and a run on
a local two-worker Dask cluster that loses a worker half-way."""

from __future__ import annotations

import json
import os
import signal
import tarfile
import threading
import time
import zipfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from skimage import data as skdata

from faceattr import audit as auditmod
from faceattr.audit import audit
from faceattr.cli import main
from faceattr.inputerror import InputError
from faceattr.quantify import FAIRFACE_AGE_EDGES, adjust, age_group_probs, confusion, em_priors, estimate

# --- the estimators ------------------------------------------------------------------------------


def test_adjusted_count_inverts_a_known_confusion():
    c = np.array([[0.9, 0.1], [0.2, 0.8]])  # rows: true class, columns: predicted
    observed = c.T @ np.array([0.3, 0.7])  # what a classifier with C reports for 30 % / 70 %
    assert np.allclose(observed, [0.41, 0.59])
    assert np.allclose(adjust(c, observed), [0.3, 0.7], atol=1e-6)
    assert np.allclose(adjust(np.eye(3), np.array([0.2, 0.5, 0.3])), [0.2, 0.5, 0.3], atol=1e-6)


def test_confusion_rows_and_a_class_missing_from_validation():
    probs = np.array([[0.9, 0.1, 0.0], [0.4, 0.6, 0.0], [0.2, 0.8, 0.0]])
    truth = np.array([0, 0, 1])
    hard = confusion(probs, truth, 3, soft=False)
    assert hard.tolist() == [[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]  # class 2 unseen: identity
    soft = confusion(probs, truth, 3, soft=True)
    assert np.allclose(soft[0], [0.65, 0.35, 0.0])


def test_em_recovers_a_shifted_prior_from_calibrated_posteriors():
    rng = np.random.default_rng(0)
    # Two Gaussian classes, posteriors exact under a 50/50 prior; the audited set is 80/20.
    x = np.concatenate([rng.normal(-1, 1, 8000), rng.normal(1, 1, 2000)])
    like0, like1 = np.exp(-((x + 1) ** 2) / 2), np.exp(-((x - 1) ** 2) / 2)
    probs = np.stack([like0, like1], 1) / (like0 + like1)[:, None]
    assert abs(probs.mean(0)[0] - 0.8) > 0.05  # PCC is pulled towards 50/50
    assert np.allclose(em_priors(probs, np.array([0.5, 0.5])), [0.8, 0.2], atol=0.02)


def test_intervals_hold_their_point_and_age_groups_are_distributions():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet([2, 2, 2], 300)
    val = rng.dirichlet([2, 2, 2], 200)
    truth = val.argmax(1)
    for e in estimate(probs, val, truth, n_boot=50).values():
        assert np.isclose(sum(e["share"]), 1, atol=1e-6)
        assert all(lo - 1e-9 <= s <= hi + 1e-9 for s, lo, hi in zip(e["share"], e["low"], e["high"]))
    groups = age_group_probs(np.array([35.0, 1.0]), np.array([34.0, 1.0]), np.array([36.0, 5.0]), FAIRFACE_AGE_EDGES)
    assert np.allclose(groups.sum(1), 1) and groups[0, 4] > 0.99 and groups[1, 0] > 0.5


# --- the command ---------------------------------------------------------------------------------


def face_photo(k: int) -> Image.Image:
    face = Image.fromarray(skdata.astronaut()).resize((200 + 8 * k, 200 + 8 * k))
    canvas = Image.new("RGB", (360, 280), (60 + 10 * k, 90, 120))
    canvas.paste(face.transpose(Image.FLIP_LEFT_RIGHT) if k % 2 else face, (20 + 4 * k, 10))
    return canvas


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("collection") / "photos"
    (folder / "more").mkdir(parents=True)
    for k in range(5):
        face_photo(k).save(folder / ("more" if k > 2 else "") / f"face{k}.jpg", quality=90)
    Image.new("RGB", (200, 150), (200, 200, 200)).save(folder / "blank.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "notes.txt").write_text("not a photo, not read")
    return folder


def read(out) -> tuple[dict, pa.Table, pa.Table]:
    return (
        json.loads((out / "report.json").read_text()),
        pq.read_table(out / "faces.parquet"),
        pq.read_table(out / "photos.parquet"),
    )


def test_a_folder_is_audited_with_every_photo_accounted_for(photos, tmp_path, capsys):
    out = tmp_path / "audit"
    assert main(["audit", str(photos), "--out", str(out), "--shard-size", "3", "--bootstrap", "30"]) == 1
    report, faces, table = read(out)
    c = report["counts"]
    assert (c["photos"], c["photos_with_faces"], c["photos_without_faces"], c["photos_failed"]) == (7, 5, 1, 1)
    assert c["failures_by_reason"] == {"corrupt or unreadable": 1} and faces.num_rows == c["faces"]
    # One face per photo passes the bar; any weaker detection is counted and left out, with its reason.
    assert c["faces_included"] == 5 == sum(faces.column("included").to_pylist())
    assert c["faces"] - c["faces_included"] == sum(c["faces_excluded"].values())
    left_out = [
        e for e, ok in zip(faces.column("exclusion").to_pylist(), faces.column("included").to_pylist()) if not ok
    ]
    assert all(left_out) and len(left_out) == c["faces"] - 5
    assert sorted(table.column("photo").to_pylist()) == sorted(
        str(p) for p in photos.rglob("*") if p.suffix != ".txt" and p.is_file()
    )
    assert set(faces.column_names) >= {
        "photo",
        "x1",
        "score",
        "p_female",
        "p_Black",
        "age",
        "age_low",
        "included",
        "model_version",
    }
    g = report["targets"]["gender"]
    assert g["classes"] == ["male", "female"] and set(g["estimates"]) == {"cc", "pcc", "acc", "pacc", "em"}
    assert report["estimator_shown"] in g["estimates"] and np.isclose(sum(g["estimates"]["pacc"]["share"]), 1)
    assert set(report["targets"]) == {"gender", "ethnicity", "age_group", "age_band", "gender_x_age_group"}
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and "PACC" in page
    assert "1 photo(s) failed" in capsys.readouterr().err


def test_tar_zip_and_path_lists_give_the_same_faces(photos, tmp_path, capsys):
    images = sorted(p for p in photos.rglob("*.jpg") if p.name.startswith("face"))
    tar = tmp_path / "photos.tar.gz"
    with tarfile.open(tar, "w:gz") as tf:
        for p in images:
            tf.add(p, arcname=f"x/{p.name}")
    zipped = tmp_path / "photos.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        for p in images:
            zf.write(p, arcname=p.name)
    listed = tmp_path / "list.txt"
    listed.write_text("\n".join(str(p) for p in images) + "\nnot/there.jpg\n")
    csv_list = tmp_path / "list.csv"
    csv_list.write_text("path,who\n" + "".join(f"{p},x\n" for p in images))
    parquet_list = tmp_path / "list.parquet"
    pq.write_table(pa.table({"path": [str(p) for p in images]}), parquet_list)
    faces = {}
    for collection in (tar, zipped, listed, csv_list, parquet_list):
        out = tmp_path / f"out-{collection.name}"
        code = main(["audit", str(collection), "--out", str(out), "--bootstrap", "20"])
        report, table, photo_table = read(out)
        faces[collection.name] = sorted(round(a, 3) for a in table.column("age").to_pylist())
        if collection is listed:
            assert code == 1 and report["counts"]["failures_by_reason"] == {"missing file": 1}
            errors = [e for e in photo_table.column("error").to_pylist() if e]
            assert errors == ["no such file"] and "not/there.jpg" in photo_table.column("photo").to_pylist()
        else:
            assert code == 0 and report["counts"]["photos"] == len(images)
    assert len({tuple(v) for v in faces.values()}) == 1 and len(faces["photos.zip"]) >= len(images)
    capsys.readouterr()


@pytest.mark.parametrize(
    "case, message",
    [
        ("empty", "no photos found"),
        ("missing", "no such file or folder"),
        ("other", "another collection"),
        ("bootstrap", "--bootstrap 0: expected a positive number"),
        ("out_is_a_file", "exists and is not a folder"),
        ("cluster", "cannot reach or start the Dask cluster"),
    ],
)
def test_bad_collections_and_options_are_one_line_and_exit_2(photos, tmp_path, capsys, case, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    target = {"empty": empty, "missing": tmp_path / "nope"}.get(case, photos)
    out = tmp_path / "out"
    extra = {"bootstrap": ["--bootstrap", "0"], "cluster": ["--cluster", "tcp://127.0.0.1:1"]}.get(case, [])
    if case == "other":  # an audit folder of another collection is never mixed into
        assert main(["audit", str(empty), "--out", str(out)]) == 2
        capsys.readouterr()
    if case == "out_is_a_file":
        out.write_text("not a folder")
    assert main(["audit", str(target), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
    if case in ("bootstrap", "cluster"):  # refused before anything was written: a fixed rerun works
        assert not out.exists()


def test_an_unreadable_archive_member_is_a_counted_failure(photos, tmp_path, capsys):
    zipped = tmp_path / "odd.zip"
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(photos / "face0.jpg", arcname="good.jpg")
        zf.writestr("bad.jpg", b"\xff\xd8" + b"x" * 5000)
    raw = bytearray(zipped.read_bytes())
    at = raw.find(b"bad.jpg", raw.find(b"PK\x01\x02"))  # its name in the central directory
    raw[at - 36 : at - 34] = (9).to_bytes(2, "little")  # compressed with Deflate64, which zipfile cannot read
    zipped.write_bytes(bytes(raw))
    assert main(["audit", str(zipped), "--out", str(tmp_path / "out"), "--bootstrap", "10"]) == 1
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["counts"]["photos"] == 2 and report["counts"]["photos_with_faces"] == 1
    assert report["counts"]["failures_by_reason"] == {"unreadable archive member": 1}
    capsys.readouterr()


def test_an_interrupted_audit_resumes_without_losing_or_repeating_a_photo(photos, tmp_path, monkeypatch):
    out = tmp_path / "audit"
    real = auditmod.process_shard
    calls = []

    def crash_on_third(settings, index, items):
        calls.append(index)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as a Ctrl-C or a killed job would stop it
        return real(settings, index, items)

    monkeypatch.setattr(auditmod, "process_shard", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        audit(photos, out, shard_size=2, n_boot=10, log=lambda *_: None)
    assert len(list((out / "shards").glob("photos-*.parquet"))) == 2
    monkeypatch.setattr(auditmod, "process_shard", real)
    lines = []
    report = audit(photos, out, shard_size=2, n_boot=10, log=lines.append)
    assert "2 shard(s) written this run" in lines  # shards 2 and 3 of 0..3; 0 and 1 were kept
    names = pq.read_table(out / "photos.parquet").column("photo").to_pylist()
    assert len(names) == len(set(names)) == report["counts"]["photos"] == 7
    with pytest.raises(InputError, match="another collection, with other settings"):
        audit(photos, out, shard_size=3, n_boot=10, log=lambda *_: None)
    # The same audit resumed after the default model changed would mix two models' answers.
    monkeypatch.setitem(auditmod.PRETRAINED, "default", "another-model")
    with pytest.raises(InputError, match="by another model"):
        audit(photos, out, shard_size=2, n_boot=10, log=lambda *_: None)


def test_a_dask_cluster_that_loses_a_worker_still_counts_every_photo_once(tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    folder = tmp_path / "many"
    folder.mkdir()
    for k in range(24):
        face_photo(k % 7).save(folder / f"p{k:02d}.jpg", quality=85)
    out = tmp_path / "audit"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        client = distributed.Client(cluster)
        pids = list(client.run(os.getpid).values())
        killed = threading.Event()

        def kill_one_worker():
            deadline = time.monotonic() + 120
            while not list((out / "shards").glob("photos-*.parquet")) and time.monotonic() < deadline:
                time.sleep(0.05)
            os.kill(pids[0], signal.SIGKILL)  # mid-run: other shards are queued or running
            killed.set()

        killer = threading.Thread(target=kill_one_worker)
        killer.start()
        report = audit(folder, out, cluster=cluster.scheduler_address, shard_size=2, n_boot=10, log=lambda *_: None)
        killer.join()
        client.close()
    assert killed.is_set()
    names = pq.read_table(out / "photos.parquet").column("photo").to_pylist()
    assert len(names) == len(set(names)) == report["counts"]["photos"] == 24
    assert report["counts"]["photos_with_faces"] == 24 and len(list((out / "shards").glob("photos-*.parquet"))) == 12
