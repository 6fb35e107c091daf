"""Studies against failing infrastructure the tests start themselves: concurrent stores, tracking
servers that go away and come back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import pace
from faults import FAULTS_ENV, wait_for

#: the pace under test (subprocesses import the same one)
REPO = Path(pace.__file__).resolve().parents[1]

# Each process imports MLflow first, then waits for the go file: the stores are created at once.
_CREATE = """
import os, sys, time
from pace.tracking import MlflowSink
open(sys.argv[2], "w").close()
deadline = time.monotonic() + 600
while not os.path.exists(sys.argv[3]):
    if time.monotonic() > deadline:
        sys.exit("timed out after 600 s waiting for the go file")
    time.sleep(0.01)
sink = MlflowSink(sys.argv[1])
print(sink.experiment(sys.argv[4]))
"""


@pytest.mark.slow
def test_two_studies_create_a_new_sqlite_store_at_once(tmp_path):
    uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", _CREATE, uri, str(tmp_path / f"ready{i}"), str(go), f"s{i}"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(3)]

    def ready() -> bool:
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        return all((tmp_path / f"ready{i}").exists() for i in range(3))

    try:
        wait_for(ready, "three processes that imported MLflow", interval=0.05)
    finally:
        go.touch()  # also when one failed: the others end instead of waiting forever
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-2000:] for _, err in results]
    from mlflow.tracking import MlflowClient

    names = {e.name for e in MlflowClient(tracking_uri=uri).search_experiments()}
    assert {"s0", "s1", "s2"} <= names


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1, reached through a TCP gate the test closes and opens:
    closed, clients get connection refused (an outage); the store behind it stays as it was. (A
    server restart is the same to clients, and starting one takes half a minute on a busy machine.)"""

    def __init__(self, folder: Path):
        self.folder = folder
        self.server_port = _free_port()
        self.port = _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc = None
        self._listener = None
        self._conns: list = []

    def start(self) -> None:
        import urllib.request

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.server_port),
             "--backend-store-uri", f"sqlite:///{self.folder / 'server.db'}",
             "--artifacts-destination", str(self.folder / "artifacts"), "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.up()

        def answers() -> bool:  # the event: the health endpoint answers (or the server died)
            assert self.proc.poll() is None, "mlflow server exited"
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=2):
                    return True
            except OSError:
                return False

        try:
            wait_for(answers, f"mlflow server on port {self.server_port} to answer", interval=0.2)
        except BaseException:
            self.stop()  # no server left behind when it never answered
            raise

    def up(self) -> None:
        import socket
        import threading

        self._listener = socket.create_server(("127.0.0.1", self.port))
        listener = self._listener
        self._open = True

        def pump(a, b):
            try:
                while data := a.recv(65536):
                    b.sendall(data)
            except OSError:
                pass
            finally:
                for x in (a, b):
                    try:
                        x.close()
                    except OSError:
                        pass

        def accept():
            while True:
                try:
                    client, _ = listener.accept()
                except OSError:
                    return  # gate closed
                if not self._open:  # accepted while closing: refuse it too
                    client.close()
                    return
                try:
                    upstream = socket.create_connection(("127.0.0.1", self.server_port))
                except OSError:
                    client.close()
                    continue
                self._conns += [client, upstream]
                threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
                threading.Thread(target=pump, args=(upstream, client), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()

    def down(self) -> None:
        """The outage: no new connections, the open ones cut."""
        import socket

        self._open = False
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self._listener.close()
        for c in self._conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
                c.close()
            except OSError:
                pass
        self._conns = []

    def stop(self) -> None:
        import signal

        if self._listener is not None:
            self.down()
        os.killpg(self.proc.pid, signal.SIGTERM)  # the server and its worker
        self.proc.wait()


def test_product_code_holds_no_fault_injection():
    """Faults reach studies only through the plugin seam (tests/faults.py): pace never reads them."""
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "pace").rglob("*.py")
                 if FAULTS_ENV in p.read_text() or "FaultInjector" in p.read_text()]
    assert offenders == []
