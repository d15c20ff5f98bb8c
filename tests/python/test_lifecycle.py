"""Behaviours that need their own `mil serve`: --api-key (401), --max-concurrent-requests (429),
SIGTERM draining (503, in-flight requests finish, exit 0), the default served model name."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import openai
import pytest
import requests
from text_generation import Client

from conftest import DEMO_LORAS
from helpers import MilServer, openai_error, stream_events, tgi_error, wait_until

PLAIN = "The history of the Roman Empire"
# A prompt the default model continues for a long time without EOS.
COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"


@pytest.fixture(scope="module")
def auth_server(mil_bin, model_path, work_dir):
    s = MilServer(mil_bin, model_path, work_dir / "auth.log",
                  args=["--api-key", "s3cret-key", "--lora-adapters", DEMO_LORAS,
                        "--kv-cache-memory", "32", "--max-batch-prefill-tokens", "512"]).start()
    yield s
    assert s.stop() == 0, s.log_tail()


KEY = {"Authorization": "Bearer s3cret-key"}
BAD = {"Authorization": "Bearer wrong"}

GEN_ROUTES = [
    ("POST", "/generate", {"inputs": PLAIN, "parameters": {"max_new_tokens": 1}}),
    ("POST", "/generate_stream", {"inputs": PLAIN, "parameters": {"max_new_tokens": 1}}),
    ("POST", "/", {"inputs": PLAIN, "parameters": {"max_new_tokens": 1}}),
    ("POST", "/tokenize", {"inputs": PLAIN}),
    ("POST", "/v1/completions", {"prompt": PLAIN, "max_tokens": 1}),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}),
    ("GET", "/v1/models", None),
    ("GET", "/v1/adapters", None),
    ("POST", "/v1/unload_lora_adapter", {"lora_name": "no-such"}),
    ("POST", "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "nowhere"}),
]


@pytest.mark.parametrize("method,path,body", GEN_ROUTES, ids=[f"{m} {p}" for m, p, _ in GEN_ROUTES])
def test_api_key_required(auth_server, method, path, body):
    for headers in ({}, BAD, {"Authorization": "s3cret-key"}, {"Authorization": "Basic s3cret-key"}):
        r = requests.request(method, auth_server.url + path, json=body, headers=headers, timeout=60)
        if path.startswith("/v1/"):
            openai_error(r, 401)
        else:
            tgi_error(r, 401, "unauthorized")
    r = requests.request(method, auth_server.url + path, json=body, headers=KEY, timeout=60)
    assert r.status_code != 401, r.text
    if path not in ("/v1/unload_lora_adapter", "/v1/load_lora_adapter"):
        assert r.status_code == 200, r.text


def test_open_routes_without_key(auth_server):
    assert requests.get(auth_server.url + "/health", timeout=30).status_code == 200
    assert requests.get(auth_server.url + "/info", timeout=30).status_code == 200
    assert requests.get(auth_server.url + "/metrics", timeout=30).status_code == 200


def test_api_key_clients(auth_server):
    good = openai.OpenAI(base_url=auth_server.url + "/v1", api_key="s3cret-key", max_retries=0)
    r = good.chat.completions.create(model="caps", max_tokens=16, temperature=0,
                                     messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert r.choices[0].message.content == "THE CAPITAL OF FRANCE IS CRIB."
    bad = openai.OpenAI(base_url=auth_server.url + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.completions.create(model="", prompt=PLAIN, max_tokens=1)
    tgi = Client(auth_server.url, headers=KEY, timeout=60)
    assert tgi.generate(PLAIN, max_new_tokens=2).details.generated_tokens == 2


def test_default_served_model_name(auth_server, model_path):
    r = requests.get(auth_server.url + "/v1/models", headers=KEY, timeout=30)
    ids = [m["id"] for m in r.json()["data"]]
    assert ids[0] == Path(model_path).stem  # "SmolLM2-135M-Instruct.Q4_1"
    assert set(ids[1:]) >= {"caps", "pirate"}
    # the served name selects the base model on OpenAI routes
    r = requests.post(auth_server.url + "/v1/completions", headers=KEY, timeout=60,
                      json={"model": ids[0], "prompt": PLAIN, "max_tokens": 2})
    assert r.status_code == 200, r.text


# --- 429 ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_server(mil_bin, model_path, work_dir):
    s = MilServer(mil_bin, model_path, work_dir / "tiny.log",
                  args=["--max-concurrent-requests", "2", "--kv-cache-memory", "32", "--max-batch-prefill-tokens", "512"]).start()
    yield s
    assert s.stop() == 0, s.log_tail()


def _open_stream(url, tokens=400):
    r = requests.post(url + "/generate_stream", json={"inputs": COUNTING, "parameters": {
        "max_new_tokens": tokens}}, stream=True, timeout=120)
    assert r.status_code == 200
    lines = r.iter_lines()
    for line in lines:  # wait for the first token: the request is admitted and running
        if line.startswith(b"data:"):
            break
    return r, lines


def test_overloaded_429(tiny_server):
    streams = [_open_stream(tiny_server.url) for _ in range(2)]
    try:
        r = requests.post(tiny_server.url + "/generate", json={"inputs": PLAIN, "parameters": {
            "max_new_tokens": 1}}, timeout=60)
        tgi_error(r, 429, "overloaded")
        r = requests.post(tiny_server.url + "/v1/completions", json={"prompt": PLAIN, "max_tokens": 1},
                          timeout=60)
        openai_error(r, 429)
        oai = openai.OpenAI(base_url=tiny_server.url + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.RateLimitError):
            oai.completions.create(model="", prompt=PLAIN, max_tokens=1)
        r = requests.post(tiny_server.url + "/generate_stream", json={"inputs": PLAIN, "parameters": {
            "max_new_tokens": 1}}, timeout=60, stream=True)
        if r.status_code == 200:  # only acceptable as one SSE error event
            events = stream_events(r)
            assert events == [{"error": events[0]["error"], "error_type": "overloaded"}], events
        else:
            tgi_error(r, 429, "overloaded")
        # health and metrics are not generation requests
        assert requests.get(tiny_server.url + "/health", timeout=30).status_code == 200
        m = tiny_server.metrics()
        assert m.value("tgi_request_failure", 0, err="overloaded") >= 3
    finally:
        for r, _ in streams:
            r.close()
    # once the streams are gone (client disconnect), requests are admitted again
    def admitted():
        r = requests.post(tiny_server.url + "/generate", json={"inputs": PLAIN, "parameters": {
            "max_new_tokens": 1}}, timeout=60)
        return r.status_code == 200
    wait_until(admitted, 60, 0.5, "a request to be admitted after the streams closed")


# --- SIGTERM drain ---------------------------------------------------------------------
def test_sigterm_drains(mil_bin, model_path, work_dir):
    s = MilServer(mil_bin, model_path, work_dir / "drain.log",
                  args=["--kv-cache-memory", "128", "--graceful-termination-timeout", "120"]).start()
    try:
        result = {}

        def long_request():
            try:
                r = requests.post(s.url + "/generate", json={"inputs": COUNTING, "parameters": {
                    "max_new_tokens": 200, "details": True}}, timeout=300)
                result["status"] = r.status_code
                result["body"] = r.json()
            except Exception as e:  # noqa: BLE001
                result["error"] = repr(e)

        # one non-streaming and one streaming request in flight
        t = threading.Thread(target=long_request)
        t.start()
        stream, lines = _open_stream(s.url, tokens=160)
        time.sleep(0.2)  # the non-streaming request was sent first: it is running too
        s.signal()
        # new requests get 503 while the old ones finish
        def draining():
            r = requests.get(s.url + "/health", timeout=10)
            return [r] if r.status_code == 503 else None  # (a 503 Response is falsy)
        h = wait_until(draining, 30, 0.05, "/health to answer 503")[0]
        assert h.json().get("error_type") == "healthcheck", h.text
        r = requests.post(s.url + "/generate", json={"inputs": PLAIN, "parameters": {"max_new_tokens": 1}},
                          timeout=30)
        tgi_error(r, 503, "unavailable")
        r = requests.post(s.url + "/v1/completions", json={"prompt": PLAIN, "max_tokens": 1}, timeout=30)
        openai_error(r, 503)
        # the streaming request in flight completes normally
        events = []
        for line in lines:
            if line.startswith(b"data:"):
                events.append(json.loads(line[5:]))
        assert events and events[-1].get("details"), events[-1:]
        assert events[-1]["details"]["finish_reason"] in ("length", "eos_token"), events[-1]
        if events[-1]["details"]["finish_reason"] == "length":
            assert events[-1]["details"]["generated_tokens"] == 160
        t.join(300)
        assert result.get("status") == 200, result
        assert result["body"]["details"]["finish_reason"] in ("length", "eos_token")
        rc = s.wait(180)
        assert rc == 0, f"exit status {rc}; log:\n{s.log_tail()}"
    except BaseException:
        print("drain server log:\n" + s.log_tail())
        raise
    finally:
        if s.alive():
            s.proc.kill()
            s.proc.wait()
