"""The continuous batch inside the engine, driven turn by turn: rows join and leave in bulk (in the same turn
too), a cancelled row leaves while its neighbours continue, n > 1 forks, a lone sequence stepped alone hands its
progress back to the batch, and a seeded sampled request gives the same text whatever shares the batch.
Oracles: the library's single-stream ``generate`` and the model's forward pass over the whole text."""

import pytest

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

    def __init__(self, loaded, interrupt=lambda: False):
        self.loaded = loaded
        self.scheduler = Scheduler(loaded.model, None, 64, 256, 256, 512, interrupt)
        self.done: dict[str, list[str]] = {}

    def submit(self, name: str, prefix: str, n: int, samplers=(Sampler(),)) -> GenerationJob:
        ids = self.loaded.vocab.encode(prefix)
        decodings = [Decoding(prefix, self.loaded.vocab, n, s, [], None, prefix_ids=ids) for s in samplers]

        def on_done(result, error, name=name):
            assert error is None and name not in self.done
            self.done[name] = [d.completion for d in decodings]

        job = GenerationJob(on_done=on_done, text=prefix, ids=ids, decodings=decodings)
        self.scheduler.submit(job)
        return job

    def run(self, turns: int = 10**6) -> None:
        for _ in range(turns):
            if not self.scheduler.busy:
                return
            self.scheduler.run_once()


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
