import json
from dataclasses import dataclass

from medfm.runs import Run, fingerprint_path, read_metrics


@dataclass
class Tiny:
    lr: float = 0.1


def test_run_writes_config_metrics_and_provenance(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("hello")
    run = Run.create(tmp_path / "run", Tiny(), seeds={"seed": 7}, data={"toy": data})
    run.log(step=1, loss=0.5)
    run.log(step=2, loss=0.25)
    run.finish(best=0.25)
    assert (tmp_path / "run" / "config.yaml").read_text().strip() == "lr: 0.1"
    assert [m["loss"] for m in read_metrics(tmp_path / "run")] == [0.5, 0.25]
    provenance = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert provenance["seeds"] == {"seed": 7}
    assert provenance["data"]["toy"]["files"] == 1
    assert provenance["packages"]["numpy"]
    assert "commit" in provenance["git"] and provenance["summary"] == {"best": 0.25}


def test_fingerprint_changes_with_content(tmp_path):
    (tmp_path / "a").write_text("1")
    before = fingerprint_path(tmp_path)["blake2b"]
    (tmp_path / "a").write_text("2")
    assert fingerprint_path(tmp_path)["blake2b"] != before


def test_a_resumed_run_keeps_earlier_segments_and_metrics_up_to_its_step(tmp_path):
    first = Run.create(tmp_path, Tiny())
    for step in (1, 2, 3):
        first.log(step=step, loss=float(step))
    first.finish(loss=3.0)
    second = Run.create(tmp_path, Tiny(), resume_step=2)
    second.finish()
    third = Run.create(tmp_path, Tiny(), resume_step=2)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    assert third.provenance["resumed_from_step"] == 2
    segments = third.provenance["earlier_segments"]
    assert len(segments) == 2 and segments[0]["summary"] == {"loss": 3.0}


def test_fingerprint_leaves_the_secrets_folder_out(tmp_path):
    (tmp_path / "catalog.parquet").write_bytes(b"rows")
    before = fingerprint_path(tmp_path)
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "subject_salt").write_text("a key that no digest may reveal")
    after = fingerprint_path(tmp_path)
    assert after["blake2b"] == before["blake2b"] and after["files"] == 1
