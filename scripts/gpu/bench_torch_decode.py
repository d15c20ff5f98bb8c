#!/usr/bin/env python3
"""PyTorch/transformers baselines on the H100 for MIL's GPU figures (Llama-3-8B shapes,
random bf16 weights built in memory by make_llama3_8b_random.build_model, or --model DIR).

Measures, each with CUDA events / synchronised wall clock after warm-up:
  * sdpa:   torch scaled_dot_product_attention decode (q_len 1, 32 q / 8 kv heads, d128,
            enable_gqa) at MIL's perf-test shapes; achieved bandwidth = K+V bytes / time.
            K/V rotate among copies so that the set exceeds L2.
  * plain:  batch-1 greedy decode tok/s, manual loop with DynamicCache (eager, sdpa).
  * steps:  one decode step (forward of 1 token/sequence + argmax) at batch 1/8/32/64/128 x
            context 512/2048, eager, with a DynamicCache (plain) and a StaticCache, the
            caches filled with random K/V (no prefill needed).
  * ttft:   prefill of a 128- and a 2048-token prompt (logits of the last token + argmax).
  * compiled: batch-1 decode tok/s with StaticCache + torch.compile(mode="reduce-overhead")
            (CUDA graphs), the best PyTorch path.
Writes JSON (--out) incrementally; a failing section records its error and the rest runs.

    PYTHONUNBUFFERED=1 python3 scripts/gpu/bench_torch_decode.py --out $OUT/torch.json
"""
import argparse
import json
import os
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

RESULTS = {}
OUT = None
T_START = time.time()


def save():
    if OUT:
        with open(OUT, "w") as f:
            json.dump(RESULTS, f, indent=1)


def log(*a):
    print(f"[{time.time() - T_START:7.1f}s]", *a, flush=True)


def cuda_time_ms(fn, warmup=3, reps=10):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2]


def section(name):
    def deco(f):
        def run(*args, **kw):
            log("==", name)
            try:
                f(*args, **kw)
            except Exception as e:  # keep going: one failure must not lose the other numbers
                RESULTS.setdefault("errors", {})[name] = f"{type(e).__name__}: {e}"
                log("FAILED", name, repr(e))
                traceback.print_exc()
                torch.cuda.empty_cache()
            save()
        return run
    return deco


@section("sdpa")
def bench_sdpa(shapes):
    import torch.nn.functional as F

    res = []
    for batch, ctx in shapes:
        kv_bytes = 2 * batch * 8 * ctx * 128 * 2
        copies = max(1, -(-(256 << 20) // kv_bytes))
        ks = [torch.randn(batch, 8, ctx, 128, device="cuda", dtype=torch.bfloat16) for _ in range(copies)]
        vs = [torch.randn(batch, 8, ctx, 128, device="cuda", dtype=torch.bfloat16) for _ in range(copies)]
        q = torch.randn(batch, 32, 1, 128, device="cuda", dtype=torch.bfloat16)
        it = [0]

        def gqa():
            i = it[0] % copies
            it[0] += 1
            return F.scaled_dot_product_attention(q, ks[i], vs[i], enable_gqa=True)

        ms = cuda_time_ms(gqa, warmup=5, reps=50)
        row = {"batch": batch, "ctx": ctx, "kv_bytes": kv_bytes, "gqa_ms": ms,
               "gqa_GBps": kv_bytes / ms / 1e6}
        # The same with K/V already repeated to 32 heads (what a GQA-unaware kernel reads);
        # bandwidth still counted on the 8-head bytes.
        kr = [k.repeat_interleave(4, dim=1) for k in ks[:2]]
        vr = [v.repeat_interleave(4, dim=1) for v in vs[:2]]

        def mha():
            i = it[0] % len(kr)
            it[0] += 1
            return F.scaled_dot_product_attention(q, kr[i], vr[i])

        ms2 = cuda_time_ms(mha, warmup=5, reps=50)
        row.update({"mha_repeated_ms": ms2, "mha_repeated_GBps_of_gqa_bytes": kv_bytes / ms2 / 1e6})
        res.append(row)
        log(row)
        del ks, vs, kr, vr
        torch.cuda.empty_cache()
    RESULTS["sdpa_decode"] = res


def fill_cache(cache, model, batch, ctx):
    cfg = model.config
    for layer in range(cfg.num_hidden_layers):
        k = torch.randn(batch, 8, ctx, 128, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(batch, 8, ctx, 128, device="cuda", dtype=torch.bfloat16)
        cache.update(k, v, layer, {"cache_position": torch.arange(ctx, device="cuda")})


def make_static_cache(model, batch, max_len):
    from transformers import StaticCache

    try:
        return StaticCache(config=model.config, max_cache_len=max_len)
    except TypeError:
        return StaticCache(config=model.config, max_batch_size=batch, max_cache_len=max_len,
                           device="cuda", dtype=torch.bfloat16)


@section("plain_decode")
def bench_plain(model, prompt=128, new=128):
    from transformers import DynamicCache

    ids = torch.randint(0, 128000, (1, prompt), device="cuda")
    res = {}
    for rep in range(2):  # first run warms up
        cache = DynamicCache()
        with torch.inference_mode():
            out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
            tok = out.logits[:, -1:].argmax(-1)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(new):
                out = model(input_ids=tok, past_key_values=cache, use_cache=True)
                tok = out.logits[:, -1:].argmax(-1)
            torch.cuda.synchronize()
            dt = time.perf_counter() - t0
        res = {"prompt": prompt, "new_tokens": new, "seconds": dt, "tok_per_s": new / dt,
               "ms_per_token": dt / new * 1e3}
        del cache
    RESULTS["plain_batch1_decode"] = res
    log(res)


@section("steps")
def bench_steps(model, batches, ctxs, kinds):
    from transformers import DynamicCache

    res = RESULTS.setdefault("decode_step", [])
    for kind in kinds:
        for ctx in ctxs:
            for b in batches:
                entry = {"cache": kind, "batch": b, "ctx": ctx}
                try:
                    with torch.inference_mode():
                        if kind == "dynamic":
                            cache = DynamicCache()
                        else:
                            cache = make_static_cache(model, b, ctx + 32)
                        fill_cache(cache, model, b, ctx)
                        ids = torch.randint(0, 128000, (b, 1), device="cuda")
                        pos = torch.full((b, 1), ctx, device="cuda", dtype=torch.long)
                        cp = torch.tensor([ctx], device="cuda")

                        def step():
                            out = model(input_ids=ids, past_key_values=cache, use_cache=True,
                                        position_ids=pos, cache_position=cp)
                            out.logits[:, -1].argmax(-1)
                            if kind == "dynamic":
                                cache.crop(ctx)  # keep the context length fixed

                        entry["ms"] = cuda_time_ms(step, warmup=2, reps=8)
                        entry["tok_per_s"] = b / entry["ms"] * 1e3
                except Exception as e:
                    entry["error"] = f"{type(e).__name__}: {str(e)[:200]}"
                cache = None
                torch.cuda.empty_cache()
                res.append(entry)
                log(entry)
                save()


@section("ttft")
def bench_ttft(model, prompts):
    from transformers import DynamicCache

    res = []
    for n in prompts:
        ids = torch.randint(0, 128000, (1, n), device="cuda")

        def prefill():
            with torch.inference_mode():
                out = model(input_ids=ids, past_key_values=DynamicCache(), use_cache=True,
                            logits_to_keep=1)
                return out.logits[:, -1].argmax(-1)

        ms = cuda_time_ms(prefill, warmup=2, reps=8)
        res.append({"prompt": n, "ms": ms})
        log(res[-1])
    RESULTS["ttft_eager"] = res


@section("compiled")
def bench_compiled(model, prompt=128, new=128, ctx_steps=(512, 2048)):
    """StaticCache + torch.compile(mode='reduce-overhead') (CUDA graphs) on the decode step."""
    torch._dynamo.config.cache_size_limit = 64
    max_len = max(max(ctx_steps), prompt + new) + 64
    fwd = torch.compile(model.forward, mode="reduce-overhead", fullgraph=False)
    res = {}
    with torch.inference_mode():
        cache = make_static_cache(model, 1, max_len)
        ids = torch.randint(0, 128000, (1, prompt), device="cuda")
        out = model(input_ids=ids, past_key_values=cache, use_cache=True,
                    cache_position=torch.arange(prompt, device="cuda"), logits_to_keep=1)
        tok = out.logits[:, -1:].argmax(-1)
        t_c = time.time()

        def step(tok, p):
            cp = torch.tensor([p], device="cuda")
            out = fwd(input_ids=tok, past_key_values=cache, use_cache=True, cache_position=cp,
                      position_ids=cp.unsqueeze(0))
            return out.logits[:, -1:].argmax(-1).clone()

        for i in range(4):  # compile + graph capture
            tok = step(tok, prompt + i)
        torch.cuda.synchronize()
        res["compile_s"] = time.time() - t_c
        log("compiled in", res["compile_s"])
        start = prompt + 4
        t0 = time.perf_counter()
        for i in range(new):
            tok = step(tok, start + i)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        res.update({"prompt": prompt, "new_tokens": new, "tok_per_s": new / dt,
                    "ms_per_token": dt / new * 1e3})
        # Step time at fixed contexts (the cache holds garbage past the filled part: timing only).
        for ctx in ctx_steps:
            res[f"step_ms_ctx{ctx}"] = cuda_time_ms(lambda: step(tok, ctx), warmup=3, reps=20)
    RESULTS["compiled_batch1_decode"] = res
    log(res)


def main():
    global OUT
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="torch_baselines.json")
    ap.add_argument("--model", default="", help="a saved model dir; default: build in memory")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--sections", default="sdpa,plain,steps,ttft,compiled")
    ap.add_argument("--batches", default="1,8,32,64,128")
    ap.add_argument("--ctxs", default="512,2048")
    ap.add_argument("--step-caches", default="static,dynamic")
    a = ap.parse_args()
    OUT = a.out
    secs = a.sections.split(",")
    torch.backends.cuda.matmul.allow_tf32 = False
    RESULTS["env"] = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0),
                      "sms": torch.cuda.get_device_properties(0).multi_processor_count}
    try:
        import transformers
        RESULTS["env"]["transformers"] = transformers.__version__
    except Exception:
        pass
    log(RESULTS["env"])
    if "sdpa" in secs:
        bench_sdpa([(1, 4096), (1, 16384), (8, 4096), (32, 2048), (32, 512), (128, 512),
                    (64, 2048), (128, 2048)])
    if not any(s in secs for s in ("plain", "steps", "ttft", "compiled")):
        return
    t0 = time.time()
    if a.model:
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.bfloat16).cuda().eval()
    else:
        from make_llama3_8b_random import build_model
        model = build_model(a.layers)
    model.generation_config.eos_token_id = None
    torch.cuda.synchronize()
    RESULTS["model"] = {"params": sum(p.numel() for p in model.parameters()),
                        "layers": a.layers, "build_s": time.time() - t0,
                        "attn_implementation": getattr(model.config, "_attn_implementation", None)}
    log(RESULTS["model"])
    save()
    if "plain" in secs:
        bench_plain(model)
    if "ttft" in secs:
        bench_ttft(model, [128, 2048])
    if "compiled" in secs:
        bench_compiled(model)
    if "steps" in secs:
        bench_steps(model, [int(x) for x in a.batches.split(",")], [int(x) for x in a.ctxs.split(",")],
                    a.step_caches.split(","))
    save()
    log("done")


if __name__ == "__main__":
    main()
