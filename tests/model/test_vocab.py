import pytest

from model import UNK, Vocab


def test_vocab_from_corpus_puts_unk_first_then_sorted_characters():
    vocab = Vocab.from_corpus("hello world")
    assert vocab.tokens == [UNK, " ", "d", "e", "h", "l", "o", "r", "w"]
    assert len(vocab) == 9


def test_encode_decode_round_trip():
    vocab = Vocab.from_corpus("abcdefgh ")
    text = "bad cafe"
    ids = vocab.encode(text)
    assert ids.tolist() == [vocab.index[c] for c in text]
    assert vocab.decode(ids) == text


def test_unseen_characters_map_to_unk_and_are_counted():
    vocab = Vocab.from_corpus("abc")
    ids = vocab.encode("aXb€c😀")
    assert ids.tolist() == [1, 0, 2, 0, 3, 0]
    assert vocab.count_unknown("aXb€c😀") == 3
    assert vocab.count_unknown("") == 0


def test_vocab_round_trips_through_json():
    vocab = Vocab.from_corpus('Ünïcödé\n\t"quotes"')
    assert Vocab.from_json(vocab.to_json()) == vocab


@pytest.mark.parametrize("tokens", [[], ["a", "b"], [UNK, "ab"], [UNK, "a", "a"]])
def test_invalid_vocab_is_rejected(tokens):
    with pytest.raises(ValueError):
        Vocab(tokens)
