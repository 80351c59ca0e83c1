"""Features throughput in-process against 1 and 2 single-threaded Dask worker processes, and the
per-task overhead of Prefect on Dask (docs/scaling.md).

    python benchmarks/scaling.py [--images 600] [--size 64] [--shard-size 75] [--tasks 40]

Everything runs on this machine, on 127.0.0.1: a `prefect server start` (so that neither this
process nor the workers start a temporary one), a `dask scheduler` and `dask worker --nthreads 1`
processes from this environment (tests/dask_processes.py, as docs/scaling.md starts them). The
project is synthetic pattern images (tests/fixtures.py). Each features run starts from an empty
store; every configuration runs once to warm up (imports, the network built on each worker, the
ONNX graph exported in-process), then `--repeats` times measured, and the median wall time of
`graft.stages.features.run` is reported. Ratios are against the in-process stage.

Rows:
- in-process stage: the features stage as a user runs it without `features.cluster` (the
  onnxruntime graph on the CPU);
- in-process torch: the code a worker runs (graft.models.inference.run_model on the torch
  network, one thread) called here, without Prefect or Dask: the workers' own ceiling;
- Dask, 1 / 2 workers: the stage with `features.cluster`, shards of `--shard-size` images;
- empty tasks: `--tasks` Prefect tasks that do nothing, submitted at once and gathered, through
  DaskTaskRunner on the 2 workers, and through Prefect's default in-process runner; and plain
  `distributed` `client.submit` of the same no-op for reference.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO)]

from tests.dask_processes import DaskProcesses  # noqa: E402
from tests.fixtures import BIN, free_port  # noqa: E402


def start_prefect_server(home: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise TimeoutError("prefect server did not start")


def noop(i: int) -> int:
    return i


def timed_features(layout, params, repeats: int) -> list[float]:
    """Wall seconds of the features stage from an empty store: a warm-up run, then `repeats`."""
    from graft.embeddings.store import store_path
    from graft.stages import features

    times = []
    for _ in range(repeats + 1):
        store_path(layout, params).unlink(missing_ok=True)
        t0 = time.perf_counter()
        metrics = features.run(params, layout)
        times.append(time.perf_counter() - t0)
        assert metrics["n_computed"] > 0
    return times[1:]


def timed_torch(layout, params, repeats: int) -> list[float]:
    """The workers' code (torch, one thread), here: network built once, then `repeats` passes."""
    import torch

    from graft.data.manifest import absolute_paths, read_manifest
    from graft.embeddings.cluster import Network, _network
    from graft.embeddings.store import weights_dir
    from graft.models.inference import run_model

    cfg = params.features
    net = Network(cfg.backbone, str(weights_dir(params, layout).resolve()), cfg.image_size,
                  cfg.batch_size, params.validate.max_pixels)
    paths = [str(p) for p in absolute_paths(read_manifest(layout.manifest), layout.manifest)]
    torch.set_num_threads(1)
    model, pre = _network(net)
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        run_model(model, paths, pre, cfg.batch_size, None, params.validate.max_pixels)
        times.append(time.perf_counter() - t0)
    return times[1:]


def timed_noops(address: str | None, n: int, repeats: int) -> list[float]:
    """Wall seconds of `n` empty Prefect tasks, on the cluster (`address`) or in-process."""
    from prefect import Flow, task

    from graft.embeddings.cluster import _submit_all, map_on_cluster

    work = task(noop, name="noop", persist_result=False)

    def noops() -> list:
        return _submit_all(work, [(i,) for i in range(n)])

    in_process = Flow(noops, name="noops", persist_result=False)
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        if address:
            out = map_on_cluster(address, "noops", "noop", noop, [(i,) for i in range(n)])
        else:
            out = in_process()
        times.append(time.perf_counter() - t0)
        assert out == list(range(n))
    return times[1:]


def per_image_costs(folder: Path, n: int = 64) -> dict[str, float]:
    """Milliseconds per image on one core: decoding and resizing a photo-sized JPEG (500×375,
    ~60 KB) to 224 px, and Lite0's forward pass at 224 px (onnxruntime, one thread, batch 32)."""
    import numpy as np
    from PIL import Image

    from graft.data.images import decoded_batches
    from graft.models.backbones import create_model, get_spec
    from graft.models.onnx_graph import create_session

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:375, 0:500]
    paths = []
    for i in range(n):  # smooth gradients plus noise: photo-like JPEG sizes
        img = np.stack([(x * (i + 1) % 256), (y * 3 + i) % 256, (x + y) % 256], -1)
        img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
        paths.append(folder / f"{i}.jpg")
        Image.fromarray(img).save(paths[-1], quality=85)
    pre = get_spec("efficientnet_lite0").preprocessing(224)
    t0 = time.perf_counter()
    batches = list(decoded_batches(paths, pre, 32))
    decode = (time.perf_counter() - t0) / n
    import torch

    onnx = folder / "lite0-224.onnx"
    torch.onnx.export(create_model("efficientnet_lite0", num_classes=0).eval(),
                      torch.from_numpy(batches[0]), str(onnx), input_names=["x"],
                      dynamic_axes={"x": {0: "n"}}, dynamo=False)
    session = create_session(onnx, providers=["CPUExecutionProvider"], threads=1)
    session.run(None, {"x": batches[0]})
    t0 = time.perf_counter()
    for batch in batches:
        session.run(None, {"x": batch})
    forward = (time.perf_counter() - t0) / n
    kb = statistics.mean(p.stat().st_size for p in paths) / 1024
    return {"decode_ms": 1000 * decode, "forward_ms": 1000 * forward, "jpeg_kb": kb}


def timed_plain_dask(address: str, n: int, repeats: int) -> list[float]:
    from distributed import Client

    times = []
    with Client(address) as client:
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            futures = [client.submit(noop, i, pure=False) for i in range(n)]
            client.gather(futures)
            times.append(time.perf_counter() - t0)
    return times[1:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=600, help="images in the project")
    ap.add_argument("--size", type=int, default=64, help="features.image_size, pixels")
    ap.add_argument("--shard-size", type=int, default=75, help="features.shard_size")
    ap.add_argument("--tasks", type=int, default=40, help="empty tasks per overhead run")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="graft-scaling-"))
    server, api = start_prefect_server(tmp / "prefect-home")
    os.environ["PREFECT_API_URL"] = api  # before anything imports prefect
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    cluster = DaskProcesses(tmp / "dask", workers=1, prefect_api=api,
                            preload="graft.embeddings.cluster").start()
    try:
        from graft.core.device import torch_threads
        from tests.fixtures import make_split_project, tiny_params

        per_class = max(1, args.images // 3)
        layout = make_split_project(tmp / "project", {"train": per_class}, size=args.size)
        n = 3 * per_class
        local = tiny_params(size=args.size)
        remote = tiny_params(size=args.size, features={"cluster": cluster.address,
                                                       "shard_size": args.shard_size})
        rows = []
        with torch_threads(1):
            rows.append(("in-process stage (onnxruntime)", timed_features(layout, local,
                                                                           args.repeats)))
            rows.append(("in-process torch, 1 thread", timed_torch(layout, local, args.repeats)))
        cluster.wait(1)
        rows.append(("Dask, 1 worker process", timed_features(layout, remote, args.repeats)))
        cluster.add_worker("w1")
        cluster.wait(2)
        rows.append(("Dask, 2 worker processes", timed_features(layout, remote, args.repeats)))
        noops = [("Prefect tasks in-process", timed_noops(None, args.tasks, args.repeats)),
                 ("Prefect tasks on Dask (2 workers)",
                  timed_noops(cluster.address, args.tasks, args.repeats)),
                 ("plain Dask client.submit (2 workers)",
                  timed_plain_dask(cluster.address, args.tasks, args.repeats))]
        costs = per_image_costs(tmp / "jpegs")
    finally:
        cluster.stop()
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()

    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else "?"
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {' '.join(load)}; {n} images at {args.size} px, Lite0, shards of "
          f"{args.shard_size}; median of {args.repeats} after a warm-up")
    base = statistics.median(rows[0][1])
    print(f"{'features':40} {'wall s':>8} {'img/s':>8} {'vs in-process':>14}")
    for name, times in rows:
        t = statistics.median(times)
        print(f"{name:40} {t:8.2f} {n / t:8.1f} {base / t:13.2f}x")
    print(f"\n{'per-task overhead (' + str(args.tasks) + ' empty tasks)':40} {'wall s':>8} "
          f"{'ms/task':>8}")
    for name, times in noops:
        t = statistics.median(times)
        print(f"{name:40} {t:8.2f} {1000 * t / args.tasks:8.1f}")
    print(f"\nper image on one core: decode + resize a 500x375 JPEG ({costs['jpeg_kb']:.0f} KB) "
          f"to 224 px {costs['decode_ms']:.1f} ms; Lite0 forward at 224 px (onnxruntime, "
          f"1 thread) {costs['forward_ms']:.1f} ms")


if __name__ == "__main__":
    main()
