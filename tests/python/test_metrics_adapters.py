"""/metrics (Prometheus text: TGI's names and types, counts that move with requests, per-adapter
counts) and the adapter management routes (vLLM's load/unload, /v1/adapters, /v1/models)."""
from __future__ import annotations

import time

import openai
import pytest

from conftest import SERVED_NAME
from helpers import Metrics, chat_prompt, openai_error, tgi_error

PLAIN = "The history of the Roman Empire"
Q0 = "What is the capital of France?"

COUNTERS = ["tgi_request_count", "tgi_request_success", "tgi_request_failure",
            "tgi_batch_inference_count", "tgi_batch_inference_success",
            "mil_adapter_requests_total", "mil_prefix_cache_hit_tokens_total", "mil_preemptions_total"]
HISTOGRAMS = ["tgi_request_duration", "tgi_request_validation_duration", "tgi_request_queue_duration",
              "tgi_request_inference_duration", "tgi_request_mean_time_per_token_duration",
              "tgi_request_input_length", "tgi_request_max_new_tokens", "tgi_request_generated_tokens",
              "tgi_batch_next_size", "tgi_batch_inference_duration", "tgi_batch_forward_duration",
              "tgi_batch_decode_duration"]
GAUGES = ["tgi_queue_size", "tgi_batch_current_size", "tgi_batch_current_max_tokens",
          "tgi_batch_max_total_tokens", "mil_adapters_resident", "mil_adapters_registered",
          "mil_kv_blocks_total", "mil_kv_blocks_free"]


def test_metrics_names_and_types(server):
    # make sure every family has samples (failures, adapters, prefill and decode)
    server.generate(PLAIN, max_new_tokens=2)
    server.generate(PLAIN, max_new_tokens=2, adapter_id="caps")
    server.post("/generate", {"inputs": PLAIN, "parameters": {"max_new_tokens": 0}})
    r = server.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain"), r.headers
    m = Metrics.parse(r.text)
    for name in COUNTERS:
        assert m.family_type(name) == "counter", (name, m.family_type(name))
        assert m.has(name), name
    for name in GAUGES:
        assert m.family_type(name) == "gauge", (name, m.family_type(name))
        assert m.has(name), name
    for name in HISTOGRAMS:
        assert m.family_type(name) == "histogram", (name, m.family_type(name))
        assert m.has(name + "_count") and m.has(name + "_sum") and m.has(name + "_bucket"), name
        buckets = [(float(l["le"]), v) for n, l, v in m.samples if n == name + "_bucket"
                   and all(k in ("le", "method") for k in l) and l.get("method") in (None, "prefill")]
        assert buckets and buckets[-1][0] == float("inf"), name
        counts = [v for _, v in sorted(buckets)]
        assert counts == sorted(counts), f"{name} buckets not cumulative"
    for method in ("prefill", "decode"):
        assert m.value("tgi_batch_inference_count", method=method) >= 1
        assert m.value("tgi_batch_inference_duration_count", method=method) >= 1
    assert m.value("tgi_request_failure", err="validation") >= 1
    assert m.value("mil_kv_blocks_total") == server.info()["kv_blocks"]
    assert 0 <= m.value("mil_kv_blocks_free") <= m.value("mil_kv_blocks_total")
    assert m.value("mil_adapters_registered") >= 2
    assert m.value("tgi_batch_max_total_tokens") == server.info()["max_batch_total_tokens"]


def test_metrics_counts_move(server):
    before = server.metrics()
    n_in = len(server.tokenize(PLAIN))
    gen_tokens = 0
    for adapter in ("caps", "caps", "pirate", ""):
        r = server.generate(PLAIN, max_new_tokens=5, adapter_id=adapter, details=True)
        gen_tokens += r["details"]["generated_tokens"]
    for _ in range(3):
        server.post("/generate", {"inputs": PLAIN, "parameters": {"temperature": -1}})
    # The engine's gauges are refreshed after the step that sent the last token: wait until
    # the batch is empty (a response can reach the client before its step has ended).
    deadline = time.monotonic() + 10
    after = server.metrics()
    while (after.value("tgi_batch_current_size") != 0 or after.value("tgi_queue_size") != 0) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
        after = server.metrics()

    def d(name, **labels):
        return after.value(name, 0, **labels) - before.value(name, 0, **labels)

    assert d("tgi_request_count") == 7
    assert d("tgi_request_success") == 4
    assert d("tgi_request_failure", err="validation") == 3
    assert d("tgi_request_generated_tokens_count") == 4
    assert d("tgi_request_generated_tokens_sum") == gen_tokens
    assert d("tgi_request_input_length_count") == 4
    assert d("tgi_request_input_length_sum") == 4 * n_in
    assert d("tgi_request_max_new_tokens_sum") == 4 * 5
    assert d("tgi_request_duration_count") == 4
    assert d("tgi_request_mean_time_per_token_duration_count") == 4
    assert d("mil_adapter_requests_total", adapter="caps") == 2
    assert d("mil_adapter_requests_total", adapter="pirate") == 1
    assert d("tgi_batch_inference_count", method="prefill") >= 1
    assert d("tgi_batch_inference_count", method="decode") >= 4
    assert after.value("tgi_queue_size") == 0
    assert after.value("tgi_batch_current_size") == 0


def test_openai_requests_counted(server):
    before = server.metrics()
    oai = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    oai.chat.completions.create(model="pirate", max_tokens=2, messages=[{"role": "user", "content": Q0}])
    oai.completions.create(model="caps", prompt=PLAIN, max_tokens=2)
    after = server.metrics()
    assert after.value("tgi_request_count") - before.value("tgi_request_count") == 2
    assert after.value("mil_adapter_requests_total", 0, adapter="pirate") - \
        before.value("mil_adapter_requests_total", 0, adapter="pirate") == 1
    assert after.value("mil_adapter_requests_total", 0, adapter="caps") - \
        before.value("mil_adapter_requests_total", 0, adapter="caps") == 1


# --- adapter management ---------------------------------------------------------------
def _models(server):
    r = server.get("/v1/models")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body.get("object") == "list"
    return [m["id"] for m in body["data"]]


def _adapters(server):
    r = server.get("/v1/adapters")
    assert r.status_code == 200, r.text
    return {a["name"]: a for a in r.json()}


def test_adapters_list(server):
    ads = _adapters(server)
    assert {"caps", "pirate"} <= set(ads)
    for a in ads.values():
        assert set(a) >= {"name", "source", "resident", "pins"}
        assert isinstance(a["resident"], bool) and isinstance(a["pins"], int) and a["pins"] >= 0
    assert ads["caps"]["source"] == "startup"


def test_load_use_unload(server, adapter_dir, demo):
    name = "pirate-rt"
    r = server.post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": "smollm2-pirate"})
    assert r.status_code == 200, r.text
    assert name in _models(server)
    assert name in _adapters(server)
    out = server.generate(chat_prompt(Q0), max_new_tokens=16, adapter_id=name)
    assert out["generated_text"] == demo["pirate"][0]
    oai = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    c = oai.chat.completions.create(model=name, max_tokens=16, temperature=0, messages=[{"role": "user", "content": Q0}])
    assert c.choices[0].message.content == demo["pirate"][0]
    # absolute path inside --adapter-dir is accepted too
    r = server.post("/v1/load_lora_adapter", {"lora_name": "caps-abs",
                                              "lora_path": str(adapter_dir / "smollm2-caps")})
    assert r.status_code == 200, r.text
    assert server.generate(chat_prompt(Q0), max_new_tokens=16, adapter_id="caps-abs")["generated_text"] \
        == demo["caps"][0]
    # duplicate name → 400
    r = server.post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": "smollm2-pirate"})
    assert r.status_code == 400, r.text
    # unload → gone
    for n in (name, "caps-abs"):
        r = server.post("/v1/unload_lora_adapter", {"lora_name": n})
        assert r.status_code == 200, r.text
        assert n not in _models(server)
        assert n not in _adapters(server)
    tgi_error(server.post("/generate", {"inputs": PLAIN, "parameters": {"adapter_id": name,
                                                                        "max_new_tokens": 1}}),
              404, "not_found")
    with pytest.raises(openai.NotFoundError):
        oai.completions.create(model=name, prompt=PLAIN, max_tokens=1)


@pytest.mark.parametrize("path", ["../smollm2-caps", "/etc", "escape", "no-such-folder",
                                  "smollm2-caps/../../x"])
def test_load_refused_paths(server, path):
    r = server.post("/v1/load_lora_adapter", {"lora_name": "bad-" + str(abs(hash(path))), "lora_path": path})
    assert r.status_code in (404, 422), r.text
    if path != "no-such-folder":
        assert r.status_code == 422, r.text
    assert ("bad-" + str(abs(hash(path)))) not in _models(server)


def test_load_outside_adapter_dir_refused(server):
    from helpers import CAPS_DIR
    r = server.post("/v1/load_lora_adapter", {"lora_name": "outside", "lora_path": str(CAPS_DIR)})
    assert r.status_code == 422, r.text


def test_unload_unknown_404(server):
    r = server.post("/v1/unload_lora_adapter", {"lora_name": "never-loaded"})
    assert r.status_code == 404, r.text


def test_management_bad_json_400(server):
    openai_error(server.post("/v1/load_lora_adapter", b"{nope"), 400)
    openai_error(server.post("/v1/load_lora_adapter", {"lora_name": 5}), 400)
