"""`imgsim jobs ...` on a catalogue DB: submit, worker --once, get, list, cancel, run, kinds."""

import json

from imgsim.cli import main


def test_jobs_cli_round_trip(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("IMGSIM_JOBS_ROOT", str(tmp_path / "jobs"))
    db = ["--catalog", f"sqlite:///{tmp_path / 'var' / 'cat.db'}"]
    assert main(["jobs", "submit", "test-loop", "-p", "seconds=0.01", *db]) == 0
    assert "submitted job 1 (test-loop)" in capsys.readouterr().out
    assert main(["jobs", "submit", "test-loop", "--params-json", '{"seconds": 60}', *db]) == 0
    assert main(["jobs", "cancel", "2", *db]) == 0
    assert "cancelled" in capsys.readouterr().out
    assert main(["jobs", "worker", "--once", "--artifacts", str(tmp_path / "jobs"), *db]) == 0
    assert "ran 1 job(s): [1]" in capsys.readouterr().out
    assert main(["jobs", "get", "1", "--json", *db]) == 0
    job = json.loads(capsys.readouterr().out)
    assert job["state"] == "succeeded" and job["artifacts"][-1]["name"] == "report.html"
    assert main(["jobs", "list", *db]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "cancelled" in lines[1] and "succeeded" in lines[2]  # newest first
    # bad input: clear message on stderr, non-zero exit
    assert main(["jobs", "submit", "test-loop", "-p", "seconds", *db]) == 2
    assert "not KEY=VALUE" in capsys.readouterr().err
    assert main(["jobs", "submit", "nope", *db]) == 2
    assert "unknown job kind" in capsys.readouterr().err
    assert main(["jobs", "get", "42", *db]) == 2
    assert "no job with id 42" in capsys.readouterr().err
    assert main(["jobs", "cancel", "1", *db]) == 2
    assert "already succeeded" in capsys.readouterr().err
    assert main(["jobs", "worker", "--once", "--lease", "0", *db]) == 2
    assert "lease_seconds" in capsys.readouterr().err


def test_jobs_run_locally_and_kinds(tmp_path, capsys):
    assert main(["jobs", "run", "test-loop", "-p", "seconds=0.01", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr()
    assert str(tmp_path / "note.txt") in out.out and (tmp_path / "report.html").is_file()
    assert main(["jobs", "kinds"]) == 0
    text = capsys.readouterr().out
    for kind in ["segment-train", "tsne", "verify", "occlusion", "cluster", "deepdream"]:
        assert f"{kind}:" in text
