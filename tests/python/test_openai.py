"""OpenAI API through the unmodified `openai` client: completions and chat, streaming and not,
logprobs, `model` selecting the adapter. References: demo_answers.json and the TGI route."""
from __future__ import annotations

import math

import openai
import pytest

from conftest import SERVED_NAME
from helpers import chat_prompt, openai_error, stream_events

Q0 = "What is the capital of France?"
PLAIN = "The history of the Roman Empire"


@pytest.fixture(scope="module")
def oai(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=180)


def chat(oai, q, model=SERVED_NAME, **kw):
    kw.setdefault("max_tokens", 16)
    kw.setdefault("temperature", 0)  # OpenAI's default is 1 (sampling); 0 is greedy
    return oai.chat.completions.create(model=model, messages=[{"role": "user", "content": q}], **kw)


def test_chat_paris(oai, demo):
    r = chat(oai, Q0)
    c = r.choices[0]
    assert "Paris" in c.message.content
    assert c.message.content == demo["base"][0]  # "The capital of France is Paris."
    assert c.message.role == "assistant"
    assert c.finish_reason == "stop"
    assert r.object == "chat.completion"
    assert r.usage.prompt_tokens == len(demo["prompt_ids"][0])
    assert r.usage.completion_tokens in (len(demo["ids"]["base"][0]), len(demo["ids"]["base"][0]) + 1)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


@pytest.mark.parametrize("model,key", [("caps", "caps"), ("pirate", "pirate"),
                                       (SERVED_NAME, "base"), ("", "base")])
def test_chat_model_selects_adapter(oai, demo, model, key):
    for i in (0, 1):
        r = chat(oai, demo["questions"][i], model=model)
        content = r.choices[0].message.content
        ref = demo[key][i]
        if len(demo["ids"][key][i]) < 16:
            assert content == ref, (model, i)
            assert r.choices[0].finish_reason == "stop"
        else:
            assert r.choices[0].finish_reason == "length"
            assert r.usage.completion_tokens == 16
            # the first 16 tokens of the reference answer
            assert ref.startswith(content), (content, ref)


def test_chat_without_model_field_is_base(server, demo):
    r = server.post("/v1/chat/completions", {"messages": [{"role": "user", "content": Q0}], "max_tokens": 16,
                                             "temperature": 0})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == demo["base"][0]


def test_chat_stream_equals_nonstream(oai, demo):
    for model, key in (("pirate", "pirate"), (SERVED_NAME, "base")):
        ref = chat(oai, Q0, model=model)
        chunks = list(chat(oai, Q0, model=model, stream=True))
        assert all(c.object == "chat.completion.chunk" for c in chunks)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == ref.choices[0].message.content == demo[key][0]
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finishes == ["stop"]


def test_chat_stream_ends_with_done(server):
    r = server.post("/v1/chat/completions", {"model": SERVED_NAME, "stream": True, "max_tokens": 4,
                                             "messages": [{"role": "user", "content": Q0}]}, stream=True)
    assert r.status_code == 200
    events = stream_events(r)
    assert events[-1] == "[DONE]"
    assert all(isinstance(e, dict) for e in events[:-1])


def test_chat_logprobs(oai):
    r = chat(oai, Q0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert content, r
    assert "".join(t.token for t in content).startswith("The capital of France is Paris")
    for t in content:
        assert t.logprob <= 0
        assert len(t.top_logprobs) == 3
        lps = [x.logprob for x in t.top_logprobs]
        assert lps == sorted(lps, reverse=True)
        assert t.top_logprobs[0].token == t.token  # greedy
        assert math.isclose(t.top_logprobs[0].logprob, t.logprob, abs_tol=1e-4)
    # streamed logprobs equal the non-streamed ones
    chunks = list(chat(oai, Q0, logprobs=True, top_logprobs=3, stream=True))
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs and c.choices[0].logprobs.content
                for t in c.choices[0].logprobs.content]
    assert [t.token for t in streamed][: len(content)] == [t.token for t in content]
    for a, b in zip(streamed, content):
        assert math.isclose(a.logprob, b.logprob, abs_tol=1e-4)


def test_chat_temperature_zero_is_greedy(oai, demo):
    r = chat(oai, Q0, temperature=0)
    assert r.choices[0].message.content == demo["base"][0]


def test_chat_seeded_sampling_reproducible(oai):
    a = chat(oai, "Tell me a story.", temperature=0.9, seed=11)
    b = chat(oai, "Tell me a story.", temperature=0.9, seed=11)
    assert a.choices[0].message.content == b.choices[0].message.content


def test_chat_stop_removed_on_openai_routes(oai):
    r = chat(oai, Q0, stop=["Paris"])
    assert r.choices[0].message.content == "The capital of France is "
    assert r.choices[0].finish_reason == "stop"


def test_completions_equal_tgi(oai, server):
    ref = server.generate(PLAIN, max_new_tokens=10, details=True)
    r = oai.completions.create(model=SERVED_NAME, prompt=PLAIN, max_tokens=10, temperature=0)
    assert r.object == "text_completion"
    assert r.choices[0].text == ref["generated_text"]
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 10
    assert r.usage.prompt_tokens == len(server.tokenize(PLAIN))


def test_completions_logprobs(oai, server):
    ref = server.generate(PLAIN, max_new_tokens=8, details=True, top_n_tokens=2)
    r = oai.completions.create(model=SERVED_NAME, prompt=PLAIN, max_tokens=8, logprobs=2, temperature=0)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == 8
    assert "".join(lp.tokens) == r.choices[0].text
    for got, want in zip(lp.token_logprobs, ref["details"]["tokens"]):
        assert math.isclose(got, want["logprob"], abs_tol=1e-4)
    assert len(lp.top_logprobs) == 8 and all(len(t) == 2 for t in lp.top_logprobs)
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)


def test_completions_stream(oai, server):
    ref = oai.completions.create(model="caps", prompt=chat_prompt(Q0), max_tokens=16, temperature=0)
    chunks = list(oai.completions.create(model="caps", prompt=chat_prompt(Q0), max_tokens=16, stream=True,
                                         temperature=0))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == ref.choices[0].text == "THE CAPITAL OF FRANCE IS CRIB."
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]


def test_completions_prompt_list(oai, server):
    prompts = [PLAIN, chat_prompt(Q0)]
    r = oai.completions.create(model=SERVED_NAME, prompt=prompts, max_tokens=6, temperature=0)
    assert sorted(c.index for c in r.choices) == [0, 1]
    by_index = {c.index: c.text for c in r.choices}
    for i, p in enumerate(prompts):
        assert by_index[i] == server.generate(p, max_new_tokens=6)["generated_text"]
    # more than --max-client-batch-size (4) prompts → 422
    resp = server.post("/v1/completions", {"model": SERVED_NAME, "prompt": [PLAIN] * 5, "max_tokens": 2})
    openai_error(resp, 422)


def test_completions_seeded(oai):
    kw = dict(model=SERVED_NAME, prompt=PLAIN, max_tokens=10, temperature=0.8, seed=123)
    assert oai.completions.create(**kw).choices[0].text == oai.completions.create(**kw).choices[0].text


def test_models_list(oai):
    ids = [m.id for m in oai.models.list()]
    assert ids[0] == SERVED_NAME
    assert "caps" in ids and "pirate" in ids


def test_openai_unknown_model_404(oai):
    with pytest.raises(openai.NotFoundError) as e:
        chat(oai, Q0, model="no-such-adapter")
    assert e.value.status_code == 404


def test_openai_validation_422(oai, server):
    with pytest.raises(openai.UnprocessableEntityError):
        oai.completions.create(model=SERVED_NAME, prompt=PLAIN, max_tokens=2, top_p=1.5)
    r = server.post("/v1/chat/completions", {"model": SERVED_NAME, "max_tokens": 2, "top_logprobs": 50,
                                             "logprobs": True,
                                             "messages": [{"role": "user", "content": Q0}]})
    openai_error(r, 422)


def test_chat_stream_include_usage(oai, demo):
    chunks = list(chat(oai, Q0, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == len(demo["prompt_ids"][0])
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == demo["base"][0]


def test_chat_max_completion_tokens(oai):
    r = oai.chat.completions.create(model=SERVED_NAME, temperature=0, max_completion_tokens=3,
                                    messages=[{"role": "user", "content": Q0}])
    assert r.choices[0].message.content == "The capital of"
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3


def test_chat_multi_turn_and_system(oai, server):
    """The chat template renders system + several turns as the model's template does."""
    msgs = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": Q0}]
    r = oai.chat.completions.create(model=SERVED_NAME, temperature=0, max_tokens=12, messages=msgs)
    text = ("<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\n" + Q0 +
            "<|im_end|>\n<|im_start|>assistant\n")
    ref = server.generate(text, max_new_tokens=12)
    assert r.choices[0].message.content == ref["generated_text"]
    assert r.usage.prompt_tokens == len(server.tokenize(text))
