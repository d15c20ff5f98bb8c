#!/usr/bin/env python3
"""Peer benchmark: llama.cpp (through llama-cpp-python) on the default model, CPU.

    python3 -m venv .venv-bench
    CMAKE_ARGS="-DGGML_NATIVE=ON" .venv-bench/bin/pip install llama-cpp-python==0.3.36
    .venv-bench/bin/python scripts/bench_llamacpp.py --model /path/SmolLM2-135M-Instruct.Q4_1.gguf

For each thread count: prefill of a 128-token prompt (one llama_decode batch) and greedy
decode of 128 tokens, one token per llama_decode, after one warm-up run; the figures are the
mean of --runs runs. tokens/s come from llama.cpp's own counters (llama_perf_context:
t_p_eval_ms / t_eval_ms); wall-clock figures around the same calls (which include the
Python loop and the argmax over the vocabulary) are reported next to them.
Prints one JSON line per thread count, then a JSON summary line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

PROMPT_TEXT = (
    "The history of computing is a story of people and machines. Early mechanical calculators "
    "gave way to electronic computers built from vacuum tubes, then transistors, then integrated "
    "circuits. Each step made machines smaller, faster and cheaper, and each step changed who could "
    "use them and what they were used for. Today a phone holds more computing power than the "
    "machines that guided the first missions to the moon, and large language models run on "
    "laptops. This essay looks at the ideas that made that possible, from stored programs and "
    "compilers to operating systems, networks and the open source movement, and at the people "
    "who had those ideas and the problems they were trying to solve at the time."
)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.environ.get("MIL_DEFAULT_MODEL", ""))
    ap.add_argument("--threads", default="2,1", help="comma list of thread counts")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    if not args.model or not os.path.exists(args.model):
        sys.exit(f"model not found: {args.model!r} (pass --model or set MIL_DEFAULT_MODEL)")

    import llama_cpp
    from llama_cpp import Llama

    results = []
    for n_threads in [int(t) for t in args.threads.split(",")]:
        llm = Llama(
            model_path=args.model,
            n_ctx=args.prompt_tokens + args.gen_tokens + 16,
            n_batch=max(512, args.prompt_tokens),
            n_ubatch=max(512, args.prompt_tokens),
            n_threads=n_threads,
            n_threads_batch=n_threads,
            logits_all=False,
            verbose=False,
        )
        ctx = llm.ctx
        n_vocab = llm.n_vocab()
        toks = llm.tokenize(PROMPT_TEXT.encode(), add_bos=False, special=False)
        if len(toks) < args.prompt_tokens:
            toks = (toks * (args.prompt_tokens // len(toks) + 1))
        prompt = toks[: args.prompt_tokens]

        def argmax_last() -> int:
            ptr = llama_cpp.llama_get_logits_ith(ctx, -1)
            return int(np.ctypeslib.as_array(ptr, shape=(n_vocab,)).argmax())

        def one_run():
            llm.reset()
            llama_cpp.llama_perf_context_reset(ctx)
            t0 = time.perf_counter()
            llm.eval(prompt)
            tok = argmax_last()
            t1 = time.perf_counter()
            pf = llama_cpp.llama_perf_context(ctx)
            assert pf.n_p_eval == len(prompt), (pf.n_p_eval, len(prompt))
            prefill_ms = pf.t_p_eval_ms
            generated = [tok]
            llama_cpp.llama_perf_context_reset(ctx)
            t2 = time.perf_counter()
            for _ in range(args.gen_tokens - 1):
                llm.eval([tok])
                tok = argmax_last()
                generated.append(tok)
            t3 = time.perf_counter()
            pf = llama_cpp.llama_perf_context(ctx)
            # llama.cpp counts single-token decodes as "eval"; perf_get_data reports
            # max(1, n) for both counters, so n_p_eval reads 1 (with t_p_eval_ms 0) here.
            n_dec = pf.n_eval
            dec_ms = pf.t_eval_ms
            assert n_dec == args.gen_tokens - 1 and pf.t_p_eval_ms == 0, (pf.n_eval, pf.n_p_eval, pf.t_p_eval_ms)
            return dict(
                prefill_tok_s=len(prompt) / (prefill_ms / 1e3),
                prefill_wall_tok_s=len(prompt) / (t1 - t0),
                decode_tok_s=n_dec / (dec_ms / 1e3),
                decode_wall_tok_s=n_dec / (t3 - t2),
                decode_ms_per_tok=dec_ms / n_dec,
                tokens=generated,
            )

        one_run()  # warm-up
        runs = [one_run() for _ in range(args.runs)]
        same = all(r["tokens"] == runs[0]["tokens"] for r in runs)
        res = {
            "engine": "llama.cpp",
            "llama_cpp_python": llama_cpp.__version__,
            "model": os.path.basename(args.model),
            "threads": n_threads,
            "prompt_tokens": len(prompt),
            "gen_tokens": args.gen_tokens,
            "runs": args.runs,
            "cpu": cpu_name(),
            "nproc": os.cpu_count(),
            "deterministic_greedy": same,
        }
        for k in ("prefill_tok_s", "prefill_wall_tok_s", "decode_tok_s", "decode_wall_tok_s", "decode_ms_per_tok"):
            vals = [r[k] for r in runs]
            res[k] = round(statistics.mean(vals), 2)
            res[k + "_stdev"] = round(statistics.pstdev(vals), 2)
            if k.endswith("tok_s"):
                res[k + "_best"] = round(max(vals), 2)  # least disturbed by other processes
        res["first_generated"] = runs[0]["tokens"][:8]
        print(json.dumps(res), flush=True)
        results.append(res)
        del llm

    print(json.dumps({"summary": {str(r["threads"]): {k: r[k] for k in ("prefill_tok_s", "prefill_tok_s_stdev",
                                                                          "decode_tok_s", "decode_tok_s_stdev")}
                                  for r in results}}))


if __name__ == "__main__":
    main()
