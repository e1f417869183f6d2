"""The continuous batch inside the engine, driven turn by turn: rows join and leave in bulk (in the same turn
too), a cancelled row leaves while its neighbours continue, n > 1 forks, a lone sequence stepped alone hands its
progress back to the batch, and a seeded sampled request gives the same text whatever shares the batch.
Oracles: the library's single-stream ``generate`` and the model's forward pass over the whole text."""

import pytest
import torch

from app.engine.generation import Decoding
from app.engine.jobs import GenerationJob
from app.engine.scheduler import Scheduler
from model import generate, load_weights, warm
from model.sampling import Sampler
from tests.conftest import assert_greedy

PROMPTS = ["ROMEO:\n", "First Citizen:\nBefore", "All:\nSpeak", "KING", "Good morrow, ", "What say you", "A"]


@pytest.fixture(scope="module")
def loaded():
    return load_weights("weights/rnn.safetensors")


def alone(loaded, prefix: str, n: int, sampler: Sampler = Sampler()) -> str:
    state, logits = warm(loaded.model, loaded.vocab.encode(prefix))
    ids, _ = generate(loaded.model, state, logits, n, sampler)
    return loaded.vocab.decode(ids)


class Engine:
    """A scheduler and the results of the jobs given to it, by name."""

    def __init__(self, loaded, interrupt=lambda: False, max_batch: int = 64):
        self.loaded = loaded
        self.scheduler = Scheduler(loaded.model, None, max_batch, 256, 256, 512, interrupt)
        self.done: dict[str, list[str]] = {}
        self.decodings: dict[str, list[Decoding]] = {}
        self.turn = 0
        self.done_at: dict[str, int] = {}  # the turn each job ended in

    def submit(
        self, name: str, prefix: str, n: int, samplers=(Sampler(),), stops=(), group=None, min_tokens: int = 0
    ) -> GenerationJob:
        ids = self.loaded.vocab.encode(prefix)
        decodings = [
            Decoding(prefix, self.loaded.vocab, n, s, list(stops), None, min_tokens=min_tokens, prefix_ids=ids)
            for s in samplers
        ]
        self.decodings[name] = decodings

        def on_done(result, error, name=name):
            assert error is None and name not in self.done
            self.done[name] = [d.completion for d in decodings]
            self.done_at[name] = self.turn

        job = GenerationJob(on_done=on_done, text=prefix, ids=ids, decodings=decodings, group=group)
        self.scheduler.submit(job)
        return job

    def run(self, turns: int | None = None) -> None:
        """``turns`` turns, or until there is nothing left to do (which must come: a row that never leaves fails)."""
        for _ in range(turns or 100_000):
            if not self.scheduler.busy:
                return
            self.turn += 1
            self.scheduler.run_once()
        assert turns is not None, "the scheduler is still busy after 100,000 turns"


def test_rows_joining_and_leaving_every_turn_each_get_their_greedy_text(loaded):
    engine, lengths, changed_turns = Engine(loaded), {}, 0
    for t in range(40):  # a new job every turn, of lengths that make jobs end while others join
        name, n = f"job{t}", 1 + (7 * t) % 23
        lengths[name] = (PROMPTS[t % len(PROMPTS)], n)
        before_rows, before_done = engine.scheduler.batch_rows, len(engine.done)
        engine.submit(name, *lengths[name])
        engine.run(1)
        changed_turns += len(engine.done) > before_done and engine.scheduler.batch_rows >= before_rows
    engine.run()
    assert changed_turns > 5  # turns in which rows left and others joined
    for name, (prefix, n) in lengths.items():
        (completion,) = engine.done[name]
        assert len(completion) == n
        assert_greedy(loaded, prefix, completion)


def test_a_seeded_sampled_request_gives_the_same_text_whatever_shares_the_batch(loaded):
    sampler = Sampler(temperature=1.0, top_k=20, top_p=0.95, seed=5)
    expected = alone(loaded, "JULIET:\n", 60, sampler)
    engine = Engine(loaded)
    for t in range(30):
        if t == 3:
            engine.submit("seeded", "JULIET:\n", 60, [sampler])
        if t % 2 == 0:  # neighbours join and leave around it: greedy, and sampled with other seeds
            engine.submit(f"g{t}", PROMPTS[t % len(PROMPTS)], 5 + t % 11)
            engine.submit(f"s{t}", PROMPTS[(t + 3) % len(PROMPTS)], 9, [Sampler(temperature=0.9, seed=t)])
        engine.run(1)
    engine.run()
    assert engine.done["seeded"] == [expected]
    alone_engine = Engine(loaded)  # and through the engine on its own
    alone_engine.submit("seeded", "JULIET:\n", 60, [sampler])
    alone_engine.run()
    assert alone_engine.done["seeded"] == [expected]


def test_a_cancelled_job_leaves_while_its_neighbours_continue(loaded):
    engine = Engine(loaded)
    engine.submit("a", "ROMEO:\n", 40)
    doomed = engine.submit("b", "KING", 200)
    engine.submit("c", "All:\nSpeak", 50)
    engine.run(12)
    rows = engine.scheduler.batch_rows
    assert rows == 3
    engine.scheduler.cancel(doomed)
    engine.run(1)
    assert engine.scheduler.batch_rows == 2 and "b" in engine.done
    engine.run()
    assert_greedy(loaded, "ROMEO:\n", engine.done["a"][0])
    assert_greedy(loaded, "All:\nSpeak", engine.done["c"][0])
    assert len(engine.done["a"][0]) == 40 and len(engine.done["c"][0]) == 50


def test_n_decodings_fork_from_one_prompt_and_each_is_what_it_would_be_alone(loaded):
    samplers = [Sampler(), Sampler(temperature=0.8, seed=1), Sampler(temperature=1.2, top_k=5, seed=2)]
    engine = Engine(loaded)
    engine.submit("other", "What say you", 30)
    engine.run(2)
    engine.submit("forked", "First Citizen:\n", 40, samplers)
    engine.run()
    greedy, *sampled = engine.done["forked"]
    assert_greedy(loaded, "First Citizen:\n", greedy)
    assert sampled == [alone(loaded, "First Citizen:\n", 40, s) for s in samplers[1:]]


def test_a_lone_sequence_hands_its_progress_back_to_the_batch_when_work_arrives(loaded):
    calls = []
    engine = None

    def interrupt() -> bool:  # the engine's check between a lone sequence's tokens: work arrives at the 30th
        calls.append(1)
        if len(calls) == 30:
            engine.submit("late", "KING", 25)
            return True
        return False

    engine = Engine(loaded, interrupt)
    engine.submit("lone", "ROMEO:\n", 120)
    engine.run()
    assert len(calls) >= 30
    assert len(engine.done["lone"][0]) == 120
    assert_greedy(loaded, "ROMEO:\n", engine.done["lone"][0])
    assert_greedy(loaded, "KING", engine.done["late"][0])


LONG_PROMPT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n" * 3


VICTIMS = {  # a row of each kind, as the big request's latest to join (the row put aside): prompt, samplers, stops
    "reading": (LONG_PROMPT, [Sampler()], []),  # put aside while it reads its prompt
    "plain": ("What say you", [Sampler()], []),
    "sampled": ("JULIET:\n", [Sampler(temperature=0.9, top_k=10, seed=11)], []),
    "stopped": ("KING", [Sampler()], ["@@"]),  # a stop sequence that never comes: stepped per row
}


@pytest.mark.parametrize("victim", list(VICTIMS))
def test_one_requests_rows_never_hold_the_batch_and_rows_put_aside_resume_as_they_were(loaded, victim):
    """A request of six prompts fills a batch of four; each of four newcomers joins at the next turn, a row of
    the big request put aside for it, and every row ends with the text it would have had alone."""
    prompt, samplers, stops = VICTIMS[victim]
    big = [("ROMEO:\n", [Sampler()], []), ("All:\nSpeak", [Sampler()], []), ("A", [Sampler()], [])]
    big += [(prompt, samplers, stops), ("Good morrow, ", [Sampler()], []), ("First", [Sampler()], [])]
    engine = Engine(loaded, max_batch=4)
    for k, (text, s, stop) in enumerate(big):
        engine.submit(f"big{k}", text, 90, s, stop, group="big")
    engine.run(10)
    assert engine.scheduler.batch_rows == 4 and engine.scheduler.queued == 2
    newcomers = ["KING", "A", "ROMEO:\n", "What say"]
    for k, text in enumerate(newcomers):
        submitted = engine.turn
        engine.submit(f"new{k}", text, 8)
        engine.run(1)
        assert engine.scheduler.batch_rows == 4  # in the batch now, a row of the big request aside
        engine.run(len(text) + 8 + 2)  # reading its prompt a character a step, then its 8 tokens
        assert engine.done_at[f"new{k}"] - submitted <= len(text) + 8 + 1
    assert engine.scheduler.rows_put_aside >= 4
    assert not any(f"big{k}" in engine.done for k in range(len(big)))  # the big request is still running
    engine.run()
    for k, text in enumerate(newcomers):
        assert_greedy(loaded, text, engine.done[f"new{k}"][0])
    for k, (text, s, _) in enumerate(big):
        (completion,) = engine.done[f"big{k}"]
        assert len(completion) == 90
        if s[0].greedy:
            assert_greedy(loaded, text, completion)
        else:
            assert completion == alone(loaded, text, 90, s[0])


def test_requests_holding_one_row_each_wait_their_turn_instead_of_taking_each_others(loaded):
    engine = Engine(loaded, max_batch=2)
    engine.submit("a", "ROMEO:\n", 30)
    engine.submit("b", "KING", 30)
    engine.run(3)
    engine.submit("c", "All:\nSpeak", 10)
    engine.run(10)
    assert engine.scheduler.rows_put_aside == 0 and "c" not in engine.done
    engine.run()
    assert engine.done_at["c"] > max(engine.done_at["a"], engine.done_at["b"])
    assert_greedy(loaded, "All:\nSpeak", engine.done["c"][0])


def test_a_job_whose_rows_are_aside_ends_when_cancelled_and_never_rejoins(loaded):
    engine = Engine(loaded, max_batch=2)
    engine.submit("big1", "ROMEO:\n", 100, group="big")
    doomed = engine.submit("big2", "KING", 100, group="big")
    engine.run(5)
    engine.submit("new", "All:\nSpeak", 20)
    engine.run(1)
    assert engine.scheduler.rows_put_aside == 1 and doomed.parked == 1  # the latest of the big request to join
    engine.scheduler.cancel(doomed)
    assert "big2" in engine.done and doomed.parked == 0
    engine.run()
    assert engine.scheduler.rows_put_aside == 1
    assert_greedy(loaded, "ROMEO:\n", engine.done["big1"][0])
    assert_greedy(loaded, "All:\nSpeak", engine.done["new"][0])
    assert len(engine.done["big1"][0]) == 100


def test_a_job_cancelled_while_it_waits_ends_at_once_and_frees_its_place_in_the_queue(loaded):
    engine = Engine(loaded, max_batch=1)
    engine.submit("running", "ROMEO:\n", 40)
    engine.run(2)
    waiting = engine.submit("waiting", "KING", 40)
    assert engine.scheduler.queued == 1
    engine.scheduler.cancel(waiting)
    assert engine.scheduler.queued == 0 and engine.done["waiting"] == [""]
    engine.run()
    assert_greedy(loaded, "ROMEO:\n", engine.done["running"][0])


def test_rows_sampled_without_a_seed_are_drawn_together_each_by_its_own_settings(loaded, monkeypatch):
    """Unseeded sampled rows — plain, and with a stop sequence (stepped per row) — get their tokens from one draw
    for the batch, never from their own sampler; settings that leave one choice give the greedy text, and top_k = 3
    keeps every character among the model's three likeliest (its forward pass over the whole text)."""
    own_draws = []
    choose = Decoding.choose
    monkeypatch.setattr(Decoding, "choose", lambda d, logits: own_draws.append(d) or choose(d, logits))
    one_choice = {
        "top_k=1": Sampler(temperature=1.0, top_k=1),
        "top_p": Sampler(temperature=1.5, top_p=1e-6),
        "min_p=1": Sampler(temperature=2.0, min_p=1.0),
    }
    engine, prompt = Engine(loaded), "ROMEO:\n"  # one prompt: every row ends in the same step (none goes solo)
    for name, sampler in one_choice.items():
        engine.submit(name, prompt, 40, [sampler])
        engine.submit(name + " stop", prompt, 40, [sampler], stops=["@@"])
    for k in range(4):
        engine.submit(f"top3 {k}", prompt, 40, [Sampler(temperature=1.0, top_k=3)], stops=["@@"] if k % 2 else [])
        engine.submit(f"free {k}", prompt, 40, [Sampler(temperature=1.0, top_k=[0, 2**80][k % 2])])  # no limit
    engine.run()
    assert own_draws == []
    for name in one_choice:
        assert_greedy(loaded, prompt, engine.done[name][0])
        assert_greedy(loaded, prompt, engine.done[name + " stop"][0])
    for k in range(4):
        text = engine.done[f"top3 {k}"][0]
        ids = loaded.vocab.encode(prompt + text)
        with torch.inference_mode():
            logits, _ = loaded.model(ids[None, :-1])
        for i in range(len(text)):
            row = logits[0, len(prompt) - 1 + i]
            assert row[ids[len(prompt) + i]] >= row[1:].topk(3).values[-1] - 1e-4
        assert len(engine.done[f"free {k}"][0]) == 40
    assert len({engine.done[f"free {k}"][0] for k in range(4)}) > 1  # drawn, not the same text four times


def first_stop(text: str, stops: list[str], min_tokens: int) -> tuple[str, str | None]:
    """The rule written out: the text ends at the first character where a stop (starting at min_tokens or later)
    has appeared; the completion is cut where the earliest such stop begins. (completion, stop_reason)."""
    for end in range(1, len(text) + 1):
        starts = [end - len(s) for s in stops if s and end - len(s) >= min_tokens and text[end - len(s) : end] == s]
        if starts:
            return text[: min(starts)], text[min(starts) : end]
    return text, None


@pytest.mark.parametrize("max_batch", [64, 2])  # all rows together; or two, rows put aside and stepped alone
def test_stop_sequences_found_by_the_batch_s_automaton_cut_where_the_rule_says(loaded, max_batch):
    prompts = ["ROMEO:\n", "KING", "All:\nSpeak", "First Citizen:\n", "What say", "Good morrow, "]
    texts = {p: alone(loaded, p, 120) for p in prompts}
    cases = []  # (prompt, stops, min_tokens)
    for k, p in enumerate(prompts):
        t = texts[p]
        cases += [
            (p, [t[30:33]], 0),  # a stop that comes (maybe earlier than where it was taken from)
            (p, [t[50:52], t[51:53], "€x"], 0),  # overlapping stops, and one the model cannot generate
            (p, [t[10:14], t[60:61]], 12),  # counted only from the 12th character on
            (p, ["\u2603\u2603"], 0),  # never: the row runs out of tokens
            (p, [t[3:5] + t[5:8], t[5:8]], k % 3),  # a stop inside another: the longer wins where both end
        ]
    engine = Engine(loaded, max_batch=max_batch)
    for j, (p, stops, m) in enumerate(cases):
        if j == len(cases) // 2:
            engine.run(20)  # the first request holds the batch: the second takes rows from it
        engine.submit(f"c{j}", p, 120, stops=stops, min_tokens=m, group="first" if j < len(cases) // 2 else "second")
    engine.run()
    assert engine.scheduler.rows_put_aside > 0 or max_batch == 64
    stopped = 0
    for j, (p, stops, m) in enumerate(cases):
        (d,) = engine.decodings[f"c{j}"]
        completion, reason = first_stop(texts[p], stops, m)
        if reason is None:
            assert (d.completion, d.finish_reason) == (texts[p], "length"), (p, stops, m)
        else:
            stopped += 1
            assert (d.completion, d.finish_reason) == (completion, "stop"), (p, stops, m)
            assert d.result(0, 0).stop_reason == reason
    assert stopped >= len(cases) // 2


def test_rows_with_stops_are_plain_rows_of_the_arrays_unless_they_stream_or_want_logprobs(loaded):
    from app.engine.rows import Row, RowTable

    vocab = loaded.vocab
    table = RowTable()
    kinds = [
        Decoding("a", vocab, 10, Sampler(), ["xy"], None),
        Decoding("a", vocab, 10, Sampler(temperature=1.0), ["xy"], None),
        Decoding("a", vocab, 10, Sampler(), ["xy"], 2),  # logprobs
        Decoding("a", vocab, 10, Sampler(), ["xy"], None, on_piece=lambda text, infos: None),  # a stream
        Decoding("a", vocab, 10, Sampler(), ["x" * 300], None),  # stops too long to build
    ]
    table.add_many([Row(None, d) for d in kinds], [None] * len(kinds))
    assert table.plain_rows.tolist() == [0, 1] and table.stop_rows.tolist() == [0, 1]
    assert table.per_row_rows.tolist() == [2, 3, 4]


def first_at_or_after(text: str, start: int, length: int) -> str:
    """A piece of ``text`` whose first occurrence is at ``start`` or later (or, with none, a stop never met)."""
    pieces = (text[k : k + length] for k in range(start, len(text) - length) if text.find(text[k : k + length]) == k)
    return next(pieces, "\u2603" * length)


def test_a_row_with_stops_put_aside_mid_text_finds_its_stop_where_it_would_have(loaded):
    a, b = "ROMEO:\n", "KING"
    texts = {p: alone(loaded, p, 120) for p in (a, b)}
    stops = {a: [first_at_or_after(texts[a], 70, 3)], b: [first_at_or_after(texts[b], 80, 2), "\u2603"]}
    engine = Engine(loaded, max_batch=2)
    engine.submit("a", a, 120, stops=stops[a], group="big", min_tokens=5)
    engine.submit("b", b, 120, stops=stops[b], group="big")
    engine.run(30)  # both generating, no stop yet
    engine.submit("new", "All:\nSpeak", 10)
    engine.run(1)
    assert engine.scheduler.rows_put_aside == 1  # b, the latest to join, with its stop automaton mid-way
    engine.run()
    for name, p, m in (("a", a, 5), ("b", b, 0)):
        (d,) = engine.decodings[name]
        completion, reason = first_stop(texts[p], stops[p], m)
        assert (d.completion, d.finish_reason, d.result(0, 0).stop_reason) == (completion, "stop", reason)


@pytest.mark.parametrize("max_batch", [64, 2])
def test_streamed_rows_in_the_arrays_send_their_text_in_pieces_and_never_part_of_a_stop(loaded, max_batch):
    """Streams coalesced by time are plain rows: their text goes out every few steps (the first at once), all of
    it but a stop prefix that may yet complete, so the pieces join into the completion the rule gives — with
    rows put aside and stepped alone mid-stream too."""
    prompts = ["ROMEO:\n", "KING", "All:\nSpeak", "First Citizen:\n", "What say", "Good morrow, "]
    texts = {p: alone(loaded, p, 100) for p in prompts}
    engine = Engine(loaded, max_batch=max_batch)
    pieces: dict[str, list[str]] = {}
    cases = []
    for k, p in enumerate(prompts * 2):
        t = texts[p]
        stops = [] if k % 3 == 0 else [first_at_or_after(t, 20 + 7 * k, 2 + k % 3), "\u2603"]
        cases.append((p, stops))
        name = f"s{k}"
        pieces[name] = []
        ids = loaded.vocab.encode(p)
        d = Decoding(
            p,
            loaded.vocab,
            100,
            Sampler(),
            stops,
            None,
            on_piece=lambda text, infos, name=name: pieces[name].append(text),
            prefix_ids=ids,
            stream_in_batch=True,
        )
        engine.decodings[name] = [d]
        job = GenerationJob(
            on_done=lambda result, error, name=name: engine.done.setdefault(name, []), text=p, ids=ids, decodings=[d]
        )
        job.group = "first" if k < 6 else "second"
        if k == 6:
            engine.run(15)
        engine.scheduler.submit(job)
    engine.run()
    assert max_batch == 64 or engine.scheduler.rows_put_aside > 0
    for k, (p, stops) in enumerate(cases):
        (d,) = engine.decodings[f"s{k}"]
        completion, reason = first_stop(texts[p], stops, 0)
        assert d.completion == completion and "".join(pieces[f"s{k}"]) == completion, (p, stops)
        assert d.finish_reason == ("stop" if reason else "length")
        if max_batch == 64:
            assert 1 < len(pieces[f"s{k}"]) < len(completion) / 4  # coalesced, not a piece per character


def penalised_greedy(loaded, prefix: str, n: int, sampler: Sampler) -> str:
    """The rule written out, one forward pass over the whole text per token: CTRL's repetition penalty over the
    tokens the prompt or the output holds, then count · frequency + (count > 0) · presence subtracted, then the
    bias added (≤ -100 bans); the argmax, never <unk>."""
    ids = loaded.vocab.encode(prefix).tolist()
    out: list[int] = []
    for _ in range(n):
        with torch.inference_mode():
            logits, _ = loaded.model(torch.tensor([ids + out]))
        scores = logits[0, -1].clone()
        r = sampler.repetition_penalty
        for token in set(ids + out) if r != 1 else ():
            scores[token] = scores[token] / r if scores[token] > 0 else scores[token] * r
        for token in set(out):
            scores[token] -= out.count(token) * sampler.frequency_penalty + sampler.presence_penalty
        for token, bias in sampler.logit_bias:
            scores[token] = -float("inf") if bias <= -100 else scores[token] + bias
        scores[0] = -float("inf")
        out.append(int(scores.argmax()))
    return loaded.vocab.decode(out)


ADJUSTED = {
    "frequency": Sampler(frequency_penalty=1.0),
    "presence": Sampler(presence_penalty=1.5),
    "both": Sampler(frequency_penalty=0.4, presence_penalty=0.6),
    "repetition": Sampler(repetition_penalty=1.8),
    "bias": Sampler(logit_bias=((5, 3.5), (9, -100.0))),
    "everything": Sampler(frequency_penalty=0.3, repetition_penalty=1.3, logit_bias=((7, 2.0), (12, -200.0))),
    "sampled, one choice": Sampler(temperature=1.0, top_k=1, frequency_penalty=1.0, logit_bias=((5, 3.5),)),
}


@pytest.mark.parametrize("max_batch", [64, 2])  # all rows together; or two, rows put aside and stepped alone
def test_rows_with_a_bias_or_penalties_are_adjusted_together_in_the_arrays_as_the_rule_says(
    loaded, monkeypatch, max_batch
):
    own_choices = []
    choose = Decoding.choose
    monkeypatch.setattr(Decoding, "choose", lambda d, logits: own_choices.append(d) or choose(d, logits))
    engine = Engine(loaded, max_batch=max_batch)
    prompts = ["ROMEO:\n", "All:\nSpeak, speak", "KING"]
    cases = [(f"{name} {k}", p, s) for name, s in ADJUSTED.items() for k, p in enumerate(prompts)]
    for j, (name, prompt, sampler) in enumerate(cases):
        if j == len(cases) // 2:
            engine.run(15)  # half join later, while the others run
        group = "first" if j < len(cases) // 2 else "second"
        engine.submit(name, prompt, 50, [sampler], group=group)
        engine.submit(f"plain {j}", prompt, 50, group=group)  # greedy rows beside them keep their shared argmax
    if max_batch == 64:
        engine.run(3)
        assert engine.scheduler._table.adjusted_rows.size > 0
    engine.run()
    for name, prompt, sampler in cases:
        assert engine.done[name][0] == penalised_greedy(loaded, prompt, 50, sampler), name
    for j, (_, prompt, _) in enumerate(cases):
        assert_greedy(loaded, prompt, engine.done[f"plain {j}"][0])
    if max_batch == 64:  # every choice made by the batch (with 2, rows left alone choose their own)
        assert own_choices == []
    else:
        assert engine.scheduler.rows_put_aside > 0


def test_a_sampled_row_with_a_ban_never_draws_the_banned_token(loaded):
    banned = loaded.vocab.encode("e")[0].item()
    engine = Engine(loaded)
    for k in range(6):
        engine.submit(
            f"s{k}", "ROMEO:\n", 150, [Sampler(temperature=1.5, presence_penalty=0.2, logit_bias=((banned, -100.0),))]
        )
    engine.run()
    texts = [engine.done[f"s{k}"][0] for k in range(6)]
    assert all(len(t) == 150 and "e" not in t for t in texts)
    assert len(set(texts)) > 1  # drawn: not one text six times


def test_logprobs_made_for_all_rows_at_once_are_the_model_s_own_for_each_row(loaded):
    """Rows wanting logprobs (k = 0, 1, 5, 20; greedy, seeded, with a stop) beside rows that do not: every token's
    log-probability and its k likeliest alternatives are log-softmax of the model's forward pass over the text."""
    engine = Engine(loaded)
    cases = []
    for j, (k, sampler) in enumerate(
        [(0, Sampler()), (1, Sampler(temperature=0.9, seed=3)), (5, Sampler()), (20, Sampler())]
    ):
        for prompt in ["ROMEO:\n", "All:\nSpeak"]:
            name = f"k{k} {prompt!r}"
            ids = loaded.vocab.encode(prompt)
            d = Decoding(prompt, loaded.vocab, 40, sampler, ["@@"] if j % 2 else [], k, prefix_ids=ids)
            engine.decodings[name] = [d]
            engine.scheduler.submit(
                GenerationJob(on_done=lambda result, error: None, text=prompt, ids=ids, decodings=[d])
            )
            cases.append((name, prompt, k))
        engine.submit(f"plain {j}", "KING", 40)
    engine.run()
    vocab = loaded.vocab.tokens
    for name, prompt, k in cases:
        (d,) = engine.decodings[name]
        assert len(d.completion) == 40 and len(d.tokens) == 40
        ids = loaded.vocab.encode(prompt + d.completion)
        with torch.inference_mode():
            scores = torch.log_softmax(loaded.model(ids[None, :-1])[0][0], dim=-1)
        for i, info in enumerate(d.tokens):
            row, token = scores[len(prompt) - 1 + i], ids[len(prompt) + i]
            assert info.text == vocab[token] and info.logprob == pytest.approx(float(row[token]), abs=1e-4)
            if k == 0:
                assert info.top is None
            else:
                values, indices = row.topk(k)
                assert list(info.top) == [vocab[t] for t in indices.tolist()]
                assert list(info.top.values()) == pytest.approx(values.tolist(), abs=1e-4)
