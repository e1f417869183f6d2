import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.conftest import assert_error

KEY = "s3cret-key"


@pytest.fixture
def secured(weights_file):
    settings = Settings(weights=weights_file, api_key=KEY, cors_origins="https://good.example, http://localhost:3000")
    with TestClient(create_app(settings)) as c:
        yield c


def test_routes_need_the_api_key_when_one_is_set(secured):
    for method, path, body in [
        ("POST", "/predict", {"prefix": "a", "num_tokens": 1}),
        ("POST", "/perplexity", {"text": "ab"}),
        ("GET", "/info", None),
        ("GET", "/metrics", None),
        ("GET", "/v1/models", None),
    ]:
        r = secured.request(method, path, json=body)
        assert_error(r, 401)
        assert r.headers["www-authenticate"] == "Bearer"
        assert_error(secured.request(method, path, json=body, headers={"Authorization": "Bearer wrong"}), 401)
        assert_error(secured.request(method, path, json=body, headers={"Authorization": KEY}), 401)
        assert_error(secured.request(method, path, json=body, headers={"Authorization": f"Basic {KEY}"}), 401)
        assert_error(secured.request(method, path, json=body, headers={"Authorization": f"Bearer {KEY}x"}), 401)
        for scheme in ("Bearer ", "bearer ", "BEARER  "):  # RFC 7235: the scheme in any case
            ok = secured.request(method, path, json=body, headers={"Authorization": f"{scheme}{KEY}"})
            assert ok.status_code == 200, (path, scheme, ok.text)


def test_health_and_ready_need_no_key(secured):
    assert secured.get("/health").status_code == 200
    assert secured.get("/ready").status_code == 200


def test_cors_preflight_needs_no_key_and_allows_the_headers(secured):
    r = secured.options(
        "/predict",
        headers={
            "Origin": "https://good.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Authorization, Content-Type",
        },
    )
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "https://good.example"
    allowed = r.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed


def test_cors_refuses_origins_not_on_the_list(secured):
    r = secured.options("/predict", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert r.status_code == 400
    assert "access-control-allow-origin" not in r.headers
    r = secured.get("/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers


def test_cors_headers_are_on_error_responses_for_allowed_origins(secured):
    r = secured.post("/predict", json={"prefix": "a"}, headers={"Origin": "http://localhost:3000"})
    assert_error(r, 401)
    assert r.headers["access-control-allow-origin"] == "http://localhost:3000"


def test_no_cors_by_default(client):
    r = client.get("/health", headers={"Origin": "https://good.example"})
    assert "access-control-allow-origin" not in r.headers
