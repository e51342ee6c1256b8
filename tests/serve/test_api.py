"""The HTTP API of ``textcl serve`` (FastAPI's TestClient, lifespan and batcher running):
OpenAI and TEI shapes against ``SentenceEncoder.encode``, /search against
``textcl.search.search``, errors, limits, the API key, /info and /metrics."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import CORPUS
from textcl import SentenceEncoder
from textcl.search import open_index, search

TEXTS = ["A man is playing a guitar.", "Two dogs run in the park.", "", "The sky is blue today."]


def _vectors(body: dict) -> np.ndarray:
    return np.asarray([d["embedding"] for d in sorted(body["data"], key=lambda d: d["index"])])


def test_openai_embeddings_match_encode(make_client, encoder: SentenceEncoder) -> None:
    client = make_client()
    r = client.post("/v1/embeddings", json={"model": "tiny", "input": TEXTS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == "tiny"
    assert [d["index"] for d in body["data"]] == [0, 1, 2, 3]
    assert all(d["object"] == "embedding" for d in body["data"])
    want = encoder.encode(TEXTS, normalize=True)
    np.testing.assert_allclose(_vectors(body), want, atol=1e-5)
    # usage: the tokenizer's counts (special tokens included)
    n_tokens = sum(len(x) for x in encoder.tokenizer(TEXTS)["input_ids"])
    assert body["usage"] == {"prompt_tokens": n_tokens, "total_tokens": n_tokens}

    # a single string; base64 = little-endian float32 bytes, same values
    r1 = client.post(
        "/v1/embeddings", json={"model": "tiny", "input": TEXTS, "encoding_format": "base64"}
    )
    assert r1.status_code == 200
    item = r1.json()["data"][1]
    decoded = np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
    np.testing.assert_array_equal(decoded, np.asarray(body["data"][1]["embedding"], np.float32))
    (one,) = client.post("/v1/embeddings", json={"model": "tiny", "input": TEXTS[1]}).json()["data"]
    np.testing.assert_allclose(one["embedding"], want[1], atol=1e-5)

    # dimensions: Matryoshka truncation then renormalisation (oracle: encode(truncate_dim))
    r2 = client.post("/v1/embeddings", json={"model": "tiny", "input": TEXTS, "dimensions": 8})
    got = _vectors(r2.json())
    assert got.shape == (4, 8)
    np.testing.assert_allclose(
        got, encoder.encode(TEXTS, truncate_dim=8, normalize=True), atol=1e-5
    )
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(got, want[:, :8], atol=1e-3)  # negative control: renormalised


def test_tei_embed_shapes_prompts_truncation(make_client, encoder: SentenceEncoder) -> None:
    client = make_client()
    r = client.post("/embed", json={"inputs": TEXTS[0]})
    assert r.status_code == 200
    assert np.asarray(r.json()).shape == (1, 32)  # TEI: a list of lists even for one string
    np.testing.assert_allclose(r.json()[0], encoder.encode(TEXTS[0], normalize=True), atol=1e-5)

    raw = client.post("/embed", json={"inputs": TEXTS, "normalize": False}).json()
    np.testing.assert_allclose(raw, encoder.encode(TEXTS, normalize=False), atol=1e-5)

    q = client.post("/embed", json={"inputs": TEXTS, "prompt_name": "query"}).json()
    want_q = encoder.encode(TEXTS, prompt_name="query", normalize=True)
    np.testing.assert_allclose(q, want_q, atol=1e-5)
    assert not np.allclose(q, encoder.encode(TEXTS, normalize=True), atol=1e-3)

    bad = client.post("/embed", json={"inputs": "x", "prompt_name": "nope"})
    assert bad.status_code == 422
    assert bad.json()["error_type"] == "Validation" and "'query'" in bad.json()["error"]

    long_text = " ".join(["guitar dog park sky"] * 40)  # > 64 tokens (the tiny model's limit)
    too_long = client.post("/embed", json={"inputs": [TEXTS[0], long_text]})
    assert too_long.status_code == 413
    assert too_long.json()["error_type"] == "Validation"
    assert "must have less than 64 tokens" in too_long.json()["error"]
    ok = client.post("/embed", json={"inputs": [long_text], "truncate": True})
    assert ok.status_code == 200
    np.testing.assert_allclose(ok.json()[0], encoder.encode(long_text, normalize=True), atol=1e-5)
    # OpenAI's route truncates like encode()
    assert (
        client.post("/v1/embeddings", json={"model": "tiny", "input": long_text}).status_code == 200
    )


def test_errors_and_limits(make_client) -> None:
    client = make_client(max_inputs=3, max_input_chars=50)

    def post(path: str, body: object) -> tuple[int, dict]:
        r = client.post(path, json=body)
        return r.status_code, r.json()

    status, body = post("/v1/embeddings", {"model": "tiny", "input": ["a", "b", "c", "d"]})
    assert status == 413 and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == "too_many_inputs" and "--max-inputs" in body["error"]["message"]
    status, body = post("/embed", {"inputs": ["x" * 51]})
    assert status == 413 and body["error_type"] == "Validation" and "51 characters" in body["error"]
    assert post("/embed", {"inputs": ["x" * 50]})[0] == 200  # the limit itself is allowed

    status, body = post("/v1/embeddings", {"model": "tiny", "input": [[101, 2023, 102]]})
    assert status == 422 and "token arrays are not supported" in body["error"]["message"]
    status, body = post("/v1/embeddings", {"model": "tiny", "input": [1, 2, 3]})
    assert status == 422 and body["error"]["code"] == "unsupported_input"
    status, body = post("/v1/embeddings", {"model": "gpt-4", "input": "x"})
    assert status == 404 and body["error"]["code"] == "model_not_found"
    assert body["error"]["param"] == "model"
    status, body = post("/v1/embeddings", {"input": "x"})  # model missing
    assert status == 422 and body["error"]["param"] == "model"
    status, body = post("/v1/embeddings", {"model": "tiny", "input": "x", "dimensions": 33})
    assert status == 422 and body["error"]["param"] == "dimensions"
    status, body = post("/v1/embeddings", {"model": "tiny", "input": "x", "encoding_format": "hex"})
    assert status == 422
    status, body = post("/v1/embeddings", {"model": "tiny", "input": []})
    assert status == 422 and body["error"]["code"] == "empty"
    status, body = post("/embed", {"inputs": []})
    assert status == 400 and body["error_type"] == "Empty"
    status, body = post("/embed", {"inputs": "x", "truncation_direction": "Left"})
    assert status == 422
    status, body = post("/embed", {"inputs": "x", "unknown_field": 1})
    assert status == 422 and "unknown_field" in body["error"]
    r = client.post("/embed", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "not valid JSON" in r.json()["error"]

    r = client.get("/nope")
    assert r.status_code == 404 and r.json()["error_type"] == "NotFound"
    r = client.post("/v1/nope", json={})
    assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"
    r = client.get("/embed")
    assert r.status_code == 405 and r.json()["error_type"] == "MethodNotAllowed"
    # the server still answers after every error
    assert post("/embed", {"inputs": "still fine"})[0] == 200


def test_api_key(make_client) -> None:
    client = make_client(api_key="s3cret")
    assert client.get("/health").status_code == 200  # public
    assert client.get("/").status_code == 200  # the page itself holds no data
    for path, body in (
        ("/v1/embeddings", {"model": "tiny", "input": "x"}),
        ("/embed", {"inputs": "x"}),
    ):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = client.post(path, json=body, headers=headers)
            assert r.status_code == 401, (path, headers)
            assert r.headers["www-authenticate"] == "Bearer"
            err = r.json()["error"]
            if path.startswith("/v1"):
                assert err["code"] == "invalid_api_key" and err["type"] == "invalid_request_error"
            else:
                assert r.json()["error_type"] == "Unauthorized"
        r = client.post(path, json=body, headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200
    for path in ("/info", "/metrics", "/v1/models"):
        assert client.get(path).status_code == 401
        assert client.get(path, headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_search_matches_library_search(make_client, serve_index: Path) -> None:
    idx = open_index(serve_index)
    client = make_client(index=idx, max_top_k=10)
    queries = ["a dog in a field", CORPUS[3]]
    r = client.post("/search", json={"query": queries, "top_k": 4})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    want = search(serve_index, queries, top_k=4)
    assert [res["query"] for res in results] == queries
    for res, hits in zip(results, want, strict=True):
        assert [h["id"] for h in res["hits"]] == [h.id for h in hits]
        assert [h["text"] for h in res["hits"]] == [h.text for h in hits]
        np.testing.assert_allclose(
            [h["score"] for h in res["hits"]], [h.score for h in hits], atol=1e-5
        )
        assert [h["rank"] for h in res["hits"]] == [0, 1, 2, 3]
    assert results[1]["hits"][0]["text"] == CORPUS[3]  # a corpus sentence finds itself
    one = client.post("/search", json={"query": CORPUS[5], "top_k": 1}).json()["results"]
    assert len(one) == 1 and one[0]["hits"][0]["text"] == CORPUS[5]
    assert client.post("/search", json={"query": "x", "top_k": 11}).status_code == 422
    assert client.post("/search", json={"query": "  "}).status_code == 422
    assert client.post("/search", json={"query": []}).status_code == 400

    info = client.get("/info").json()
    assert info["index"]["rows"] == len(CORPUS) and info["index"]["dimension"] == 32
    assert info["dimension"] == 32 and info["pooling"] == "mean" and info["max_length"] == 64
    assert info["precision"] == "fp32" and info["prompts"] == ["passage", "query"]


def test_search_without_index_and_model_check(
    make_client, serve_index: Path, tiny_model_dir: Path
) -> None:
    client = make_client()
    r = client.post("/search", json={"query": "x"})
    assert r.status_code == 404 and "--index" in r.json()["error"]
    # another model (same dimension) is refused at startup by the index's probe check
    from textcl.serve import ServeConfig, create_app

    other = SentenceEncoder.from_pretrained(tiny_model_dir)
    with pytest.raises(ValueError, match="model mismatch"):
        create_app(other, index=open_index(serve_index), config=ServeConfig())


def test_health_info_metrics(make_client) -> None:
    client = make_client()
    assert client.get("/health").json() == {"status": "ok"}
    client.post("/embed", json={"inputs": ["one", "two", "three"]})
    client.post("/embed", json={"inputs": []})
    text = client.get("/metrics").text
    assert 'textcl_requests_total{method="POST",route="/embed",status="200"} 1.0' in text
    assert 'textcl_requests_total{method="POST",route="/embed",status="400"} 1.0' in text
    assert 'textcl_request_seconds_count{route="/embed"} 2.0' in text
    assert "textcl_batch_inputs_sum 3.0" in text
    assert "textcl_inputs_total 3.0" in text and "textcl_queue_inputs 0.0" in text
    assert "textcl_tokens_total" in text
    models = client.get("/v1/models").json()
    assert models["data"][0]["id"] == "tiny"
