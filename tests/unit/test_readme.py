"""The README documents every params.yaml key and starts with the two commands."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from graft.core.config import SECTIONS

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_params_reference_names_every_key():
    reference = README.split("## Params reference", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`([a-z0-9_]+)`", reference))
    for section, cls in SECTIONS.items():
        assert f"**{section}**" in reference, section
        missing = {f.name for f in dataclasses.fields(cls)} - documented
        assert not missing, f"{section}: README params reference lacks {sorted(missing)}"


def test_readme_starts_with_make_demo_and_make_test():
    first_block = README.split("```bash", 1)[1].split("```", 1)[0]
    assert "make demo" in first_block and "make test" in first_block
