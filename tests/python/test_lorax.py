"""LoRAX parameters through the unmodified `lorax-client`: adapter_id (registered name, folder
in --adapter-dir), adapter_source "local" (and its refusals), merged_adapters (linear), and
huggingface_hub's InferenceClient against the TGI routes."""
from __future__ import annotations

import math

import pytest
from huggingface_hub import InferenceClient
from lorax import Client as LoraxClient
from lorax.errors import NotFoundError, ValidationError as LoraxValidationError
from lorax.types import MergedAdapters

from conftest import SERVED_NAME
from helpers import chat_prompt, tgi_error

Q0 = "What is the capital of France?"
PLAIN = "The history of the Roman Empire"


@pytest.fixture(scope="module")
def lorax(server):
    return LoraxClient(server.url, timeout=180)


# lorax-client parses `details` into LoRAX's types, which require `details.prompt_tokens`
# (Details and StreamDetails). The functional tests below pass details=False so that they test
# the adapter logic whatever the details; test_lorax_client_default_details tests the default.
def lgen(lorax, prompt, **kw):
    kw.setdefault("details", False)
    return lorax.generate(prompt, **kw).generated_text


def lstream(lorax, prompt, **kw):
    kw.setdefault("details", False)
    return list(lorax.generate_stream(prompt, **kw))


def test_lorax_client_default_details(lorax, server, demo):
    """The unmodified client with its defaults (details=True) parses MIL's answers."""
    n_in = len(demo["prompt_ids"][0])
    r = lorax.generate(chat_prompt(Q0), adapter_id="caps", max_new_tokens=16)
    assert r.generated_text == demo["caps"][0]
    assert [t.id for t in r.details.tokens][: len(demo["ids"]["caps"][0])] == demo["ids"]["caps"][0]
    assert r.details.prompt_tokens == n_in
    events = list(lorax.generate_stream(chat_prompt(Q0), adapter_id="caps", max_new_tokens=16))
    assert events[-1].generated_text == demo["caps"][0]
    assert events[-1].details.prompt_tokens == n_in


def test_adapter_id_registered(lorax, server, demo):
    for name in ("caps", "pirate"):
        assert lgen(lorax, chat_prompt(Q0), adapter_id=name, max_new_tokens=16) == demo[name][0]
        out = server.generate(chat_prompt(Q0), adapter_id=name, max_new_tokens=16, details=True)
        assert [t["id"] for t in out["details"]["tokens"]][: len(demo["ids"][name][0])] == demo["ids"][name][0]
    assert lgen(lorax, chat_prompt(Q0), max_new_tokens=16) == demo["base"][0]
    assert lgen(lorax, chat_prompt(Q0), adapter_id="", max_new_tokens=16) == demo["base"][0]


def test_adapter_folder_in_adapter_dir(lorax, demo):
    # no adapter_source: a folder of that name inside --adapter-dir
    assert lgen(lorax, chat_prompt(Q0), adapter_id="smollm2-caps", max_new_tokens=16) == demo["caps"][0]
    assert lgen(lorax, chat_prompt(Q0), adapter_id="smollm2-pirate", adapter_source="local",
                max_new_tokens=16) == demo["pirate"][0]


def test_unknown_adapter_404(lorax, server):
    with pytest.raises(NotFoundError):
        lgen(lorax, PLAIN, adapter_id="no-such-adapter", max_new_tokens=2)
    r = server.post("/generate", {"inputs": PLAIN, "parameters": {"max_new_tokens": 2,
                                                                  "adapter_id": "no-such-adapter"}})
    tgi_error(r, 404, "not_found")
    r = server.post("/generate", {"inputs": PLAIN, "parameters": {
        "max_new_tokens": 2, "adapter_id": "no-such-dir", "adapter_source": "local"}})
    tgi_error(r, 404, "not_found")


@pytest.mark.parametrize("bad_id", ["../smollm2-caps", "smollm2-caps/../../adapters/smollm2-caps",
                                    "..", "/etc", "escape", "smollm2-caps/../../../etc"])
def test_local_path_traversal_refused(server, lorax, bad_id, adapter_dir):
    r = server.post("/generate", {"inputs": PLAIN, "parameters": {
        "max_new_tokens": 2, "adapter_id": bad_id, "adapter_source": "local"}})
    tgi_error(r, 422, "validation")
    with pytest.raises(LoraxValidationError):
        lgen(lorax, PLAIN, adapter_id=bad_id, adapter_source="local", max_new_tokens=2)


def test_absolute_path_inside_adapter_dir_refused(server, adapter_dir):
    # SERVING.md: absolute paths are refused for adapter_source "local"
    r = server.post("/generate", {"inputs": PLAIN, "parameters": {
        "max_new_tokens": 2, "adapter_id": str(adapter_dir / "smollm2-caps"), "adapter_source": "local"}})
    tgi_error(r, 422, "validation")


def merged(ids_, weights, strategy="linear"):
    return MergedAdapters(ids=ids_, weights=weights, merge_strategy=strategy, density=1.0)


def raw_merged(server, prompt, ids_, weights, n):
    return server.generate(prompt, max_new_tokens=n, details=True, merged_adapters={
        "ids": ids_, "weights": weights, "merge_strategy": "linear"})


def assert_same_tokens(a, b, n=None, tol=2e-2):
    ta, tb = a["details"]["tokens"], b["details"]["tokens"]
    n = n or min(len(ta), len(tb))
    assert [t["id"] for t in ta[:n]] == [t["id"] for t in tb[:n]], (a["generated_text"], b["generated_text"])
    for x, y in zip(ta[:n], tb[:n]):
        assert math.isclose(x["logprob"], y["logprob"], abs_tol=tol), (x, y)


def test_merged_linear_unit_weights_equal_single_adapter(lorax, server, demo):
    """Σ wᵢ·Bᵢ·Aᵢ with w = (1, 0) is exactly caps' delta (and (0, 1) pirate's)."""
    p = chat_prompt(Q0)
    assert lgen(lorax, p, merged_adapters=merged(["caps", "pirate"], [1.0, 0.0]), max_new_tokens=16) \
        == demo["caps"][0]
    assert lgen(lorax, p, merged_adapters=merged(["caps", "pirate"], [0.0, 1.0]), max_new_tokens=16) \
        == demo["pirate"][0]
    caps = server.generate(p, adapter_id="caps", max_new_tokens=16, details=True)
    pirate = server.generate(p, adapter_id="pirate", max_new_tokens=16, details=True)
    assert_same_tokens(raw_merged(server, p, ["caps", "pirate"], [1.0, 0.0], 16), caps)
    assert_same_tokens(raw_merged(server, p, ["caps", "pirate"], [0.0, 1.0], 16), pirate)
    # the order of ids does not matter
    assert_same_tokens(raw_merged(server, p, ["pirate", "caps"], [0.0, 1.0], 16), caps)
    # (2, 0): twice caps' delta, a different model than caps
    m20 = raw_merged(server, p, ["caps", "pirate"], [2.0, 0.0], 4)
    assert [t["logprob"] for t in m20["details"]["tokens"]] != [t["logprob"] for t in caps["details"]["tokens"][:4]]


def test_merged_mix_is_deterministic(lorax, server):
    p = chat_prompt("Name a fruit.")
    a = raw_merged(server, p, ["caps", "pirate"], [0.5, 0.5], 12)
    b = raw_merged(server, p, ["caps", "pirate"], [0.5, 0.5], 12)
    assert_same_tokens(a, b, tol=1e-5)
    kw = dict(merged_adapters=merged(["caps", "pirate"], [0.5, 0.5]), max_new_tokens=12)
    assert lgen(lorax, p, **kw) == a["generated_text"]


def test_lorax_stream_local_and_merged(lorax, server, demo):
    # The stream's last event carries details (prompt_tokens required by lorax-client).
    stream = lstream(lorax, chat_prompt(Q0), adapter_id="smollm2-pirate", adapter_source="local",
                     max_new_tokens=16)
    assert stream[-1].generated_text == demo["pirate"][0]
    p = chat_prompt("Name a fruit.")
    a = raw_merged(server, p, ["caps", "pirate"], [0.5, 0.5], 12)
    kw = dict(merged_adapters=merged(["caps", "pirate"], [0.5, 0.5]), max_new_tokens=12)
    assert lstream(lorax, p, **kw)[-1].generated_text == a["generated_text"]


def test_merged_refusals(server):
    def post(m):
        return server.post("/generate", {"inputs": PLAIN, "parameters": {"max_new_tokens": 2,
                                                                          "merged_adapters": m}})
    tgi_error(post({"ids": ["caps", "pirate"], "weights": [0.5, 0.5], "merge_strategy": "ties",
                    "density": 0.5}), 422, "validation")
    tgi_error(post({"ids": ["caps", "no-such-adapter"], "weights": [0.5, 0.5],
                    "merge_strategy": "linear"}), 404, "not_found")


# --- huggingface_hub InferenceClient --------------------------------------------------
@pytest.fixture(scope="module")
def hf(server):
    return InferenceClient(base_url=server.url, timeout=180)


def test_hf_text_generation(hf, server):
    ref = server.generate(PLAIN, max_new_tokens=8, details=True)
    # huggingface_hub posts to `/` without return_full_text: TGI's compat default (true) applies
    assert hf.text_generation(PLAIN, max_new_tokens=8) == PLAIN + ref["generated_text"]
    assert hf.text_generation(PLAIN, max_new_tokens=8, return_full_text=False) == ref["generated_text"]
    out = hf.text_generation(PLAIN, max_new_tokens=8, details=True, return_full_text=False)
    assert out.generated_text == ref["generated_text"]
    assert [t.id for t in out.details.tokens] == [t["id"] for t in ref["details"]["tokens"]]
    assert out.details.finish_reason == "length"
    pieces = list(hf.text_generation(PLAIN, max_new_tokens=8, stream=True))
    assert "".join(pieces) == ref["generated_text"]
    events = list(hf.text_generation(PLAIN, max_new_tokens=8, stream=True, details=True,
                                     return_full_text=False))
    assert events[-1].generated_text == ref["generated_text"]
    assert events[-1].details.generated_tokens == 8


def test_hf_text_generation_adapter(hf, demo):
    assert hf.text_generation(chat_prompt(Q0), max_new_tokens=16, adapter_id="pirate",
                              return_full_text=False) == demo["pirate"][0]


def test_hf_chat_completion(hf, demo):
    # With base_url and no model, huggingface_hub sends its placeholder model="dummy": the base.
    r = hf.chat_completion(messages=[{"role": "user", "content": Q0}], max_tokens=16, temperature=0)
    assert r.choices[0].message.content == demo["base"][0]
    r = hf.chat_completion(messages=[{"role": "user", "content": Q0}], max_tokens=16, model=SERVED_NAME,
                           temperature=0)
    assert r.choices[0].message.content == demo["base"][0]
    r = hf.chat_completion(messages=[{"role": "user", "content": Q0}], max_tokens=16, model="caps", temperature=0)
    assert r.choices[0].message.content == demo["caps"][0]
    pieces = [c.choices[0].delta.content or "" for c in hf.chat_completion(
        messages=[{"role": "user", "content": Q0}], max_tokens=16, model="pirate", stream=True,
        temperature=0)]
    assert "".join(pieces) == demo["pirate"][0]
