"""Knowledge distillation: the teacher's table against a plain reading of the text, the loss against its
formula, and the trainer with a teacher, run as its users run it."""

import hashlib

import pytest
import torch
import torch.nn.functional as F

from model import RNNLM, LMConfig, load_weights
from model.distill import distillation_loss, teacher_log_probs
from model.train import main, parse_args
from model.train_data import load_training_data
from tests.model.test_train import REPETITIVE, train


def small_model(cell="gru", vocab=9, hidden=12, seed=0) -> RNNLM:
    torch.manual_seed(seed)
    return RNNLM(LMConfig(cell=cell, vocab_size=vocab, hidden_size=hidden, num_layers=2))


@pytest.mark.parametrize("n, rows, warmup, chunk", [(301, 4, 16, 50), (300, 7, 0, 64), (40, 8, 100, 7), (2, 4, 3, 5)])
def test_teacher_table_equals_each_part_read_in_one_pass_after_its_warmup(n, rows, warmup, chunk):
    """Oracle: for every part, one unchunked forward pass from a zero state over the part and the ``warmup``
    characters before it (none before the first part), log-softmaxed at each of the part's positions."""
    teacher = small_model()
    ids = torch.randint(0, 9, (n,))
    table = teacher_log_probs(teacher, ids, rows=rows, warmup=warmup, chunk=chunk)
    assert table.shape == (n, 9) and table.dtype == torch.float16
    part = -(-n // rows)
    covered = torch.zeros(n, dtype=torch.bool)
    for start in range(0, n, part):
        first = max(0, start - warmup)
        with torch.no_grad():
            logits, _ = teacher(ids[first : start + part][None])
        expected = F.log_softmax(logits[0], -1)[start - first :]
        own = slice(start, min(start + part, n - 1))  # the last character predicts nothing
        torch.testing.assert_close(table[own].float(), expected[: own.stop - own.start], atol=2e-3, rtol=1e-3)
        covered[own] = True
    assert covered[: n - 1].all()
    assert not table[n - 1].any()


def test_distillation_loss_is_the_weighted_sum_of_the_two_cross_entropies():
    torch.manual_seed(0)
    logits = torch.randn(20, 9)
    targets = torch.randint(0, 9, (20,))
    teacher_logp = F.log_softmax(torch.randn(20, 9), -1)
    log_q = logits - logits.logsumexp(-1, keepdim=True)
    hard = -log_q[torch.arange(20), targets].mean()
    soft = -(teacher_logp.exp() * log_q).sum(-1).mean()
    for alpha in (0.0, 0.3, 1.0):
        loss, text = distillation_loss(logits, targets, teacher_logp, alpha)
        torch.testing.assert_close(loss, (1 - alpha) * hard + alpha * soft)
        torch.testing.assert_close(text, hard)


@pytest.mark.parametrize("sampling", ["sequential", "random"])
def test_every_batch_carries_the_training_positions_of_its_tokens(tmp_path, sampling):
    """The teacher's row for a token is found by position: P must point at X in the training split."""
    teacher_path = train(tmp_path, _corpus(tmp_path), "teacher", "--max-steps", "2")
    args = parse_args(
        [
            "--corpus",
            str(tmp_path / "corpus.txt"),
            "--teacher",
            str(teacher_path),
            "--time-step",
            "16",
            "--batch-size",
            "8",
            "--sampling",
            sampling,
            "--hidden",
            "8",
        ]
    )
    data = load_training_data(args, None, torch.device("cpu"))
    batches = list(data.batches(args, epoch=3))
    assert len(batches) == data.steps_per_epoch
    for X, Y, P in batches:
        assert torch.equal(data.train_ids[P], X) and torch.equal(data.train_ids[P + 1], Y)


def _corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    if not path.exists():
        path.write_text(REPETITIVE)
    return path


def test_a_student_learns_from_its_teacher_and_records_it(tmp_path):
    corpus = _corpus(tmp_path)
    teacher = train(tmp_path, corpus, "teacher", "--epochs", "8", "--lr", "0.01", "--cell", "gru")
    student = train(
        tmp_path, corpus, "student", "--epochs", "8", "--lr", "0.01", "--teacher", str(teacher), "--distill", "0.7"
    )
    meta = load_weights(student).training
    assert meta["val_ppl"] < 1.2
    assert meta["teacher"]["sha256"] == hashlib.sha256(teacher.read_bytes()).hexdigest()
    assert meta["teacher"]["config"]["cell"] == "gru"
    assert meta["hyperparameters"]["distill"] == 0.7


def test_distillation_changes_the_update_and_resumes_exactly(tmp_path):
    corpus = _corpus(tmp_path)
    teacher = train(tmp_path, corpus, "teacher", "--max-steps", "5", "--cell", "lstm")
    common = ["--epochs", "3", "--teacher", str(teacher), "--distill", "0.6"]
    straight = train(tmp_path, corpus, "straight", *common, "--max-steps", "30")
    partial = train(tmp_path, corpus, "partial", *common, "--max-steps", "11")
    assert main(["--resume", str(partial.with_suffix(".ckpt")), "--max-steps", "30"]) == 0
    plain = train(tmp_path, corpus, "plain", "--epochs", "3", "--max-steps", "30")
    a, b, c = (torch.load(p.with_suffix(".ckpt"), weights_only=True)["model"] for p in (straight, partial, plain))
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert not torch.equal(a["w_y"], c["w_y"])  # the teacher's term moved the weights


def test_resuming_with_a_changed_teacher_is_refused(tmp_path, capsys):
    corpus = _corpus(tmp_path)
    teacher = train(tmp_path, corpus, "teacher", "--max-steps", "2")
    partial = train(tmp_path, corpus, "partial", "--max-steps", "3", "--epochs", "2", "--teacher", str(teacher))
    train(tmp_path, corpus, "teacher", "--max-steps", "4")  # the same path, other weights
    capsys.readouterr()
    assert main(["--resume", str(partial.with_suffix(".ckpt")), "--max-steps", "5"]) != 0
    err = capsys.readouterr().err
    assert "teacher" in err and "sha256" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "make_args, expected",
    [
        (lambda d, t: ["--teacher", str(d / "missing.safetensors")], "--teacher"),
        (lambda d, t: ["--teacher", str(d / "corpus.txt")], "not a safetensors file"),
        (lambda d, t: ["--teacher", str(t), "--corpus", str(_other_corpus(d))], "vocabulary"),
        (lambda d, t: ["--distill", "0.5"], "--distill needs --teacher"),
        (lambda d, t: ["--teacher", str(t), "--distill", "1.5"], "--distill"),
    ],
    ids=["missing", "not-weights", "other-vocab", "distill-alone", "distill-range"],
)
def test_bad_teacher_input_exits_non_zero_with_one_line(tmp_path, capsys, make_args, expected):
    corpus = _corpus(tmp_path)
    teacher = train(tmp_path, corpus, "teacher", "--max-steps", "1")
    capsys.readouterr()
    (tmp_path / "s").mkdir()  # (a missing output folder is refused first: before the corpus is read)
    args = [
        "--corpus",
        str(corpus),
        "--out",
        str(tmp_path / "s" / "m.safetensors"),
        "--time-step",
        "16",
        "--batch-size",
        "8",
        "--hidden",
        "8",
        *make_args(tmp_path, teacher),
    ]
    try:
        code = main(args)
    except SystemExit as e:
        code = e.code
    assert code != 0
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1, err


def _other_corpus(d):
    path = d / "other.txt"
    path.write_text("a different text, with OTHER letters: xyz! " * 100)
    return path


def test_a_teacher_table_over_the_memory_budget_is_a_memory_mapped_file_with_the_same_values(tmp_path, monkeypatch):
    import model.distill as distill_module

    teacher_path = train(tmp_path, _corpus(tmp_path), "teacher", "--max-steps", "2")
    argv = ["--corpus", str(tmp_path / "corpus.txt"), "--teacher", str(teacher_path), "--hidden", "8"]
    cpu = torch.device("cpu")
    in_memory = load_training_data(parse_args(argv), None, cpu).teacher_logp
    monkeypatch.setattr(distill_module, "TEACHER_TABLE_IN_MEMORY", 0)
    mapped = load_training_data(parse_args(argv), None, cpu)
    files = list(mapped.id_file.parent.glob("*.teacher-*.f16"))
    assert len(files) == 1 and files[0].stat().st_size == in_memory.numel() * 2
    assert torch.equal(mapped.teacher_logp, in_memory)
    written = files[0].stat().st_mtime_ns
    assert torch.equal(load_training_data(parse_args(argv), None, cpu).teacher_logp, in_memory)
    assert files[0].stat().st_mtime_ns == written  # found again, not written again
