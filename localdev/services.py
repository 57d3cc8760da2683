"""Start the local stand-ins for Azure: Azurite (npm) and the Azure ML emulator, each on free ports.

Used by the tests and by the local main job; never deployed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
AZURITE_ACCOUNT = "devstoreaccount1"
# The Azurite well-known development key: public, documented, not a secret.
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout:.0f}s")


def _stop(process: subprocess.Popen | None) -> None:
    if process and process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def stop_on_sigterm():
    """Treat SIGTERM as Ctrl-C while inside, so a terminated demo or setup still stops its children
    and removes its temporary folders (the default SIGTERM action skips every ``finally``)."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def azurite_binary() -> str:
    local = ROOT / "node_modules" / ".bin" / "azurite"
    if local.exists():
        return str(local)
    found = shutil.which("azurite")
    if found:
        return found
    raise RuntimeError("Azurite is not installed: run `npm ci` in the repository root (see README)")


def fresh_names() -> dict[str, str]:
    """Containers, table and queue of their own, so one setup never sees another's state."""
    uid = uuid.uuid4().hex[:10]
    return {
        "TRAINING_CONTAINER": f"train-{uid}",
        "MODELS_CONTAINER": f"models-{uid}",
        "RUNS_TABLE": f"runs{uid}",
        "COMMANDS_QUEUE": f"commands-{uid}",
    }


@dataclass
class Azurite:
    """An Azurite process with its data in a folder of its own (a temp folder unless given)."""

    location: str | None = None
    blob_port: int = field(default_factory=free_port)
    queue_port: int = field(default_factory=free_port)
    table_port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    _tmp: tempfile.TemporaryDirectory | None = None

    def start(self) -> Azurite:
        if self.location is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="azurite-")
            self.location = self._tmp.name
        # --skipApiVersionCheck: the current storage SDKs speak a newer API version than Azurite knows.
        command = [
            azurite_binary(),
            "--silent",
            "--skipApiVersionCheck",
            "--loose",
            "--disableTelemetry",
            "--location",
            self.location,
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(self.blob_port),
            "--queueHost",
            "127.0.0.1",
            "--queuePort",
            str(self.queue_port),
            "--tableHost",
            "127.0.0.1",
            "--tablePort",
            str(self.table_port),
        ]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for port in (self.blob_port, self.queue_port, self.table_port):
            _wait_for_port(port, self.process, "Azurite")
        return self

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{self.blob_port}/{AZURITE_ACCOUNT};"
            f"QueueEndpoint=http://127.0.0.1:{self.queue_port}/{AZURITE_ACCOUNT};"
            f"TableEndpoint=http://127.0.0.1:{self.table_port}/{AZURITE_ACCOUNT};"
        )

    def stop(self) -> None:
        _stop(self.process)
        if self._tmp:
            self._tmp.cleanup()
            self._tmp = None

    def halt(self) -> None:
        """Stop the process, keeping its data on disk: ``start()`` brings it back on the same ports."""
        _stop(self.process)


@dataclass
class EmulatorProcess:
    """``python -m emulator`` in a child process; ``admin()`` calls its test API."""

    api_key: str
    port: int = 0
    job_seconds: float = 1.0
    storage_connection_string: str | None = None
    process: subprocess.Popen | None = None
    info: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.info["url"]

    @property
    def bes_jobs_url(self) -> str:
        return self.info["bes_jobs_url"]

    def start(self) -> EmulatorProcess:
        command = [
            sys.executable,
            "-m",
            "emulator",
            "--port",
            str(self.port),
            f"--api-key={self.api_key}",  # one argument: a random key may start with "-"
            "--job-seconds",
            str(self.job_seconds),
        ]
        if self.storage_connection_string:
            command += [f"--storage-connection-string={self.storage_connection_string}"]
        self.process = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}
        )
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the emulator exited with code {self.process.wait()}")
        self.info = json.loads(line)
        return self

    def app_settings(self) -> dict[str, str]:
        """The app settings that point the app at this emulator: BES, its key, and the managed-identity
        endpoint of the emulated App Service (where azure-identity finds a token, as in Azure)."""
        return {
            "BES_JOBS_URL": self.bes_jobs_url,
            "BES_API_KEY": self.api_key,
            "IDENTITY_ENDPOINT": self.info["identity_endpoint"],
            "IDENTITY_HEADER": self.info["identity_header"],
        }

    def deploy_targets(self, api_key: str, classic: str = "classic", arm: str = "arm") -> list[dict]:
        """``DEPLOY_TARGETS`` entries for the seeded classic endpoint and ARM web service."""
        return [
            {
                "name": classic,
                "kind": "classic",
                "endpoint_url": self.info["classic_endpoint_url"],
                "api_key": api_key,
                "resource_name": self.info["classic_resource_name"],
            },
            {"name": arm, "kind": "arm", "resource_id": self.info["arm_resource_id"], "management_url": self.url},
        ]

    def add_training_service(self, service: str, api_key: str, workspace: str | None = None) -> str:
        """Register another training web service (its own key); returns its BES ``.../jobs`` URL."""
        workspace = workspace or self.bes_jobs_url.split("/workspaces/", 1)[1].split("/", 1)[0]
        self.admin("POST", "services", {"workspace": workspace, "service": service, "api_key": api_key})
        return f"{self.url}/workspaces/{workspace}/services/{service}/jobs"

    def admin(self, method: str, name: str, body: object | None = None) -> object:
        response = requests.request(method, f"{self.url}/_emulator/{name}", json=body, timeout=10)
        response.raise_for_status()
        return response.json()

    def stop(self) -> None:
        _stop(self.process)
