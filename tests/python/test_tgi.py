"""TGI API: the `text_generation` client (generate, generate_stream, details, stop, seed,
return_full_text, truncate) and the raw routes (/generate, /generate_stream, /, /tokenize,
/info, /health). References: the demo answers (transformers + PEFT greedy ids) and requests
done alone."""
from __future__ import annotations

import json
import math

import pytest
import requests
from text_generation import Client

from conftest import MAX_INPUT_TOKENS, MAX_TOTAL_TOKENS, SERVED_NAME
from helpers import chat_prompt, stream_events

Q0 = "What is the capital of France?"
Q1 = "Name a fruit."
PLAIN = "The history of the Roman Empire"


@pytest.fixture(scope="module")
def tgi(server):
    return Client(server.url, timeout=180)


def test_health_info(server):
    r = server.get("/health")
    assert r.status_code == 200 and r.content == b""
    info = server.info()
    assert info["max_input_tokens"] == MAX_INPUT_TOKENS
    assert info["max_total_tokens"] == MAX_TOTAL_TOKENS
    assert info["max_concurrent_requests"] == 256
    assert info["max_stop_sequences"] == 4
    assert info["max_client_batch_size"] == 4
    assert info["block_size"] == 16
    assert info["max_batch_prefill_tokens"] == 2048
    assert isinstance(info["kv_blocks"], int) and info["kv_blocks"] > 0
    assert info["max_batch_total_tokens"] <= info["kv_blocks"] * info["block_size"]
    assert "model_id" in info
    names = [a if isinstance(a, str) else a.get("name") for a in info["adapters"]]
    assert "caps" in names and "pirate" in names, info["adapters"]


def test_tokenize_matches_reference_ids_and_byte_offsets(server, demo):
    for q, ids in zip(demo["questions"], demo["prompt_ids"]):
        toks = server.tokenize(chat_prompt(q))
        assert [t["id"] for t in toks] == ids
    text = "Hello wörld, 東京 🙂!"
    data = text.encode()
    toks = server.tokenize(text)
    assert toks[0]["start"] == 0 and toks[-1]["stop"] == len(data)
    for a, b in zip(toks, toks[1:]):
        assert a["stop"] == b["start"], toks
    for t in toks:
        assert set(t) >= {"id", "text", "start", "stop"}
    # Tokens that cover whole characters carry exactly their bytes.
    assert toks[0]["text"] == data[toks[0]["start"]:toks[0]["stop"]].decode()


@pytest.mark.parametrize("adapter", ["", "caps", "pirate"])
def test_generate_demo_adapter_ids(server, demo, adapter):
    """Greedy token ids equal transformers+PEFT's (demo_answers.json) on the held-out questions."""
    key = adapter or "base"
    for i in (0, 1):
        out = server.generate(chat_prompt(demo["questions"][i]), max_new_tokens=16, details=True,
                              adapter_id=adapter)
        ids = [t["id"] for t in out["details"]["tokens"]]
        ref = demo["ids"][key][i]
        n = min(len(ref), 16)
        assert ids[:n] == ref[:n], (adapter, i, out["generated_text"])
        if len(ref) < 16:  # the reference stopped at EOS
            assert out["details"]["finish_reason"] == "eos_token"
            assert out["generated_text"].strip() == demo[key][i]
            assert out["details"]["tokens"][-1]["special"] is True
        else:
            assert out["details"]["finish_reason"] == "length"
            assert out["details"]["generated_tokens"] == 16


def test_client_generate_details(tgi, server):
    r = tgi.generate(chat_prompt(Q0), max_new_tokens=16, top_n_tokens=3)
    assert r.generated_text == "The capital of France is Paris."
    d = r.details
    assert d.finish_reason.value == "eos_token"
    assert d.generated_tokens == len(d.tokens)
    assert d.seed is None  # greedy
    assert d.prefill == []  # decoder_input_details off
    assert len(d.top_tokens) == len(d.tokens)
    for tok, top in zip(d.tokens, d.top_tokens):
        assert tok.logprob is not None and tok.logprob <= 0
        assert len(top) == 3
        assert [t.logprob for t in top] == sorted([t.logprob for t in top], reverse=True)
        # greedy picks the most likely token
        assert top[0].id == tok.id and math.isclose(top[0].logprob, tok.logprob, abs_tol=1e-4)
    assert "".join(t.text for t in d.tokens if not t.special) == r.generated_text


def test_client_generate_stream_equals_generate(tgi):
    ref = tgi.generate(PLAIN, max_new_tokens=12)
    events = list(tgi.generate_stream(PLAIN, max_new_tokens=12))
    assert len(events) == 12
    assert [e.token.id for e in events] == [t.id for t in ref.details.tokens]
    for e, t in zip(events, ref.details.tokens):
        assert math.isclose(e.token.logprob, t.logprob, abs_tol=1e-4)
    assert all(e.generated_text is None and e.details is None for e in events[:-1])
    assert events[-1].generated_text == ref.generated_text
    assert events[-1].details.finish_reason.value == "length"
    assert events[-1].details.generated_tokens == 12


def test_raw_stream_format(server):
    """`data:{json}\\n\\n` events, index from 1, no [DONE]; final event has input_length."""
    prompt = PLAIN
    n_in = len(server.tokenize(prompt))
    r = server.post("/generate_stream", {"inputs": prompt, "parameters": {"max_new_tokens": 5}},
                    stream=True)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    raw = r.content.decode()
    chunks = [c for c in raw.split("\n\n") if c.strip()]
    assert len(chunks) == 5, raw
    events = []
    for c in chunks:
        assert c.startswith("data:"), c
        events.append(json.loads(c[5:]))
    assert [e["index"] for e in events] == [1, 2, 3, 4, 5]
    for e in events:
        assert set(e["token"]) >= {"id", "text", "logprob", "special"}
    assert events[-1]["details"]["input_length"] == n_in
    assert events[-1]["details"]["finish_reason"] == "length"
    assert events[-1]["details"]["generated_tokens"] == 5
    assert "[DONE]" not in raw


def test_compat_route(server):
    body = {"inputs": PLAIN, "parameters": {"max_new_tokens": 6, "details": True}}
    plain = server.post("/generate", body).json()
    r = server.post("/", body)
    assert r.status_code == 200
    arr = r.json()
    assert isinstance(arr, list) and len(arr) == 1
    # TGI's compat route defaults return_full_text to true (pipeline tag text-generation/missing)
    assert arr[0]["generated_text"] == PLAIN + plain["generated_text"]
    body["parameters"]["return_full_text"] = False
    assert server.post("/", body).json()[0]["generated_text"] == plain["generated_text"]
    r = server.post("/", dict(body, stream=True), stream=True)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = stream_events(r)
    assert events[-1]["generated_text"] == plain["generated_text"]


def test_decoder_input_details_prefill(server, tgi):
    toks = server.tokenize(PLAIN)
    r = tgi.generate(PLAIN, max_new_tokens=1, decoder_input_details=True)
    pre = r.details.prefill
    assert [p.id for p in pre] == [t["id"] for t in toks]
    assert all(p.logprob is not None and p.logprob <= 0 for p in pre[1:])
    # Consistency: the prefill logprob of a token equals the generation logprob of that
    # token one step earlier.
    first = tgi.generate(PLAIN, max_new_tokens=1, top_n_tokens=1)
    nxt = first.details.tokens[0]
    extended = PLAIN + nxt.text
    ext_ids = [t["id"] for t in server.tokenize(extended)]
    assert ext_ids == [t["id"] for t in toks] + [nxt.id]
    r2 = tgi.generate(extended, max_new_tokens=1, decoder_input_details=True)
    assert r2.details.prefill[-1].id == nxt.id
    assert math.isclose(r2.details.prefill[-1].logprob, nxt.logprob, abs_tol=2e-3)


def test_stop_sequences_tgi_keeps_stop_text(tgi):
    r = tgi.generate(chat_prompt(Q0), max_new_tokens=16, stop_sequences=["Paris"])
    assert r.generated_text == "The capital of France is Paris"
    assert r.details.finish_reason.value == "stop_sequence"
    r = tgi.generate(chat_prompt(Q0), max_new_tokens=16, stop_sequences=["nothing-like-this", "France"])
    assert r.generated_text == "The capital of France"
    events = list(tgi.generate_stream(chat_prompt(Q0), max_new_tokens=16, stop_sequences=["France"]))
    assert events[-1].generated_text == "The capital of France"
    assert events[-1].details.finish_reason.value == "stop_sequence"


def test_seed_reproducibility(tgi):
    kw = dict(max_new_tokens=12, do_sample=True, temperature=0.9, top_k=50, top_p=0.95)
    a = tgi.generate(PLAIN, seed=42, **kw)
    b = tgi.generate(PLAIN, seed=42, **kw)
    assert a.generated_text == b.generated_text
    assert [t.id for t in a.details.tokens] == [t.id for t in b.details.tokens]
    assert a.details.seed == 42
    s = list(tgi.generate_stream(PLAIN, seed=42, **kw))
    assert [e.token.id for e in s] == [t.id for t in a.details.tokens]
    # Different seeds sample different continuations (in 8 tries at least one differs).
    texts = {tgi.generate(PLAIN, seed=seed, **kw).generated_text for seed in range(8)}
    assert len(texts) > 1
    # Unseeded sampling reports the seed it drew, and that seed reproduces the text.
    c = tgi.generate(PLAIN, **kw)
    assert c.details.seed is not None
    d = tgi.generate(PLAIN, seed=c.details.seed, **kw)
    assert d.generated_text == c.generated_text


def test_return_full_text(tgi, server):
    r = tgi.generate(PLAIN, max_new_tokens=6, return_full_text=True)
    plain = tgi.generate(PLAIN, max_new_tokens=6)
    assert r.generated_text == PLAIN + plain.generated_text
    events = list(tgi.generate_stream(PLAIN, max_new_tokens=6, return_full_text=True))
    assert events[-1].generated_text == PLAIN + plain.generated_text


def test_truncate_keeps_last_tokens(server, tgi):
    long_text = " ".join(f"item{i} is number {i};" for i in range(150))
    toks = server.tokenize(long_text)
    assert len(toks) > MAX_INPUT_TOKENS  # too long without truncate
    r = server.post("/generate", {"inputs": long_text, "parameters": {"max_new_tokens": 4}})
    assert r.status_code == 422, r.text
    n = 24
    data = long_text.encode()
    tail = data[toks[-n]["start"]:].decode()
    assert [t["id"] for t in server.tokenize(tail)] == [t["id"] for t in toks[-n:]]
    a = tgi.generate(long_text, max_new_tokens=6, truncate=n, decoder_input_details=True)
    b = tgi.generate(tail, max_new_tokens=6, decoder_input_details=True)
    assert len(a.details.prefill) == n
    assert [p.id for p in a.details.prefill] == [t["id"] for t in toks[-n:]]
    assert [t.id for t in a.details.tokens] == [t.id for t in b.details.tokens]


def test_penalties_and_sampling_params_accepted(tgi):
    for kw in (dict(repetition_penalty=1.3), dict(frequency_penalty=1.0), dict(typical_p=0.9, seed=1),
               dict(top_p=0.5, seed=3), dict(top_k=1, do_sample=True, seed=2)):
        r = tgi.generate(PLAIN, max_new_tokens=4, **kw)
        assert r.details.generated_tokens == 4, kw
    # top_k=1 sampling is greedy
    greedy = tgi.generate(PLAIN, max_new_tokens=8)
    k1 = tgi.generate(PLAIN, max_new_tokens=8, do_sample=True, top_k=1, seed=5)
    assert k1.generated_text == greedy.generated_text
    # top_p = 1.0 is accepted as "off" (unlike TGI)
    r = requests.post(tgi.base_url + "/generate",
                      json={"inputs": PLAIN, "parameters": {"max_new_tokens": 2, "top_p": 1.0}})
    assert r.status_code == 200, r.text


def test_repetition_penalty_changes_output(tgi):
    """A strong repetition penalty must change a repetitive greedy continuation."""
    prompt = "1, 2, 1, 2, 1, 2, 1, 2, 1, 2,"
    a = tgi.generate(prompt, max_new_tokens=8)
    b = tgi.generate(prompt, max_new_tokens=8, repetition_penalty=5.0)
    assert a.generated_text != b.generated_text


def test_unknown_fields_ignored(server):
    r = server.post("/generate", {"inputs": PLAIN, "parameters": {"max_new_tokens": 2,
                                  "some_future_field": [1, 2], "best_of": 1, "watermark": False,
                                  "grammar": None}, "extra": True})
    assert r.status_code == 200, r.text


def test_served_model_name(server):
    r = server.get("/v1/models")
    assert r.status_code == 200
    ids = [m["id"] for m in r.json()["data"]]
    assert ids[0] == SERVED_NAME


def test_client_chat_placeholder_model_is_base(tgi, demo):
    # text_generation's Client.chat sends model="tgi", TGI's placeholder: the base model.
    from text_generation.types import Message
    r = tgi.chat(messages=[Message(role="user", content=Q0)], max_tokens=16, temperature=0)
    assert r.choices[0].message.content == demo["base"][0]
