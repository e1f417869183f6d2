"""The browser page, in a real browser: Debian's Chromium driven by Playwright against the real server."""

import json
import math
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright

from tests.conftest import start_server, stop_server

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 390, "height": 844})  # a phone-width screen
    pg = context.new_page()
    external = []
    pg.on("request", lambda r: external.append(r.url) if not r.url.startswith("http://127.0.0.1") else None)
    yield pg
    context.close()
    assert external == [], f"the page made external requests: {external}"


def generate_on_page(page, base: str, prefix: str, tokens: int):
    """Open the page, generate ``tokens`` characters after ``prefix``, and return the completion's element."""
    page.goto(base + "/")
    expect(page.locator("#model-info")).to_contain_text("parameters")
    page.get_by_label("Prefix").fill(prefix)
    page.get_by_label("Tokens").fill(str(tokens))
    page.get_by_role("button", name="Generate").click()
    completion = page.get_by_label("Completion")
    expect(completion).to_have_attribute("data-done", "true")
    return completion


def test_page_generates_scores_and_shows_errors(server, page):
    base, _ = server
    completion = generate_on_page(page, base, "First Citizen:\n", 60)
    expected = httpx.post(base + "/predict", json={"prefix": "First Citizen:\n", "num_tokens": 60}).json()
    assert completion.text_content() == expected["completion"]
    # each character's alternatives on hover: the API's top log-probabilities, as percentages
    first = page.locator("#completion span").first
    top = httpx.post(
        base + "/v1/completions", json={"prompt": "First Citizen:\n", "max_tokens": 1, "temperature": 0, "logprobs": 5}
    ).json()
    best, value = next(iter(top["choices"][0]["logprobs"]["top_logprobs"][0].items()))
    assert first.get_attribute("title").splitlines()[0] == f"{json.dumps(best)}: {math.exp(value) * 100:.1f} %"

    # the sampling controls reach the server: seeded sampling with top-k, a penalty and a stop sequence
    page.locator("summary").click()
    page.get_by_label("Temperature").fill("0.9")
    page.get_by_label("Seed").fill("7")
    page.get_by_label("Top k").fill("5")
    page.get_by_label("Presence penalty").fill("0.5")
    page.get_by_label("Stop sequences (one per line; \\n for a newline)").fill("\\n\\n")
    page.get_by_role("button", name="Generate").click()
    expect(completion).to_have_attribute("data-done", "true")
    sampled = httpx.post(
        base + "/v1/completions",
        json={
            "prompt": "First Citizen:\n",
            "max_tokens": 60,
            "temperature": 0.9,
            "seed": 7,
            "top_k": 5,
            "presence_penalty": 0.5,
            "stop": ["\n\n"],
        },
    ).json()
    assert completion.text_content() == sampled["choices"][0]["text"]

    text = "Before we proceed any further, hear me speak."
    page.get_by_label("Text to score").fill(text)
    page.get_by_role("button", name="Score").click()
    shown = page.get_by_label("Perplexity")
    expect(shown).to_contain_text("Perplexity")
    scored = httpx.post(base + "/perplexity", json={"text": text}).json()
    assert float(shown.get_attribute("data-perplexity")) == pytest.approx(scored["perplexity"], rel=1e-9)
    assert f"{scored['perplexity']:.3f}" in shown.text_content()
    spans = page.locator("#heatmap span[data-surprisal]")
    expect(spans).to_have_count(scored["num_scored"])
    assert spans.first.get_attribute("title").startswith('"e": p = ')
    assert page.locator("#heatmap").text_content() == text
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "page.png"), full_page=True)

    page.get_by_label("Text to score").fill("a")  # too short to score: the server's 422 message shows
    page.get_by_role("button", name="Score").click()
    expect(page.locator("#score-error")).to_contain_text("too short to score")


def test_page_continues_with_the_state_sending_only_the_new_text(server, page):
    base, _ = server
    sent = []
    page.on("request", lambda r: sent.append(json.loads(r.post_data)) if r.url.endswith("/v1/completions") else None)
    completion = generate_on_page(page, base, "First Citizen:\n", 40)
    first = completion.text_content()

    page.get_by_label("Continue with").fill("\nAll:\n")
    page.get_by_role("button", name="Continue").click()
    expect(page.locator("#continue-info")).to_contain_text("did not read again")
    expect(completion).to_have_attribute("data-done", "true")
    read = "First Citizen:\n" + first
    assert page.locator("#continue-info").get_attribute("data-saved") == str(len(read))
    # only the new text went, with the state the first answer carried
    assert sent[-1]["prompt"] == "\nAll:\n" and sent[-1]["rnnlm_state"]
    # what came back is what the whole text, sent at once, gives
    whole = httpx.post(base + "/predict", json={"prefix": read + "\nAll:\n", "num_tokens": 40}).json()
    assert completion.text_content() == first + "\nAll:\n" + whole["completion"]


def test_page_asks_for_the_api_key_and_sends_it(weights_file, tmp_path, page):
    base, proc = start_server(weights_file, tmp_path / "server.log", RNNLM_API_KEY="page-key")
    try:
        page.goto(base + "/")
        key = page.get_by_label("API key")
        expect(key).to_be_visible()
        key.fill("page-key")
        key.press("Enter")  # keyboard only
        expect(page.locator("#model-info")).to_contain_text("parameters")
        page.get_by_label("Prefix").fill("All:")
        page.get_by_label("Tokens").fill("10")
        page.get_by_label("Tokens").press("Enter")
        expect(page.get_by_label("Completion")).to_have_attribute("data-done", "true")
        assert len(page.get_by_label("Completion").text_content()) == 10
    finally:
        stop_server(proc)
