import math

import pytest
import torch
import torch.nn.functional as F

from model import RNNLM, LMConfig, Vocab, generate, score, warm
from model.cells import CELLS
from tests.model.torch_reference import TorchReference


def make_model(cell="rnn", layers=1, vocab=12, hidden=24, seed=0) -> RNNLM:
    torch.manual_seed(seed)
    model = RNNLM(LMConfig(cell=cell, vocab_size=vocab, hidden_size=hidden, num_layers=layers)).eval()
    with torch.no_grad():  # sharper, livelier weights, so greedy paths are not one repeated character
        model.b_y.uniform_(-1, 1)  # zeros at initialisation: give the output bias something to get wrong
        for p in model.parameters():
            p.mul_(4)
    return model


def reference_score(model: RNNLM, ids: torch.Tensor) -> float:
    """exp(F.cross_entropy) of one forward pass over the whole text: predict ids[1:] from ids[:-1]."""
    with torch.no_grad():
        logits, _ = model(ids[None, :-1])
    return F.cross_entropy(logits[0], ids[1:]).item()


@pytest.mark.parametrize("cell", CELLS)
def test_perplexity_equals_exp_cross_entropy(cell):
    model = make_model(cell, layers=2)
    ids = torch.randint(1, 12, (300,))
    result = score(model, ids)
    nll = reference_score(model, ids)
    assert result.num_scored == 299
    assert result.nll == pytest.approx(nll, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(nll), rel=1e-5)
    assert result.bits_per_char == pytest.approx(nll / math.log(2), rel=1e-5)


def test_an_all_zero_model_has_perplexity_equal_to_the_vocabulary_size():
    model = make_model(vocab=17)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    assert score(model, torch.randint(0, 17, (50,))).perplexity == pytest.approx(17, rel=1e-6)


@pytest.mark.parametrize("cell", CELLS)
def test_chunked_scoring_of_a_long_text_equals_one_shot_scoring(cell):
    model = make_model(cell)
    ids = torch.randint(1, 12, (5000,))
    one_shot = score(model, ids, chunk_size=10_000, return_logprobs=True)
    chunked = score(model, ids, chunk_size=97, return_logprobs=True)
    assert chunked.nll == pytest.approx(one_shot.nll, rel=1e-6)
    torch.testing.assert_close(
        torch.tensor(chunked.token_logprobs), torch.tensor(one_shot.token_logprobs), atol=1e-5, rtol=1e-5
    )


def test_token_logprobs_are_log_softmax_of_the_targets():
    model = make_model()
    ids = torch.randint(1, 12, (40,))
    result = score(model, ids, return_logprobs=True)
    with torch.no_grad():
        logits, _ = model(ids[None, :-1])
    expected = torch.log_softmax(logits[0], -1).gather(1, ids[1:, None]).squeeze(1)
    torch.testing.assert_close(torch.tensor(result.token_logprobs), expected, atol=1e-6, rtol=1e-6)
    assert len(result.token_logprobs) == result.num_scored == 39


def test_scoring_after_a_context_scores_every_character_of_the_text():
    model = make_model()
    context, text = torch.randint(1, 12, (30,)), torch.randint(1, 12, (20,))
    after_context = score(model, text, context)
    whole = score(model, torch.cat([context, text]), return_logprobs=True)
    assert after_context.num_scored == 20
    expected = -sum(whole.token_logprobs[-20:]) / 20
    assert after_context.nll == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("cell", CELLS)
def test_scoring_in_pieces_from_each_piece_s_returned_state_equals_the_cross_entropy_of_the_whole(cell):
    model = make_model(cell, layers=2)
    with torch.no_grad():  # make_model's ×4 makes the tanh RNN chaotic: rounding would decide the result
        for p in model.parameters():
            p.div_(4)
    ids = torch.randint(1, 12, (400,))
    state, total, scored = None, 0.0, 0
    for start, end in [(0, 50), (50, 51), (51, 52), (52, 300), (300, 400)]:
        piece = score(model, ids[start:end], start=state, return_state=True, chunk_size=64)
        assert piece.num_scored == end - start - (start == 0)  # a state predicts the piece's first id
        total += piece.nll * piece.num_scored
        scored += piece.num_scored
        state = piece.state
    assert scored == 399
    assert total / scored == pytest.approx(reference_score(model, ids), abs=1e-5)
    with torch.no_grad():
        _, final = model(ids[None])  # the state returned has read every id
    for got, want in zip(state, final):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # a context after a state is read from it: the same as a context holding the state's text
    after = score(model, ids[360:], ids[300:360], start=score(model, ids[:300], return_state=True).state)
    assert after.nll == pytest.approx(score(model, ids[360:], ids[:360]).nll, abs=1e-5)


def test_scoring_text_too_short_is_an_error():
    model = make_model()
    with pytest.raises(ValueError):
        score(model, torch.tensor([3]))
    assert score(model, torch.tensor([3]), torch.tensor([4])).num_scored == 1


def hand_written_greedy(model: RNNLM, prefix: list[int], n: int) -> list[int]:
    """Step torch.nn's module with the model's weights one token at a time over the prefix, then argmax
    (excluding id 0) and feed back."""
    reference = TorchReference(model)
    state = model.init_state(1)
    with torch.no_grad():
        for token in prefix:
            logits, state = reference(torch.tensor([[token]]), state)
        out = []
        for _ in range(n):
            scores = logits[0, -1].clone()
            scores[0] = -float("inf")
            out.append(int(scores.argmax()))
            logits, state = reference(torch.tensor([[out[-1]]]), state)
    return out


@pytest.mark.parametrize("cell", CELLS)
def test_greedy_generation_equals_a_hand_written_step_loop(cell):
    model = make_model(cell, layers=2)
    prefix = [3, 5, 7, 1, 2]
    state, logits = warm(model, torch.tensor(prefix))
    generated, _ = generate(model, state, logits, 40)
    assert generated == hand_written_greedy(model, prefix, 40)
    assert len(set(generated)) > 1


def test_generation_never_emits_unk():
    model = make_model()
    with torch.no_grad():
        model.b_y[0] = 1000.0  # <unk> is by far the most likely
    state, logits = warm(model, torch.tensor([1, 2]))
    generated, _ = generate(model, state, logits, 30)
    assert 0 not in generated


def test_generating_zero_tokens_returns_nothing_and_the_warmed_state():
    model = make_model("lstm")
    state, logits = warm(model, torch.tensor([1, 2, 3]))
    generated, after = generate(model, state, logits, 0)
    assert generated == []
    assert all(torch.equal(a, b) for a, b in zip(after, state))


def test_warming_in_chunks_equals_warming_at_once():
    model = make_model("gru")
    ids = torch.randint(1, 12, (1000,))
    s1, l1 = warm(model, ids, chunk_size=33)
    s2, l2 = warm(model, ids, chunk_size=5000)
    torch.testing.assert_close(s1[0], s2[0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(l1, l2, atol=1e-5, rtol=1e-5)


def test_a_vocab_encodes_text_the_model_can_score():
    vocab = Vocab.from_corpus("to be or not to be")
    model = make_model(vocab=len(vocab))
    result = score(model, vocab.encode("to be or not"))
    assert result.num_scored == 11 and math.isfinite(result.nll)


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_step_decoder_equals_torch_nn_one_token_at_a_time(cell, layers):
    from model.decode import StepDecoder

    model = make_model(cell, layers=layers)
    torch_nn = TorchReference(model)
    state = tuple(torch.randn_like(s) for s in model.init_state(1))
    decoder = StepDecoder(model, state)
    assert decoder.fast  # on the CPU every cell steps in numpy
    reference = state
    for token in [3, 1, 4, 1, 5, 9, 2, 6]:
        logits = decoder.step(token).clone()
        with torch.no_grad():
            expected, reference = torch_nn(torch.tensor([[token]]), reference)
        torch.testing.assert_close(logits, expected[0, 0], atol=1e-5, rtol=1e-5)
    for ours, theirs in zip(decoder.state, reference):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
