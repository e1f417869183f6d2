"""The trainer, run as its users run it: through ``main`` (in process) or the command line (subprocess)."""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import model.cells.layer as layer_module
from model import load_weights, score
from model.evaluation import split_nll
from model.precision import cpu_has_bf16
from model.train import main
from model.train_error import TrainError

REPETITIVE = "the cat sat on the mat. " * 400


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(REPETITIVE)
    return path


def train(tmp_path, corpus, name, *extra):
    out = tmp_path / name / "m.safetensors"
    out.parent.mkdir(exist_ok=True)
    args = [
        "--corpus",
        str(corpus),
        "--out",
        str(out),
        "--hidden",
        "32",
        "--time-step",
        "16",
        "--batch-size",
        "8",
        "--eval-every",
        "1000",
        "--sample-chars",
        "10",
        *extra,
    ]
    assert main(args) == 0
    return out


def test_a_small_repetitive_corpus_trains_to_perplexity_below_1_2(tmp_path, corpus):
    out = train(tmp_path, corpus, "run", "--epochs", "8", "--lr", "0.01")
    loaded = load_weights(out)
    text = REPETITIVE[-2000:]  # the validation tail
    assert score(loaded.model, loaded.vocab.encode(text)).perplexity < 1.2
    meta = loaded.training
    assert meta["corpus"][0]["name"] == "corpus.txt" and len(meta["corpus"][0]["sha256"]) == 64
    assert meta["val_ppl"] < 1.2 and meta["steps"] > 0 and meta["tokens_seen"] == meta["steps"] * 8 * 16
    assert meta["split"]["val_fraction"] == 0.1
    assert meta["split"]["train_chars"] == int(len(REPETITIVE) * 0.9)  # the tail 10 % is never trained on
    # the final figure, read as segments in parallel, is the one-stream figure of the whole split within 1e-3
    assert meta["validation"]["segments"] > 1 and meta["validation"]["burn_in_chars"] > 0
    val_ids = loaded.vocab.encode(REPETITIVE[meta["split"]["train_chars"] :])
    assert abs(meta["val_nll"] - score(loaded.model, val_ids).nll) < 1e-3
    assert (out.parent / "m.metrics.jsonl").exists() and (out.parent / "m.ckpt").exists()


@pytest.mark.parametrize("sampling", ["sequential", "random"])
def test_stopping_and_resuming_gives_the_same_weights_as_training_straight(tmp_path, corpus, sampling):
    common = ["--epochs", "3", "--dropout", "0.2", "--layers", "2", "--cell", "gru", "--sampling", sampling]
    straight = train(tmp_path, corpus, "straight", *common, "--max-steps", "40")
    partial = train(tmp_path, corpus, "partial", *common, "--max-steps", "17")
    assert main(["--resume", str(partial.with_suffix(".ckpt")), "--max-steps", "40"]) == 0
    a = torch.load(straight.with_suffix(".ckpt"), weights_only=True)
    b = torch.load(partial.with_suffix(".ckpt"), weights_only=True)
    assert a["step"] == b["step"] == 40
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name


def test_two_process_ddp_takes_the_same_first_step_as_one_process(tmp_path, corpus):
    common = [
        "--corpus",
        str(corpus),
        "--hidden",
        "16",
        "--time-step",
        "8",
        "--batch-size",
        "8",
        "--max-steps",
        "1",
        "--optimizer",
        "sgd",
        "--lr",
        "0.5",
        "--lr-schedule",
        "constant",
        "--sample-chars",
        "0",
    ]
    single = tmp_path / "single.safetensors"
    assert main([*common, "--out", str(single)]) == 0
    double = tmp_path / "ddp.safetensors"
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    proc = subprocess.run(
        [
            torchrun,
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "model.train",
            *common,
            "--out",
            str(double),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = load_weights(single), load_weights(double)
    assert b.training["processes"] == 2
    # the final evaluation's segments split between the two processes: the same figure as one process reads
    assert b.training["validation"]["processes"] == 2 and b.training["validation"]["segments"] > 1
    assert b.training["val_nll"] == pytest.approx(a.training["val_nll"], abs=2e-5)
    for (name, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5, msg=name)


def test_when_an_earlier_evaluation_was_best_its_weights_are_kept_with_their_whole_split_figure(tmp_path, corpus):
    # plain SGD at a learning rate far too high: the validation loss is lowest at the first evaluation (step 5)
    diverging = ["--optimizer", "sgd", "--lr", "20", "--lr-schedule", "constant", "--clip", "1000"]
    out = train(tmp_path, corpus, "run", "--max-steps", "40", "--eval-every", "5", "--sample-chars", "0", *diverging)
    records = [json.loads(line) for line in out.with_suffix(".metrics.jsonl").read_text().splitlines()]
    best = min(records, key=lambda r: r["val_nll"])
    assert records[-1]["val_whole_split"] and best["step"] < 40  # the premise: the final weights are not the best
    loaded = load_weights(out)
    meta = loaded.training
    assert meta["steps"] == best["step"]
    assert meta["validation"]["segments"] > 1  # scored again as the final figure is, not with the periodic sample
    val_ids = loaded.vocab.encode(REPETITIVE[meta["split"]["train_chars"] :])
    assert meta["val_nll"] == pytest.approx(split_nll(loaded.model, torch.as_tensor(val_ids)).nll, abs=1e-5)


def trainer_command(corpus, out, options: str) -> list[str]:
    """The argv of ``python -m model.train --corpus CORPUS --out OUT`` and the space-separated ``options``."""
    return [sys.executable, "-m", "model.train", "--corpus", str(corpus), "--out", str(out), *options.split()]


def test_sigint_saves_a_loadable_checkpoint_and_exits(tmp_path, corpus):
    out = tmp_path / "m.safetensors"
    proc = subprocess.Popen(
        trainer_command(
            corpus, out, "--hidden 64 --time-step 16 --batch-size 4 --epochs 1000 --eval-every 5 --sample-chars 5"
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not out.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGINT, stderr
    assert "Traceback" not in stderr
    assert "--resume" in stdout
    ckpt = torch.load(out.with_suffix(".ckpt"), weights_only=True)
    assert ckpt["step"] >= 5
    assert load_weights(out).training["command"].startswith("python -m model.train --corpus ")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def write(path, data: bytes):
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize(
    "make_args, expected",
    [
        (lambda d: ["--corpus", str(d / "missing.txt")], "file not found"),
        (lambda d: ["--corpus", write(d / "empty.txt", b"")], "file is empty"),
        (lambda d: ["--corpus", str(d)], "is a directory"),
        (lambda d: ["--corpus", write(d / "latin1.txt", "café".encode("latin-1") * 100)], "not UTF-8"),
        (lambda d: ["--corpus", write(d / "short.txt", b"tiny corpus")], "corpus too short"),
        (lambda d: ["--corpus", write(d / "ok.txt", REPETITIVE.encode()), "--hidden", "0"], "--hidden"),
        (lambda d: ["--corpus", write(d / "ok.txt", REPETITIVE.encode()), "--lr", "nan"], "--lr"),
        (lambda d: ["--corpus", write(d / "ok.txt", REPETITIVE.encode()), "--batch-size", "many"], "--batch-size"),
        (lambda d: ["--corpus", write(d / "ok.txt", REPETITIVE.encode()), "--dropout", "1.5"], "--dropout"),
        (lambda d: ["--corpus", write(d / "ok.txt", REPETITIVE.encode()), "--weight-drop", "-0.2"], "--weight-drop"),
        (
            lambda d: [
                "--corpus",
                write(d / "ok.txt", REPETITIVE.encode()),
                "--out",
                str(d / "ok.txt" / "sub" / "m.safetensors"),
            ],
            "does not exist",
        ),
        (
            lambda d: [
                "--corpus",
                write(d / "ok.txt", REPETITIVE.encode()),
                "--out",
                str(d / "missing" / "m.safetensors"),
            ],
            "the folder",
        ),
        (lambda d: ["--resume", write(d / "bad.ckpt", b"not a checkpoint")], "not a usable checkpoint"),
        (lambda d: ["--resume", "weights/rnn.safetensors"], "a weight file: resume from the checkpoint beside it"),
        (lambda d: ["--corpus", write(d / "ok.txt", REPETITIVE.encode()), "--out", str(d)], "is a folder"),
        (lambda d: ["--corpus", "/dev/zero"], "not a regular file"),
        (lambda d: ["--corpus", write(d / "ok.txt", REPETITIVE.encode()), "--new-corpus"], "--new-corpus needs"),
        (lambda d: [], "--corpus is required"),
    ],
    ids=[
        "missing",
        "empty",
        "directory",
        "not-utf8",
        "too-short",
        "zero-hidden",
        "nan-lr",
        "text-batch",
        "dropout-range",
        "weight-drop-range",
        "out-under-a-file",
        "out-in-a-missing-folder",
        "bad-resume",
        "resume-a-weight-file",
        "out-a-folder",
        "corpus-a-device",
        "new-corpus-without-resume",
        "no-corpus",
    ],
)
def test_bad_input_exits_non_zero_with_one_line(tmp_path, capsys, make_args, expected):
    args = make_args(tmp_path) + ["--time-step", "16", "--batch-size", "8"] * (
        "--batch-size" not in make_args(tmp_path)
    )
    try:
        code = main(args)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    assert code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err


def test_the_command_line_reports_bad_input_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "model.train", "--corpus", str(tmp_path / "nope.txt")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"rnnlm-train: error: corpus {tmp_path / 'nope.txt'}: file not found"


def test_kill_9_at_any_moment_never_leaves_a_corrupt_weight_file_or_checkpoint(tmp_path, corpus):
    out = tmp_path / "m.safetensors"
    args = trainer_command(
        corpus, out, "--hidden 48 --time-step 16 --batch-size 4 --epochs 1000 --eval-every 2 --sample-chars 0"
    )
    for attempt, delay in enumerate([0.3, 0.7, 0.45]):
        extra = ["--resume", str(out.with_suffix(".ckpt"))] if attempt else []
        proc = subprocess.Popen(args + extra, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not out.with_suffix(".ckpt").exists():  # writing files now, every second step
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(delay)
        proc.kill()  # SIGKILL: no handler runs
        proc.wait(timeout=30)
        load_weights(out)
        assert torch.load(out.with_suffix(".ckpt"), weights_only=True)["step"] >= 2
    (tmp_path / ".m.safetensors.k9xyz.tmp").write_bytes(b"half a file")  # as a kill during a write leaves
    assert main(["--resume", str(out.with_suffix(".ckpt")), "--max-steps", "1"]) == 0  # already past: just saves
    assert not list(tmp_path.glob(".*.tmp")), "a new run clears what killed runs left half-written"


def test_help_shows_every_option_s_default(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    shown = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    from model.train_cli import build_parser

    for action in build_parser()._actions:
        if action.option_strings and action.default is not argparse.SUPPRESS and action.dest != "help":
            assert f"(default: {action.default})" in shown, action.option_strings


def test_a_run_shorter_than_eval_every_still_evaluates_every_epoch_and_says_when_no_plot_is_written(
    tmp_path, corpus, capsys
):
    out = train(tmp_path, corpus, "epochs", "--epochs", "3")  # --eval-every 1000 (the helper's), a few steps an epoch
    records = [json.loads(line) for line in out.with_suffix(".metrics.jsonl").read_text().splitlines()]
    steps_per_epoch = records[-1]["step"] // 3
    assert [r["step"] for r in records] == [steps_per_epoch, 2 * steps_per_epoch, 3 * steps_per_epoch]
    printed = capsys.readouterr().out
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert printed.count("is written (pip install -e '.[plot]')") == 1
        assert not out.with_suffix(".png").exists()
    else:
        assert out.with_suffix(".png").exists()


def test_options_given_on_the_command_line_are_known_from_one_parse_and_resume_takes_only_resumable_ones():
    from model.train_cli import parse_args, resumed_args

    fresh = parse_args(["--corpus", "a.txt", "--epochs", "3", "--lr", "0.01"])
    assert fresh.given == ["corpus", "epochs", "lr"] and fresh.epochs == 3 and fresh.hidden == 512
    args = parse_args(["--resume", "run.ckpt", "--epochs", "9", "--lr", "0.01"])
    saved = {"corpus": ["a.txt"], "epochs": 3, "lr": 0.01, "cell": "gru", "hidden": 64, "resume": None}
    resumed = resumed_args(args, saved)
    assert resumed.epochs == 9  # resumable and given: this command line's
    assert resumed.lr == 0.01  # not resumable: the checkpoint's (given with the same value: fine)
    with pytest.raises(TrainError, match="--lr 0.5"):  # with another: refused, the run continues exactly
        resumed_args(parse_args(["--resume", "run.ckpt", "--lr", "0.5"]), saved)
    assert (resumed.cell, resumed.hidden, resumed.corpus) == ("gru", 64, ["a.txt"])
    assert resumed.resume == "run.ckpt"
    assert resumed.eval_chars == 200_000  # not in this (older) checkpoint: this command line's default


def test_resuming_with_other_options_is_refused_before_any_training_and_another_corpus_needs_saying_so(
    tmp_path, corpus, capsys
):
    """A resumed run continues exactly as it started: an option it cannot change, given with another value, is
    refused in one line (the same value is fine); another corpus is refused unless --new-corpus says so."""
    out = train(tmp_path, corpus, "run", "--max-steps", "2")
    capsys.readouterr()
    ckpt = str(out.with_suffix(".ckpt"))
    before = out.read_bytes()
    other = tmp_path / "other.txt"
    other.write_text("a different corpus, the dog sat on the log. " * 200)
    for extra, words in [
        (["--hidden", "64"], "--hidden 64 (the run's: 32)"),
        (["--lr", "0.5", "--cell", "gru"], "--cell gru (the run's: rnn); --lr 0.5 (the run's: 0.002)"),
        (["--corpus", str(other)], "add --new-corpus"),
    ]:
        assert main(["--resume", ckpt, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
    assert out.read_bytes() == before  # nothing trained
    assert main(["--resume", ckpt, "--hidden", "32", "--corpus", str(corpus), "--max-steps", "3"]) == 0
    assert main(["--resume", ckpt, "--corpus", str(other), "--new-corpus", "--max-steps", "4"]) == 0
    assert load_weights(out).training["corpus"][0]["name"].endswith("other.txt")


def test_bf16_on_a_cpu_without_bf16_instructions_is_refused_in_one_line_before_any_work(
    tmp_path, corpus, capsys, monkeypatch
):
    monkeypatch.setattr("model.precision.cpu_has_bf16", lambda: False)
    out = tmp_path / "m.safetensors"
    assert main(["--corpus", str(corpus), "--out", str(out), "--device", "cpu", "--precision", "bf16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--precision bf16: this CPU has no bf16 instructions" in err[0], err
    assert not list(tmp_path.glob("m.*"))


def test_bf16_trains_its_layers_in_bf16_and_writes_float32_weights_and_figures(tmp_path, corpus, monkeypatch):
    monkeypatch.setattr("model.precision.cpu_has_bf16", lambda: True)  # whatever this machine's CPU has
    seen = []
    choose = layer_module.choose_path
    monkeypatch.setattr(layer_module, "choose_path", lambda facts: seen.append(facts) or choose(facts))
    out = train(tmp_path, corpus, "bf16", "--max-steps", "30", "--lr", "0.01", "--device", "cpu", "--precision", "bf16")
    recorded = [f for f in seen if f.recording]  # the training steps' forward passes
    assert recorded and all(f.low_precision for f in recorded)
    assert not any(f.low_precision for f in seen if not f.recording)  # evaluation and samples: float32
    loaded = load_weights(out)
    assert all(t.dtype == torch.float32 for t in loaded.model.state_dict().values())
    meta = loaded.training
    assert meta["hyperparameters"]["precision"] == "bf16"
    val_ids = loaded.vocab.encode(REPETITIVE[meta["split"]["train_chars"] :])
    assert abs(meta["val_nll"] - score(loaded.model, val_ids).nll) < 1e-3  # computed in float32, as scored here


@pytest.mark.parametrize(("flags", "expected"), [("fpu avx2 avx512f avx512_bf16 sse", True), ("fpu avx2", False)])
def test_the_cpu_s_bf16_instructions_are_read_from_its_flags(tmp_path, flags, expected):
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    assert cpu_has_bf16(info) is expected
    assert cpu_has_bf16(tmp_path / "missing") is False
