"""Tracking writes that survive a tracking outage: journaled on disk, sent in order, retried.

A study's trials never talk to MLflow themselves. They hand their writes to one ``JournaledSink``
(a Ray actor on the driver's node), which appends each write to ``ops.jsonl`` in the study's journal
folder (flushed and fsynced) and returns at once; a background thread sends the writes in order
through an ``MlflowSink``, backing off (up to ``MAX_BACKOFF_S``) while the server is unreachable, and
records how far it got in ``sent``. Compute never waits for the server.

Every write is idempotent when sent again (a kill between sending and recording ``sent``): trial
runs are found by their ``pace.trial_id`` tag before one is created, a session step already on the
server is skipped, final metrics and the study summary are logged only when missing, and
artifacts, tags and terminations overwrite. So: no duplicate steps, one run per trial.

What is still unsent when a study ends stays in its journal; ``pace sweep``/``pace ablate`` send
it when they next reach the server, and so does ``pace tracking sync``.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

OPS_FILE = "ops.jsonl"
SENT_FILE = "sent"
META_FILE = "journal.json"
JOURNAL_DIR = "tracking-journal"
MAX_BACKOFF_S = 10.0
#: how long the end of a study waits for the journal to drain before leaving the rest for later
FLUSH_ENV = "PACE_TRACKING_FLUSH_S"
FLUSH_DEFAULT_S = 60.0
#: ``pace tracking sync``: add_cli registers these names, and messages name the command from them
TRACKING_COMMAND, SYNC_COMMAND = "tracking", "sync"


def sync_command(*paths: str | Path) -> str:
    """The command that sends what the journals under ``paths`` hold."""
    return " ".join(["pace", TRACKING_COMMAND, SYNC_COMMAND, *map(str, paths)])


class Journal:
    """Append-only write log plus the count of writes already sent (an atomically replaced file)."""

    def __init__(self, folder: str | Path, uri: str | None = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        meta = self.folder / META_FILE
        if uri is not None and not meta.is_file():
            meta.write_text(json.dumps({"uri": uri}))
        self.uri = uri or json.loads(meta.read_text())["uri"]
        self._ops: list[dict[str, Any]] = []
        self._pos = 0  # bytes of ops.jsonl already parsed into _ops
        self._read_lock = threading.Lock()  # the sender thread and flush() both read

    def ops(self) -> list[dict[str, Any]]:
        """Every journaled write so far (reads only what was appended since the last call)."""
        path = self.folder / OPS_FILE
        with self._read_lock:
            if not path.is_file():
                self._ops, self._pos = [], 0
                return []
            with open(path, "rb") as f:
                f.seek(self._pos)
                data = f.read()
            end = data.rfind(b"\n") + 1  # only whole lines: the last one may be mid-append right now
            for line in data[:end].split(b"\n")[:-1]:
                try:
                    self._ops.append(json.loads(line))
                except json.JSONDecodeError:  # torn by a kill mid-write: that write never returned
                    pass
            self._pos += end
            return list(self._ops)

    def clear(self) -> None:
        """Everything was sent: drop the log (it holds artifacts, so it can be large)."""
        for name in (OPS_FILE, SENT_FILE):
            (self.folder / name).unlink(missing_ok=True)
        self._ops, self._pos = [], 0

    def sent(self) -> int:
        try:
            return int((self.folder / SENT_FILE).read_text())
        except (OSError, ValueError):
            return 0

    def pending(self) -> list[dict[str, Any]]:
        return self.ops()[self.sent():]

    def append(self, op: dict[str, Any]) -> None:
        with open(self.folder / OPS_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(op) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def mark_sent(self, n: int) -> None:
        tmp = self.folder / (SENT_FILE + ".tmp")
        tmp.write_text(str(n))
        os.replace(tmp, self.folder / SENT_FILE)


def journal_folder(exp_path: str, cwd: str, name: str) -> Path:
    """In the experiment folder when storage is a path; else under the launch folder."""
    if "://" in exp_path:
        return Path(cwd) / ".pace-tracking" / name
    return Path(exp_path) / JOURNAL_DIR


def transient(exc: BaseException) -> bool:
    """An error that a later retry can get past (server down or busy, store locked)."""
    text = f"{type(exc).__name__}: {exc}"
    needles = ("Connection", "Max retries exceeded", "timed out", "Timeout", "Temporary", "database is locked",
               "503", "502", "504", "TEMPORARILY_UNAVAILABLE", "RemoteDisconnected", "failed with exception")
    return isinstance(exc, (ConnectionError, TimeoutError, OSError)) or any(n in text for n in needles)


# ---------------------------------------------------------------------------------------------
# Sending


class Sender:
    """Applies journaled writes to an MlflowSink, idempotently. Created lazily: the server may be down."""

    def __init__(self, uri: str):
        self.uri = uri
        self._sink = None
        self.runs: dict[str, str] = {}  # trial id -> run id
        self.steps: dict[str, set[int]] = {}  # run id -> steps on the server

    @property
    def sink(self):
        if self._sink is None:
            from pace.tracking import MlflowSink

            self._sink = MlflowSink(self.uri)
        return self._sink

    def run_id(self, ref: dict[str, Any]) -> str:
        if ref.get("run"):
            return ref["run"]
        trial = ref["trial"]
        if trial not in self.runs:
            found = self.sink._find_trial_run(ref["exp"], ref["parent"], trial)
            if found is None:
                raise LookupError(f"no MLflow run for trial {trial} (its opening write was lost)")
            self.runs[trial] = found
        return self.runs[trial]

    def apply(self, op: dict[str, Any]) -> None:
        kind = op["op"]
        sink = self.sink
        if kind == "open":
            ref = op["ref"]
            run_id, steps = sink.open_trial_run(ref["exp"], ref["parent"], ref["trial"], op["name"], op["tags"],
                                                op["params"], ref.get("run"))
            self.runs[ref["trial"]] = run_id
            self.steps[run_id] = set(steps)
        elif kind == "session":
            run_id = self.run_id(op["ref"])
            if run_id not in self.steps:
                self.steps[run_id] = set(sink.logged_steps(run_id))
            if op["step"] in self.steps[run_id]:
                return  # sent before (a retried trial recomputed it, or a resend after a kill)
            sink.log_session(run_id, op["step"], op["metrics"])
            self.steps[run_id].add(op["step"])
        elif kind == "final":
            sink.log_final(self.run_id(op["ref"]), op["step"], op["metrics"])
        elif kind == "files":
            sink.log_files(self.run_id(op["ref"]),
                           {k: base64.b64decode(v) for k, v in op["files"].items()})
        elif kind == "terminate":
            sink.terminate(self.run_id(op["ref"]), op["status"], op.get("tags"))
        elif kind == "reopen":
            sink.reopen(self.run_id(op["ref"]))
        elif kind == "tags":
            sink.set_tags(self.run_id(op["ref"]), op["tags"])
        elif kind == "summary":
            run_id = op["ref"]["run"]
            if op["key"] not in sink.run_metrics(run_id):  # once per study, also across resumes
                sink.log_session(run_id, 0, {op["key"]: op["value"]})
            sink.set_tags(run_id, op["tags"])
            sink.log_files(run_id, {k: base64.b64decode(v) for k, v in op["files"].items()})
        elif kind == "close":
            outcomes = {k: (v[0], v[1]) for k, v in op["outcomes"].items()}
            sink.close_sweep(op["exp"], op["ref"]["run"], outcomes, op["status"])
        else:
            raise ValueError(f"unknown journaled write {kind!r}")


def drain(journal: Journal, sender: Sender, deadline: float, on_skip=None) -> int:
    """Send pending writes until none are left or ``deadline`` (time.time()) passes; backs off while
    the server is unreachable. Returns how many are left."""
    ops = journal.ops()
    done = journal.sent()
    backoff = 0.5
    while done < len(ops):
        try:
            sender.apply(ops[done])
        except Exception as exc:  # noqa: BLE001 - classified below
            if transient(exc):
                if time.time() + backoff > deadline:
                    break
                time.sleep(backoff)
                backoff = min(2 * backoff, MAX_BACKOFF_S)
                continue
            if on_skip is not None:  # rejected by the server: retrying cannot help, the rest must go on
                on_skip(ops[done], exc)
        done += 1
        journal.mark_sent(done)
        backoff = 0.5
    return len(ops) - done


# ---------------------------------------------------------------------------------------------
# The sink the trials see


def _quick_http_failures() -> None:
    """MLflow's own HTTP retries would hold the sender for minutes per write; the journal retries."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


class JournaledSink:
    """MlflowSink's interface for trials and the end of a study; every write returns once journaled.

    Run ids handed out are placeholders (``trial:<id>``): the real run may not exist yet.
    """

    def __init__(self, uri: str, folder: str):
        _quick_http_failures()
        self.journal = Journal(folder, uri)
        self.sender = Sender(uri)
        self._queued = len(self.journal.ops())
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, daemon=True, name="pace-tracking-sender")
        self._thread.start()

    # -- the sender thread
    def _loop(self) -> None:
        while not self._stop:
            left = drain(self.journal, self.sender, time.time() + 3600, self._skipped)
            if left == 0:
                self._idle.set()
                self._wake.wait(1.0)
                self._wake.clear()

    @staticmethod
    def _skipped(op: dict[str, Any], exc: BaseException) -> None:
        print(f"pace: warning: the tracking server rejected a {op['op']} write ({exc}); skipped it",
              file=sys.stderr, flush=True)

    def _put(self, op: dict[str, Any]) -> None:
        with self._lock:
            self._idle.clear()
            self.journal.append(op)
        self._wake.set()

    def flush(self, timeout_s: float) -> int:
        """Wait until every write is sent or ``timeout_s`` passes; the number still unsent."""
        end = time.time() + timeout_s
        while time.time() < end:
            if len(self.journal.ops()) - self.journal.sent() == 0:
                with self._lock:
                    self._stop = True  # the study is over: nothing more will be appended
                    self.journal.clear()
                return 0
            self._wake.set()
            time.sleep(0.1)
        return len(self.journal.ops()) - self.journal.sent()

    def folder(self) -> str:
        return str(self.journal.folder)

    # -- MlflowSink's interface (as MlflowReporter and the driver use it)
    def open_trial_run(self, experiment_id: str, parent_run_id: str, trial_id: str, run_name: str,
                       tags: dict[str, str], params: dict[str, str], run_id: str | None = None
                       ) -> tuple[str, list[int]]:
        ref = {"trial": trial_id, "exp": experiment_id, "parent": parent_run_id}
        if run_id and not run_id.startswith("trial:"):
            ref["run"] = run_id
        self._put({"op": "open", "ref": ref, "name": run_name, "tags": tags, "params": params})
        self._refs = getattr(self, "_refs", {})
        self._refs[f"trial:{trial_id}"] = ref
        return f"trial:{trial_id}", []  # steps already sent are skipped when sending

    def _resolve(self, run_id: str) -> dict[str, str]:
        return getattr(self, "_refs", {}).get(run_id) or {"run": run_id}

    def log_session(self, run_id: str, step: int, metrics: dict[str, float]) -> None:
        from pace.tracking import finite_metrics

        self._put({"op": "session", "ref": self._resolve(run_id), "step": step, "metrics": finite_metrics(metrics)})

    def log_final(self, run_id: str, step: int, metrics: dict[str, float]) -> None:
        from pace.tracking import finite_metrics

        self._put({"op": "final", "ref": self._resolve(run_id), "step": step, "metrics": finite_metrics(metrics)})

    def log_files(self, run_id: str, files: dict[str, bytes]) -> None:
        if files:
            self._put({"op": "files", "ref": self._resolve(run_id),
                       "files": {k: base64.b64encode(v).decode() for k, v in files.items()}})

    def terminate(self, run_id: str, status: str, tags: dict[str, str] | None = None) -> None:
        self._put({"op": "terminate", "ref": self._resolve(run_id), "status": status, "tags": tags or {}})

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self._put({"op": "tags", "ref": self._resolve(run_id), "tags": tags})

    def reopen(self, run_id: str) -> None:
        """A resumed study's parent runs again (after the writes of its earlier start, in order)."""
        self._put({"op": "reopen", "ref": self._resolve(run_id)})

    def summary(self, parent_run_id: str, key: str | None, value: float | None, tags: dict[str, str],
                files: dict[str, bytes]) -> None:
        self._put({"op": "summary", "ref": {"run": parent_run_id}, "key": key or "", "value": value,
                   "tags": tags, "files": {k: base64.b64encode(v).decode() for k, v in files.items()}})

    def close_sweep(self, experiment_id: str, parent_run_id: str,
                    outcomes: dict[str, tuple[str, dict[str, str]]], parent_status: str) -> None:
        self._put({"op": "close", "exp": experiment_id, "ref": {"run": parent_run_id},
                   "outcomes": {k: list(v) for k, v in outcomes.items()}, "status": parent_status})


# ---------------------------------------------------------------------------------------------
# Sending what a study left behind


def pending_journals(paths: list[str | Path]) -> list[Journal]:
    """Journals with unsent writes: each path is a journal folder, an experiment folder, or a storage
    folder holding experiment folders."""
    found = []
    for p in map(Path, paths):
        for cand in (p, p / JOURNAL_DIR, *p.glob(f"*/{JOURNAL_DIR}"), *p.glob(".pace-tracking/*")):
            if (cand / META_FILE).is_file() and cand not in [j.folder for j in found]:
                j = Journal(cand)
                if j.pending():
                    found.append(j)
    return found


def sync(journals: list[Journal], timeout_s: float, out=print) -> int:
    """Send what the journals hold; returns the number of writes still unsent."""
    _quick_http_failures()
    left_total = 0
    for j in journals:
        n = len(j.pending())
        def skipped(op: dict[str, Any], exc: BaseException, uri: str = j.uri) -> None:
            out(f"pace: warning: {uri} rejected a {op['op']} write ({exc}); skipped it")

        left = drain(j, Sender(j.uri), time.time() + timeout_s, skipped)
        left_total += left
        if not left:
            j.clear()
        if left:
            out(f"tracking: {left} of {n} writes in {j.folder} still unsent ({j.uri} unreachable)")
        else:
            out(f"tracking: sent {n} journaled writes from {j.folder} to {j.uri}")
    return left_total


# ---------------------------------------------------------------------------------------------
# CLI: pace tracking sync


def cmd_sync(args) -> int:
    journals = pending_journals(args.paths)
    if not journals:
        print(f"tracking: nothing to send under {', '.join(map(str, args.paths))}")
        return 0
    left = sync(journals, args.timeout)
    if left:
        print(f"pace: error: {left} tracking writes still unsent; run this again once the server answers",
              file=sys.stderr)
        return 1
    return 0


def add_cli(sub) -> None:
    t = sub.add_parser(TRACKING_COMMAND, help="MLflow tracking of studies: send writes kept during an outage")
    tsub = t.add_subparsers(dest="tracking_cmd", required=True)
    s = tsub.add_parser(SYNC_COMMAND, help="send the journaled MLflow writes that studies could not send")
    s.add_argument("paths", nargs="*", default=["ray_results"],
                   help="experiment folders, or storage folders holding them (default: ./ray_results)")
    s.add_argument("--timeout", type=float, default=60.0, help="seconds to keep retrying an unreachable server")
    s.set_defaults(func=cmd_sync)
