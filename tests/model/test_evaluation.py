"""The final evaluation read in parallel (model/evaluation.py): the cut covers every scored position once, the
segmented figure is what torch.nn reads segment by segment, and it equals the one-stream figure within 1e-3
nats/char on the shipped weights."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from model import RNNLM, LMConfig, load_weights, score
from model.evaluation import BURN_IN, Segments, split_nll
from tests.model.torch_reference import TorchReference

ROOT = Path(__file__).resolve().parents[2]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def scored_positions(segments: Segments) -> list[int]:
    positions = list(range(1, segments.head + 1))
    for row in range(segments.rows):
        first = segments.first_target(row)
        positions += range(first, min(first + segments.length, segments.chars))
    return positions


@pytest.mark.parametrize("chars", [2, 3, 65, 66, 1000, 123_457])
@pytest.mark.parametrize("burn_in", [0, 1, 64])
@pytest.mark.parametrize("max_rows", [1, 7, 256])
def test_the_cut_scores_every_position_after_the_first_exactly_once(chars, burn_in, max_rows):
    segments = Segments.plan(chars, burn_in, max_rows)
    assert scored_positions(segments) == list(range(1, chars))
    assert segments.rows <= max_rows
    for row in range(segments.rows):  # every row has its whole burn-in inside the split
        assert segments.first_target(row) - 1 - burn_in >= 0
    for world in range(1, 6):
        shares = [segments.rows_of(rank, world) for rank in range(world)]
        assert [row for share in shares for row in share] == list(range(segments.rows))


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_the_figure_is_what_torch_nn_reads_segment_by_segment(cell):
    torch.manual_seed(0)
    model = RNNLM(LMConfig(cell=cell, vocab_size=11, hidden_size=24, num_layers=2)).eval()
    reference = TorchReference(model)
    ids = torch.randint(0, 11, (3000,))
    figure = split_nll(model, ids, burn_in=20, max_rows=16)
    segments = figure.segments
    assert segments.rows > 1 and segments.head == 20
    with torch.no_grad():  # the head: one stream from a zero state; each segment: its burn-in, then its scores
        logits, _ = reference(ids[None, : segments.head + 1])
        total = F.cross_entropy(logits[0, :-1], ids[1 : segments.head + 1], reduction="sum").double()
        for row in range(segments.rows):
            first = segments.first_target(row)
            last = min(first + segments.length, len(ids))
            logits, _ = reference(ids[None, first - 1 - 20 : last - 1])
            total += F.cross_entropy(logits[0, 20:], ids[first:last], reduction="sum").double()
    assert figure.nll == pytest.approx(float(total) / (len(ids) - 1), abs=1e-6)


def test_without_a_burn_in_longer_than_the_split_it_is_the_one_stream_figure():
    torch.manual_seed(1)
    model = RNNLM(LMConfig(cell="gru", vocab_size=9, hidden_size=16)).eval()
    ids = torch.randint(0, 9, (300,))
    figure = split_nll(model, ids, burn_in=1000)
    assert figure.segments.rows == 0
    assert figure.nll == pytest.approx(score(model, ids).nll, abs=1e-7)


def validation_ids(loaded, chars: int | None = None) -> torch.Tensor:
    text = SHAKESPEARE.read_text(encoding="utf-8")
    val = text[int(len(text) * 0.9) :]
    return torch.as_tensor(loaded.vocab.encode(val if chars is None else val[:chars]))


@pytest.mark.parametrize(("name", "chars"), [("rnn", None), ("gated", 20_000)])
def test_on_the_shipped_weights_the_figure_equals_one_stream_within_1e_3(name, chars):
    loaded = load_weights(ROOT / "weights" / f"{name}.safetensors")
    ids = validation_ids(loaded, chars)
    figure = split_nll(loaded.model, ids)
    assert figure.segments.rows > 1 and figure.segments.burn_in == BURN_IN[loaded.config.cell]
    assert abs(figure.nll - score(loaded.model, ids).nll) < 1e-3
    if chars is None:  # the whole split: the figure in the weight file, which one stream measured
        assert abs(figure.nll - loaded.training["val_nll"]) < 1e-3


def test_where_segments_and_one_stream_disagree_on_the_check_the_whole_split_is_read_as_one_stream():
    """A model whose state remembers (random, sharpened weights) read with no burn-in at all: the segments'
    figure is off on the check, so the figure is one stream's, and says so."""
    torch.manual_seed(2)
    model = RNNLM(LMConfig(cell="rnn", vocab_size=9, hidden_size=32)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4)
    ids = torch.randint(0, 9, (4000,))
    figure = split_nll(model, ids, burn_in=0)
    assert figure.one_stream and abs(figure.check_difference) > 1e-3 and figure.check_chars == 501
    assert figure.nll == pytest.approx(score(model, ids).nll, abs=1e-9)
    assert figure.describe()["method"].startswith("one stream") and figure.describe()["segments"] == 0
    forgetful = RNNLM(LMConfig(cell="rnn", vocab_size=9, hidden_size=32)).eval()  # as initialised: it forgets
    stable = split_nll(forgetful, ids, burn_in=64)
    assert not stable.one_stream and abs(stable.check_difference) <= 1e-3 and stable.describe()["segments"] > 1
    assert abs(stable.nll - score(forgetful, ids).nll) < 1e-3
