"""A real Dask cluster on 127.0.0.1: `dask scheduler` and N `dask worker` processes started from
this Python's own bin folder (the project's environment), as a user would start them
(docs/scaling.md), for the tests and benchmarks/scaling.py.

- Each process runs in its own session, so that a stop (or a kill) takes the whole group: the
  nanny and the worker process it spawned.
- Workers: `--nthreads 1`, `OMP_NUM_THREADS=1`, and a DASK_CONFIG folder whose YAML unsets the
  nanny's MALLOC_TRIM_THRESHOLD_ (a Dask config key: Dask lower-cases DASK_* variables, so an
  environment variable cannot unset it; set at all, it halves torch's CPU speed).
- `prefect_api`: PREFECT_API_URL for every process, so that no worker starts its own temporary
  Prefect server (~10 s each).
- The scheduler gives up on a task after `no_workers_timeout` without any worker (default: it
  waits for workers forever), so a test whose workers died fails instead of hanging.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.fixtures import BIN, free_port

WORKER_CONFIG = """\
distributed:
  nanny:
    pre-spawn-environ:
      MALLOC_TRIM_THRESHOLD_: null
"""


class DaskProcesses:
    """`dask scheduler` + `workers` × `dask worker` on 127.0.0.1; `stop()` always ends them."""

    def __init__(self, folder: Path, workers: int = 2, prefect_api: str | None = None,
                 no_workers_timeout: str = "20s", preload: str | None = None) -> None:
        self.folder, self.n, self.preload = folder, workers, preload
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "dask-config").mkdir(exist_ok=True)
        (folder / "dask-config" / "graft.yaml").write_text(WORKER_CONFIG)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
        self.env.update({"OMP_NUM_THREADS": "1", "DASK_CONFIG": str(folder / "dask-config"),
                         "DASK_DISTRIBUTED__SCHEDULER__NO_WORKERS_TIMEOUT": no_workers_timeout,
                         "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})  # our graft
        self.env.pop("PREFECT_API_URL", None)
        if prefect_api:
            self.env["PREFECT_API_URL"] = prefect_api
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.procs: dict[str, subprocess.Popen] = {}

    def _start(self, name: str, args: list[str]) -> None:
        log = open(self.folder / f"{name}.log", "w")  # noqa: SIM115 (the child holds it)
        try:
            self.procs[name] = subprocess.Popen(args, env=self.env, cwd=self.folder, stdout=log,
                                                stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()

    def start(self) -> DaskProcesses:
        """Start the processes; `wait()` blocks until the workers have joined."""
        self._start("scheduler", [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1",
                                  "--port", str(self.port), "--no-dashboard"])
        for i in range(self.n):
            self.add_worker(f"w{i}")
        return self

    def add_worker(self, name: str) -> None:
        args = [str(BIN / "dask"), "worker", self.address, "--host", "127.0.0.1", "--nthreads",
                "1", "--nworkers", "1", "--no-dashboard", "--name", name]
        if self.preload:
            args += ["--preload", self.preload]
        self._start(name, args)

    def wait(self, workers: int | None = None, timeout: float = 120) -> None:
        from distributed import Client

        deadline = time.monotonic() + timeout
        while True:  # the scheduler's port first: a Client started before it waits ~30 s
            if self.procs["scheduler"].poll() is not None:
                raise RuntimeError(f"dask scheduler exited: {self.log('scheduler')}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no dask scheduler: {self.log('scheduler')}") from None
                time.sleep(0.1)
        with Client(self.address, timeout=30) as client:
            client.wait_for_workers(workers or self.n, timeout=max(1, deadline - time.monotonic()))

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text()[-3000:]

    def kill(self, name: str) -> None:
        """SIGKILL the process group of `name` (a worker: its nanny and its worker process)."""
        try:
            os.killpg(self.procs[name].pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.procs[name].wait(10)

    def stop(self) -> None:
        """SIGTERM every group (workers first), then SIGKILL what is left."""
        order = [n for n in self.procs if n != "scheduler"] + ["scheduler"]
        for name in order:
            if self.procs[name].poll() is None:
                try:
                    os.killpg(self.procs[name].pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        for name in order:
            try:
                self.procs[name].wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(self.procs[name].pid, signal.SIGKILL)  # stragglers of the group
            except ProcessLookupError:
                pass
            self.procs[name].wait(10)
