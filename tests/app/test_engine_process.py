"""The engine in a process of its own, seen from outside: real servers (``python -m app``) on 127.0.0.1.

The HTTP side never imports torch; the engine dying ends every request in flight at once and comes back by
itself; SIGTERM drains; a client that goes away is cancelled in the engine; floating-point flags stay in the
engine; an unusable device is one line and exit 2; no process outlives the server."""

import ast
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from model import load_weights
from tests.app.test_batching import metric, post_all, prefixes
from tests.app.test_predict import library_greedy, parse_events
from tests.conftest import assert_error, assert_greedy, start_server, stop_server


def engine_pid(base: str) -> int:
    return httpx.get(f"{base}/info").json()["serving"]["engine_pid"]


def gone(pid: int) -> bool:
    """Not running: no such process, or a zombie that nobody has reaped yet (this container has no init)."""
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, IndexError):
        return True


def wait_for(condition, seconds: float, what: str) -> float:
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < seconds, f"{what} within {seconds} s"
        time.sleep(0.02)
    return time.monotonic() - start


def status_of(base: str, path: str) -> int:
    try:
        return httpx.get(f"{base}{path}", timeout=2).status_code
    except httpx.TransportError:
        return -1


def test_app_engine_is_the_only_part_of_app_that_imports_torch():
    """Read from the source: outside app/engine/, no module of app/ imports torch, numpy, the model package or
    the engine — except the supervisor's entry point, which runs in the engine process."""
    root = Path(__file__).resolve().parents[2] / "app"
    heavy = {"torch", "numpy", "model"}
    found = []
    for path in root.rglob("*.py"):
        if path.parent.name == "engine" or "engine" in path.relative_to(root).parts[:-1]:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name.split(".")[0] in heavy or name == "app.engine" or name.startswith("app.engine."):
                    found.append((path.relative_to(root).as_posix(), name))
    assert found == [("supervisor.py", "app.engine.core")]
    engine_sources = " ".join(p.read_text(encoding="utf-8") for p in (root / "engine").glob("*.py"))
    assert "import torch" in engine_sources  # the check above looks at the right files


def test_the_http_side_never_imports_torch():
    code = (
        "import sys, app.main, app.asgi, app.cli; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'model')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "RNNLM_ENGINE_ADDRESS": "/nonexistent"},
    ).stdout
    assert out.strip() == "[]"


def test_killing_the_engine_ends_every_request_at_once_and_it_comes_back(weights_file, tmp_path):
    loaded = load_weights(weights_file)
    base, proc = start_server(weights_file, tmp_path / "server.log", RNNLM_MAX_NUM_TOKENS="1000000")
    try:
        first = engine_pid(base)

        async def load():
            async with httpx.AsyncClient(base_url=base, timeout=30) as http:

                async def plain(i):
                    return await http.post("/predict", json={"prefix": f"All{i}:", "num_tokens": 1_000_000})

                async def streamed(i):
                    body = {"prefix": f"First{i}", "num_tokens": 1_000_000, "stream": True}
                    async with http.stream("POST", "/predict", json=body) as r:
                        return r.status_code, (await r.aread()).decode()

                async def kill():
                    await asyncio.sleep(0.5)  # all of them are running by now
                    rows = metric((await http.get("/metrics")).text, "rnnlm_batch_rows")
                    os.kill(first, signal.SIGKILL)
                    return rows, time.monotonic()

                tasks = [plain(i) for i in range(8)] + [streamed(i) for i in range(4)]
                start = time.monotonic()
                *results, (rows, killed) = await asyncio.gather(*tasks, kill())
                return results, rows, time.monotonic() - killed, killed - start

        results, rows, after_kill, _ = asyncio.run(load())
        assert rows == 12  # every request was in the batch when the engine died
        assert after_kill < 3, "requests must end at once when the engine dies, not hang"
        for r in results[:8]:
            error = assert_error(r, 503)
            assert "engine" in error["message"]
            assert r.headers["retry-after"] == "1"
        for code, text in results[8:]:
            assert code == 200  # the stream had started; its end is an error event with the 503 body
            name, data = parse_events(text)[-1]
            assert name == "error" and json.loads(data)["error"]["code"] == 503
        back = wait_for(lambda: status_of(base, "/ready") == 200, 20, "a restarted engine is ready")
        second = engine_pid(base)
        assert second != first and proc.poll() is None  # the HTTP process was not restarted
        r = httpx.post(f"{base}/predict", json={"prefix": "All:", "num_tokens": 40})
        assert r.json()["completion"] == library_greedy(loaded, "All:", 40)
        print(f"engine back in {back:.2f} s")
    finally:
        stop_server(proc)
    wait_for(lambda: gone(second) and gone(proc.pid), 10, "no process outlives the server")
    assert gone(first)


def test_sigterm_drains_finishes_requests_in_flight_refuses_new_ones_and_exits_0(weights_file, tmp_path):
    loaded = load_weights(weights_file)
    base, proc = start_server(
        weights_file, tmp_path / "server.log", RNNLM_MAX_NUM_TOKENS="1000000", RNNLM_DRAIN_SECONDS="120"
    )
    engine = engine_pid(base)
    n = 300_000  # seconds of work: still in flight when the signal and the new request come, on any machine

    async def run():
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            running = asyncio.ensure_future(http.post("/predict", json={"prefix": "All:", "num_tokens": n}))
            await asyncio.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
            async with httpx.AsyncClient(base_url=base, timeout=5) as fresh:  # a new connection
                refused = await fresh.post("/predict", json={"prefix": "All:", "num_tokens": 5})
                ready = await fresh.get("/ready")
            return await running, refused, ready

    done, refused, ready = asyncio.run(run())
    assert done.status_code == 200 and done.json()["num_tokens"] == n
    assert done.json()["completion"][:200] == library_greedy(loaded, "All:", 200)
    assert_error(refused, 503)
    assert refused.headers["retry-after"] == "1"
    assert_error(ready, 503)
    assert proc.wait(timeout=60) == 0
    stop_server(proc)
    wait_for(lambda: gone(engine), 10, "the engine stops with the server")
    assert "Traceback" not in (tmp_path / "server.log").read_text()


@pytest.fixture(scope="module")
def shared_server(weights_file, tmp_path_factory):
    """One server for the tests that neither kill nor stop it: (base URL, log file)."""
    log = tmp_path_factory.mktemp("engine") / "server.log"
    base, proc = start_server(weights_file, log, RNNLM_MAX_NUM_TOKENS="1000000")
    yield base, log
    stop_server(proc)


def test_a_client_that_times_out_is_cancelled_in_the_engine(shared_server):
    base, _ = shared_server
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{base}/predict", json={"prefix": "All:", "num_tokens": 1_000_000}, timeout=0.5)
    wait_for(
        lambda: metric(httpx.get(f"{base}/metrics").text, "rnnlm_batch_rows") == 0,
        5,
        "the abandoned generation leaves the batch",
    )
    assert metric(httpx.get(f"{base}/metrics").text, "rnnlm_engine_requests") == 0


def test_64_concurrent_clients_get_what_each_would_alone_through_the_engine_process(shared_server, loaded):
    base, _ = shared_server
    before = httpx.get(f"{base}/metrics").text
    texts = prefixes(64)
    responses = asyncio.run(post_all(base, [("/predict", {"prefix": t, "num_tokens": 120}) for t in texts]))
    same = 0
    for t, r in zip(texts, responses):
        assert r.status_code == 200, r.text
        completion = r.json()["completion"]
        assert len(completion) == 120
        assert_greedy(loaded, t, completion)  # greedy, up to float ties (a batched matmul rounds differently)
        same += completion == library_greedy(loaded, t, 120)
    assert same >= 60  # and most equal the single-stream loop's text exactly
    after = httpx.get(f"{base}/metrics").text
    rows, steps = (
        metric(after, name) - metric(before, name)
        for name in ("rnnlm_batch_rows_stepped_total", "rnnlm_batch_steps_total")
    )
    assert rows / steps > 4  # they really ran together


def test_flush_denormal_stays_in_the_engine_a_tiny_top_p_is_accepted_and_means_greedy(shared_server, loaded):
    """top_p = 5e-324 is schema-valid (> 0); the nucleus is then the likeliest character alone."""
    base, _ = shared_server
    r = httpx.post(
        f"{base}/predict", json={"prefix": "All:", "num_tokens": 50, "temperature": 1.0, "top_p": 5e-324, "seed": 7}
    )
    assert r.status_code == 200, r.text
    assert r.json()["completion"] == library_greedy(loaded, "All:", 50)


def test_a_4xx_leaves_no_traceback_in_the_log(shared_server):
    base, log = shared_server
    assert_error(httpx.post(f"{base}/predict", json={"prefix": "a", "num_tokens": -1}), 422)
    assert_error(httpx.post(f"{base}/perplexity", json={"text": "a"}), 422)
    assert_error(httpx.post(f"{base}/predict", content=b"{", headers={"content-type": "application/json"}), 400)
    text = log.read_text()
    assert "Traceback" not in text and "ERROR" not in text


@pytest.mark.parametrize("device", ["tpu", "cuda:99", "not a device"])
def test_an_unusable_device_exits_2_with_one_line_naming_the_variable(weights_file, device):
    run = subprocess.run(
        [sys.executable, "-m", "app", "--weights", weights_file, "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RNNLM_DEVICE": device},
    )
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rnnlm-serve: error: RNNLM_DEVICE="), run.stderr
    assert "Traceback" not in run.stderr + run.stdout


def test_a_server_killed_outright_leaves_a_directory_the_next_server_removes(weights_file, tmp_path):
    """kill -9 of rnnlm-serve: its engine exits (its lifeline closed), but the socket's directory stays; the next
    server removes it as it starts, and leaves alone the directories of servers still running."""
    from app.supervisor import DIR_PREFIX, OWNER_FILE

    temp = Path(os.environ.get("TMPDIR", "/tmp"))
    before = set(temp.glob(f"{DIR_PREFIX}*"))
    base, proc = start_server(weights_file, tmp_path / "first.log")
    ours = [d for d in set(temp.glob(f"{DIR_PREFIX}*")) - before if (d / OWNER_FILE).read_text() == str(proc.pid)]
    assert len(ours) == 1 and (ours[0] / "engine.sock").exists()
    proc.kill()
    proc.wait()
    proc.log.close()
    assert ours[0].exists()  # nobody could remove it
    others = [d for d in before if d.exists()]  # servers of other tests, still running
    base, proc = start_server(weights_file, tmp_path / "second.log")
    try:
        assert not ours[0].exists()
        assert all(d.exists() for d in others if (d / OWNER_FILE).exists())
        assert httpx.post(f"{base}/predict", json={"prefix": "All:", "num_tokens": 3}).status_code == 200
    finally:
        stop_server(proc)
