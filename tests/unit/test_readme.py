"""The params reference (docs/params.md) documents every params.yaml key; the README starts with
the two commands and points at the reference."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from graft.core.config import SECTIONS

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
PARAMS = (REPO / "docs" / "params.md").read_text()


def test_params_reference_names_every_key():
    reference = PARAMS.split("# Params reference", 1)[1]
    documented = set(re.findall(r"`([a-z0-9_]+)`", reference))
    for section, cls in SECTIONS.items():
        assert f"**{section}**" in reference, section
        missing = {f.name for f in dataclasses.fields(cls)} - documented
        assert not missing, f"{section}: docs/params.md lacks {sorted(missing)}"


def test_readme_starts_with_make_demo_and_make_test():
    first_block = README.split("```bash", 1)[1].split("```", 1)[0]
    assert "make demo" in first_block and "make test" in first_block


def test_readme_links_to_the_params_reference():
    assert "docs/params.md" in README


def test_links_to_docs_pages_resolve():
    pages = {"README.md": README} | {f"docs/{p.name}": p.read_text()
                                     for p in (REPO / "docs").glob("*.md")}
    for name, text in pages.items():
        base = (REPO / name).parent
        for target in re.findall(r"\]\(([^)#:]+\.md)(?:#[^)]*)?\)", text):
            assert (base / target).exists(), f"{name} links to missing {target}"
