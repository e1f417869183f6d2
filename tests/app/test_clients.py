"""The OpenAI surface as real clients use it: the `openai` client with list and token-id prompts, stream_options,
logit_bias, the penalties, best_of, suffix; LangChain's OpenAI LLM (invoke, batch, stream) against the real
server; the tokenizer endpoints. Samplers are checked against a hand-written greedy loop over the model's own
forward pass that applies OpenAI's definitions."""

import math

import openai
import pytest
import torch
from langchain_openai import OpenAI as LangChainOpenAI

from tests.app.test_predict import library_greedy
from tests.conftest import assert_error, start_server, stop_server


@pytest.fixture
def oai(client):
    return openai.OpenAI(base_url=str(client.base_url) + "/v1", api_key="unused", http_client=client, max_retries=0)


def handwritten_greedy(
    loaded, prompt: str, n: int, bias: dict[int, float] | None = None, frequency: float = 0.0, presence: float = 0.0
) -> str:
    """Greedy decoding one forward call per token, with OpenAI's logit_bias (≤ -100 bans) and penalties:
    logit[j] -= count[j] * frequency + (count[j] > 0) * presence, counts over the generated tokens."""
    model, vocab = loaded.model, loaded.vocab
    counts = [0] * len(vocab)
    with torch.no_grad():
        out, state = model(vocab.encode(prompt).reshape(1, -1))
        chosen = []
        for _ in range(n):
            logits = out[0, -1].tolist()
            best, best_value = None, -math.inf
            for j in range(1, len(vocab)):  # never <unk>
                value = logits[j] - counts[j] * frequency - (presence if counts[j] else 0.0)
                if bias and j in bias:
                    value = -math.inf if bias[j] <= -100 else value + bias[j]
                if value > best_value:
                    best, best_value = j, value
            chosen.append(best)
            counts[best] += 1
            out, state = model(torch.tensor([[best]]), state)
    return vocab.decode(chosen)


def test_a_list_of_prompts_gives_choices_grouped_by_prompt_then_n(oai, loaded):
    prompts = ["All:\n", "Speak, speak", "First"]
    r = oai.completions.create(model="tiny", prompt=prompts, max_tokens=20, temperature=0, n=2)
    assert [c.index for c in r.choices] == list(range(6))
    assert [c.text for c in r.choices] == [library_greedy(loaded, p, 20) for p in prompts for _ in range(2)]
    assert r.usage.prompt_tokens == sum(map(len, prompts)) and r.usage.completion_tokens == 6 * 20


def test_prompts_as_token_ids_and_token_id_lists(oai, client, loaded):
    ids = client.post("/tokenize", json={"prompt": "All:\n"}).json()["tokens"]
    assert ids == loaded.vocab.encode("All:\n").tolist()
    one = oai.completions.create(model="tiny", prompt=ids, max_tokens=15, temperature=0)
    assert one.choices[0].text == library_greedy(loaded, "All:\n", 15)
    more = oai.completions.create(model="tiny", prompt=[ids, ids[:2]], max_tokens=15, temperature=0)
    assert [c.text for c in more.choices] == [library_greedy(loaded, "All:\n", 15), library_greedy(loaded, "Al", 15)]
    assert_error(client.post("/v1/completions", json={"prompt": [1, 2, 9999]}), 422, "prompt")
    assert_error(client.post("/v1/completions", json={"prompt": []}), 422, "prompt")


def test_stream_options_include_usage_sends_a_last_chunk_with_no_choices(oai, loaded):
    chunks = list(
        oai.completions.create(
            model="tiny",
            prompt="All:\n",
            max_tokens=20,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20
    assert chunks[-1].usage.prompt_tokens == 5 and chunks[-1].usage.total_tokens == 25
    assert "".join(c.choices[0].text for c in chunks[:-1]) == library_greedy(loaded, "All:\n", 20)
    plain = list(oai.completions.create(model="tiny", prompt="All:\n", max_tokens=5, temperature=0, stream=True))
    assert all(c.usage is None and c.choices for c in plain)


def test_suffix_is_a_clear_400_and_unknown_fields_stay_422(oai, client):
    with pytest.raises(openai.BadRequestError) as caught:
        oai.completions.create(model="tiny", prompt="All:", max_tokens=5, suffix="end")
    assert caught.value.body["type"] == "unsupported_parameter" and caught.value.body["param"] == "suffix"
    assert_error(client.post("/v1/completions", json={"prompt": "a", "colour": "red"}), 422, "colour")


def test_the_fields_langchain_always_sends_are_accepted(client, loaded):
    body = {
        "prompt": ["All:\n"],
        "max_tokens": 12,
        "temperature": 0,
        "top_p": 1,
        "n": 1,
        "logit_bias": {},
        "frequency_penalty": 0,
        "presence_penalty": 0,
        "seed": None,
        "logprobs": None,
        "user": "someone",
        "stream": False,
    }
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == library_greedy(loaded, "All:\n", 12)


def test_logit_bias_minus_100_never_emits_the_token_and_a_bias_shifts_greedy(oai, loaded):
    plain = library_greedy(loaded, "All:\n", 40)
    banned = loaded.vocab.index[plain[0]]  # the greedy first character, and more of them later
    r = oai.completions.create(
        model="tiny", prompt="All:\n", max_tokens=40, temperature=0, logit_bias={str(banned): -100}
    )
    assert plain[0] not in r.choices[0].text
    assert r.choices[0].text == handwritten_greedy(loaded, "All:\n", 40, bias={banned: -100})
    favoured = loaded.vocab.index["e"]
    r = oai.completions.create(
        model="tiny", prompt="All:\n", max_tokens=40, temperature=0, logit_bias={str(favoured): 3.5}
    )
    assert r.choices[0].text == handwritten_greedy(loaded, "All:\n", 40, bias={favoured: 3.5})
    assert r.choices[0].text != plain
    sampled = oai.completions.create(
        model="tiny", prompt="All:\n", max_tokens=200, temperature=1.5, seed=1, logit_bias={str(banned): -100}
    )
    assert plain[0] not in sampled.choices[0].text


@pytest.mark.parametrize("frequency, presence", [(1.5, 0.0), (0.0, 1.2), (0.7, 0.4), (-0.5, 0.0)])
def test_frequency_and_presence_penalties_follow_openais_definition(oai, loaded, frequency, presence):
    r = oai.completions.create(
        model="tiny",
        prompt="Speak",
        max_tokens=60,
        temperature=0,
        frequency_penalty=frequency,
        presence_penalty=presence,
    )
    assert r.choices[0].text == handwritten_greedy(loaded, "Speak", 60, frequency=frequency, presence=presence)


def test_penalties_apply_in_the_batch_too(client, loaded):
    """Several requests at once (the batch's shared argmax must not be used for penalised rows)."""
    from concurrent.futures import ThreadPoolExecutor

    bodies = [
        {"prompt": p, "max_tokens": 50, "temperature": 0, "frequency_penalty": 1.0}
        for p in ["All:\n", "First", "Speak", "Before we"]
    ]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda b: client.post("/v1/completions", json=b).json(), bodies))
    for b, r in zip(bodies, results):
        assert r["choices"][0]["text"] == handwritten_greedy(loaded, b["prompt"], 50, frequency=1.0)


def test_best_of_returns_the_samples_with_the_highest_mean_logprob(oai):
    args = dict(model="tiny", prompt="All:\n", max_tokens=30, temperature=1.0, seed=11)
    every = oai.completions.create(n=4, logprobs=0, **args)
    means = [sum(c.logprobs.token_logprobs) / 30 for c in every.choices]
    best = oai.completions.create(n=2, best_of=4, **args)
    expected = sorted(sorted(range(4), key=lambda i: -means[i])[:2])
    assert [c.text for c in best.choices] == [every.choices[i].text for i in expected]
    assert [c.index for c in best.choices] == [0, 1] and best.choices[0].logprobs is None
    assert [c.text for c in oai.completions.create(n=3, best_of=2, **args).choices] == [
        c.text for c in oai.completions.create(n=3, **args).choices
    ]  # best_of below n: the n themselves


def test_tokenize_detokenize_and_tokenizer_info(client, loaded):
    info = client.get("/tokenizer_info").json()
    assert info["vocab"] == loaded.vocab.tokens and info["vocab_size"] == len(loaded.vocab)
    assert info["eos_token"] is None and info["bos_token"] == "\n"  # the newline is in the tiny vocabulary
    text = "Speak, speak — ☃"  # two characters outside the vocabulary
    r = client.post("/tokenize", json={"prompt": text}).json()
    assert r["tokens"] == loaded.vocab.encode(text).tolist() and r["count"] == len(text)
    back = client.post("/detokenize", json={"tokens": r["tokens"]}).json()["prompt"]
    assert back == "Speak, speak \ufffd \ufffd"
    assert client.post("/tokenize", json={"prompt": back}).json()["tokens"] == r["tokens"]
    assert_error(client.post("/detokenize", json={"tokens": [len(loaded.vocab)]}), 422, "tokens")


def test_langchain_invoke_batch_and_stream_against_the_real_server(weights_file, tmp_path, loaded):
    base, proc = start_server(weights_file, tmp_path / "server.log")
    try:
        llm = LangChainOpenAI(
            base_url=f"{base}/v1", api_key="unused", model="tiny", temperature=0, max_tokens=25, max_retries=0
        )
        assert llm.invoke("All:\n") == library_greedy(loaded, "All:\n", 25)
        prompts = ["First", "Speak, speak", "All:\n", "Before"]
        assert llm.batch(prompts) == [library_greedy(loaded, p, 25) for p in prompts]
        assert "".join(llm.stream("Speak")) == library_greedy(loaded, "Speak", 25)
    finally:
        stop_server(proc)


# -- chat ---------------------------------------------------------------------------------------------------------
def rendered(messages: list[tuple[str, str]]) -> str:
    """The default template, written out by hand: ROLE:\\n{content}\\n\\n per message, then ASSISTANT:\\n."""
    return "".join(f"{role.upper()}:\n{content}\n\n" for role, content in messages) + "ASSISTANT:\n"


def reply(loaded, prompt: str, n: int) -> tuple[str, str]:
    """Greedy continuation cut at the end of the assistant's turn (a blank line), and the finish reason."""
    full = library_greedy(loaded, prompt, n)
    return (full[: full.index("\n\n")], "stop") if "\n\n" in full else (full, "length")


def test_chat_completions_render_the_template_and_stop_at_the_next_turn(oai, client, loaded):
    messages = [("system", "All speak."), ("user", "Speak, speak.")]
    r = oai.chat.completions.create(
        model="tiny", messages=[{"role": a, "content": b} for a, b in messages], max_tokens=120, temperature=0
    )
    text, finish = reply(loaded, rendered(messages), 120)
    assert r.choices[0].message.content == text and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == finish
    assert r.usage.prompt_tokens == len(rendered(messages)) and r.usage.completion_tokens == len(text)
    ids = client.post("/tokenize", json={"messages": [{"role": a, "content": b} for a, b in messages]}).json()
    assert ids["tokens"] == loaded.vocab.encode(rendered(messages)).tolist()
    assert client.get("/info").json()["chat_template"]["stop"] == "\n\n"


def test_chat_names_speakers_takes_max_completion_tokens_n_and_stop(oai, loaded):
    messages = [{"role": "user", "name": "First", "content": "Before we proceed"}]
    prompt = "FIRST:\nBefore we proceed\n\nASSISTANT:\n"
    full = library_greedy(loaded, prompt, 40)
    r = oai.chat.completions.create(model="tiny", messages=messages, max_completion_tokens=7, temperature=0, n=2)
    assert [c.message.content for c in r.choices] == [reply(loaded, prompt, 7)[0]] * 2
    assert [c.index for c in r.choices] == [0, 1]
    stop = full[3:5]
    if "\n\n" not in full[:5]:
        r = oai.chat.completions.create(model="tiny", messages=messages, max_tokens=40, temperature=0, stop=stop)
        assert r.choices[0].message.content == full[: full.index(stop)]


def test_chat_streams_deltas_and_the_usage_chunk(oai, loaded):
    messages = [{"role": "user", "content": "All:"}]
    chunks = list(
        oai.chat.completions.create(
            model="tiny",
            messages=messages,
            max_tokens=60,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    expected, finish = reply(loaded, rendered([("user", "All:")]), 60)
    assert text == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == finish
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(expected)


def test_chat_logprobs_and_refusals(oai, client):
    r = oai.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Speak"}],
        max_tokens=5,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    content = r.choices[0].logprobs.content
    assert "".join(t.token for t in content) == r.choices[0].message.content
    assert all(len(t.top_logprobs) == 2 and t.logprob == pytest.approx(t.top_logprobs[0].logprob) for t in content)
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "a"}],
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        )
    assert_error(client.post("/v1/chat/completions", json={"messages": []}), 422, "messages")


def test_a_bad_chat_template_setting_exits_2_with_one_line(weights_file):
    import os
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-m", "app", "--weights", weights_file],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "RNNLM_CHAT_TEMPLATE": "{content} only"},
    )
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "RNNLM_CHAT_TEMPLATE" in run.stderr


# -- vLLM's extras: repetition_penalty, min_p, min_tokens (in /v1/completions and /predict alike) ---------------
def handwritten_repetition_greedy(loaded, prompt: str, n: int, r: float) -> str:
    """CTRL / Hugging Face: every token of the prompt or the output so far has its logit divided by r when
    positive, multiplied by r when not; then the argmax (never <unk>)."""
    model, vocab = loaded.model, loaded.vocab
    seen = set(vocab.encode(prompt).tolist())
    with torch.no_grad():
        out, state = model(vocab.encode(prompt).reshape(1, -1))
        chosen = []
        for _ in range(n):
            logits = out[0, -1].tolist()
            values = [
                (logits[j] / r if logits[j] > 0 else logits[j] * r) if j in seen else logits[j]
                for j in range(len(vocab))
            ]
            best = max(range(1, len(vocab)), key=lambda j: values[j])
            chosen.append(best)
            seen.add(best)
            out, state = model(torch.tensor([[best]]), state)
    return vocab.decode(chosen)


@pytest.mark.parametrize("r", [1.3, 2.0, 0.8])
def test_repetition_penalty_follows_ctrls_definition_in_both_apis(oai, client, loaded, r):
    expected = handwritten_repetition_greedy(loaded, "Speak, speak", 60, r)
    c = oai.completions.create(
        model="tiny", prompt="Speak, speak", max_tokens=60, temperature=0, extra_body={"repetition_penalty": r}
    )
    assert c.choices[0].text == expected
    p = client.post("/predict", json={"prefix": "Speak, speak", "num_tokens": 60, "repetition_penalty": r}).json()
    assert p["completion"] == expected


def test_min_p_keeps_only_characters_within_its_share_of_the_likeliest(oai, loaded):
    """Each sampled character's probability (temperature 1, as logprobs report it) is at least min_p times the
    most likely one's; min_p = 1 leaves only the argmax: greedy."""
    r = oai.completions.create(
        model="tiny", prompt="All:\n", max_tokens=80, temperature=1.0, seed=5, logprobs=1, extra_body={"min_p": 0.3}
    )
    lp = r.choices[0].logprobs
    for value, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert math.exp(value) >= 0.3 * math.exp(max(top.values())) - 1e-6
    loose = oai.completions.create(model="tiny", prompt="All:\n", max_tokens=80, temperature=1.0, seed=5, logprobs=1)
    assert any(
        math.exp(v) < 0.3 * math.exp(max(t.values()))
        for v, t in zip(loose.choices[0].logprobs.token_logprobs, loose.choices[0].logprobs.top_logprobs)
    )
    greedy = oai.completions.create(
        model="tiny", prompt="All:\n", max_tokens=40, temperature=1.5, seed=5, extra_body={"min_p": 1.0}
    )
    assert greedy.choices[0].text == library_greedy(loaded, "All:\n", 40)


def test_min_tokens_ignores_stop_sequences_until_reached(oai, client, loaded):
    full = library_greedy(loaded, "Speak", 120)
    stop = next(c for c in full[:10] if full.count(c) >= 3)  # a character that comes early and again later
    at = full.index(stop, 30)
    c = oai.completions.create(
        model="tiny", prompt="Speak", max_tokens=120, temperature=0, stop=[stop], extra_body={"min_tokens": 30}
    )
    assert c.choices[0].text == full[:at] and c.choices[0].finish_reason == "stop"
    p = client.post("/predict", json={"prefix": "Speak", "num_tokens": 120, "stop": [stop], "min_tokens": 30}).json()
    assert p["completion"] == full[:at]
    early = client.post("/predict", json={"prefix": "Speak", "num_tokens": 120, "stop": [stop]}).json()
    assert early["completion"] == full[: full.index(stop)]
    beyond = client.post("/predict", json={"prefix": "Speak", "num_tokens": 120, "stop": [stop], "min_tokens": 500})
    assert beyond.json()["completion"] == full and beyond.json()["finish_reason"] == "length"  # never checked


def test_several_prompts_and_choices_stream_together_by_index(oai, loaded):
    prompts = ["All:\n", "First"]
    chunks = list(
        oai.completions.create(
            model="tiny",
            prompt=prompts,
            max_tokens=25,
            temperature=0,
            n=2,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    texts = {}
    for c in chunks[:-1]:
        (choice,) = c.choices
        texts[choice.index] = texts.get(choice.index, "") + choice.text
    assert texts == {i: library_greedy(loaded, prompts[i // 2], 25) for i in range(4)}
    assert chunks[-1].usage.completion_tokens == 4 * 25
    chat = list(
        oai.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "All:"}], n=2, max_tokens=30, temperature=0, stream=True
        )
    )
    replies = {}
    for c in chat:
        for choice in c.choices:
            replies[choice.index] = replies.get(choice.index, "") + (choice.delta.content or "")
    expected = reply(loaded, rendered([("user", "All:")]), 30)[0]
    assert replies == {0: expected, 1: expected}


def test_best_of_with_stream_sends_the_ranked_choices(oai):
    args = dict(model="tiny", prompt="All:\n", max_tokens=30, temperature=1.0, seed=11, n=2, best_of=4)
    plain = oai.completions.create(**args)
    texts = {}
    for c in oai.completions.create(stream=True, **args):
        for choice in c.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
    assert texts == {0: plain.choices[0].text, 1: plain.choices[1].text}


# -- lm-evaluation-harness -------------------------------------------------------------------------------------
LM_EVAL_TASK = """task: rnnlm_local_{kind}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: {output}
doc_to_text: "{text}"
doc_to_target: "{target}"
{extra}
"""


def run_lm_eval(
    tmp_path,
    base: str,
    model: str,
    model_args: str,
    kind: str,
    output: str,
    text: str,
    target: str,
    extra: str,
    docs: list[dict],
) -> list[dict]:
    import json
    import subprocess
    import sys
    from pathlib import Path

    data = tmp_path / f"{kind}.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    tasks = tmp_path / f"tasks-{kind}"
    tasks.mkdir()
    (tasks / f"{kind}.yaml").write_text(
        LM_EVAL_TASK.format(kind=kind, data=data, output=output, text=text, target=target, extra=extra)
    )
    out = tmp_path / f"out-{kind}"
    run = subprocess.run(
        [
            str(Path(sys.executable).parent / "lm_eval"),
            "--model",
            model,
            "--model_args",
            model_args,
            "--tasks",
            f"rnnlm_local_{kind}",
            "--include_path",
            str(tasks),
            "--log_samples",
            "--output_path",
            str(out),
            "--batch_size",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**__import__("os").environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"},
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    (samples,) = list(out.rglob("samples_*.jsonl"))
    return [json.loads(line) for line in samples.read_text().splitlines()]


def test_lm_eval_rolling_loglikelihood_equals_perplexity_after_the_bos_newline(weights_file, tmp_path):
    """`lm_eval --model local-completions` with the remote tokenizer: token-id prompts, /tokenizer_info,
    /tokenize and /detokenize; every rolling log-likelihood is -nll × num_scored of /perplexity after "\\n"."""
    texts = [
        "First Citizen:\nBefore we proceed any further, hear me speak.",
        "All:\nSpeak, speak.",
        "You are all resolved rather to die than to famish?",
    ]
    base, proc = start_server(weights_file, tmp_path / "server.log")
    try:
        args = f"model=tiny,base_url={base}/v1/completions,tokenizer_backend=remote,tokenized_requests=True"
        samples = run_lm_eval(
            tmp_path,
            base,
            "local-completions",
            args,
            "rolling",
            "loglikelihood_rolling",
            "",
            "{{text}}",
            "metric_list:\n  - metric: word_perplexity",
            [{"text": t} for t in texts],
        )
        import httpx

        for sample in samples:
            text = sample["doc"]["text"]
            ppl = httpx.post(f"{base}/perplexity", json={"text": text, "context": "\n"}).json()
            assert ppl["num_scored"] == len(text)
            assert float(sample["filtered_resps"][0]) == pytest.approx(-ppl["nll"] * ppl["num_scored"], abs=1e-4)
        assert len(samples) == len(texts)
    finally:
        stop_server(proc)


@pytest.mark.parametrize("model", ["local-completions", "gguf"])
def test_lm_eval_generations_and_loglikelihoods_equal_the_servers_own(weights_file, tmp_path, loaded, model):
    """generate_until gives greedy /predict (cut at its stop); a loglikelihood of a target after a context is
    /perplexity's for the same text and context."""
    import httpx

    docs = [{"prompt": "All:\n", "target": "Speak"}, {"prompt": "First Citizen:\n", "target": "Before we"}]
    base, proc = start_server(weights_file, tmp_path / "server.log")
    try:
        args = (
            f"model=tiny,base_url={base}/v1/completions,tokenizer_backend=remote,tokenized_requests=True"
            if model == "local-completions"
            else f"base_url={base}"
        )
        gen = (
            'generation_kwargs:\n  until: ["\\n\\n"]\n  max_gen_toks: 30\n  do_sample: false\n'
            "metric_list:\n  - metric: exact_match"
        )
        for sample in run_lm_eval(
            tmp_path, base, model, args, "gen", "generate_until", "{{prompt}}", "{{target}}", gen, docs
        ):
            # local-completions asks for max_gen_toks; gguf sends no max_tokens (OpenAI's default: 16) and strips
            full = library_greedy(loaded, sample["doc"]["prompt"], 30 if model == "local-completions" else 16)
            expected = full.split("\n\n")[0]
            assert sample["filtered_resps"][0] == (expected if model == "local-completions" else expected.strip())
        for sample in run_lm_eval(
            tmp_path,
            base,
            model,
            args,
            "ll",
            "loglikelihood",
            "{{prompt}}",
            "{{target}}",
            "metric_list:\n  - metric: acc",
            docs,
        ):
            doc = sample["doc"]
            context, continuation = doc["prompt"], doc["target"]
            if model == "local-completions":  # lm-eval moves a context's trailing whitespace to the continuation
                stripped = context.rstrip()
                context, continuation = stripped, context[len(stripped) :] + continuation
            ppl = httpx.post(f"{base}/perplexity", json={"text": continuation, "context": context}).json()
            value = sample["filtered_resps"][0]
            value = float(value[0] if isinstance(value, list) else value)
            assert value == pytest.approx(-ppl["nll"] * ppl["num_scored"], abs=1e-4)
    finally:
        stop_server(proc)


def test_streamed_logprobs_are_those_of_each_chunks_own_characters(server):
    """Concatenated over the chunks, a stream's logprobs equal the plain response's (completions and chat), on
    the real server, where a stream's pieces can arrive faster than its chunks are written."""
    base, _ = server
    oai = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
    args = dict(model="tiny", prompt="First Citizen:\n", max_tokens=40, temperature=0, logprobs=3)
    plain = oai.completions.create(**args).choices[0].logprobs
    tokens, values, tops = [], [], []
    for c in oai.completions.create(stream=True, **args):
        if c.choices and c.choices[0].logprobs:
            lp = c.choices[0].logprobs
            tokens += lp.tokens
            values += lp.token_logprobs
            tops += lp.top_logprobs
    assert tokens == plain.tokens and values == pytest.approx(plain.token_logprobs) and len(tops) == 40
    assert [sorted(t) for t in tops] == [sorted(t) for t in plain.top_logprobs]
    chat_args = dict(
        model="tiny",
        messages=[{"role": "user", "content": "All:"}],
        max_tokens=40,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    whole = [t.token for t in oai.chat.completions.create(**chat_args).choices[0].logprobs.content]
    streamed = [
        t.token
        for c in oai.chat.completions.create(stream=True, **chat_args)
        for ch in c.choices
        if ch.logprobs
        for t in ch.logprobs.content
    ]
    assert streamed == whole
