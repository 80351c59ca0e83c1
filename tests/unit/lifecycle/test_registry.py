"""models/champion/ and models/history/ (graft.lifecycle.registry): promotion by renames, crash
safety, rollback, the lock. (`graft models` and `graft rollback`: tests/unit/test_cli.py.)"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from graft.lifecycle import registry
from tests.fixtures import HOLD_LOCK, make_version


def champion_model(models: Path) -> str:
    folder = registry.champion_dir(models)
    assert folder is not None
    return (folder / "model.pt").read_text()


def test_promote_moves_the_old_champion_to_history(tmp_path):
    models = tmp_path / "models"
    with registry.lock(models):
        registry.promote(models, make_version(models, tmp_path, "a"))
        assert champion_model(models) == "a"
        version_b = registry.promote(models, make_version(models, tmp_path, "bb", 0.9))
    assert champion_model(models) == "bb"
    rows = registry.versions(models)
    assert [(r["status"], r["version"]) for r in rows] == [
        ("champion", version_b), ("history", "20260101T000000Z-a")]
    assert (models / "history" / "20260101T000000Z-a" / "testset" / "deadbeef.png").exists()
    champion = registry.champion(models)
    assert champion.model.read_text() == "bb" and champion.info["version"] == version_b
    assert champion.test_image("deadbeef", "images/x.png").is_file()
    assert not list(models.glob(".champion.tmp-*")) and not (models / ".promoting").exists()


def test_rollback_restores_a_version_and_keeps_the_current_one(tmp_path):
    models = tmp_path / "models"
    with registry.lock(models):
        for name in ("a", "bb", "ccc"):
            registry.promote(models, make_version(models, tmp_path, name))
    assert registry.rollback(models, "20260101T000000Z-a") == "20260101T000000Z-a"
    assert champion_model(models) == "a"
    assert {r["version"] for r in registry.versions(models) if r["status"] == "history"} == {
        "20260102T000000Z-bb", "20260103T000000Z-ccc"}
    assert registry.rollback(models) == "20260103T000000Z-ccc"  # default: newest in history
    with pytest.raises(registry.RegistryError, match="no version 'nope'"):
        registry.rollback(models, "nope")


def test_rollback_without_history_says_so(tmp_path):
    models = tmp_path / "models"
    with pytest.raises(registry.RegistryError, match="no earlier version"):
        registry.rollback(models)


CRASH = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from graft.lifecycle import registry
    models, staged, when, n = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    real, calls = registry._rename, [0]
    def rename(src, dst):
        calls[0] += 1
        if when == "before" and calls[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        real(src, dst)
        if when == "after" and calls[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
    registry._rename = rename
    registry.promote(models, staged)
""")


@pytest.mark.parametrize(("when", "n", "serving"), [
    ("before", 1, "a"),   # intent written, nothing renamed: the old champion still serves
    ("before", 2, "bb"),  # old champion in history, new one not yet in place: .promoting leads
    ("after", 2, "bb"),   # both renames done, .promoting not yet deleted
])
def test_a_kill_during_promotion_leaves_a_loadable_champion(tmp_path, when, n, serving):
    models = tmp_path / "models"
    with registry.lock(models):
        registry.promote(models, make_version(models, tmp_path, "a"))
    staged = make_version(models, tmp_path, "bb")
    proc = subprocess.run([sys.executable, "-c", CRASH, str(models), str(staged), when, str(n)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert champion_model(models) == serving
    with registry.lock(models):
        done = registry.recover(models)
    assert done and "interrupted promotion" in done[0]
    assert champion_model(models) == "bb" and (models / "champion" / "model.pt").exists()
    assert [r["version"] for r in registry.versions(models)] == [
        "20260102T000000Z-bb", "20260101T000000Z-a"]


def test_recover_deletes_unfinished_builds(tmp_path):
    models = tmp_path / "models"
    (models / ".champion.tmp-x1").mkdir(parents=True)  # a build killed before champion.json
    with registry.lock(models):
        assert registry.recover(models) == ["deleted the unfinished build .champion.tmp-x1"]
    assert registry.champion_dir(models) is None and registry.versions(models) == []


def test_a_second_holder_exits_clearly_or_waits(tmp_path):
    models = tmp_path / "models"
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(models), "3"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(registry.RegistryBusy, match=r"\.lock: held by pid \d+"):
            with registry.lock(models, timeout=0):
                pass
        start = time.monotonic()
        with registry.lock(models, timeout=30):  # waits for the holder to finish
            waited = time.monotonic() - start
        assert 0.5 < waited < 30
    finally:
        proc.wait(timeout=30)
