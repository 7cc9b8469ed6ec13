"""The embedded MongoDB-wire server used when no ``CXR_MONGODB_URI`` is given.

SecantusDB (GPL-2.0) runs as its own process via its ``secantusd-py`` command,
never imported: product code only ever speaks pymongo, so Atlas or a real
``mongod`` works unchanged. A detached, named Ray actor owns the process, so it
is started once per Ray cluster and every storage replica (and a restarted
app) sees the same persistent data directory.
"""

from __future__ import annotations

import ctypes
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import ray
from pymongo import MongoClient
from pymongo.errors import PyMongoError

ACTOR_NAME = "cxr-embedded-mongodb"
NAMESPACE = "cxr"


def _server_command() -> str:
    beside = Path(sys.executable).with_name("secantusd-py")
    found = str(beside) if beside.exists() else shutil.which("secantusd-py")
    if not found:
        raise RuntimeError("secantusd-py not found: install the dev extra, or set CXR_MONGODB_URI")
    return found


def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM when the actor process dies, so no orphan holds the port."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _answers(uri: str) -> bool:
    try:
        MongoClient(uri, serverSelectionTimeoutMS=500).admin.command("ping")
        return True
    except PyMongoError:
        return False


@ray.remote(num_cpus=0, max_restarts=-1)
class EmbeddedMongo:
    def __init__(self, data_dir: str, port: int):
        self.data_dir = Path(data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.uri_ = f"mongodb://127.0.0.1:{port}/?directConnection=true"
        self.process = None
        self.start()

    def start(self) -> str:
        if self.process is not None and self.process.poll() is None:
            return self.uri_
        if _answers(self.uri_):
            return self.uri_  # a server this actor's previous life started is still up
        log = open(self.data_dir / "secantusd.log", "ab")
        self.process = subprocess.Popen(
            [
                _server_command(),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--storage-path",
                str(self.data_dir / "db"),
                "--log-level",
                "WARNING",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"secantusd-py exited with {self.process.returncode}; see {log.name}")
            if _answers(self.uri_):
                return self.uri_
            time.sleep(0.2)
        raise RuntimeError("secantusd-py did not answer within 60 s")

    def stop(self) -> None:
        """Stop the server process (tests use this to simulate a database outage)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def uri(self) -> str:
        return self.uri_


def embedded_mongodb(data_dir: str, port: int):
    """The cluster's embedded server actor, started on first use."""
    return EmbeddedMongo.options(name=ACTOR_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True).remote(
        data_dir, port
    )
