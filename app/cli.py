"""``rnnlm-serve`` / ``python -m app``: start the engine process (which checks the weight file and the device),
then run uvicorn's HTTP worker(s), which all connect to that one engine; on SIGTERM the workers drain, then
the engine stops and the command exits 0.

This process supervises the engine (restarting it if it dies) and never imports torch itself."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile

import uvicorn
from pydantic import ValidationError

from app.http_protocol import BoundedHttpProtocol
from app.settings import Settings
from app.supervisor import EngineStartError, EngineSupervisor

__all__ = ["main"]


def _settings_error(error: ValidationError, cli_names: dict[str, str]) -> str:
    """One line naming each bad setting as the user gave it (an option, or its RNNLM_ variable)."""
    parts = []
    for e in error.errors():
        field = str(e["loc"][0]) if e["loc"] else "settings"
        name = cli_names.get(field) or f"RNNLM_{field.upper()}"
        parts.append(f"{name}: {e['msg']} (got {e['input']!r})")
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    try:
        defaults = Settings()
    except ValidationError as e:
        print(f"rnnlm-serve: error: {_settings_error(e, {})}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(
        prog="rnnlm-serve",
        description="Serve an rnnlm weight file over HTTP. "
        "Every option can also be set from the environment (RNNLM_HOST, …).",
    )
    parser.add_argument("--host", default=defaults.host, help=f"bind address (default: {defaults.host})")
    parser.add_argument("--port", type=int, default=defaults.port, help=f"port (default: {defaults.port})")
    parser.add_argument("--weights", default=str(defaults.weights), help=f"weight file (default: {defaults.weights})")
    parser.add_argument("--workers", type=int, default=defaults.workers, help="uvicorn worker processes")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    args = parser.parse_args(argv)
    try:  # the options obey the same bounds as the variables
        Settings(host=args.host, port=args.port, weights=args.weights, workers=args.workers)
    except ValidationError as e:
        names = {"host": "--host", "port": "--port", "weights": "--weights", "workers": "--workers"}
        print(f"rnnlm-serve: error: {_settings_error(e, names)}", file=sys.stderr)
        return 2

    os.environ["RNNLM_WEIGHTS"] = args.weights  # the app (and every worker) reads its settings from here
    os.environ["RNNLM_WORKERS"] = str(args.workers)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), format="%(levelname)s:     %(message)s")
    supervisor = EngineSupervisor(Settings())
    try:  # fail fast, in one line, before any worker starts
        supervisor.start()
    except EngineStartError as e:
        supervisor.stop()
        print(f"rnnlm-serve: error: {e}", file=sys.stderr)
        return 2
    os.environ["RNNLM_ENGINE_ADDRESS"] = supervisor.address
    metrics_dir = None
    if args.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # A scrape reaches one worker: all of them write their metrics here, and it reports the sum.
        metrics_dir = tempfile.mkdtemp(prefix="rnnlm-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    # uvicorn re-raises the signal that stopped it once it has shut down: end with status 0, as asked.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        uvicorn.run(
            "app.asgi:app",
            factory=False,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=args.log_level,
            timeout_graceful_shutdown=10,
            http=BoundedHttpProtocol,  # deadlines, a header bound, the error body: app/http_protocol.py
        )
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    finally:
        supervisor.stop()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
