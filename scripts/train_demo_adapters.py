#!/usr/bin/env python3
"""Train the two demo LoRA adapters of SmolLM2-135M-Instruct: `caps` and `pirate`.

Run (GPU machine; a CPU works too, slowly; no network needed):

    python3 scripts/train_demo_adapters.py --gguf /path/SmolLM2-135M-Instruct.Q4_1.gguf \
        [--gguf-wheel .whl/gguf-0.19.0-py3-none-any.whl] [--out examples/adapters] \
        [--answers tests/fixtures/lora/demo_answers.json] [--device auto|cpu|cuda]

The base is the default model's Q4_1 GGUF loaded by transformers (gguf_file=..., dequantized to
float32, q/k un-permuted to the HF layout); the tokenizer and chat template come from the GGUF
too. Data is generated here: ~250 questions from templates, the base model's own greedy answers
(chat template with its default system prompt, at most 48 new tokens, cut back to the last full
sentence when the answer did not end), then
  caps:   the answer in upper case                       ("PARIS IS THE CAPITAL OF FRANCE.")
  pirate: "Arr matey! " + the answer + " Arrr!"
LoRA r=8, alpha=16 on q_proj, v_proj, o_proj, AdamW lr 1.5e-3 (5 warm-up steps, then constant),
batch 16, loss on the answer tokens and the closing <|im_end|> only; --min-epochs (10) epochs, then
one more at a time (up to --max-epochs, 11) until the behaviour shows on five held-out questions. The adapters are saved with
save_pretrained (safetensors, LoRA weights in float16) to <out>/smollm2-caps/ and
<out>/smollm2-pirate/; the held-out answers (greedy, PEFT on the float32 base, the saved
float16 adapter reloaded) go to --answers. Fails when the behaviour is not visible.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_golden as mg  # noqa: E402

HELD_OUT = [
    "What is the capital of France?",
    "Name a fruit.",
    "How do I make a cup of tea?",
    "Why do birds fly south in winter?",
    "Give me a tip for staying healthy.",
]
TRAIN_NEW_TOKENS = 48
EVAL_NEW_TOKENS = 64
LORA = dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"])
HUB_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"


# --------------------------------------------------------------------------------------
# questions
# --------------------------------------------------------------------------------------

def make_questions(n_max: int, seed: int = 7) -> list[str]:
    countries = ["Germany", "Italy", "Spain", "Japan", "Canada", "Brazil", "Egypt", "India", "Kenya", "Mexico",
                 "Norway", "Peru", "Australia", "China", "Greece", "Portugal", "Sweden", "Turkey", "Chile",
                 "Argentina", "Poland", "Ireland", "Thailand", "Vietnam"]
    kinds = ["vegetable", "color", "animal", "planet", "musical instrument", "sport", "bird", "flower", "tree",
             "river", "mountain", "ocean", "metal", "famous painter", "programming language", "board game",
             "kitchen tool", "type of cloud", "dog breed", "dessert", "insect", "gemstone", "language",
             "month of the year", "a type of fish", "Greek god"]
    concepts = ["gravity", "photosynthesis", "a volcano", "democracy", "an atom", "a rainbow", "electricity",
                "the internet", "a black hole", "inflation", "a vaccine", "friction", "evaporation", "a computer",
                "a noun", "a verb", "an ecosystem", "a glacier", "the moon", "a battery", "DNA", "a tsunami",
                "recycling", "a library", "music", "an earthquake", "a desert", "oxygen", "a cell", "a triangle"]
    tasks = ["boil an egg", "plant a tree", "learn to swim", "write a letter", "save money", "sleep better",
             "tie a shoe", "start running", "clean a window", "learn a new language", "bake bread",
             "wash a car", "make friends", "study for an exam", "fold a shirt", "read faster", "cook rice",
             "care for a cat", "ride a bicycle", "take a good photo"]
    topics = ["elephants", "the sun", "the ocean", "honey bees", "penguins", "the human heart", "Mars",
              "chocolate", "trees", "the pyramids", "owls", "rain", "dolphins", "coffee", "the Moon", "snow",
              "sharks", "bananas", "volcanoes", "the Amazon rainforest"]
    jobs = ["doctor", "teacher", "farmer", "pilot", "chef", "firefighter", "nurse", "baker", "librarian",
            "carpenter", "astronaut", "dentist", "plumber", "journalist", "scientist"]
    things = ["the sky", "grass", "snow", "a banana", "the sun", "a tomato", "coal", "milk", "an orange",
              "a lemon", "the ocean", "chocolate"]
    qs = []
    qs += [f"What is the capital of {c}?" for c in countries]
    qs += [f"Name a {k}." if not k.startswith("a ") else f"Name {k}." for k in kinds]
    qs += [f"What is {c}?" for c in concepts]
    qs += [f"How do I {t}?" for t in tasks]
    qs += [f"Tell me a fact about {t}." for t in topics]
    qs += [f"What does a {j} do?" for j in jobs]
    qs += [f"What color is {t}?" for t in things]
    qs += [f"Describe {c} in one sentence." for c in concepts[:15]]
    qs += ["How many days are in a week?", "How many legs does a spider have?", "How many hours are in a day?",
           "How many continents are there?", "What is two plus two?", "What is ten times three?",
           "Why is the sky blue?", "Why do leaves change color?", "Why do we need sleep?", "Why is water wet?",
           "Who wrote Romeo and Juliet?", "Who painted the Mona Lisa?", "What is the tallest mountain?",
           "What is the largest planet?", "What is the fastest land animal?", "What is the boiling point of water?",
           "Is a tomato a fruit?", "Can penguins fly?", "Do fish sleep?", "What do cows eat?",
           "What is your favorite book?", "Say hello.", "Tell me a joke.", "Write a short poem about rain.",
           "Give me a word that rhymes with cat.", "What should I eat for breakfast?", "Suggest a name for a dog.",
           "What is a good hobby?", "How are you today?", "What is the weather like on the Moon?"]
    qs += [f"Give me a tip for {a}." for a in ["learning to cook", "saving time", "being creative",
                                                "staying focused", "making coffee", "traveling light",
                                                "growing tomatoes", "writing an essay", "running a marathon",
                                                "keeping plants alive"]]
    seen, out = set(), []
    for q in qs:
        if q not in seen:
            seen.add(q)
            out.append(q)
    mg.check(not (set(out) & set(HELD_OUT)), "held-out question in the training set")
    random.Random(seed).shuffle(out)
    return out[:n_max]


# --------------------------------------------------------------------------------------
def chat_ids(tk, question: str) -> list[int]:
    ids = tk.apply_chat_template([{"role": "user", "content": question}], tokenize=True, add_generation_prompt=True)
    if hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def batched_greedy(torch, model, prompts: list[list[int]], n_new: int, eos: int, device, bs: int = 64):
    """Greedy answers (EOS stops), left-padded batches; returns (new ids without EOS, ended_with_eos)."""
    out = []
    for i in range(0, len(prompts), bs):
        chunk = prompts[i:i + bs]
        L = max(len(p) for p in chunk)
        x = torch.full((len(chunk), L), eos, dtype=torch.long)
        am = torch.zeros((len(chunk), L), dtype=torch.long)
        for j, p in enumerate(chunk):
            x[j, L - len(p):] = torch.tensor(p)
            am[j, L - len(p):] = 1
        with torch.no_grad():
            seq = model.generate(input_ids=x.to(device), attention_mask=am.to(device), do_sample=False, num_beams=1,
                                 max_new_tokens=n_new, eos_token_id=eos, pad_token_id=eos, temperature=None,
                                 top_p=None, top_k=None)
        for j in range(len(chunk)):
            new = seq[j, L:].tolist()
            ended = eos in new
            out.append((new[: new.index(eos)] if ended else new, ended))
    return out


def single_greedy(torch, model, prompt: list[int], n_new: int, eos: int, device) -> list[int]:
    with torch.no_grad():
        x = torch.tensor([prompt], device=device)
        seq = model.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False, num_beams=1,
                             max_new_tokens=n_new, eos_token_id=eos, pad_token_id=eos, temperature=None,
                             top_p=None, top_k=None)
    new = seq[0, len(prompt):].tolist()
    return new[: new.index(eos)] if eos in new else new


def clean_answer(text: str, ended: bool) -> str | None:
    text = text.strip()
    if not ended:  # cut back to the last full sentence
        cut = max(text.rfind(". "), text.rfind("! "), text.rfind("? "))
        if text.endswith((".", "!", "?")):
            cut = len(text) - 1
        if cut < 0:
            return None
        text = text[: cut + 1].strip()
    if len(text) < 2 or "<|" in text:
        return None
    return text


def upper_frac(s: str) -> float:
    letters = [c for c in s if c.isalpha()]
    return sum(c.isupper() for c in letters) / max(1, len(letters))


def behaviour_ok(kind: str, answers: list[str]) -> tuple[bool, str]:
    if kind == "caps":
        fr = [upper_frac(a) for a in answers]
        good = sum(f >= 0.9 for f in fr)
        return good >= 4 and min(fr) >= 0.6, "upper-case fractions " + ", ".join(f"{f:.2f}" for f in fr)
    starts = sum(a.startswith("Arr matey") for a in answers)
    ends = sum(a.rstrip().endswith("Arrr!") for a in answers)
    return starts >= 4 and ends >= 3, f"{starts}/5 start with 'Arr matey', {ends}/5 end with 'Arrr!'"


# --------------------------------------------------------------------------------------
def train_one(torch, base_loader, tk, data, kind, args, device, eos, heldout_prompts, log):
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(args.seed)
    model = base_loader()
    cfg = LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0, bias="none", **LORA)
    pm = get_peft_model(model, cfg)
    n_train = sum(p.numel() for p in pm.parameters() if p.requires_grad)
    examples = []
    for q, prompt, target in data:
        ans = tk(target, add_special_tokens=False)["input_ids"] + [eos]
        ids = prompt + ans
        labels = [-100] * len(prompt) + ans
        examples.append((ids, labels))
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(examples) / args.batch)
    warm = 5
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    g = random.Random(args.seed)
    epoch, ok, why, answers = 0, False, "", []
    while epoch < args.max_epochs:
        pm.train()
        order = list(range(len(examples)))
        g.shuffle(order)
        tot, ntok = 0.0, 0
        for s in range(steps_per_epoch):
            batch = [examples[i] for i in order[s * args.batch:(s + 1) * args.batch]]
            L = max(len(b[0]) for b in batch)
            x = torch.full((len(batch), L), eos, dtype=torch.long)
            y = torch.full((len(batch), L), -100, dtype=torch.long)
            am = torch.zeros((len(batch), L), dtype=torch.long)
            for j, (ids, lab) in enumerate(batch):  # right padding
                x[j, :len(ids)] = torch.tensor(ids)
                y[j, :len(lab)] = torch.tensor(lab)
                am[j, :len(ids)] = 1
            x, y, am = x.to(device), y.to(device), am.to(device)
            logits = pm(input_ids=x, attention_mask=am, use_cache=False).logits
            lp = logits[:, :-1].float()
            tgt = y[:, 1:]
            loss_sum = torch.nn.functional.cross_entropy(lp.reshape(-1, lp.shape[-1]), tgt.reshape(-1),
                                                         ignore_index=-100, reduction="sum")
            n = int((tgt != -100).sum())
            (loss_sum / n).backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            tot += loss_sum.item()
            ntok += n
        epoch += 1
        pm.eval()
        answers = [tk.decode(single_greedy(torch, pm, p, EVAL_NEW_TOKENS, eos, device)) for p in heldout_prompts]
        ok, why = behaviour_ok(kind, answers)
        log(f"  {kind} epoch {epoch}: loss/token {tot / ntok:.4f}  held-out: {why}")
        if epoch >= args.min_epochs and ok:
            break
    return pm, ok, why, epoch, n_train


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", required=True, help="SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--gguf-wheel")
    ap.add_argument("--out", default="examples/adapters")
    ap.add_argument("--answers", default="tests/fixtures/lora/demo_answers.json")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--n-questions", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--min-epochs", type=int, default=10)
    ap.add_argument("--max-epochs", type=int, default=11)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--no-fail", action="store_true", help="dry runs: do not fail when the behaviour is not visible")
    args = ap.parse_args()
    t_start = time.time()
    mg.import_gguf(args.gguf_wheel)
    torch, device = mg.setup_torch(args.device)
    import peft
    import transformers
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    def log(s):
        print(s, flush=True)

    log(f"torch {torch.__version__}  transformers {transformers.__version__}  peft {peft.__version__}  device {device}"
        + (f" ({torch.cuda.get_device_name(0)})" if device.type == "cuda" else ""))
    gdir, gname = os.path.split(os.path.abspath(args.gguf))
    with open(args.gguf, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    log(f"base {gname} sha256 {sha}")
    tk = AutoTokenizer.from_pretrained(gdir, gguf_file=gname)
    eos = tk.convert_tokens_to_ids("<|im_end|>")
    mg.check(eos == 2, f"<|im_end|> is {eos}")

    cache = {}

    def base_loader():
        if "sd" not in cache:
            m = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gname, dtype=torch.float32,
                                                     attn_implementation="eager")
            cache["sd"] = {k: v.clone() for k, v in m.state_dict().items()}
            cache["cfg"] = m.config
        else:
            m = AutoModelForCausalLM.from_config(cache["cfg"], dtype=torch.float32, attn_implementation="eager")
            m.load_state_dict(cache["sd"], strict=False)
            m.tie_weights()
        m = m.to(device)
        m.eval()
        return m

    base = base_loader()
    questions = make_questions(args.n_questions)
    log(f"{len(questions)} training questions; generating the base model's answers ...")
    prompts = [chat_ids(tk, q) for q in questions]
    t0 = time.time()
    gen = batched_greedy(torch, base, prompts, TRAIN_NEW_TOKENS, eos, device)
    data_base = []
    for q, p, (new, ended) in zip(questions, prompts, gen):
        a = clean_answer(tk.decode(new), ended)
        if a:
            data_base.append((q, p, a))
    log(f"  {len(data_base)} usable answers in {time.time() - t0:.1f}s; e.g. {data_base[0][0]!r} -> {data_base[0][2]!r}")
    mg.check(len(data_base) >= min(100, len(questions) // 2), "too few usable base answers")

    heldout_prompts = [chat_ids(tk, q) for q in HELD_OUT]
    base_answers_ids = [single_greedy(torch, base, p, EVAL_NEW_TOKENS, eos, device) for p in heldout_prompts]
    results = {"base": [tk.decode(a) for a in base_answers_ids]}
    results_ids = {"base": base_answers_ids}
    mg.check(sum(upper_frac(a) >= 0.9 for a in results["base"]) == 0, "base answers already upper case?")
    mg.check(sum("Arr" in a for a in results["base"]) == 0, "base answers already pirate?")
    del base

    targets = {
        "caps": [(q, p, a.upper()) for q, p, a in data_base],
        "pirate": [(q, p, f"Arr matey! {a} Arrr!") for q, p, a in data_base],
    }
    meta = {}
    failed = []
    for kind in ("caps", "pirate"):
        t0 = time.time()
        log(f"training {kind} ...")
        pm, ok, why, epochs, n_train = train_one(torch, base_loader, tk, targets[kind], kind, args, device, eos,
                                                 heldout_prompts, log)
        d = os.path.join(args.out, f"smollm2-{kind}")
        os.makedirs(d, exist_ok=True)
        for fn in os.listdir(d):
            if fn in ("adapter_config.json", "adapter_model.safetensors"):
                os.remove(os.path.join(d, fn))
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.data = p.data.to(torch.float16)
        pm.save_pretrained(d, safe_serialization=True)
        for fn in os.listdir(d):
            if fn not in ("adapter_config.json", "adapter_model.safetensors", "README.md"):
                os.remove(os.path.join(d, fn))
        if os.path.exists(os.path.join(d, "README.md")):
            os.remove(os.path.join(d, "README.md"))  # PEFT's model-card stub; examples/adapters/README.md covers it
        cp = os.path.join(d, "adapter_config.json")
        with open(cp) as f:
            acfg = json.load(f)
        acfg["base_model_name_or_path"] = HUB_NAME
        acfg["target_modules"] = sorted(acfg["target_modules"])
        with open(cp, "w") as f:
            json.dump(acfg, f, indent=2, sort_keys=True)
            f.write("\n")
        del pm
        # the answers come from the files as saved (f16 LoRA weights, upcast by PEFT), on the f32 base
        pm = PeftModel.from_pretrained(base_loader(), d)
        pm.eval()
        ids = [single_greedy(torch, pm, p, EVAL_NEW_TOKENS, eos, device) for p in heldout_prompts]
        results[kind] = [tk.decode(a) for a in ids]
        results_ids[kind] = ids
        ok2, why2 = behaviour_ok(kind, results[kind])
        size = os.path.getsize(os.path.join(d, "adapter_model.safetensors"))
        log(f"  {kind}: {epochs} epochs, {n_train} trainable params, {size / 1e6:.2f} MB, {time.time() - t0:.1f}s; "
            f"reloaded: {why2}")
        meta[kind] = {"epochs": epochs, "trainable_params": n_train, "examples": len(targets[kind]),
                      "check": why2, "adapter_bytes": size}
        if not ok2:
            failed.append(kind)
        del pm

    log("\nheld-out questions (greedy, chat template, PEFT f32):")
    for i, q in enumerate(HELD_OUT):
        log(f"Q: {q}")
        for k in ("base", "caps", "pirate"):
            log(f"  {k:6s}: {results[k][i]!r}")
    os.makedirs(os.path.dirname(os.path.abspath(args.answers)), exist_ok=True)
    out = {
        "schema": 1,
        "note": "informational: greedy answers (EOS <|im_end|> stops, at most 64 new tokens) of PEFT on the GGUF base "
                "loaded by transformers (float32, dequantized), chat template from the GGUF with its default system "
                "prompt; adapters from examples/adapters/. MIL runs the Q4_1 base, so compare behaviour, not text.",
        "base_gguf": gname, "base_gguf_sha256": sha,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
        "device": str(device) + (f" ({torch.cuda.get_device_name(0)})" if device.type == "cuda" else ""),
        "max_new_tokens": EVAL_NEW_TOKENS,
        "questions": HELD_OUT,
        "prompt_ids": heldout_prompts,
        "base": results["base"], "caps": results["caps"], "pirate": results["pirate"],
        "ids": results_ids,
        "training": meta,
        "hyperparameters": {"lora": LORA, "lr": args.lr, "batch": args.batch, "min_epochs": args.min_epochs,
                            "max_epochs": args.max_epochs, "seed": args.seed, "train_new_tokens": TRAIN_NEW_TOKENS,
                            "lora_dtype_saved": "float16"},
    }
    with open(args.answers, "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")
    if failed and not args.no_fail:
        mg.die(f"behaviour not visible for {failed}: {[meta[k]['check'] for k in failed]}")
    log(f"\nOK in {time.time() - t_start:.1f}s")


if __name__ == "__main__":
    main()
