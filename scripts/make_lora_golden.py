#!/usr/bin/env python3
"""LoRA golden fixtures for MIL: random-weight PEFT adapters on the tiny test models.

Run (GPU machine or CPU; needs torch, transformers, peft, safetensors and gguf):

    python3 scripts/make_lora_golden.py --fixtures tests/fixtures \
        [--gguf-wheel .whl/gguf-0.19.0-py3-none-any.whl] [--device auto|cpu|cuda]

Reads the tiny bases written by make_golden.py (tests/fixtures/tiny/<v>/, tests/fixtures/tiny_gguf/*.gguf)
and writes under <fixtures>/lora/:

  <base>/<adapter>/{adapter_config.json, adapter_model.safetensors}   (PEFT save_pretrained, f32)
  <base>/golden.json   logits at every position of 3 sequences + 12 greedy tokens (EOS off),
                       for the bare base ("__base__") and for each adapter (PeftModel, unmerged)

Bases: llama_gqa (adapters a_r4_qv, b_r8_all, c_r16_mlp_rslora, d_patterns), qwen2_bias
(q_r8_qkvo), gguf_F32 (g_r8_qk on tiny_gguf/F32.gguf loaded by transformers, which un-permutes
q/k) and gguf_Q8_0 (the same g_r8_qk adapter on the Q8_0 file).

Checks (the script exits non-zero otherwise): each adapter moves the logits by > 0.5 somewhere;
merge_and_unload gives the same logits within 1e-4; reloading the saved files gives the same
logits as the model they were saved from; greedy tokens are argmaxes of an uncached forward with
top-2 gaps >= 2e-3; a float64 numpy Llama that applies the adapter from the files alone
(W += scale * B @ A with PEFT's scale rules; for GGUF bases in GGUF layout, with B's rows of
q_proj/k_proj permuted as llama.cpp permutes q/k) agrees with every golden within 5e-4.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import re
import shutil
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_golden as mg  # noqa: E402  (helpers: greedy, forward_logits, np_forward, permute_qk, ...)

SCHEMA_VERSION = 1
TOL = 1e-3
GREEDY_NEW = 12
SEQ_LENS = (4, 11, 24)
MIN_VISIBLE = 0.5      # max |logit(adapter) - logit(base)| must exceed this
DELTA_GAIN = 0.3       # effective size of scale * B @ A relative to a unit-variance weight
SUMMARY: list[tuple] = []

ALL7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# (base key, base path relative to fixtures, kind, adapters)
BASES = [
    ("llama_gqa", "tiny/llama_gqa", "hf", [
        ("a_r4_qv", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])),
        ("b_r8_all", dict(r=8, lora_alpha=16, target_modules=ALL7)),
        ("c_r16_mlp_rslora", dict(r=16, lora_alpha=32, use_rslora=True,
                                  target_modules=["gate_proj", "up_proj", "down_proj"])),
        ("d_patterns", dict(r=8, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                            rank_pattern={"self_attn.k_proj": 2}, alpha_pattern={"o_proj": 32})),
    ]),
    ("qwen2_bias", "tiny/qwen2_bias", "hf", [
        ("q_r8_qkvo", dict(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])),
    ]),
    ("gguf_F32", "tiny_gguf/F32.gguf", "gguf", [
        ("g_r8_qk", dict(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj"])),
    ]),
    # the same adapter file on a quantized base (reference: gguf-py dequantization + PEFT)
    ("gguf_Q8_0", "tiny_gguf/Q8_0.gguf", "gguf", [
        ("g_r8_qk", "gguf_F32/g_r8_qk"),
    ]),
]

_SHORT = {"self_attn.q_proj": "q", "self_attn.k_proj": "k", "self_attn.v_proj": "v", "self_attn.o_proj": "o",
          "mlp.gate_proj": "gate", "mlp.up_proj": "up", "mlp.down_proj": "down"}


def pattern_key(keys, module_name: str):
    """peft.utils.other.get_pattern_key (peft 0.21): the first key k (in dict order) for which
    re.match(rf"(.*\\.)?({k})$", module_name) matches; module_name is relative to the causal-LM
    model, e.g. "model.layers.0.self_attn.k_proj"."""
    for k in keys:
        if re.match(rf"(.*\.)?({k})$", module_name):
            return k
    return None


def module_scale(cfg: dict, module_name: str):
    rp, ap = cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {}
    rk, ak = pattern_key(rp.keys(), module_name), pattern_key(ap.keys(), module_name)
    r = rp[rk] if rk is not None else cfg["r"]
    alpha = ap[ak] if ak is not None else cfg["lora_alpha"]
    s = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    return r, alpha, s


# --------------------------------------------------------------------------------------
def load_base(torch, fixtures: str, rel: str, kind: str, device):
    from transformers import AutoModelForCausalLM
    p = os.path.join(fixtures, rel)
    if kind == "hf":
        m = AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32, attn_implementation="eager")
    else:
        d, f = os.path.split(p)
        m = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32, attn_implementation="eager")
    m = m.to(device)
    m.eval()
    for prm in m.parameters():
        mg.check(prm.dtype == torch.float32, f"{rel}: param not f32")
    return m


def init_lora(torch, pm, adapter_cfg: dict, seed: int) -> None:
    """Deterministic non-zero A and B, B normalised by the module's scale so that
    scale * B @ A has entries ~ DELTA_GAIN / sqrt(in_features) whatever r, alpha and rslora are."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    named = dict(pm.named_parameters())
    n = 0
    for name in sorted(named):
        if not name.endswith("lora_A.default.weight"):
            continue
        stem = name[: -len("lora_A.default.weight")]
        A, B = named[name], named[stem + "lora_B.default.weight"]
        mod = stem[len("base_model.model."):-1]
        r, _, s = module_scale(adapter_cfg, mod)
        mg.check(A.shape[0] == r and B.shape[1] == r, f"{mod}: rank {A.shape} {B.shape} vs pattern r={r}")
        fan_in = A.shape[1]
        with torch.no_grad():
            A.copy_(torch.randn(A.shape, generator=g) / math.sqrt(fan_in))
            B.copy_(torch.randn(B.shape, generator=g) * (DELTA_GAIN / (s * math.sqrt(r))))
        n += 1
    mg.check(n > 0, "no LoRA layers found")


def tidy_adapter_dir(d: str, base_rel: str) -> dict:
    for fn in os.listdir(d):
        if fn not in ("adapter_config.json", "adapter_model.safetensors"):
            os.remove(os.path.join(d, fn))
    p = os.path.join(d, "adapter_config.json")
    with open(p) as f:
        cfg = json.load(f)
    cfg["base_model_name_or_path"] = base_rel  # relative to tests/fixtures (was this machine's path)
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])  # saved from a set: order is arbitrary
    with open(p, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    return cfg


def adapter_summary(d: str) -> dict:
    """Per module kind: r, alpha, scale as PEFT applies them, + the tensor names' first example."""
    from safetensors.numpy import load_file
    with open(os.path.join(d, "adapter_config.json")) as f:
        cfg = json.load(f)
    sd = load_file(os.path.join(d, "adapter_model.safetensors"))
    kinds = {}
    for k in sorted(sd):
        m = re.fullmatch(r"base_model\.model\.(model\.layers\.(\d+)\.(\w+\.\w+))\.lora_([AB])\.weight", k)
        mg.check(m is not None, f"unexpected tensor name {k}")
        if m.group(4) != "A":
            continue
        r, alpha, s = module_scale(cfg, m.group(1))
        mg.check(sd[k].shape[0] == r, f"{k}: rank {sd[k].shape[0]} != {r}")
        kinds[m.group(3)] = {"r": r, "alpha": alpha, "scale": s}
    return {"target_modules": cfg["target_modules"], "use_rslora": cfg.get("use_rslora", False),
            "rank_pattern": cfg.get("rank_pattern") or {}, "alpha_pattern": cfg.get("alpha_pattern") or {},
            "modules": kinds, "n_tensors": len(sd)}


def np_apply_lora(W: dict, c: dict, d: str, gguf_layout: bool) -> dict:
    """Independent application of an adapter to numpy weights, from the files alone."""
    from safetensors.numpy import load_file
    with open(os.path.join(d, "adapter_config.json")) as f:
        cfg = json.load(f)
    mg.check(cfg.get("peft_type") == "LORA" and not cfg.get("use_dora") and cfg.get("bias", "none") == "none",
             f"{d}: unsupported config")
    sd = load_file(os.path.join(d, "adapter_model.safetensors"))
    W = dict(W)
    for k in sd:
        if not k.endswith(".lora_A.weight"):
            continue
        mod = k[len("base_model.model."):-len(".lora_A.weight")]
        m = re.fullmatch(r"model\.layers\.(\d+)\.(\w+\.\w+)", mod)
        layer, kind = int(m.group(1)), m.group(2)
        A = sd[k].astype(np.float64)
        B = sd[f"base_model.model.{mod}.lora_B.weight"].astype(np.float64)
        r, _, s = module_scale(cfg, mod)
        mg.check(A.shape[0] == r == B.shape[1], f"{k}: shapes {A.shape} {B.shape} r={r}")
        delta = s * (B @ A)
        short = _SHORT[kind]
        if gguf_layout and short in ("q", "k"):
            # GGUF stores q/k rows permuted (llama.cpp convert_hf_to_gguf LlamaModel.permute);
            # the adapter was made on transformers' un-permuted weights: permute B's rows the same way
            delta = mg.permute_qk(delta, c["heads"], c["heads"] if short == "q" else c["kv_heads"])
        key = f"{layer}.{short}"
        mg.check(W[key].shape == delta.shape, f"{key}: {W[key].shape} vs {delta.shape}")
        W[key] = W[key] + delta
    return W


# --------------------------------------------------------------------------------------
def run_base(torch, peft, device, fixtures: str, base_key: str, rel: str, kind: str, adapters, gguf):
    from peft import LoraConfig, PeftModel, get_peft_model
    t0 = time.time()
    lora_root = os.path.join(fixtures, "lora")
    bdir = os.path.join(lora_root, base_key)
    if os.path.isdir(bdir):
        shutil.rmtree(bdir)
    os.makedirs(bdir)
    seed0 = 5000 + 100 * [b[0] for b in BASES].index(base_key)

    base = load_base(torch, fixtures, rel, kind, device)
    vocab = base.config.vocab_size
    rng = np.random.RandomState(seed0)
    seqs = [rng.randint(0, vocab, size=L).tolist() for L in SEQ_LENS]

    models = {"__base__": base}
    adapter_dirs = {}
    for ai, (name, spec) in enumerate(adapters):
        if isinstance(spec, str):  # reuse an adapter written for another base
            adir = os.path.join(lora_root, spec)
        else:
            adir = os.path.join(bdir, name)
            torch.manual_seed(seed0 + 1 + ai)
            cfg = LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0, bias="none", init_lora_weights=False, **spec)
            pm = get_peft_model(load_base(torch, fixtures, rel, kind, device), cfg)
            init_lora(torch, pm, dict(spec, use_rslora=spec.get("use_rslora", False)), seed0 + 1 + ai)
            pm.eval()
            pm.save_pretrained(adir, safe_serialization=True)
            tidy_adapter_dir(adir, rel)
            ref_mem = [mg.forward_logits(torch, pm, ids, device) for ids in seqs]
            del pm
        # the golden comes from the files as saved, loaded the way a user would load them
        pm = PeftModel.from_pretrained(load_base(torch, fixtures, rel, kind, device), adir)
        pm.eval()
        if not isinstance(spec, str):
            lg = [mg.forward_logits(torch, pm, ids, device) for ids in seqs]
            dev = max(float(np.abs(a - b).max()) for a, b in zip(lg, ref_mem))
            mg.check(dev < 1e-6, f"{name}: reloaded adapter differs from the saved model by {dev}")
        models[name] = pm
        adapter_dirs[name] = os.path.relpath(adir, fixtures)

    outputs = {}
    logits = {}
    diffs = {}
    for name, m in models.items():
        logits[name] = [mg.forward_logits(torch, m, ids, device) for ids in seqs]
        spread = min(mg.logits_stats(x) for x in logits[name])
        mg.check(spread > 1.0, f"{base_key}/{name}: degenerate logits (spread {spread})")
    for name in adapter_dirs:
        diffs[name] = max(float(np.abs(a - b).max()) for a, b in zip(logits[name], logits["__base__"]))
        mg.check(diffs[name] > MIN_VISIBLE, f"{base_key}/{name}: adapter barely changes logits ({diffs[name]:.3g})")
        mg.check(diffs[name] < 50, f"{base_key}/{name}: adapter blows the logits up ({diffs[name]:.3g})")
        # merged == unmerged
        merged = copy.deepcopy(models[name]).merge_and_unload()
        merged.eval()
        md = max(float(np.abs(mg.forward_logits(torch, merged, ids, device) - ref).max())
                 for ids, ref in zip(seqs, logits[name]))
        mg.check(md < 1e-4, f"{base_key}/{name}: merge_and_unload differs by {md:.3g}")
        diffs[name + ":merged_vs_unmerged"] = md
        del merged

    # one greedy prompt that has clear top-2 gaps for every model
    grng = np.random.RandomState(seed0 + 99)
    for _ in range(20):
        prompt = grng.randint(3, vocab, size=7).tolist()
        res = {n: mg.greedy(torch, m, prompt, GREEDY_NEW, device, stop_on_eos=False) for n, m in models.items()}
        if all(min(mr) >= mg.MIN_GREEDY_MARGIN for _, mr in res.values()):
            break
    else:
        mg.die(f"{base_key}: no greedy prompt without near-ties")
    for name, m in models.items():
        new, margins = res[name]
        mg.verify_greedy_uncached(torch, m, prompt, new, device)
        outputs[name] = {
            "logits": [[mg.r6_list(row) for row in x] for x in logits[name]],
            "greedy": [{"prompt": prompt, "tokens": [int(t) for t in new], "stop_on_eos": False,
                        "min_top2_margin": mg.r6(min(margins))}],
        }
    n_same = sum(res[n][0] == res["__base__"][0] for n in adapter_dirs)

    golden = {
        "schema": SCHEMA_VERSION,
        "base": rel,
        "base_format": "gguf" if kind == "gguf" else "hf",
        "reference": "peft PeftModel.from_pretrained(base, adapter) (unmerged), float32, eager attention; "
                     + ("base = transformers from_pretrained(gguf_file=...) (q/k un-permuted to HF layout, gguf-py "
                        "dequantization)" if kind == "gguf" else "base = transformers from_pretrained"),
        "tolerance": {"logits_max_abs": TOL},
        "adapters": adapter_dirs,
        "adapter_info": {n: adapter_summary(os.path.join(fixtures, p)) for n, p in adapter_dirs.items()},
        "max_abs_logit_diff_vs_base": {n: mg.r6(diffs[n]) for n in adapter_dirs},
        "sequences": [{"ids": ids} for ids in seqs],
        "outputs": outputs,
    }
    mg.write_json(os.path.join(bdir, "golden.json"), golden)
    SUMMARY.append((base_key, ",".join(adapter_dirs), f"{min(diffs[n] for n in adapter_dirs):.2f}",
                    f"{max(diffs[n + ':merged_vs_unmerged'] for n in adapter_dirs):.1e}",
                    f"{len(adapter_dirs) - n_same}/{len(adapter_dirs)}",
                    f"{mg.dir_size(bdir) / 1024:.0f} KiB", f"{time.time() - t0:.1f}s"))
    del models


def np_crosscheck(torch, gguf, fixtures: str) -> float:
    worst_all = 0.0
    for base_key, rel, kind, _ in BASES:
        gpath = os.path.join(fixtures, "lora", base_key, "golden.json")
        with open(gpath) as f:
            golden = json.load(f)
        if kind == "hf":
            c, W0 = mg.np_load_hf(torch, os.path.join(fixtures, rel))
        else:
            c, W0 = mg.np_load_gguf(gguf, os.path.join(fixtures, rel))
        for name, out in golden["outputs"].items():
            W = W0 if name == "__base__" else np_apply_lora(W0, c, os.path.join(fixtures, golden["adapters"][name]),
                                                            kind == "gguf")
            worst = 0.0
            for s, ref in zip(golden["sequences"], out["logits"]):
                lg = mg.np_forward(W, c, s["ids"], kind == "gguf")
                worst = max(worst, float(np.abs(lg - np.array(ref)).max()))
            g = out["greedy"][0]
            lg = mg.np_forward(W, c, g["prompt"] + g["tokens"][:-1], kind == "gguf")
            am = lg[len(g["prompt"]) - 1:].argmax(-1).tolist()
            mg.check(am == g["tokens"], f"numpy cross-check {base_key}/{name}: greedy {am} != {g['tokens']}")
            mg.check(worst < 5e-4, f"numpy cross-check {base_key}/{name}: max |numpy - golden| = {worst:.3g}")
            worst_all = max(worst_all, worst)
    return worst_all


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixtures", default="tests/fixtures")
    ap.add_argument("--gguf-wheel", help="gguf-*.whl to import from when the gguf package is not installed")
    ap.add_argument("--device", default="auto", help="auto|cpu|cuda")
    args = ap.parse_args()
    t_start = time.time()
    gguf = mg.import_gguf(args.gguf_wheel)
    torch, device = mg.setup_torch(args.device)
    import peft
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    print(f"torch {torch.__version__}  transformers {transformers.__version__}  peft {peft.__version__}  "
          f"device {device}" + (f" ({torch.cuda.get_device_name(0)})" if device.type == "cuda" else ""), flush=True)
    os.makedirs(os.path.join(args.fixtures, "lora"), exist_ok=True)
    for base_key, rel, kind, adapters in BASES:
        run_base(torch, peft, device, args.fixtures, base_key, rel, kind, adapters, gguf)
        print(f"  {base_key} done", flush=True)
    worst = np_crosscheck(torch, gguf, args.fixtures)
    SUMMARY.append(("numpy-f64", "all", "", "", "", f"max|diff| {worst:.2e}", ""))

    hdr = ("base", "adapters", "min max|diff| vs base", "merged-unmerged", "greedy differs", "size", "time")
    rows = [hdr] + [tuple(str(x) for x in r) for r in SUMMARY]
    widths = [max(len(r[i]) for r in rows) for i in range(len(hdr))]
    print()
    for r in rows:
        print("  ".join(x.ljust(w) for x, w in zip(r, widths)))
    total = mg.dir_size(os.path.join(args.fixtures, "lora"))
    print(f"\nlora/ total {total / 1024:.0f} KiB")
    mg.check(total < 3 * 1024 * 1024 - 200 * 1024, f"LoRA fixtures too big: {total}")
    print(f"OK in {time.time() - t_start:.1f}s on {device}")


if __name__ == "__main__":
    main()
