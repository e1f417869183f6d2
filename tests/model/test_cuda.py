"""The CUDA path: the same weights give the same numbers on the GPU as on the CPU, and a weight file written on
one device loads on the other. These need a CUDA device; on a CPU-only machine (CI) they are reported as skipped.
"""

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from model import RNNLM, LMConfig, Vocab, generate, load_weights, save_weights, score, warm
from model.cells import CELLS, choose_path
from model.cells import Path as CellPath
from model.train import main as train_main
from tests.model.torch_reference import TorchReference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def full_fp32_matmuls():
    """Compare in true float32: TF32 matmuls would differ from the CPU by ~1e-3."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def make_model(cell: str, layers: int = 2, vocab: int = 13, hidden: int = 64, sharpen: float = 3.0) -> RNNLM:
    torch.manual_seed(0)
    model = RNNLM(LMConfig(cell=cell, vocab_size=vocab, hidden_size=hidden, num_layers=layers))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(sharpen)
    return model


@pytest.mark.parametrize("cell", CELLS)
def test_forward_and_gradients_on_cuda_equal_the_cpu(cell):
    cpu = make_model(cell)
    gpu = make_model(cell).cuda()
    tokens = torch.randint(0, 13, (8, 40))
    targets = torch.randint(0, 13, (8, 40))
    losses = []
    for model in (cpu, gpu):
        logits, final = model(tokens.to(model.device))
        loss = F.cross_entropy(logits.reshape(-1, 13), targets.to(model.device).reshape(-1))
        loss.backward()
        losses.append((logits, final))
    torch.testing.assert_close(losses[1][0].cpu(), losses[0][0], atol=1e-4, rtol=1e-4)
    for ours, theirs in zip(losses[1][1], losses[0][1]):
        torch.testing.assert_close(ours.cpu(), theirs, atol=1e-4, rtol=1e-4)
    for (name, p_gpu), (_, p_cpu) in zip(gpu.named_parameters(), cpu.named_parameters()):
        torch.testing.assert_close(p_gpu.grad.cpu(), p_cpu.grad, atol=1e-4, rtol=1e-4, msg=name)


@pytest.mark.parametrize("cell", CELLS)
def test_cuda_logits_equal_torch_nn_with_cudnn(cell):
    # Default-scale weights: with sharpened ones the tanh RNN is chaotic and cuDNN's different summation order
    # grows from 1e-7 to 1e-3 over 30 steps (seen on an H100), which says nothing about either implementation.
    model = make_model(cell, sharpen=1.0).cuda()
    reference = TorchReference(model).cuda()
    tokens = torch.randint(0, 13, (4, 30), device="cuda")
    logits, _ = model(tokens)
    ref_logits, _ = reference(tokens)
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("cell", CELLS)
def test_inference_on_cuda_equals_the_cpu(cell):
    cpu = make_model(cell).eval()
    gpu = make_model(cell).cuda().eval()
    prefix = torch.randint(1, 13, (50,))
    text = torch.randint(1, 13, (3000,))
    results = []
    for model in (cpu, gpu):
        state, logits = warm(model, prefix)
        ids, _ = generate(model, state, logits, 60)
        results.append((ids, score(model, text, chunk_size=512).nll))
    assert results[1][0] == results[0][0]
    assert results[1][1] == pytest.approx(results[0][1], rel=1e-5)


def test_a_weight_file_saved_from_cuda_loads_on_the_cpu_and_back(tmp_path):
    gpu = make_model("gru").cuda().eval()
    vocab = Vocab.from_corpus("abcdefghijkl")
    path = tmp_path / "m.safetensors"
    save_weights(path, gpu, vocab, {"corpus": []})
    on_cpu = load_weights(path, device="cpu").model
    on_gpu = load_weights(path, device="cuda").model
    assert on_gpu.device.type == "cuda"
    tokens = torch.randint(0, 13, (2, 20))
    with torch.no_grad():
        expected = gpu(tokens.cuda())[0].cpu()
        torch.testing.assert_close(on_cpu(tokens)[0], expected, atol=1e-4, rtol=1e-4)
        assert torch.equal(on_gpu(tokens.cuda())[0].cpu(), expected)


def test_the_trainer_runs_on_cuda_and_its_weights_load_on_the_cpu(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat. " * 400)
    out = tmp_path / "m.safetensors"
    assert (
        train_main(
            [
                "--corpus",
                str(corpus),
                "--out",
                str(out),
                "--device",
                "cuda",
                "--hidden",
                "32",
                "--time-step",
                "16",
                "--batch-size",
                "8",
                "--epochs",
                "8",
                "--lr",
                "0.01",
                "--eval-every",
                "1000",
                "--sample-chars",
                "10",
            ]
        )
        == 0
    )
    loaded = load_weights(out, device="cpu")
    assert score(loaded.model, loaded.vocab.encode("the cat sat on the mat. " * 20)).perplexity < 1.2


@pytest.mark.parametrize("cell", CELLS)
def test_on_cuda_a_sequence_or_a_recorded_step_reads_through_cudnn(cell):
    model = make_model(cell).cuda()
    layer = model.layers[0]
    tokens = torch.randint(0, 13, (40, 8), device="cuda")
    state = tuple(s[0] for s in model.init_state(8))
    for mode in (torch.enable_grad, torch.inference_mode):
        with mode():
            assert choose_path(layer.path_facts(tokens, state, layer.w_hh)) is CellPath.FUSED
    with torch.inference_mode():  # one step without a gradient: the torch step that the decoder's graphs capture
        assert choose_path(layer.path_facts(tokens[:1], state, layer.w_hh)) is CellPath.TORCH


@pytest.mark.parametrize("cell", CELLS)
def test_bf16_autocast_on_cuda_reads_in_bf16_and_keeps_float32_weights_and_gradients(cell):
    model = make_model(cell, sharpen=1.0).cuda()
    tokens = torch.randint(0, 13, (8, 40), device="cuda")
    with torch.no_grad():
        expected, _ = model(tokens)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits, final = model(tokens)
    assert logits.dtype == torch.bfloat16 and all(f.dtype == torch.float32 for f in final)
    torch.testing.assert_close(logits.float(), expected, atol=0.05, rtol=0.05)
    logits.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_shipped_gru_configuration_trains_on_cuda_and_scores_the_same_on_the_cpu(tmp_path, precision):
    """A few hundred steps of weights/gated's configuration through cuDNN; the file scores the same on either
    device, and its val_nll is that score (the whole split read in parallel, within 1e-3 of one stream)."""
    root = Path(__file__).resolve().parents[2]
    corpus = Path(os.environ.get("RNNLM_TEST_CORPUS", root.parent / "shared" / "data" / "tinyshakespeare.txt"))
    out = tmp_path / "gated.safetensors"
    options = "--cell gru --layers 2 --hidden 512 --dropout 0.2 --time-step 128 --batch-size 64 --max-steps 200"
    args = ["--corpus", str(corpus), "--out", str(out), "--device", "cuda", "--precision", precision]
    assert train_main([*args, *options.split(), "--eval-every", "100", "--sample-chars", "0"]) == 0
    on_cpu, on_gpu = load_weights(out, device="cpu"), load_weights(out, device="cuda")
    text = corpus.read_text(encoding="utf-8")
    val = on_cpu.vocab.encode(text[int(len(text) * 0.9) :])
    cpu_nll = score(on_cpu.model, val).nll
    assert score(on_gpu.model, val).nll == pytest.approx(cpu_nll, abs=1e-5)
    assert on_cpu.training["val_nll"] == pytest.approx(cpu_nll, abs=1e-3)
    assert cpu_nll < 2.5  # it learned: a uniform guess over 65 characters is 4.2 nats
