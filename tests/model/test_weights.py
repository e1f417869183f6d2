import json
import os
import struct

import pytest
import torch
from safetensors.torch import save_file

from model import FORMAT, RNNLM, LMConfig, Vocab, WeightsError, load_weights, save_weights

VOCAB = Vocab.from_corpus("abcdefghij ")


def make_model(cell="gru", layers=2) -> RNNLM:
    torch.manual_seed(0)
    return RNNLM(LMConfig(cell=cell, vocab_size=len(VOCAB), hidden_size=8, num_layers=layers, weight_drop=0.25))


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_round_trip_preserves_logits_exactly(tmp_path, cell):
    model = make_model(cell)
    path = tmp_path / "m.safetensors"
    save_weights(path, model, VOCAB, {"corpus": "x.txt", "steps": 3})
    loaded = load_weights(path)
    tokens = torch.randint(0, len(VOCAB), (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded.model(tokens)[0], model.eval()(tokens)[0])
    assert loaded.vocab == VOCAB
    assert loaded.config == model.config
    assert loaded.training == {"corpus": "x.txt", "steps": 3}
    assert not loaded.model.training


def test_save_leaves_no_temporary_files_and_replaces_atomically(tmp_path):
    path = tmp_path / "m.safetensors"
    save_weights(path, make_model(), VOCAB)
    save_weights(path, make_model("rnn", 1), VOCAB)
    assert os.listdir(tmp_path) == ["m.safetensors"]
    assert load_weights(path).config.cell == "rnn"


def test_saved_files_get_the_usual_permissions(tmp_path):
    path = tmp_path / "m.safetensors"
    old = os.umask(0o022)
    try:
        save_weights(path, make_model(), VOCAB)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644  # readable by a service running as another user


def test_a_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    save_weights(path, make_model(), VOCAB)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("model.atomic.os.replace", crash)
    with pytest.raises(OSError):
        save_weights(path, make_model("rnn", 1), VOCAB)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.safetensors"]


def good_parts():
    model = make_model()
    tensors = {k: v.detach().clone() for k, v in model.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "config": json.dumps(model.config.to_dict()),
        "vocab": VOCAB.to_json(),
        "training": "{}",
    }
    return tensors, metadata


def write(path, tensors, metadata):
    save_file(tensors, str(path), metadata=metadata)


def case_missing_file(p):
    return "file not found"


def case_not_safetensors(p):
    p.write_bytes(b"PK\x03\x04 this is a zip, not weights" * 10)
    return "not a safetensors file"


def case_pickle(p):
    torch.save(make_model().state_dict(), p)
    return "not a safetensors file"


def case_truncated(p):
    write(p, *good_parts())
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 100])
    return "truncated"


def case_truncated_header(p):
    write(p, *good_parts())
    p.write_bytes(p.read_bytes()[:50])
    return "truncated"


def case_missing_tensor(p):
    tensors, meta = good_parts()
    del tensors["layers.1.w_hh"]
    write(p, tensors, meta)
    return "missing tensor 'layers.1.w_hh'"


def case_extra_tensor(p):
    tensors, meta = good_parts()
    tensors["layers.2.w_hh"] = torch.zeros(8, 24)
    write(p, tensors, meta)
    return "unexpected tensor 'layers.2.w_hh'"


def case_wrong_shape(p):
    tensors, meta = good_parts()
    tensors["w_y"] = torch.zeros(8, 5)
    write(p, tensors, meta)
    return "tensor 'w_y' has shape (8, 5), expected (8, 12)"


def case_wrong_dtype(p):
    tensors, meta = good_parts()
    tensors["b_y"] = tensors["b_y"].double()
    write(p, tensors, meta)
    return "tensor 'b_y' has dtype F64, expected F32"


def case_nan(p):
    tensors, meta = good_parts()
    tensors["layers.0.b_h"][3] = float("nan")
    write(p, tensors, meta)
    return "tensor 'layers.0.b_h' contains NaN or infinite values"


def case_inf(p):
    tensors, meta = good_parts()
    tensors["w_y"][0, 0] = float("inf")
    write(p, tensors, meta)
    return "tensor 'w_y' contains NaN or infinite values"


def case_no_metadata(p):
    tensors, _ = good_parts()
    write(p, tensors, None)
    return "missing metadata"


def case_missing_vocab(p):
    tensors, meta = good_parts()
    del meta["vocab"]
    write(p, tensors, meta)
    return "missing metadata field 'vocab'"


def case_malformed_config(p):
    tensors, meta = good_parts()
    meta["config"] = "{not json"
    write(p, tensors, meta)
    return "malformed metadata 'config'"


def case_config_missing_field(p):
    tensors, meta = good_parts()
    meta["config"] = json.dumps({"cell": "gru", "vocab_size": 12})
    write(p, tensors, meta)
    return "malformed metadata 'config': config lacks hidden_size, num_layers"


def case_malformed_vocab(p):
    tensors, meta = good_parts()
    meta["vocab"] = json.dumps(["a", "b"])
    write(p, tensors, meta)
    return "malformed metadata 'vocab'"


def case_malformed_training(p):
    tensors, meta = good_parts()
    meta["training"] = "[1, 2"
    write(p, tensors, meta)
    return "malformed metadata 'training'"


def case_unknown_format(p):
    tensors, meta = good_parts()
    meta["format"] = "rnnlm/99"
    write(p, tensors, meta)
    return "unknown format version 'rnnlm/99'"


def case_vocab_size_mismatch(p):
    tensors, meta = good_parts()
    meta["vocab"] = Vocab.from_corpus("abc").to_json()
    write(p, tensors, meta)
    return "vocab has 4 entries but config vocab_size is 12"


def case_empty_file(p):
    p.write_bytes(b"")
    return "not a safetensors file"


def case_header_not_json(p):
    p.write_bytes(struct.pack("<Q", 10) + b"\xff" * 10)
    return "not a safetensors file"


CASES = [v for k, v in sorted(globals().items()) if k.startswith("case_")]


@pytest.mark.parametrize("make_bad_file", CASES, ids=[c.__name__[5:] for c in CASES])
def test_malformed_weight_files_are_refused_with_a_named_problem(tmp_path, make_bad_file):
    path = tmp_path / "bad.safetensors"
    problem = make_bad_file(path)
    with pytest.raises(WeightsError) as err:
        load_weights(path)
    message = str(err.value)
    assert str(path) in message
    assert problem in message
    assert "\n" not in message


def test_a_directory_is_refused(tmp_path):
    with pytest.raises(WeightsError, match="directory"):
        load_weights(tmp_path)
