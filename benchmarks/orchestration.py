"""What Prefect costs per stage: in-process, on Graft's shared temporary server (the first stage of
a run starts it, the later ones find it), and against a running `prefect server`.

    python benchmarks/orchestration.py [--stage validate] [--root .] [--repeats 3]

Runs `graft <stage>` as a subprocess each way (the way `dvc repro` runs it) and prints wall
seconds; the difference to `--no-prefect` is the orchestration overhead of one stage. Needs a
project root where the stage's inputs exist (run the pipeline once first).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent


def _time(cmd: list[str], env: dict, cwd: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - t0


def _start_server(home: Path) -> tuple[subprocess.Popen, str, float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/api"
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            return proc, url, time.perf_counter() - t0
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("prefect server exited") from None
            time.sleep(0.25)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", default="validate")
    ap.add_argument("--root", type=Path, default=Path("."))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cmd = [str(BIN / "graft"), args.stage, "--root", str(args.root)]
    with tempfile.TemporaryDirectory() as tmp:
        base = {**os.environ, "PREFECT_HOME": tmp, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        base.pop("PREFECT_API_URL", None)
        base["GRAFT_PREFECT_IDLE_S"] = "5"  # each fresh home's server goes soon after its run
        rows = {"in-process (--no-prefect)": [_time([*cmd, "--no-prefect"], base, args.root)
                                              for _ in range(args.repeats)]}
        # a new PREFECT_HOME each time: no server to find, the stage starts one
        rows["shared temporary server, first stage"] = [
            _time(cmd, {**base, "PREFECT_HOME": str(Path(tmp) / f"fresh-{i}")}, args.root)
            for i in range(args.repeats)]
        _time(cmd, base, args.root)  # starts the shared server of `base`'s home
        rows["shared temporary server, later stages"] = [_time(cmd, base, args.root)
                                                         for _ in range(args.repeats)]
        server, url, start_s = _start_server(Path(tmp) / "server")
        try:
            rows["Prefect server"] = [_time(cmd, {**base, "PREFECT_API_URL": url}, args.root)
                                      for _ in range(args.repeats)]
        finally:
            server.terminate()
            server.wait(timeout=30)
    plain = statistics.median(rows["in-process (--no-prefect)"])
    print(f"stage `{args.stage}`, median of {args.repeats} runs (server start-up once: "
          f"{start_s:.1f} s)\n")
    print("| how | wall s | overhead s |\n|---|---:|---:|")
    for how, times in rows.items():
        med = statistics.median(times)
        print(f"| {how} | {med:.1f} | {med - plain:+.1f} |")


if __name__ == "__main__":
    main()
