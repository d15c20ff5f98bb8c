#!/usr/bin/env python3
"""Serving benchmark for `mil serve` (or any TGI/LoRAX-compatible server) over HTTP.

Sends a fixed workload of N streaming requests to /generate_stream (aiohttp) and reports
time to first token (TTFT), inter-token latency (ITL), end-to-end request latency
(mean/p50/p90/p99) and throughput (generated tok/s, prompt tok/s, req/s) as a table, and as
JSON with --json.

Workload:
  --num-requests N           requests in the run (default 64)
  --input-len L              prompt length in tokens, exact: synthetic word prompts calibrated with
                             the server's /tokenize (each request gets a different prompt)
  --output-len M             max_new_tokens. With --ignore-eos the request also carries LoRAX's
                             `ignore_eos_token: true` (MIL honours it), so every request
                             generates exactly M tokens; without it the real generated length
                             is measured and reported (mean/min), and throughput uses it.
  --request-rate R           requests/s with Poisson arrivals; "inf" (default) sends all at once
  --workload W               adapter popularity, as Punica defines it (benchmarks/benchmark_utils
                             get_lora_lens), over the adapters given with --adapters:
                               identical   every request uses one adapter (Punica "bmm")
                               distinct    every request its own adapter (Punica "bgmv")
                               uniform     n requests spread evenly over ceil(sqrt(n)) adapters
                               zipf        Skewed: adapter i gets alpha times the requests of
                                           adapter i+1 (--zipf-alpha, default 1.5)
                               base        no adapter (the base model)
                             The popularity applies to each batch of --max-batch requests (all N when
                             not set), as Punica's batches.
  --adapters a,b,c           adapter names (registered names, or folders for adapter_source local).
                             With --launch, --clone-adapters K registers K names cycling over the
                             demo adapters (caps-0, pirate-1, ...) so distinct/uniform/zipf
                             have enough distinct adapters.
  --seed S                   workload randomness (prompt words, arrival times, assignment)

Target:
  --url http://127.0.0.1:3000        an already running server, or
  --launch [--mil-bin build/src/mil] [--model-id MODEL] [--server-args "--kv-cache-memory 512"]
                                     starts `mil serve` on a free port (with the demo adapters),
                                     waits for /health, stops it with SIGTERM afterwards.

Examples:
  scripts/bench_serve.py --launch --num-requests 64 --input-len 128 --output-len 32 \\
      --workload zipf --clone-adapters 16 --json /tmp/zipf.json
  scripts/bench_serve.py --url http://127.0.0.1:3000 --adapters caps,pirate --workload uniform \\
      --num-requests 200 --request-rate 4

Requires aiohttp (in requirements-dev.txt: run it with .venv/bin/python).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
WORDS = ("time year people way day man thing woman life child world school state family student "
         "group country problem hand part place case week company system program question work "
         "government number night point home water room mother area money story fact month lot "
         "right study book eye job word business issue side kind head house service friend father "
         "power hour game line end member law car city community name president team minute idea "
         "kid body information back parent face others level office door health person art war "
         "history party result change morning reason research girl guy moment air teacher force "
         "education river garden stone light music paper window market field summer winter").split()


# --- workload -------------------------------------------------------------------------------
def lora_lens(bs: int, popularity: str, alpha: float = 1.5) -> list[int]:
    """Requests per adapter for a batch of `bs` (Punica's get_lora_lens)."""
    if popularity == "identical":
        return [bs]
    if popularity == "distinct":
        return [1] * bs
    if popularity == "uniform":
        n = int(math.ceil(math.sqrt(bs)))
        lens = [bs // n] * n
        diff = bs - sum(lens)
        for i in range(diff):
            lens[n - 1 - i] += 1
        return lens
    if popularity == "zipf":
        assert alpha > 1, "zipf alpha must be > 1"
        lens, a = [], 1.0
        while sum(lens) + int(math.floor(a)) < bs:
            lens.append(int(math.floor(a)))
            a *= alpha
        lens.append(bs - sum(lens))
        return sorted(lens, reverse=True)
    raise ValueError(popularity)


def assign_adapters(n: int, workload: str, adapters: list[str], alpha: float, batch: int | None,
                    rng: random.Random) -> list[str]:
    if workload == "base":
        return [""] * n
    out: list[str] = []
    batch = batch or n
    for start in range(0, n, batch):
        bs = min(batch, n - start)
        lens = lora_lens(bs, workload, alpha)
        if len(lens) > len(adapters):
            raise SystemExit(f"workload {workload} needs {len(lens)} distinct adapters for a batch of "
                             f"{bs}; only {len(adapters)} given (--adapters, or --clone-adapters with --launch)")
        names = adapters[:]
        rng.shuffle(names)  # which adapter is the popular one varies with the seed
        chunk = [names[i] for i, k in enumerate(lens) for _ in range(k)]
        rng.shuffle(chunk)
        out += chunk
    return out


def tokenize(url: str, text: str, headers: dict) -> list[dict]:
    req = urllib.request.Request(url + "/tokenize", data=json.dumps({"inputs": text}).encode(),
                                 headers={"Content-Type": "application/json", **headers})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def make_prompt(url: str, n_tokens: int, rng: random.Random, headers: dict) -> str:
    """A word-list prompt of exactly n_tokens tokens (as the server's /tokenize counts them)."""
    words = [rng.choice(WORDS) for _ in range(n_tokens + 8)]
    text = " ".join(words).capitalize()
    for _ in range(20):
        toks = tokenize(url, text, headers)
        if len(toks) == n_tokens:
            return text
        if len(toks) > n_tokens:
            data = text.encode()
            text = data[: toks[n_tokens - 1]["stop"]].decode(errors="ignore")
        else:
            text += " " + " ".join(rng.choice(WORDS) for _ in range(n_tokens - len(toks)))
    raise SystemExit(f"could not build a prompt of exactly {n_tokens} tokens")


# --- running ----------------------------------------------------------------------------------
@dataclass
class Result:
    adapter: str
    ok: bool = False
    error: str = ""
    start: float = 0.0
    ttft: float = math.nan
    latency: float = math.nan
    itl: list = field(default_factory=list)
    generated: int = 0
    prompt_tokens: int = 0
    finish: str = ""


async def one_request(session, url, prompt, n_prompt, adapter, args, headers, t_start) -> Result:
    res = Result(adapter=adapter, prompt_tokens=n_prompt)
    params = {"max_new_tokens": args.output_len, "details": True}
    if adapter:
        params["adapter_id"] = adapter
        if args.adapter_source:
            params["adapter_source"] = args.adapter_source
    if args.ignore_eos:
        params["ignore_eos_token"] = True
    res.start = time.perf_counter() - t_start
    t0 = time.perf_counter()
    last = None
    try:
        async with session.post(url + "/generate_stream", json={"inputs": prompt, "parameters": params},
                                headers=headers) as resp:
            if resp.status != 200:
                res.error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                return res
            async for line in resp.content:
                if not line.startswith(b"data:"):
                    continue
                now = time.perf_counter()
                ev = json.loads(line[5:])
                if "error" in ev:
                    res.error = f"{ev.get('error_type')}: {ev['error']}"
                    return res
                if last is None:
                    res.ttft = now - t0
                else:
                    res.itl.append(now - last)
                last = now
                res.generated += 1
                if ev.get("details"):
                    res.finish = ev["details"].get("finish_reason", "")
        res.latency = time.perf_counter() - t0
        res.ok = res.generated > 0
        if not res.ok:
            res.error = "empty stream"
    except Exception as e:  # noqa: BLE001
        res.error = repr(e)
    return res


async def run(url, prompts, n_prompts, adapters, args, headers):
    rng = random.Random(args.seed + 1)
    conn = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        tasks = []
        t_start = time.perf_counter()
        for i in range(len(prompts)):
            tasks.append(asyncio.create_task(
                one_request(session, url, prompts[i], n_prompts[i], adapters[i], args, headers, t_start)))
            if args.request_rate != math.inf and i + 1 < len(prompts):
                await asyncio.sleep(rng.expovariate(args.request_rate))
        results = await asyncio.gather(*tasks)
        wall = time.perf_counter() - t_start
    return results, wall


# --- statistics -----------------------------------------------------------------------------
def pct(values, q):
    if not values:
        return math.nan
    v = sorted(values)
    k = (len(v) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def summary(values):
    return {"mean": statistics.fmean(values) if values else math.nan, "p50": pct(values, 50),
            "p90": pct(values, 90), "p99": pct(values, 99), "max": max(values) if values else math.nan}


def report(results, wall, args, server_info):
    ok = [r for r in results if r.ok]
    gen = sum(r.generated for r in ok)
    out = {
        "config": {k: (v if v != math.inf else "inf") for k, v in vars(args).items()
                   if k not in ("server_args",)} | {"server_args": args.server_args},
        "server": server_info,
        "requests": len(results), "completed": len(ok), "failed": len(results) - len(ok),
        "errors": sorted({r.error for r in results if not r.ok})[:10],
        "wall_s": wall,
        "throughput": {"req_per_s": len(ok) / wall, "output_tok_per_s": gen / wall,
                       "prompt_tok_per_s": sum(r.prompt_tokens for r in ok) / wall,
                       "total_tok_per_s": (gen + sum(r.prompt_tokens for r in ok)) / wall},
        "generated_tokens": {"total": gen, "mean": gen / len(ok) if ok else 0,
                             "min": min((r.generated for r in ok), default=0),
                             "finish_reasons": {f: sum(1 for r in ok if r.finish == f)
                                                for f in sorted({r.finish for r in ok})}},
        "ttft_s": summary([r.ttft for r in ok]),
        "itl_s": summary([x for r in ok for x in r.itl]),
        "latency_s": summary([r.latency for r in ok]),
        "adapters_used": len({r.adapter for r in results}),
        "requests_per_adapter_top5": sorted(
            ({a: sum(1 for r in results if r.adapter == a) for a in {r.adapter for r in results}}).values(),
            reverse=True)[:5],
    }
    return out


def print_table(rep):
    c = rep["config"]
    print(f"\nworkload {c['workload']}" + (f" (alpha {c['zipf_alpha']})" if c["workload"] == "zipf" else "")
          + f", {rep['requests']} requests, input {c['input_len']} tok, output <= {c['output_len']} tok, "
          f"rate {c['request_rate']}/s, {rep['adapters_used']} adapters "
          f"(top counts {rep['requests_per_adapter_top5']})")
    print(f"completed {rep['completed']}, failed {rep['failed']}, wall {rep['wall_s']:.2f} s; generated "
          f"{rep['generated_tokens']['total']} tok (mean {rep['generated_tokens']['mean']:.1f}, "
          f"min {rep['generated_tokens']['min']}, {rep['generated_tokens']['finish_reasons']})")
    for e in rep["errors"]:
        print("  error:", e)
    print(f"{'metric':<22}{'mean':>10}{'p50':>10}{'p90':>10}{'p99':>10}{'max':>10}")
    for key, label in (("ttft_s", "TTFT (ms)"), ("itl_s", "ITL (ms)"), ("latency_s", "latency (ms)")):
        s = rep[key]
        print(f"{label:<22}" + "".join(f"{s[k] * 1000:>10.1f}" for k in ("mean", "p50", "p90", "p99", "max")))
    t = rep["throughput"]
    print(f"throughput: {t['req_per_s']:.2f} req/s, {t['output_tok_per_s']:.1f} output tok/s, "
          f"{t['prompt_tok_per_s']:.1f} prompt tok/s, {t['total_tok_per_s']:.1f} total tok/s")


# --- server launch --------------------------------------------------------------------------
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_model():
    if os.environ.get("MIL_DEFAULT_MODEL"):
        return os.environ["MIL_DEFAULT_MODEL"]
    cache = Path(os.environ.get("MIL_CACHE", Path.home() / ".cache" / "mil"))
    return str(cache / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")


def launch(args):
    demo = [("caps", REPO / "examples/adapters/smollm2-caps"), ("pirate", REPO / "examples/adapters/smollm2-pirate")]
    names, loras = [], []
    if args.clone_adapters:
        for i in range(args.clone_adapters):
            base, path = demo[i % 2]
            names.append(f"{base}-{i}")
            loras.append(f"{base}-{i}={path}")
    else:
        names = [n for n, _ in demo]
        loras = [f"{n}={p}" for n, p in demo]
    port = free_port()
    cmd = [args.mil_bin, "serve", "--model-id", args.model_id or default_model(), "--hostname", "127.0.0.1",
           "--port", str(port), "--lora-adapters", ",".join(loras),
           "--max-concurrent-requests", str(max(128, args.num_requests + 16)),
           "--max-resident-adapters", str(max(32, len(names)))] + shlex.split(args.server_args)
    log = tempfile.NamedTemporaryFile(prefix="bench-serve-", suffix=".log", delete=False)
    print("launching:", " ".join(shlex.quote(c) for c in cmd), f"(log {log.name})", file=sys.stderr)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIL_")}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"mil serve exited ({proc.returncode}):\n" + Path(log.name).read_text()[-3000:])
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url, names
        except Exception:  # noqa: BLE001
            pass
        time.sleep(0.25)
    proc.kill()
    raise SystemExit("mil serve did not become healthy")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--url")
    p.add_argument("--launch", action="store_true")
    p.add_argument("--mil-bin", default=str(REPO / "build" / "src" / "mil"))
    p.add_argument("--model-id")
    p.add_argument("--server-args", default="")
    p.add_argument("--clone-adapters", type=int, default=0)
    p.add_argument("--api-key", default=os.environ.get("MIL_API_KEY", ""))
    p.add_argument("--num-requests", type=int, default=64)
    p.add_argument("--input-len", type=int, default=64)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--request-rate", type=float, default=math.inf)
    p.add_argument("--workload", choices=["identical", "distinct", "uniform", "zipf", "base"], default="identical")
    p.add_argument("--zipf-alpha", type=float, default=1.5)
    p.add_argument("--max-batch", type=int, default=0, help="popularity per batch of this many requests")
    p.add_argument("--adapters", default="", help="comma-separated adapter names")
    p.add_argument("--adapter-source", default="", help='"local" or "hub" (default: registered names)')
    p.add_argument("--ignore-eos", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--warmup", type=int, default=2, help="requests sent (and ignored) before the run")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    if not args.url and not args.launch:
        p.error("give --url or --launch")

    proc = None
    if args.launch:
        proc, url, launched = launch(args)
        adapters = [a for a in args.adapters.split(",") if a] or launched
    else:
        url = args.url.rstrip("/")
        adapters = [a for a in args.adapters.split(",") if a]
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    try:
        if args.workload != "base" and not adapters:
            raise SystemExit("this workload needs --adapters (or --launch)")
        rng = random.Random(args.seed)
        prompts = [make_prompt(url, args.input_len, rng, headers) for _ in range(args.num_requests)]
        n_prompts = [args.input_len] * args.num_requests
        assigned = assign_adapters(args.num_requests, args.workload, adapters, args.zipf_alpha,
                                   args.max_batch or None, rng)
        with urllib.request.urlopen(url + "/info", timeout=30) as r:
            info = json.loads(r.read())
        server_info = {k: info.get(k) for k in ("model_id", "version", "max_batch_total_tokens",
                                                 "max_batch_prefill_tokens", "kv_blocks", "block_size")}
        if args.warmup:
            warm = [make_prompt(url, args.input_len, random.Random(-1), headers)] * args.warmup
            wargs = argparse.Namespace(**{**vars(args), "output_len": 2, "request_rate": math.inf})
            asyncio.run(run(url, warm, [args.input_len] * args.warmup,
                            (assigned * args.warmup)[: args.warmup], wargs, headers))
        results, wall = asyncio.run(run(url, prompts, n_prompts, assigned, args, headers))
        rep = report(results, wall, args, server_info)
        print_table(rep)
        if args.json:
            Path(args.json).write_text(json.dumps(rep, indent=1, default=str))
            print(f"wrote {args.json}")
        return 0 if rep["failed"] == 0 else 1
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    sys.exit(main())
