"""Real Ray processes for the cluster tests, each test ending exactly what it started.

`RayHead` runs `ray start --head --block` in a session of its own (its own ports,
its own temporary folder, token authentication with a token of its own, a private
HOME), so that its teardown can kill that session's processes by id and nothing
else on the machine.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
# How the tests start a Ray of their own in-process (with _temp_dir=a folder of the test's): address="local"
# never joins a cluster that RAY_ADDRESS or an address file names.
OWN_RAY = {"address": "local", "num_cpus": 2, "include_dashboard": False, "configure_logging": False,
           "log_to_driver": False}
KEEP_IDLE_WORKERS = {"RAY_idle_worker_killing_time_threshold_ms": "600000"}  # as README's `ray start` line


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def session_processes(sid: int) -> list[int]:
    """Pids of the processes in session `sid` (field 6 of /proc/PID/stat)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:
            pids.append(int(proc.name))
    return pids


def ignores(pid: int, sig: signal.Signals) -> bool:
    """Whether process `pid` ignores `sig` (its SigIgn mask in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


def kill_session(sid: int, grace: float = 5.0) -> None:
    """SIGTERM every process of the session, then SIGKILL what is left after `grace` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in session_processes(sid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and session_processes(sid):
            time.sleep(0.1)


class RayHead:
    """`ray start --head` on loopback with its own ports, folder and auth token."""

    def __init__(self, folder: Path, *, num_cpus: int = 2) -> None:
        self.folder = folder
        (folder / "home").mkdir(parents=True, exist_ok=True)
        gcs, dashboard, client, agent, metrics, grpc, node_manager, objects, runtime_env = free_ports(9)
        self.dashboard = f"http://127.0.0.1:{dashboard}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RAY_")},
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "HOME": str(folder / "home"),  # no test writes the real ~/.ray/auth_token
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(16),
            **KEEP_IDLE_WORKERS,
        }
        args = [
            str(BIN / "ray"), "start", "--head", "--block", f"--num-cpus={num_cpus}", "--node-ip-address=127.0.0.1",
            f"--port={gcs}", f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1", "--include-dashboard=true",
            f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
            f"--metrics-export-port={metrics}", f"--dashboard-agent-grpc-port={grpc}",
            f"--node-manager-port={node_manager}", f"--object-manager-port={objects}",
            f"--runtime-env-agent-port={runtime_env}", "--min-worker-port=0", "--max-worker-port=0",
            f"--temp-dir={folder / 'ray'}",
        ]
        self.log = open(folder / "head.log", "w")
        self.process = subprocess.Popen(args, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.address = f"127.0.0.1:{gcs}"
        self._wait_for_dashboard()

    def _wait_for_dashboard(self, timeout: float = 120.0) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start exited: {(self.folder / 'head.log').read_text()[-2000:]}")
            try:
                request = urllib.request.Request(f"{self.dashboard}/api/version",
                                                 headers={"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"})
                urllib.request.urlopen(request, timeout=2).read()
                return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError("the Ray head's dashboard did not come up")

    def run(self, *args: str, timeout: float = 300, extra_env: dict | None = None,
            cwd: Path = ROOT) -> subprocess.CompletedProcess:
        """A client command (`ray job submit ...`, `raysweep ...`) with this head's token and PATH."""
        return subprocess.run(list(args), env={**self.env, **(extra_env or {})}, capture_output=True, text=True,
                              timeout=timeout, cwd=cwd)

    def stop(self) -> None:
        kill_session(self.process.pid)
        self.log.close()
