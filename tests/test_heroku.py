"""What Heroku reads from the repo: Procfile, app.json, .python-version, one package manager."""

from __future__ import annotations

import json
import shlex
import subprocess

from conftest import ROOT


def test_procfile_runs_pipeline_with_a_config_that_validates() -> None:
    """The worker process type runs `pipeline run` on a config that exists and loads."""
    lines = [line for line in (ROOT / "Procfile").read_text().splitlines() if line.strip()]
    procs = dict(line.split(":", 1) for line in lines)
    argv = shlex.split(procs["worker"])
    assert argv[:2] == ["pipeline", "run"] and (ROOT / argv[2]).exists()
    from pipeline.config import load_config

    cfg = load_config(ROOT / argv[2], env={"SOURCE_PATH": "s3://b/docs/", "SINK_PATH": "s3://b/out",
                                           "EMBEDDING_URL": "https://us.inference.heroku.com",
                                           "EMBEDDING_KEY": "k", "DYNO": "worker.1"})
    assert cfg.run.watch and cfg.embedding.tokens_per_minute == 800_000


def test_app_json_has_the_keys_heroku_reads() -> None:
    """app.json is JSON with the inference add-on attached as EMBEDDING and a worker formation."""
    app = json.loads((ROOT / "app.json").read_text())
    assert {"name", "env", "formation", "addons", "buildpacks"} <= set(app)
    assert {"plan": "heroku-inference:cohere-embed-multilingual", "as": "EMBEDDING"} in app["addons"]
    assert app["formation"]["worker"]["quantity"] >= 1
    for var in app["env"].values():
        assert "description" in var


def test_one_package_manager_and_a_python_version() -> None:
    """The buildpack sees requirements.txt only (no uv.lock, Pipfile, poetry.lock) and .python-version."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert "requirements.txt" in tracked
    assert not {"uv.lock", "Pipfile", "Pipfile.lock", "poetry.lock"} & set(tracked)
    assert not any(path.startswith(".venv/") for path in tracked)
    assert (ROOT / ".python-version").read_text().strip().startswith("3.")
