"""The whole pipeline's cost as a multiple of one onnxruntime fp32 pass over the same images.

In a scratch copy of the project (the repository's tracked files, its params.yaml), measured in
one run so both sides see the same machine load:
1. a cold `dvc repro` (no features store, no models, no Prefect server running; the Prefect
   database created beforehand, as set-up): wall time and the peak resident memory of the
   largest process it ran;
2. a rerun after changing one `finetune.*` param (what a user's experiment costs);
3. one onnxruntime fp32 pass of the exported models/model.onnx over every image the pipeline
   ingested (batch 32, the machine's physical cores: what `graft predict` does).
It prints the two ratios (goals: ≤ 8× cold, ≤ 3× rerun), how many times each image went through
the fp32 backbone (goal: ≤ 2, read from the stages' metrics: the embedding pass, the features
stage's parity sample, the export stage's check of model.onnx and its torch reference), and
writes the figures as JSON.

    python benchmarks/pipeline.py                      # the Fashion-MNIST demo's params.yaml
    python benchmarks/pipeline.py --params my.yaml --out benchmarks/results/pipeline.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def scratch_project(dest: Path, params: Path) -> Path:
    """The repository's tracked files (no data/, models/, metrics/) in a new git + DVC repo."""
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    for name in tracked:
        if name.startswith(("metrics/", "plots/", "reports/", "dvc.lock", "tests/")):
            continue
        src, dst = REPO / name, dest / name
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    shutil.copy(params, dest / "params.yaml")
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)  # .dvc/ came with the files
    return dest


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - started


def onnx_pass(root: Path) -> tuple[float, int]:
    """Seconds for models/model.onnx over every ingested image, decoding included."""
    sys.path.insert(0, str(REPO / "src"))
    from graft.core.layout import Layout
    from graft.data.manifest import absolute_paths, read_manifest
    from graft.deploy.gates import score_files
    from graft.deploy.onnx_model import preprocessing_from_metadata, read_metadata

    layout = Layout(root)
    paths = absolute_paths(read_manifest(layout.manifest), layout.manifest)
    pre = preprocessing_from_metadata(read_metadata(layout.onnx), layout.onnx)
    started = time.perf_counter()
    score_files({"fp32": layout.onnx}, paths, pre, 32)
    return time.perf_counter() - started, len(paths)


def backbone_passes(root: Path) -> dict[str, Any]:
    """How many times an image went through the fp32 backbone, per split, from the metrics."""
    metrics = {s: json.loads((root / f"metrics/{s}.json").read_text())
               for s in ("ingest", "features", "export")}
    features, export = metrics["features"], metrics["export"]
    parity = features.get("graph_parity") or {}
    embed = 1 if features["n_computed"] else 0
    passes = {
        "train": embed,
        # the features stage checks its onnxruntime graph against torch on a few val images
        "val": embed + (1 if parity.get("n_images") else 0),
        # the export stage runs model.onnx on test images: on export.parity_images of them when
        # it scored from the cached embeddings (a frozen backbone), else on every one, and a
        # fine-tuned backbone also needs torch's logits on parity_images of them
        "test": embed + 1 + (1 if export.get("parity_against") == "torch" else 0),
    }
    return {"per_image_max": passes, "max": max(passes.values()),
            "test_images_checked_by_export": export.get("n_parity_images")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--change", default="finetune.c_grid=[0.03, 0.3, 3.0]",
                    help="the finetune param changed for the rerun, KEY=YAML")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/pipeline.json")
    ap.add_argument("--keep", action="store_true", help="keep the scratch project")
    args = ap.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="graft-pipeline-"))
    root = scratch_project(scratch / "project", args.params)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "GRAFT_PROGRESS": "0"}
    env.pop("PREFECT_API_URL", None)  # the default: Graft's shared temporary server
    env["PREFECT_HOME"] = str(scratch / "prefect-home")
    dvc = str(BIN / "dvc")
    try:
        # Set-up, not timed: the Prefect database a user's PREFECT_HOME gets on their first run
        # (15 s on the 2-core box); every later run finds it
        timed([str(BIN / "prefect"), "server", "database", "upgrade", "-y"], root, env)
        cold = timed([dvc, "repro"], root, env)
        peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        passes = backbone_passes(root)

        key, value = args.change.split("=", 1)
        section, name = key.split(".", 1)
        params = yaml.safe_load((root / "params.yaml").read_text())
        params[section][name] = yaml.safe_load(value)
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        rerun = timed([dvc, "repro"], root, env)

        one_pass, n_images = onnx_pass(root)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
        else:
            print(f"kept {scratch}")

    result = {
        "images": n_images, "onnx_fp32_pass_s": round(one_pass, 1),
        "cold_repro_s": round(cold, 1), "cold_ratio": round(cold / one_pass, 2),
        "rerun_change": args.change, "rerun_s": round(rerun, 1),
        "rerun_ratio": round(rerun / one_pass, 2),
        "backbone_passes": passes, "peak_rss_gb": round(peak_gb, 2),
        "cpu_count": os.cpu_count(), "load_avg": [round(x, 2) for x in os.getloadavg()],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"one onnxruntime fp32 pass over {n_images} images: {one_pass:.1f} s")
    print(f"cold dvc repro:   {cold:7.1f} s = {cold / one_pass:5.2f}× (goal ≤ 8×)")
    print(f"rerun ({args.change}): {rerun:7.1f} s = {rerun / one_pass:5.2f}× (goal ≤ 3×)")
    print(f"fp32 backbone passes per image: {passes['per_image_max']} (goal ≤ 2)")
    print(f"peak resident memory of one process: {peak_gb:.2f} GB (goal ≤ 3 GB)")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
