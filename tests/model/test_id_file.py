"""The corpus as a memory-mapped id file: the same ids as encoding the whole text in memory (the oracle), reused
only while its sources are unchanged, and the same batches for the trainer whatever the ids' dtype."""

import os

import numpy as np
import pytest
import torch

from model import RNNLM, LMConfig
from model.data import CorpusError, epoch_batches, read_corpus
from model.distill import teacher_log_probs
from model.id_file import encode_corpus
from model.vocab import Vocab

TEXT = "héllo wörld ✓ — naïve café\n" * 200


def in_memory(paths):
    """The oracle: the whole text as one string, its vocabulary, its ids."""
    corpus = read_corpus(paths)
    vocab = Vocab.from_corpus(corpus.text)
    return corpus, vocab, vocab.encode(corpus.text).numpy()


@pytest.mark.parametrize("block_bytes", [1, 3, 7, 1 << 20])  # blocks that split multi-byte characters, and one
def test_the_ids_are_those_of_the_whole_text_encoded_at_once(tmp_path, block_bytes):
    (tmp_path / "a.txt").write_text(TEXT, encoding="utf-8")
    (tmp_path / "b.txt").write_text("a second file, ünïcode ∑\n" * 50, encoding="utf-8")
    paths = [tmp_path / "a.txt", tmp_path / "b.txt"]
    encoded = encode_corpus(paths, tmp_path / "cache", block_bytes=block_bytes, progress=False)
    corpus, vocab, ids = in_memory(paths)
    assert encoded.vocab == vocab
    assert encoded.ids.dtype == np.uint8 and isinstance(encoded.ids, np.memmap)
    np.testing.assert_array_equal(encoded.ids, ids)
    assert encoded.files == corpus.files  # name, sha256, characters: what the model card records
    assert encoded.path.stat().st_size == len(ids)  # one byte a character


def test_a_vocabulary_over_256_characters_takes_two_bytes_per_id(tmp_path):
    text = "".join(chr(0x400 + i) for i in range(300)) * 3
    (tmp_path / "wide.txt").write_text(text, encoding="utf-8")
    encoded = encode_corpus([tmp_path / "wide.txt"], tmp_path / "cache", progress=False)
    assert encoded.ids.dtype == np.uint16 and len(encoded.vocab) == 301
    np.testing.assert_array_equal(encoded.ids, in_memory([tmp_path / "wide.txt"])[2])


def test_an_unchanged_corpus_is_reused_and_a_changed_one_encoded_again(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    first = encode_corpus([path], tmp_path / "cache", progress=False)
    written = first.path.stat().st_mtime_ns
    again = encode_corpus([path], tmp_path / "cache", progress=False)
    assert not first.reused and again.reused and again.path.stat().st_mtime_ns == written
    # the same size and modification time, other content: still noticed (the change time and inode move)
    stat = path.stat()
    path.write_text(TEXT.replace("h", "j"), encoding="utf-8")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    changed = encode_corpus([path], tmp_path / "cache", progress=False)
    assert not changed.reused
    np.testing.assert_array_equal(changed.ids, in_memory([path])[2])
    # a fixed vocabulary (a resumed run's) that is not the file's: encoded again with it, unknowns as 0
    fixed = Vocab(["<unk>", *sorted(set(TEXT))])
    resumed = encode_corpus([path], tmp_path / "cache", vocab=fixed, progress=False)
    assert not resumed.reused and resumed.vocab == fixed
    np.testing.assert_array_equal(resumed.ids, fixed.encode(TEXT.replace("h", "j")).numpy())


@pytest.mark.parametrize("block_bytes", [2, 1 << 20])
def test_bad_files_are_one_line_errors_naming_the_offset(tmp_path, block_bytes):
    bad = tmp_path / "bad.txt"
    bad.write_bytes("fine é text".encode() + b"\xff" + b"more")
    with pytest.raises(CorpusError, match=r"bad.txt: not UTF-8 text \(byte 0xff at offset 12\)"):
        encode_corpus([bad], tmp_path / "cache", block_bytes=block_bytes, progress=False)
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(CorpusError, match="file is empty"):
        encode_corpus([tmp_path / "empty.txt"], tmp_path / "cache", progress=False)
    with pytest.raises(CorpusError, match="file not found"):
        encode_corpus([tmp_path / "missing.txt"], tmp_path / "cache", progress=False)


@pytest.mark.parametrize("sampling", ["sequential", "random"])
def test_batches_of_memory_mapped_uint8_ids_are_those_of_int64_ids(tmp_path, sampling):
    (tmp_path / "c.txt").write_text(TEXT, encoding="utf-8")
    encoded = encode_corpus([tmp_path / "c.txt"], tmp_path / "cache", progress=False)
    mapped = torch.from_numpy(encoded.ids)
    plain = torch.from_numpy(in_memory([tmp_path / "c.txt"])[2])
    for epoch in (0, 3):
        got = list(epoch_batches(mapped, 8, 16, sampling, seed=5, epoch=epoch, positions=True))
        want = list(epoch_batches(plain, 8, 16, sampling, seed=5, epoch=epoch))
        assert len(got) == len(want) > 0
        for (X, Y, P), (x, y) in zip(got, want):
            assert X.dtype == torch.uint8
            assert torch.equal(X.long(), x) and torch.equal(Y.long(), y)
            assert torch.equal(plain[P], x) and torch.equal(plain[P + 1], y)  # P: where each token of X is


def test_the_teacher_table_written_into_a_memory_mapped_file_is_the_one_in_memory(tmp_path):
    torch.manual_seed(0)
    teacher = RNNLM(LMConfig(cell="gru", vocab_size=9, hidden_size=12, num_layers=2))
    ids = torch.randint(0, 9, (1000,), dtype=torch.uint8)
    table = np.memmap(tmp_path / "table.f16", dtype=np.float16, mode="w+", shape=(1000, 9))
    teacher_log_probs(teacher, ids, rows=8, warmup=32, chunk=100, out=torch.from_numpy(table))
    expected = teacher_log_probs(teacher, ids.long(), rows=8, warmup=32, chunk=100)
    assert torch.equal(torch.from_numpy(np.asarray(table)), expected)
