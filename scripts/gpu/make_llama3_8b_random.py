#!/usr/bin/env python3
"""Builds a Llama-3-8B-shaped model with random bf16 weights through transformers.

Nothing can be downloaded on the GPU machine, so the benchmark model is made there:
LlamaConfig with Llama-3-8B's shapes (hidden 4096, 32 layers, 32 heads, 8 kv heads,
intermediate 14336, vocab 128256, rope_theta 500000, 8192 positions), transformers' own
initialisation (normal, std 0.02; RMSNorm weights 1), seeded, in bf16.

    python3 scripts/gpu/make_llama3_8b_random.py /tmp/llama3-8b-random [--seed 0] [--layers 32]

Writes safetensors shards + config.json (save_pretrained). About 16 GB for 32 layers.
`build_model()` is imported by bench_torch_decode.py to skip the disk round trip.
"""
import argparse
import json
import sys
import time

import torch


def llama3_8b_config(layers=32):
    from transformers import LlamaConfig

    kw = dict(
        hidden_size=4096,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        intermediate_size=14336,
        vocab_size=128256,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        initializer_range=0.02,
        tie_word_embeddings=False,
        bos_token_id=128000,
        eos_token_id=128001,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
    )
    # transformers 5 keeps rope settings in rope_parameters; 4.x reads rope_theta.
    cfg = LlamaConfig(**kw, rope_theta=500000.0,
                      rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    rp = getattr(cfg, "rope_parameters", None)
    theta = rp.get("rope_theta") if isinstance(rp, dict) else getattr(cfg, "rope_theta", None)
    if theta != 500000.0:
        raise SystemExit(f"rope_theta did not take: {theta}")
    return cfg


def build_model(layers=32, seed=0, device="cuda"):
    from transformers import LlamaForCausalLM

    cfg = llama3_8b_config(layers)
    torch.manual_seed(seed)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)  # post_init() applies the std-0.02 init
    finally:
        torch.set_default_dtype(old)
    model = model.to(torch.bfloat16).eval()
    # .to(bf16) also rounds the rotary inv_freq buffers to bf16 (angle error ~0.1 rad at
    # position 64, ~0.5 rad at 300); from_pretrained keeps them f32. Restore the f32 table.
    for mod in model.modules():
        if hasattr(mod, "inv_freq") and hasattr(mod, "compute_default_rope_parameters"):
            inv, _ = mod.compute_default_rope_parameters(mod.config, mod.inv_freq.device)
            mod.inv_freq = inv.float()
            if hasattr(mod, "original_inv_freq"):
                mod.original_inv_freq = inv.float()
    if hasattr(model.config, "dtype"):  # transformers 5 (torch_dtype is deprecated there)
        model.config.dtype = torch.bfloat16
    else:
        model.config.torch_dtype = torch.bfloat16
    return model


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    t0 = time.time()
    model = build_model(a.layers, a.seed, a.device)
    n = sum(p.numel() for p in model.parameters())
    t1 = time.time()
    model.save_pretrained(a.out_dir, safe_serialization=True, max_shard_size="5GB")
    t2 = time.time()
    std = model.model.layers[0].mlp.down_proj.weight.float().std().item()
    print(json.dumps({"out_dir": a.out_dir, "params": n, "layers": a.layers, "seed": a.seed,
                      "down_proj_std": round(std, 5), "build_s": round(t1 - t0, 1),
                      "save_s": round(t2 - t1, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
