"""A DVC remote on an S3 API (README "Scaling out"): `dvc remote add` + `endpointurl`, credentials
from the environment, the push that retrain's `dvc_push: true` runs (graft.lifecycle.retrain.
dvc_push), and `dvc pull` into a fresh clone gives back the same bytes.

The S3 API is moto's real server (`moto_server`, a dev dependency) on 127.0.0.1 at a free port,
stopped after the test; nothing is mocked inside DVC, s3fs or botocore."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from graft.core.files import sha256_file
from graft.core.layout import Layout
from graft.lifecycle import retrain
from tests.fixtures import BIN, free_port, sh

BUCKET = "graft-dvc"  # S3 bucket names: 3–63 characters
OUTS = ["data/features/a.npz", "data/features/b.npz", "models/model.pt"]
GEN = """import pathlib, random
random.seed(0)
for rel, size in [("data/features/a.npz", 3000), ("data/features/b.npz", 5000),
                  ("models/model.pt", 200000)]:
    p = pathlib.Path(rel); p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(random.randbytes(size))
"""
DVC_YAML = """stages:
  make:
    cmd: python gen.py
    deps: [gen.py]
    outs: [data/features, models/model.pt]
"""

if not (BIN / "moto_server").exists():
    pytest.skip("moto_server is not installed (pip install -e .[dev])", allow_module_level=True)


@pytest.fixture()
def s3_endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """http://127.0.0.1:PORT of a moto S3 server holding an empty bucket BUCKET; the AWS
    variables set to test credentials (none of the developer's ~/.aws leaks in)."""
    for key in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
                "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("HOME", str(tmp_path))
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "moto.log", "wb")  # noqa: SIM115 (closed below)
    server = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_ready(f"{endpoint}/moto-api/", server)
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
            Bucket=BUCKET)  # us-east-1 takes no LocationConstraint
        yield endpoint
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def _wait_ready(url: str, server: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert server.poll() is None, "moto_server exited"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer in {timeout_s} s")


def test_push_to_s3_and_pull_into_a_fresh_clone(s3_endpoint: str, tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@localhost",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@localhost"}
    project = tmp_path / "project"
    project.mkdir()
    (project / "gen.py").write_text(GEN)
    (project / "dvc.yaml").write_text(DVC_YAML)
    for args in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "repro", "-q"],
                 # the README's recipe: the remote and its endpoint are committed, the
                 # credentials are not (environment, or `dvc remote modify --local`)
                 ["dvc", "remote", "add", "-d", "store", f"s3://{BUCKET}/dvcstore"],
                 ["dvc", "remote", "modify", "store", "endpointurl", s3_endpoint],
                 ["git", "add", "-A"], ["git", "commit", "-qm", "outputs"]):
        sh(args, project, env)
    assert "testing" not in (project / ".dvc" / "config").read_text()

    retrain.dvc_push(Layout(project))  # what `retrain.dvc_push: true` runs after a promotion
    import boto3

    listed = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1") \
        .list_objects_v2(Bucket=BUCKET)
    assert listed["KeyCount"] == len(OUTS) + 1  # the files and data/features' .dir listing

    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(project), str(clone)], tmp_path, env)
    assert not (clone / "models" / "model.pt").exists()
    sh(["dvc", "pull", "-q"], clone, env)
    for rel in OUTS:
        assert sha256_file(clone / rel) == sha256_file(project / rel), rel
