"""Starts the engine process, restarts it when it dies, and stops it.

The engine is forked from a *forkserver* that has imported torch and the engine once, so a restart costs the
weight file's load (tens of milliseconds), not a fresh interpreter's imports (seconds); the process that
supervises never imports torch. Each engine reports ``ready`` or a one-line start-up error on a pipe whose
other end this supervisor holds: if the supervisor goes, the engine sees the pipe close and exits.

The engine listens on a Unix-domain socket in a fresh directory only this user can enter; the HTTP processes
connect to :attr:`EngineSupervisor.address` (``RNNLM_ENGINE_ADDRESS`` for the workers of ``rnnlm-serve``). The
directory holds the supervisor's pid; a server killed outright (``kill -9``) cannot remove its directory, so each
supervisor removes, as it starts, this user's directories whose supervisor is no longer running.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import secrets
import shutil
import tempfile
import threading
import time
from pathlib import Path

from pydantic import SecretStr

from app.settings import Settings

__all__ = ["EngineStartError", "EngineSupervisor", "remove_stale_engine_dirs"]

logger = logging.getLogger("rnnlm")

DIR_PREFIX = "rnnlm-engine-"
OWNER_FILE = "supervisor.pid"
START_TIMEOUT_S = 120.0
RESTART_BACKOFF_S = (0.05, 5.0)  # first and longest wait before restarting an engine that died


class EngineStartError(Exception):
    """The engine could not start: the message is its one line (a bad weight file, an unusable device)."""


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: running
        return True
    return True


def remove_stale_engine_dirs(root: Path | None = None) -> list[Path]:
    """Remove this user's engine directories under ``root`` (the temporary directory) whose supervisor is no
    longer running — left by a server that was killed outright; returns those removed. A directory without a
    pid file (a supervisor that is starting) is left alone."""
    removed = []
    for path in Path(root or tempfile.gettempdir()).glob(f"{DIR_PREFIX}*"):
        try:
            if path.stat().st_uid != os.getuid() or not path.is_dir():
                continue
            pid = int((path / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if not _running(pid):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _context():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["app.engine.core"])
    return ctx


class EngineSupervisor:
    def __init__(self, settings: Settings):
        secret = settings.state_secret
        self._random_secret = secret is None
        if secret is None:  # one key for every engine this supervisor starts (a restart keeps tokens valid)
            secret = SecretStr(secrets.token_urlsafe(32))
        # the engine never needs the API key
        self.settings = settings.model_copy(update={"api_key": None, "state_secret": secret})
        for stale in remove_stale_engine_dirs():
            logger.info("removed %s, left by a server that is no longer running", stale)
        self._dir = tempfile.mkdtemp(prefix=DIR_PREFIX)  # mode 0700
        Path(self._dir, OWNER_FILE).write_text(str(os.getpid()))
        self.address = f"{self._dir}/engine.sock"
        self._ctx = _context()
        self.process = None
        self._conn = None
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self._started_at = 0.0  # when the running engine became ready

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> None:
        """Start the engine and wait until it is ready (raises :class:`EngineStartError`), then watch it."""
        self._spawn()
        if self._random_secret:
            logger.warning(
                "RNNLM_STATE_SECRET is not set: state tokens are signed with a random key and work only "
                "with this server, until it stops"
            )
        self._watcher = threading.Thread(target=self._watch, name="rnnlm-engine-supervisor", daemon=True)
        self._watcher.start()

    def _spawn(self) -> None:
        ours, theirs = self._ctx.Pipe()
        process = self._ctx.Process(
            target=_engine_main, args=(self.settings, self.address, theirs), name="rnnlm-engine", daemon=True
        )
        process.start()
        theirs.close()
        ready = multiprocessing.connection.wait([ours, process.sentinel], timeout=START_TIMEOUT_S)
        message = None
        if ours in ready:
            try:
                message = ours.recv()
            except EOFError:
                pass
        if message is not None and message[0] == "ready":
            self.process, self._conn, self._started_at = process, ours, time.monotonic()
            return
        process.join(5)
        if process.is_alive():
            process.kill()
            process.join()
        ours.close()
        if message is not None:
            raise EngineStartError(message[1])
        raise EngineStartError(
            f"the engine exited with code {process.exitcode} before it was ready"
            if process.exitcode is not None
            else "the engine did not start in time"
        )

    def _watch(self) -> None:
        backoff = RESTART_BACKOFF_S[0]
        while not self._stopping.is_set():
            multiprocessing.connection.wait([self.process.sentinel])
            if self._stopping.is_set():
                return
            logger.warning(
                "the engine process (pid %s) exited with code %s; restarting it",
                self.process.pid,
                self.process.exitcode,
            )
            self._conn.close()
            if time.monotonic() - self._started_at > 60:  # it had been running for a while: a fresh backoff
                backoff = RESTART_BACKOFF_S[0]
            while not self._stopping.is_set():
                if self._stopping.wait(backoff):
                    return
                try:
                    self._spawn()
                    logger.warning("the engine is back (pid %s)", self.process.pid)
                    break
                except EngineStartError as e:
                    logger.error("the engine could not restart: %s", e)
                backoff = min(backoff * 2, RESTART_BACKOFF_S[1])

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the engine (closing its pipe ends it) and remove its socket's directory."""
        self._stopping.set()
        process = self.process
        if self._conn is not None:
            self._conn.close()
        if process is not None:
            process.join(timeout)
            if process.is_alive():
                process.kill()
                process.join()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(timeout)
        shutil.rmtree(self._dir, ignore_errors=True)


def _engine_main(settings: Settings, address: str, lifeline) -> None:
    """In the engine process (the forkserver has imported app.engine.core, and with it torch, already)."""
    from app.engine.core import main

    main(settings, address, lifeline)
