"""Shared fixtures: a tiny synthetic image folder and a real Prefect server on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from graft.files import sha256_file
from graft.layout import Layout
from graft.manifest import write_manifest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def make_pattern_images(root: Path, per_class: int, size: int = 40, seed: int = 0,
                        classes: tuple[str, ...] = ("circle", "stripes", "square"),
                        prefix: str = "") -> Path:
    """Write `root/<class>/<prefix><class>_<i>.png`: visually distinct classes, random jitter."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    for label in classes:
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            cx, cy = rng.uniform(0.35, 0.65, 2) * size
            if label == "circle":
                mask = (xx - cx) ** 2 + (yy - cy) ** 2 < (size * rng.uniform(0.2, 0.3)) ** 2
                color = (220, 60, 40)
            elif label == "stripes":
                mask = ((xx + int(rng.integers(0, 8))) // 4) % 2 == 0
                color = (40, 160, 220)
            else:
                half = size * rng.uniform(0.15, 0.25)
                mask = (abs(xx - cx) < half) & (abs(yy - cy) < half)
                color = (60, 200, 80)
            img = np.full((size, size, 3), 245, np.uint8)
            img[mask] = color
            img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / label / f"{prefix}{label}_{i:03d}.png")
    return root


def make_split_project(root: Path, per_split: dict[str, int], size: int = 40,
                       test_labels: dict[str, str] | None = None) -> Layout:
    """data/prepared/<split>/<class>/*.png (`per_split[split]` images per class, seed = the
    split's position) and the manifest listing them; `test_labels` renames test labels."""
    layout = Layout(root)
    rows = []
    for seed, (split, per_class) in enumerate(per_split.items()):
        make_pattern_images(layout.prepared / split, per_class, size=size, seed=seed)
        for path in sorted((layout.prepared / split).rglob("*.png")):
            label = path.parent.name
            if split == "test" and test_labels:
                label = test_labels.get(label, label)
            rows.append({"path": path.relative_to(layout.prepared).as_posix(), "label": label,
                         "split": split, "sha256": sha256_file(path), "width": size,
                         "height": size, "mode": "RGB"})
    write_manifest(layout.manifest, pd.DataFrame(rows))
    return layout



def copy_stage_outputs(base: Path, dest: Path) -> Layout:
    """A fresh project at `dest` holding `base`'s data/ (images, manifest, feature store) and
    metrics/ (when there are any), for tests that each change it from the same start."""
    shutil.copytree(base / "data", dest / "data")
    if (base / "metrics").exists():
        shutil.copytree(base / "metrics", dest / "metrics")
    return Layout(dest)

@pytest.fixture()
def pattern_folder(tmp_path: Path) -> Path:
    return make_pattern_images(tmp_path / "images", per_class=12)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory):
    """A real `prefect server start` on 127.0.0.1 with its own PREFECT_HOME; yields the API URL."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    log = open(home / "server.log", "w")  # noqa: SIM115 (closed at teardown)
    proc = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            tail = (home / "server.log").read_text()[-2000:]
            pytest.fail(f"prefect server did not start: {tail}")
        time.sleep(0.5)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def copy_project(dest: Path) -> Path:
    """The files `dvc repro` needs (dvc.yaml and the modules it lists as deps) in a new folder."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy2(REPO / name, dest / name)
    shutil.copytree(REPO / "src", dest / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return dest
