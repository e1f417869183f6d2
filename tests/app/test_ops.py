from fastapi.testclient import TestClient

from app.main import create_app
from tests.conftest import assert_error


def test_health_is_always_200(client):
    assert client.get("/health").json() == {"status": "ok"}


def test_ready_is_503_before_the_model_loads_and_200_after(settings):
    app = create_app(settings)
    not_started = TestClient(app)  # no `with`: the lifespan has not run, nothing is loaded
    assert_error(not_started.get("/ready"), 503)
    assert_error(not_started.post("/predict", json={"prefix": "a"}), 503)
    assert not_started.get("/health").status_code == 200
    with TestClient(app) as started:
        assert started.get("/ready").json() == {"status": "ready"}


def test_info_is_the_model_card_with_limits(client, loaded, settings):
    info = client.get("/info").json()
    assert info["config"] == loaded.config.to_dict()
    assert info["parameters"] == loaded.model.num_parameters()
    assert info["vocab"] == loaded.vocab.tokens
    assert info["training"]["note"] == "test model"
    assert info["limits"]["max_num_tokens"] == settings.max_num_tokens
    assert info["limits"]["max_text_chars"] == settings.max_text_chars


def test_metrics_count_requests_tokens_and_scored_characters(client):
    client.post("/predict", json={"prefix": "Speak", "num_tokens": 7})
    client.post("/perplexity", json={"text": "Speak, speak."})
    client.post("/predict", json={"prefix": "a", "num_tokens": -1})
    text = client.get("/metrics").text
    assert 'rnnlm_requests_total{method="POST",route="/predict",status="200"} 1.0' in text
    assert 'rnnlm_requests_total{method="POST",route="/predict",status="422"} 1.0' in text
    assert "rnnlm_generated_tokens_total 7.0" in text
    assert "rnnlm_scored_characters_total 12.0" in text
    assert 'rnnlm_request_duration_seconds_count{route="/perplexity"} 1.0' in text


def test_unknown_route_and_wrong_method_get_the_error_body(client):
    assert_error(client.get("/nope"), 404)
    assert_error(client.get("/predict"), 405)


def test_openapi_schema_documents_the_endpoints(client):
    schema = client.get("/openapi.json").json()
    for path in ["/predict", "/perplexity", "/v1/completions", "/v1/models", "/health", "/ready", "/info", "/metrics"]:
        assert path in schema["paths"]
    props = schema["components"]["schemas"]["PredictRequest"]["properties"]
    assert "description" in props["num_tokens"] and "minLength" not in props["prefix"]  # empty: the zero state


def test_an_unexpected_error_is_a_500_with_the_error_body_and_no_traceback(settings, monkeypatch):
    from app.engine_client import EngineClient

    def boom(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(EngineClient, "perplexity", boom)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        r = c.post("/perplexity", json={"text": "abc"})
    error = assert_error(r, 500)
    assert "secret" not in r.text and error["message"] == "internal server error"
