"""graft.core.files: outputs appear whole, with the mode the user's umask gives new files."""

from __future__ import annotations

import os
import subprocess
import sys

from graft.core.files import atomic_output, write_json


def test_outputs_get_the_umasks_mode_not_a_temp_files(tmp_path):
    # a fresh interpreter: the mode is read from the umask when graft.core.files is imported
    code = ("import os, sys; os.umask(0o022); from graft.core.files import write_json; "
            "write_json(sys.argv[1], {'a': 1})")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.json")], check=True)
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o644


def test_a_failed_block_leaves_nothing(tmp_path):
    target = tmp_path / "out.json"
    try:
        with atomic_output(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    except RuntimeError:
        pass
    assert not target.exists() and os.listdir(tmp_path) == []
    write_json(target, {"ok": True})
    assert target.read_text().strip().startswith("{")
