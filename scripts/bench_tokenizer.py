#!/usr/bin/env python3
"""Peer benchmark: HF `tokenizers` (Rust) encoding ~1 MB of text on one thread.

    .venv-tok/bin/python scripts/bench_tokenizer.py [--fixtures tests/fixtures/tokenizer] [--runs 5]

The text (the C++ benchmark must build the identical bytes):
    f = the bytes of tests/fixtures/tokenizer/corpus.txt (it ends in '\\n')
    k = ceil(1_000_000 / len(f));  buf = f repeated k times
    text = buf[: i + 1] where i is the last '\\n' in buf[:1_000_000]
i.e. whole lines only, just under 1,000,000 bytes, ending in '\\n'.  Its sha256 is printed.

For each tokenizer (smollm2, bytelevel_llama3): one warm-up, then `runs` timed calls of
Tokenizer.encode(text, add_special_tokens=False) on the whole text as one string, and of
decode(ids, skip_special_tokens=False); prints one JSON line each with the median (and min/max).
Threads: RAYON_NUM_THREADS=1, TOKENIZERS_PARALLELISM=false (set before the import).
"""

import os

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["RAYON_RS_NUM_CPUS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import argparse
import hashlib
import json
import math
import platform
import statistics
import time

TARGET = 1_000_000


def bench_text(corpus_path: str) -> bytes:
    f = open(corpus_path, "rb").read()
    assert f.endswith(b"\n")
    buf = f * math.ceil(TARGET / len(f))
    i = buf.rfind(b"\n", 0, TARGET)
    return buf[: i + 1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", default="tests/fixtures/tokenizer")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--names", default="smollm2,bytelevel_llama3")
    args = ap.parse_args()

    import tokenizers
    from tokenizers import Tokenizer

    raw = bench_text(os.path.join(args.fixtures, "corpus.txt"))
    text = raw.decode("utf-8")
    print(json.dumps({"text_bytes": len(raw), "text_chars": len(text), "sha256": hashlib.sha256(raw).hexdigest(),
                      "tokenizers": tokenizers.__version__, "python": platform.python_version(),
                      "cpu": platform.processor() or platform.machine(), "threads": 1}))
    for name in args.names.split(","):
        tok = Tokenizer.from_file(os.path.join(args.fixtures, name, "tokenizer.json"))
        ids = tok.encode(text, add_special_tokens=False).ids  # warm-up
        enc, dec = [], []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            ids2 = tok.encode(text, add_special_tokens=False).ids
            t1 = time.perf_counter()
            s = tok.decode(ids2, skip_special_tokens=False)
            t2 = time.perf_counter()
            assert ids2 == ids
            enc.append(t1 - t0)
            dec.append(t2 - t1)
        assert s == text, "round trip"
        med = statistics.median(enc)
        print(json.dumps({"tokenizer": name, "tokens": len(ids), "runs": args.runs,
                          "encode_median_s": round(med, 4), "encode_min_s": round(min(enc), 4),
                          "encode_max_s": round(max(enc), 4), "encode_MB_per_s": round(len(raw) / med / 1e6, 3),
                          "encode_tokens_per_s": round(len(ids) / med),
                          "decode_median_s": round(statistics.median(dec), 4)}))


if __name__ == "__main__":
    main()
