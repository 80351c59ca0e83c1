"""One temporary Prefect server for a whole pipeline run, instead of one per stage.

Without `PREFECT_API_URL`, Prefect starts a temporary server in every process (7–10 s each), and
`dvc repro` runs each stage in its own process. Instead, the first `graft` stage that needs
Prefect starts a server in the background (Prefect's own app, on 127.0.0.1, with Prefect's home
and database), records it in `<PREFECT_HOME>/graft-server.json`, and every later stage connects to
it. Each running stage holds a lease (a file named after its pid); the server's keeper stops the
server once no stage has held a lease for `GRAFT_PREFECT_IDLE_S` seconds (default 60), so nothing
outlives the run by much. A user's own server (`PREFECT_API_URL` set) is used as it is.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def _idle_s() -> float:
    """GRAFT_PREFECT_IDLE_S, or 60 when it is unset or not a number ≥ 0 (an environment typo must
    not stop every stage)."""
    try:
        return max(0.0, float(os.environ.get("GRAFT_PREFECT_IDLE_S", "60")))
    except ValueError:
        return 60.0


IDLE_S = _idle_s()
START_TIMEOUT_S = 120.0  # a loaded 2-core machine has taken over 20 s
POLL_S = 1.0


class ServerError(RuntimeError):
    """The shared Prefect server would not start; the message says where its log is."""


def home() -> Path:
    """Prefect's home (its database lives there), where the server's record and leases go."""
    return Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect")).expanduser()


@contextlib.contextmanager
def shared_server() -> Iterator[str | None]:
    """While the block runs, PREFECT_API_URL names a running server: the user's own when it
    was set, else the shared temporary one (started when none is alive). Yields the URL, or
    None when the user's is used."""
    if os.environ.get("PREFECT_API_URL"):
        yield None
        return
    folder = home()
    folder.mkdir(parents=True, exist_ok=True)
    leases = folder / "graft-leases"
    leases.mkdir(exist_ok=True)
    lease = leases / str(os.getpid())
    with _locked(folder / "graft-server.lock"):
        url = _alive(folder) or _start(folder)
        lease.touch()  # under the lock: the keeper never stops a server a stage just chose
    os.environ["PREFECT_API_URL"] = url
    try:
        yield url
    finally:
        lease.unlink(missing_ok=True)
        os.environ.pop("PREFECT_API_URL", None)


def _alive(folder: Path) -> str | None:
    """The recorded server's API URL if it answers its health check."""
    try:
        url = json.loads((folder / "graft-server.json").read_text(encoding="utf-8"))["url"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return url if answers(url) else None


def _start(folder: Path) -> str:
    """Start the keeper (which starts the server) detached from this process; wait for it."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    log = folder / "graft-server.log"
    with open(log, "ab") as out:
        subprocess.Popen([sys.executable, "-m", "graft.prefect_server", str(port)],
                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         start_new_session=True, env=os.environ.copy())
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if answers(url):
            (folder / "graft-server.json").write_text(json.dumps({"url": url}) + "\n",
                                                      encoding="utf-8")
            return url
        time.sleep(0.2)
    raise ServerError(f"the temporary Prefect server did not answer on {url} within "
                      f"{START_TIMEOUT_S:.0f} s (its log: {log}); start one yourself with "
                      "`prefect server start` and set PREFECT_API_URL")


def answers(url: str) -> bool:
    """Whether a Prefect API at `url` passes its health check."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def keep(port: int) -> None:
    """The keeper: run Prefect's server app on `port` until no lease has been held for IDLE_S
    seconds (a lease whose process is gone does not count), then stop it."""
    folder = home()
    leases = folder / "graft-leases"
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "error",
         "--lifespan", "on"], env=env)
    signal.signal(signal.SIGTERM, lambda *_: server.terminate())
    idle_since = time.monotonic()
    try:
        while server.poll() is None:
            time.sleep(POLL_S)
            with _locked(folder / "graft-server.lock"):
                if _held(leases):
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since > IDLE_S:
                    (folder / "graft-server.json").unlink(missing_ok=True)
                    break
    except OSError:  # Prefect's home was removed under us: nobody can find this server again
        pass
    finally:  # whatever stops the keeper stops the server: never an orphan
        server.terminate()
        server.wait(timeout=30)


def _held(leases: Path) -> bool:
    """Whether a live process holds a lease; leases of dead processes are removed."""
    held = False
    for lease in leases.glob("[0-9]*"):
        try:
            os.kill(int(lease.name), 0)
            held = True
        except ProcessLookupError:
            lease.unlink(missing_ok=True)
        except PermissionError:
            held = True
    return held


if __name__ == "__main__":  # python -m graft.prefect_server PORT: the keeper
    keep(int(sys.argv[1]))
