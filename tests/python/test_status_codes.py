"""Every validation path and status code of docs/SERVING.md on the main server (422, 404, 413,
400), error bodies of TGI and OpenAI routes, and the SSE error event shape."""
from __future__ import annotations

import json
import socket

import pytest

from conftest import MAX_INPUT_TOKENS, MAX_TOTAL_TOKENS, SERVED_NAME
from helpers import openai_error, stream_events, tgi_error

PLAIN = "The history of the Roman Empire"

BAD_PARAMS = [
    ("temperature", 0.0), ("temperature", -1.0),
    ("top_p", 0.0), ("top_p", 1.5), ("top_p", -0.1),
    ("top_k", 0), ("top_k", -3),
    ("typical_p", 0.0), ("typical_p", 1.0), ("typical_p", 1.2),
    ("repetition_penalty", 0.0), ("repetition_penalty", -1.0),
    ("frequency_penalty", 2.5), ("frequency_penalty", -2.01),
    ("top_n_tokens", 6),
    ("max_new_tokens", 0),
    ("truncate", 0), ("truncate", MAX_INPUT_TOKENS + 1),
    ("stop", ["a", "b", "c", "d", "e"]),
    ("best_of", 2),
    ("watermark", True),
    ("grammar", {"type": "regex", "value": "[a-z]+"}),
]


@pytest.mark.parametrize("field,value", BAD_PARAMS, ids=[f"{f}={v}" for f, v in BAD_PARAMS])
@pytest.mark.parametrize("route", ["/generate", "/generate_stream", "/"])
def test_invalid_parameter_422(server, route, field, value):
    params = {"max_new_tokens": 2, field: value}
    if field == "best_of":
        params.update(do_sample=True)
    r = server.post(route, {"inputs": PLAIN, "parameters": params})
    body = tgi_error(r, 422, "validation")
    if field in ("best_of", "watermark", "grammar"):
        assert field in body["error"], body  # names the field


@pytest.mark.parametrize("field,value", [("frequency_penalty", -2.0), ("frequency_penalty", 2.0),
                                         ("top_n_tokens", 5), ("truncate", MAX_INPUT_TOKENS),
                                         ("stop", ["a", "b", "c", "d"]), ("top_p", 1.0),
                                         ("temperature", 0.01), ("best_of", 1)])
def test_boundary_values_accepted(server, field, value):
    r = server.post("/generate", {"inputs": PLAIN, "parameters": {"max_new_tokens": 1, field: value}})
    assert r.status_code == 200, r.text


def test_prompt_too_long_422(server):
    text = " ".join(f"word{i}" for i in range(400))
    n = len(server.tokenize(text))
    assert n > MAX_INPUT_TOKENS
    for route in ("/generate", "/generate_stream"):
        r = server.post(route, {"inputs": text, "parameters": {"max_new_tokens": 1}})
        tgi_error(r, 422, "validation")
    r = server.post("/v1/completions", {"model": SERVED_NAME, "prompt": text, "max_tokens": 1})
    openai_error(r, 422)


def test_input_plus_new_tokens_over_total_422(server):
    n = len(server.tokenize(PLAIN))
    ok = MAX_TOTAL_TOKENS - n
    r = server.post("/generate", {"inputs": PLAIN, "parameters": {"max_new_tokens": ok + 1}})
    tgi_error(r, 422, "validation")
    r = server.post("/v1/completions", {"model": SERVED_NAME, "prompt": PLAIN, "max_tokens": ok + 1})
    openai_error(r, 422)


def test_decoder_input_details_with_stream_422(server):
    r = server.post("/generate_stream", {"inputs": PLAIN, "parameters": {
        "max_new_tokens": 2, "decoder_input_details": True}})
    tgi_error(r, 422, "validation")
    r = server.post("/", {"inputs": PLAIN, "stream": True, "parameters": {
        "max_new_tokens": 2, "decoder_input_details": True}})
    tgi_error(r, 422, "validation")


@pytest.mark.parametrize("body", [b"{not json", b"", b"[1, 2", b'{"inputs": 5}',
                                  b'{"inputs": "x", "parameters": {"max_new_tokens": "ten"}}',
                                  b'{"inputs": "x", "parameters": []}',
                                  b'{"inputs": "x", "parameters": {"stop": "not-a-list"}}'])
def test_malformed_json_400(server, body):
    for route in ("/generate", "/generate_stream"):
        r = server.post(route, body)
        tgi_error(r, 400, "bad_request")


@pytest.mark.parametrize("route", ["/v1/completions", "/v1/chat/completions"])
def test_openai_malformed_400(server, route):
    openai_error(server.post(route, b"{oops"), 400)
    openai_error(server.post(route, {"model": SERVED_NAME, "messages": "nope", "prompt": 7}), 400)


def test_unknown_adapter_404_shapes(server):
    tgi_error(server.post("/generate", {"inputs": PLAIN, "parameters": {"adapter_id": "nope",
                                                                        "max_new_tokens": 2}}),
              404, "not_found")
    openai_error(server.post("/v1/completions", {"model": "nope", "prompt": PLAIN, "max_tokens": 2}), 404)
    openai_error(server.post("/v1/chat/completions", {"model": "nope", "max_tokens": 2,
                                                      "messages": [{"role": "user", "content": "hi"}]}), 404)


def test_stream_errors_are_status_or_sse_event(server):
    """A stream that fails before its first token answers with the status code and a JSON
    body; if the server had already opened the stream, the error must be one SSE event of the
    documented shape that ends the stream."""
    r = server.post("/generate_stream", {"inputs": PLAIN, "parameters": {"adapter_id": "nope",
                                                                         "max_new_tokens": 2}},
                    stream=True)
    if r.status_code == 200:
        events = stream_events(r)
        assert len(events) == 1 and set(events[0]) == {"error", "error_type"}, events
        assert events[0]["error_type"] == "not_found"
    else:
        tgi_error(r, 404, "not_found")
    r = server.post("/v1/chat/completions", {"model": "nope", "stream": True, "max_tokens": 2,
                                             "messages": [{"role": "user", "content": "hi"}]}, stream=True)
    if r.status_code == 200:
        events = [e for e in stream_events(r) if e != "[DONE]"]
        assert len(events) == 1 and isinstance(events[0]["error"], dict), events
        assert events[0]["error"]["message"]
    else:
        openai_error(r, 404)


def _raw_request(port, head: bytes, body_chunks, read_timeout=60) -> bytes:
    s = socket.create_connection(("127.0.0.1", port), timeout=read_timeout)
    try:
        try:
            s.sendall(head)
            for c in body_chunks:
                s.sendall(c)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = b""
        try:
            while True:
                if b"\r\n\r\n" in data:
                    head_part, _, rest = data.partition(b"\r\n\r\n")
                    length = None
                    for line in head_part.split(b"\r\n")[1:]:
                        k, _, v = line.partition(b":")
                        if k.strip().lower() == b"content-length":
                            length = int(v.strip())
                    if length is not None and len(rest) >= length:
                        break
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except (ConnectionResetError, socket.timeout):
            pass
        return data
    finally:
        s.close()


def test_payload_too_large_413(server):
    limit = 2_000_000
    body = json.dumps({"inputs": "a" * (limit + 10), "parameters": {"max_new_tokens": 1}}).encode()
    head = (f"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    chunks = [body[i:i + 65536] for i in range(0, len(body), 65536)]
    resp = _raw_request(server.port, head, chunks)
    status_line = resp.split(b"\r\n", 1)[0]
    assert b" 413 " in status_line + b" ", resp[:300]
    payload = json.loads(resp.partition(b"\r\n\r\n")[2] or b"{}")
    assert payload.get("error_type") == "payload_too_large", resp[:500]
    # just under the limit is not 413 (the prompt is then too long: 422)
    small = {"inputs": "a " * 10, "parameters": {"max_new_tokens": 1}}
    assert server.post("/generate", small).status_code == 200
    # the server is still healthy
    assert server.get("/health").status_code == 200


def test_unknown_route_and_method(server):
    assert server.get("/no/such/route").status_code == 404
    assert server.get("/generate").status_code in (404, 405)
