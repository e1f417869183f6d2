"""The decoding step replayed from CUDA graphs equals the eager step: for every captured size, with padded rows
holding garbage, and past the largest captured size. Needs a CUDA device; on a CPU-only machine (CI) these are
reported as skipped."""

import numpy as np
import pytest
import torch

from model import RNNLM, LMConfig
from model.batch import BatchDecoder
from model.cells import CELLS
from model.graph_step import GraphStep, capture_sizes
from tests.model.test_cuda import full_fp32_matmuls  # noqa: F401  (autouse: true float32 matmuls here too)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def make_model(cell: str, layers: int = 2) -> RNNLM:
    torch.manual_seed(0)
    return RNNLM(LMConfig(cell=cell, vocab_size=13, hidden_size=32, num_layers=layers)).cuda().eval()


def random_states(model: RNNLM, n: int) -> list:
    torch.manual_seed(1)
    return [tuple(torch.randn_like(s) * 0.5 for s in model.init_state(1)) for _ in range(n)]


def test_capture_sizes_is_a_ladder_up_to_the_first_size_that_holds_the_rows():
    assert capture_sizes(1) == (1,)
    assert capture_sizes(64) == (1, 2, 4, 8, 16, 32, 64)
    assert capture_sizes(100) == (1, 2, 4, 8, 16, 32, 64, 128)


@pytest.mark.parametrize("cell", CELLS)
def test_each_captured_size_replays_what_the_eager_step_computes(cell):
    model = make_model(cell)
    graphs = GraphStep(model, (1, 2, 4, 8))
    for n in (1, 2, 3, 4, 5, 8):
        states = random_states(model, n)
        tokens = torch.randint(1, 13, (n,), device="cuda")
        for s, mine in zip(zip(*states), graphs.state):
            mine[:, :n].copy_(torch.cat(s, dim=1))
        graphs.tokens[:n].copy_(tokens)
        graphs.run(n)
        with torch.inference_mode():
            logits, new = model(tokens[:, None], tuple(torch.cat(s, dim=1) for s in zip(*states)))
        torch.testing.assert_close(graphs.logits[:n], logits[:, 0], atol=1e-5, rtol=1e-5)
        for mine, theirs in zip(graphs.state, new):
            torch.testing.assert_close(mine[:, :n], theirs, atol=1e-5, rtol=1e-5)
        expected = logits[:, 0, 1:].argmax(-1) + 1
        assert torch.equal(graphs.greedy[:n], expected)
        assert torch.equal(graphs.tokens[:n], expected)  # the choice is fed back as the next input


@pytest.mark.parametrize("cell", CELLS)
def test_graph_batches_equal_eager_batches_padded_rows_never_leak_and_growth_past_the_ladder_works(cell):
    model = make_model(cell)
    graphed = BatchDecoder(model, graph_rows=4)  # sizes 1, 2, 4
    eager = BatchDecoder(model, graph_rows=0)
    assert graphed.graph is not None and graphed.graph.sizes == (1, 2, 4)
    for s in graphed.graph.state:  # garbage in every slot: padded rows compute NaN, and must not leak
        s.fill_(float("nan"))
    rng = np.random.default_rng(0)

    def step_both(k: int) -> None:
        for _ in range(k):
            tokens = rng.integers(1, 13, len(eager))
            a = graphed.step(tokens).clone()
            b = eager.step(tokens).clone()
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
            assert np.array_equal(graphed.choices, eager.choices)

    states = random_states(model, 7)
    for d in (graphed, eager):
        d.add_many(states[:3], [None] * 3)  # 3 rows: the size-4 graph, one padded row
    step_both(4)
    assert graphed.steps_in_graphs == 4
    for d in (graphed, eager):
        d.add_many(states[3:], [None] * 4)  # 7 rows: past the largest captured size, eager
    step_both(3)
    assert graphed.steps_in_graphs == 4
    for d in (graphed, eager):
        d.keep([0, 2, 5])  # back to 3 rows: the graphs again
    step_both(3)
    assert graphed.steps_in_graphs == 7
    for i in range(3):
        for a, b in zip(graphed.row_state(i), eager.row_state(i)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
def test_fed_back_choices_follow_rows_that_join_with_logits_and_leave(cell):
    """Greedy rows driven only by the choices the graph feeds back (nothing sent but the forced rows) read the
    same tokens as an eager batch told every token, through joins (with logits) and leaves."""
    model = make_model(cell)
    graphed, eager = BatchDecoder(model, graph_rows=8), BatchDecoder(model, graph_rows=0)
    states = random_states(model, 6)
    with torch.inference_mode():
        logits = [model.next_logits(s)[0] for s in states]

    def greedy_steps(k: int) -> None:
        for _ in range(k):
            tokens = eager.choices.copy()
            assert np.array_equal(graphed.choices, tokens)
            torch.testing.assert_close(
                graphed.step(tokens, np.zeros(0, dtype=np.int64)).clone(),
                eager.step(tokens).clone(),
                atol=1e-5,
                rtol=1e-5,
            )

    for d in (graphed, eager):
        d.add_many(states[:3], logits[:3])
    greedy_steps(3)
    for d in (graphed, eager):
        d.keep([1, 2])
        d.add_many(states[3:], logits[3:])
    greedy_steps(3)
    for d in (graphed, eager):
        d.keep([0, 3, 4])
    greedy_steps(3)


@pytest.mark.parametrize("cell", CELLS)
def test_a_burst_reads_what_single_greedy_steps_read(cell):
    model = make_model(cell)
    graphed, eager = BatchDecoder(model, graph_rows=8), BatchDecoder(model, graph_rows=0)
    states = random_states(model, 5)
    with torch.inference_mode():
        logits = [model.next_logits(s)[0] for s in states]
    for d in (graphed, eager):
        d.add_many(states, logits)
    k = graphed.burst_steps
    assert k > 1
    read = graphed.burst()
    expected = []
    for _ in range(k):
        tokens = eager.choices.copy()
        expected.append(tokens)
        eager.step(tokens)
    assert np.array_equal(read, np.stack(expected))
    assert np.array_equal(graphed.choices, eager.choices)
    torch.testing.assert_close(graphed.logits, eager.logits, atol=1e-5, rtol=1e-5)
