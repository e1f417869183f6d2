"""The frames between the HTTP processes and the engine: whatever way the bytes are cut on the way, the reader
hands back exactly the messages that were framed, in order, each once."""

import random

from app import protocol as p

MESSAGES = [
    [(p.GENERATE, 1, p.GenerateRequest("ROMEO:\n", 200, [{"temperature": 0.0}], ["\n\n"], 3, True))],
    [(p.PIECES, 1, [(0, "Ay, and", [p.TokenInfo("A", -0.1, {"A": -0.1})])]), (p.DONE, 2, None)],
    [(p.SCORE, 3, p.ScoreRequest("x" * 70_000, "context", True, 5))],  # a frame larger than one read
    [(p.ERROR, 4, (429, "busy"))],
]


def test_frames_cut_anywhere_give_back_every_message_once_in_order():
    stream = b"".join(p.frame(m) for m in MESSAGES)
    expected = [message for batch in MESSAGES for message in batch]
    rng = random.Random(0)
    for trial in range(50):
        reader, got, at = p.FrameReader(), [], 0
        while at < len(stream):
            size = 1 if trial == 0 else rng.randint(1, 9000)  # the first trial: one byte at a time
            got += reader.feed(stream[at : at + size])
            at += size
        assert got == expected


def test_a_partial_frame_yields_nothing_until_it_is_complete():
    frame = p.frame(MESSAGES[0])
    reader = p.FrameReader()
    assert reader.feed(frame[:3]) == [] and reader.feed(frame[3:-1]) == []
    assert reader.feed(frame[-1:]) == MESSAGES[0]
