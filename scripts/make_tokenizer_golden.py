#!/usr/bin/env python3
"""Golden fixtures for MIL's tokenizer and chat templates, from HF `tokenizers` and `transformers`.

    python3 -m venv .venv-tok
    .venv-tok/bin/pip install tokenizers==0.23.3 transformers==5.24.0 gguf==0.19.0 jinja2==3.1.6
    .venv-tok/bin/python scripts/make_tokenizer_golden.py --out tests/fixtures/tokenizer \
        --gguf ~/.cache/mil/models/SmolLM2-135M-Instruct.Q4_1.gguf [--llamacpp-python .venv-bench/bin/python]

No torch, no network.  Everything is generated from fixed seeds and the GGUF; a rerun with the
same package versions rewrites byte-identical files.  Writes, under --out:

  corpus.txt            one test case per line, lines separated by '\\n' only (the file ends in
                        '\\n'; split on '\\n' and drop the last, empty, element).  No line holds '\\r'
                        or '\\n'; lines do hold tabs, U+2028, U+0085, \\x0b, \\x0c, other controls.
  corpus_docs.jsonl     multi-line documents, one JSON string per line.
  <tok>/tokenizer.json, <tok>/tokenizer_config.json
  <tok>/golden.jsonl    one object per corpus line, then one per doc, in that order:
                        {"text", "ids" (add_special_tokens=True), "ids_plain" (False),
                         "decoded" (decode(ids, skip_special_tokens=False)), "decoded_skip" (True)}
  <tok>/decode_cases.jsonl  decode() of id prefixes that may cut a UTF-8 sequence:
                        {"ids", "decoded", "decoded_skip"}
  spm_gguf/tokenizer.gguf  the sentencepiece_bpe vocabulary as a vocabulary-only GGUF
                        (tokenizer.ggml.model "llama": tokens, scores, token types; no merges),
                        with golden.jsonl and decode_cases.jsonl (as above) from transformers'
                        tokenizer for it (AutoTokenizer.from_pretrained(dir, gguf_file=...)'s,
                        loaded without torch: see load_gguf_tokenizer_without_torch); decoded
                        strings from its backend tokenizers.Tokenizer (see write_spm_gguf)
  chat/<template>.json  chat templates rendered by transformers' apply_chat_template
  VERSIONS.json         package versions, GGUF sha256, file list

Tokenizers: smollm2 (rebuilt from the GGUF as the Hub ships it), bytelevel_llama3,
sentencepiece_bpe, metaspace_bpe, added_tokens (trained here), spm_gguf (sentencepiece_bpe's
vocabulary through a GGUF).  `--only spm_gguf` regenerates that part alone.
"""

from __future__ import annotations

import os

# Before `tokenizers` is imported: one thread, so training is deterministic.
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["RAYON_RS_NUM_CPUS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import argparse
import copy
import hashlib
import json
import random
import subprocess
import sys
import tempfile
import unicodedata

SEED = 20250601
SCHEMA_VERSION = 1

SMOLLM2_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<reponame>", "<file_sep>",
    "<filename>", "<gh_stars>", "<issue_start>", "<issue_comment>", "<issue_closed>",
    "<jupyter_start>", "<jupyter_text>", "<jupyter_code>", "<jupyter_output>", "<jupyter_script>",
    "<empty_output>",
]
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>",
                   "<|end_header_id|>"]
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# Extra added tokens of the `added_tokens` tokenizer (content, flags).
EXTRA_ADDED = [
    # content, special, lstrip, rstrip, single_word, normalized
    ("<mask>", True, True, False, False, False),
    ("<|rstrip|>", True, False, True, False, False),
    ("<tool>", False, False, False, False, True),
    ("cat", False, False, False, False, True),                  # already a BPE token: keeps its id
    ("zebra", False, False, False, True, True),                 # single_word
    ("<raw>", False, False, False, False, False),
    ("na\u00efve", False, False, False, False, True),          # NFC content; matches NFD text too
    ("re\u0301sume\u0301", False, False, False, False, False),  # NFD content; raw match only
]

# --------------------------------------------------------------------------------------------
# corpus

WORDS = """the of and to in a is that for it as was with be by on not he I this are or his from
at which but have an they you were her she there one all we their can has more when will would
if so what out up who them some time about could into than only other its then two first may any
like now my such over also new these do most people made years after many year state work world
government system part number between each well under because three very through back however
even those against life should where while same again before still never here found day house
thought water left every another great small between world both place long own might right
children during might since whole without course against always example language algorithm
tokenizer inference engine adapter batch kernel memory cache request stream server latency
throughput vector matrix tensor gradient model weight layer attention sequence position decode
encode merge vocabulary unicode character whitespace newline digit emoji quick brown fox jumps
lazy dog hello world program function variable return value string integer float boolean array
object dictionary module package import export class method property interface template
mountain river ocean forest desert island village city country garden kitchen window bridge
yesterday tomorrow morning evening winter summer autumn spring weather cloud rain snow wind
happy quiet strange beautiful ancient modern simple complex careful gentle brave curious
running walking reading writing thinking building breaking testing shipping measuring
don't can't won't it's I'm you're they've we'll she'd isn't aren't wasn't couldn't shouldn't
""".split()

PROSE_TEMPLATES = [
    "{W} {w} {w} {w}.",
    "{W} {w}, {w} {w}.",
    "The {w} {w} {w} {w} the {w}.",
    "Why does the {w} {w} {w}?",
    "{W} {w} {w}!",
    "\"{W},\" said the {w}. \"{W} {w}.\"",
    "{W}'s {w} {w} {w}; it's {w}, isn't it?",
    "{W} {w} ({w} {w}) {w} -- {w} {w}...",
    "{W} {w}: {w}, {w}, and {w}.",
    "I'M {W} AND YOU'RE {W}; WE'LL {W} THEY'VE {W} SHE'D {W}.",
    "{W} {w} {w} {w} {w}.",
    "{w}-{w} {w}/{w} {w}_{w} {w}.{w} {w}@{w}.com",
    "https://{w}.example.org/{w}/{w}?q={w}&n={n}#{w}",
    "Mr. {W} paid ${n}.{d}{d} for {n} {w}s on {W} {n}, {y}.",
]

PY_LINES = [
    "def {w}_{w}(self, {w}: int = {n}) -> list[str]:",
    "    return [{w} for {w} in range({n}) if {w} % {d} == 0]",
    "        {w}_{w} = {{'{w}': {n}, '{w}': [{n}, {n}]}}",
    "class {W}{W}({W}):",
    "    \"\"\"{W} {w} {w}.\"\"\"",
    "import {w}.{w} as {w}  # {w} {w}",
    "if __name__ == \"__main__\":",
    "\t\tprint(f\"{{{w}!r}}: {{{w}:>{d}}}\")",
    "            raise ValueError(\"{w} must be < {n}\")",
    "    @property",
    "lambda x, y=({n}, {n}): x ** y[0] // {d}",
    "                    yield from {w}[{d}:{n}:-1]",
]
CPP_LINES = [
    "#include <{w}/{w}.h>",
    "template <typename T, std::size_t N = {n}>",
    "static inline int {w}_{w}(const std::vector<T>& {w}) noexcept {{",
    "    for (int i = 0; i < {n}; ++i) {{ {w}[i] += {w}[i >> {d}]; }}",
    "        return std::make_unique<{W}>(std::move({w}));",
    "}}  // namespace {w}",
    "\tstd::cout << \"{w}\" << std::endl;",
    "    auto&& [{w}, {w}] = *it; // {w}",
    "#define {W}_{W}(x) ((x) * {n}u)",
    "                {w}->{w}.{w} = nullptr;",
]
JSON_LINES = [
    "{{\"{w}\": {n}, \"{w}\": \"{w} {w}\", \"{w}\": [true, false, null]}}",
    "  \"{w}_{w}\": {{\"{w}\": {n}.{d}e-{d}, \"{w}\": \"\\u00e9\\n\"}},",
    "[{n}, {n}, {n}, {{\"{w}\": []}}, \"{w}\"]",
    "        \"{w}\": \"{W} {w}\",",
]
HTML_LINES = [
    "<div class=\"{w}-{w}\" id=\"{w}{n}\"><span>{W} {w}</span></div>",
    "    <a href=\"/{w}/{w}?id={n}&amp;x=1\">{W}</a>",
    "<!-- {w} {w} -->",
    "\t<p style=\"color:#{d}{d}{d}fff\">{W}&nbsp;{w} &lt;{w}&gt;</p>",
    "<script>const {w} = `{w} ${{{w}}}`;</script>",
]

ZH = ["你好，世界", "今天天气很好", "我们正在测试分词器", "机器学习模型", "人工智能的发展",
      "北京是中国的首都", "请输入您的密码", "这个问题很有意思", "长江和黄河", "数据中心", "繁體中文測試",
      "鑫淼焱垚", "𠀀𠀁𪚥"]
JA = ["こんにちは世界", "東京都の天気予報", "カタカナとひらがな", "トークナイザーのテスト", "日本語の文章です",
      "ありがとうございます", "ｶﾀｶﾅ半角", "ゔぁ ゐゑ ヿ", "吾輩は猫である。名前はまだ無い。"]
KO = ["안녕하세요 세계", "한국어 텍스트", "토크나이저 테스트", "대한민국 서울", "감사합니다",
      "ᄒᆞᆫ글 자모", "똠방각하 쀍"]
CJK_PUNCT = ["，", "。", "、", "！", "？", "「", "」", "（", "）", "：", "；", "…", "〜", "　", "·"]

EMOJI = ["😀", "😂", "🥲", "❤️", "👍", "🔥", "🎉", "🚀", "🤖", "🐍", "🦀", "☕", "✅", "❌", "⭐",
         "👨‍👩‍👧‍👦", "👩🏽‍💻", "🏳️‍🌈", "🏴‍☠️", "🧑🏿‍🤝‍🧑🏻", "👍🏻", "👍🏼", "👍🏽", "👍🏾", "👍🏿",
         "🇺🇸", "🇯🇵", "🇩🇪", "🇧🇷", "🇺🇳", "1️⃣", "#️⃣", "*️⃣", "🏴󠁧󠁢󠁳󠁣󠁴󠁿", "❤‍🔥", "🫠", "🪿",
         "\U0001F1E6", "©️", "™", "☺︎", "👁️‍🗨️"]

SCRIPTS = [
    "caf\u00e9 vs cafe\u0301", "re\u0301sume\u0301 and r\u00e9sum\u00e9", "Tiếng Việt có dấu",
    unicodedata.normalize("NFD", "Tiếng Việt có dấu"), "Phở bò, bánh mì, chả giò",
    "नमस्ते दुनिया", "हिन्दी भाषा में परीक्षण", "क्षत्रिय ज्ञान श्री", "مرحبا بالعالم", "اللغة العربية جميلة",
    "بِسْمِ ٱللَّٰهِ", "שלום עולם", "עִבְרִית עם ניקוד", "Ελληνικά: αβγδε ΑΒΓΔΕ ς σ",
    "Русский текст: Съешь же ещё этих мягких французских булок", "Українська: ґєїі",
    "ไทย: สวัสดีครับ ภาษาไทย", "ქართული ენა", "Հայերեն", "አማርኛ", "தமிழ் மொழி", "বাংলা ভাষা",
    "ñandú, über, façade, Ærøskøbing, Łódź, İstanbul, ǅemal", "ß ẞ ﬁ ﬂ ﬀ Å Å Ω Ω",
    "Z̴̡̪̫̖̥̔͐͂a̷̢̛̯̞͎l̵̡̨̛g̸̨̛o̵̢̡", "o\u0308\u0304 a\u030a\u0301 n\u0303\u0323",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕄𝕒𝕥𝕙 𝒜𝒷𝒸 ∀x∈ℝ: x² ≥ 0", "Ǆ ǅ ǆ Ｈｅｌｌｏ ＷＯＲＬＤ",
]

RARE = [
    "\ufffd", "\ue000", "\uf8ff", "\U000f0000", "\U0010fffd", "\ufdd0", "\ufdef", "\ufffe", "\uffff",
    "\U0001fffe", "\U0010ffff", "\u0378", "\u0870", "\U0002fffd", "\U000e0001", "\U0001d538",
    "\U0001d7d8", "\u200d", "\u200c", "\u200b", "\ufeff", "\u200e", "\u200f", "\u202e", "\u202a",
    "\u2066", "\u2069", "\u00ad", "\u034f", "\u2060", "\u180e", "\u0085", "\u2028", "\u2029",
    "\x0b", "\x0c", "\x1b", "\x7f", "\x01", "\x1f", "\u00a0", "\u3000", "\u2009", "\u202f",
    "\u205f", "\U0001f3fb", "\ufe0f", "\ufe0e", "\u20e3", "\U000e0067", "\U0001f1ff",
]

SPECIAL_TEXT = SMOLLM2_SPECIALS + LLAMA3_SPECIALS + [
    "<s>", "</s>", "<unk>", "[INST]", "[/INST]", "<<SYS>>", "<</SYS>>", "<|im_start", "|im_end|>",
    "<|im_start|", "<<|im_end|>>", "<|IM_START|>", "< |im_start| >", "<|endoftext|><|endoftext|>",
    "<s><s>", "</s></s>", "<0x41>", "<0xFF>", "<|eom_id|>", "<|python_tag|>", "<pad>", "<mask>",
]

NASTY = [
    "", " ", "  ", "\t", " \t ", "a", "A", "0", "00", "000", "0000", "'", "'s", "'S", "'ll", "'LL",
    "'re've'd", "don't", "DON'T", "I'm", "x's", "''''", "\"\"\"", ".", "...", "....", "!!!", "?!",
    "a b", "a  b", "a   b", " a", "  a", "a ", "a  ", "\ta", "a\t", "\t\t\tcode", "    indented",
    "        deeply indented", "trailing spaces    ", "   both   ", "\u00a0nbsp\u00a0", "x\u3000y",
    "Ġ", "Ċ", "ĠĠ", "âĢĻ", "▁", "▁▁", "▁hello", "hello▁world", "Ġhello", "<0x00>", "<0x0A>",
    "123", "1234", "12345", "123456789012345678901234567890", "3.14159265358979",
    "1,234,567.89", "-0.0", "1e-10", "0x7fffffff", "+1 (555) 010-9999", "٠١٢٣٤٥٦٧٨٩",
    "１２３４５", "²³¹", "Ⅻ", "१२३", "🙂🙂🙂", "🏳️‍🌈🏳️‍🌈", "🇺🇸🇯🇵🇩🇪", "e\u0301\u0301\u0301",
    "\u0301", "\u0301a", "\u200d", "a\u200db", "a\u200cb", "\ufeffBOM at start", "end with BOM\ufeff",
    "\u202eRTL override\u202c", "\U0010ffff\U0010ffff", "\ufffd\ufffd", "\x01\x02\x03", "\x7f",
    "tab\there", "many\t\t\ttabs", "mixed \t \t whitespace", "      ", "\t\t\t\t",
    "hello world", "Hello World", "HELLO WORLD", "hElLo WoRlD", "helloworld", "hello_world",
    "hello-world", "hello.world", "hello,world", "hello!world", "hello?world", "a.b.c.d.e",
    "=====", "-----", "_____", "*****", "#####", "~~~~~", "```python", "```", "<<<>>>", "{{}}",
    "()[]{}<>", "$$$", "%%%", "&&&", "|||", "\\\\\\", "////", "@@@", "^^^", "````",
    "a" * 120, "ab" * 60, "🤖" * 20, "好" * 40, " " * 50, "\t" * 20, "9" * 80, ". " * 30,
    "Supercalifragilisticexpialidocious", "Pneumonoultramicroscopicsilicovolcanoconiosis",
    "naïve café coöperate façade", "<|im_start|>", "<|im_start|>user", " <|im_start|> ",
    "<|im_start|><|im_end|>", "text<|im_end|>text", "<s>", " <s> ", "<s>text</s>", "</s>",
    "<|begin_of_text|>Hello", "Hello<|eot_id|>", "<|start_header_id|>user<|end_header_id|>",
    "<unk>", "x<unk>y", "<|endoftext|>", "a<|endoftext|>b", "<mask>", "<tool>", "cat",
]

ADDED_TOKEN_LINES_TPL = [
    "{a} <mask> {b}", "{a}<mask>{b}", "{a}   <mask>   {b}", "<mask>{a}", "{a}<mask>", "\t<mask>\t{b}",
    "{a} <|rstrip|> {b}", "{a}<|rstrip|>{b}", "{a}<|rstrip|>     {b}", "<|rstrip|>\t{b}", "{a}   <|rstrip|>",
    "<tool>{a}</tool>", "call <tool> now", "<tool><tool>", " <tool> ", "x<tool>y<tool>z",
    "the cat sat", "cat", "cats and cat", "concatenate the cat", "scat cat.", "cat,cat;cat",
    "a cat", "(cat)", "cat's toy", "CAT cat Cat", "bobcat cat catalog", "  cat  ",
    "zebra", "a zebra.", "zebras", "the zebra's", "unzebra zebra", "ZEBRA Zebra zebra", "zebra_zebra",
    "{a} zebra {b}", "zebra,zebra", "(zebra)", "\tzebra\t", "zebra1 1zebra", "x zebrazebra y",
    "<raw> {a}", "{a}<raw>{b}", "<RAW> <raw>",
    "na\u00efve {a}", "nai\u0308ve {a}", "{a} re\u0301sume\u0301", "{a} r\u00e9sum\u00e9", "NA\u00cfVE",
    "<mask><|rstrip|><tool>cat<raw>", "{a} <mask> <|rstrip|> {b}", "<mask> cat <tool> <raw> na\u00efve",
    "numbers 1234567 <mask> 89", "{a} 2024 <tool> 12 345 6789",
]


def gen_corpus(rng: random.Random) -> list[str]:
    def w():
        return rng.choice(WORDS)

    def fill(t):
        out = []
        i = 0
        while i < len(t):
            if t.startswith("{{", i):
                out.append("{"); i += 2; continue
            if t.startswith("}}", i):
                out.append("}"); i += 2; continue
            if t[i] == "{":
                j = t.index("}", i)
                key = t[i + 1:j]
                if key == "w":
                    out.append(w())
                elif key == "W":
                    x = w(); out.append(x[:1].upper() + x[1:])
                elif key == "n":
                    out.append(str(rng.choice([0, 1, 7, 42, 100, 255, 1024, 65535, rng.randrange(10 ** rng.randint(1, 9))])))
                elif key == "d":
                    out.append(str(rng.randrange(10)))
                elif key == "y":
                    out.append(str(rng.randint(1900, 2099)))
                elif key in ("a", "b"):
                    out.append(w())
                else:
                    raise KeyError(key)
                i = j + 1
            else:
                out.append(t[i]); i += 1
        return "".join(out)

    lines: list[str] = []
    # English prose
    for _ in range(380):
        s = fill(rng.choice(PROSE_TEMPLATES))
        if rng.random() < 0.04:
            s = s + " " + fill(rng.choice(PROSE_TEMPLATES))
        lines.append(s)
    # code with indentation runs
    code_sets = [PY_LINES, CPP_LINES, JSON_LINES, HTML_LINES]
    for _ in range(240):
        s = fill(rng.choice(rng.choice(code_sets)))
        r = rng.random()
        if r < 0.25:
            s = " " * rng.choice([2, 3, 4, 8, 12, 16]) + s.lstrip()
        elif r < 0.35:
            s = "\t" * rng.randint(1, 4) + s.lstrip()
        lines.append(s)
    # CJK
    for _ in range(160):
        parts = []
        for _ in range(rng.randint(1, 2)):
            k = rng.random()
            if k < 0.4:
                parts.append(rng.choice(ZH))
            elif k < 0.7:
                parts.append(rng.choice(JA))
            elif k < 0.9:
                parts.append(rng.choice(KO))
            else:
                parts.append(rng.choice([w(), str(rng.randrange(10000)), "AI", "GPU"]))
            parts.append(rng.choice(CJK_PUNCT + ["", " "]))
        lines.append("".join(parts))
    # emoji
    for _ in range(180):
        parts = []
        for _ in range(rng.randint(1, 5)):
            parts.append(rng.choice(EMOJI) if rng.random() < 0.6 else w())
        lines.append(rng.choice(["", " "]).join(parts))
    # scripts / combining marks
    for _ in range(150):
        s = rng.choice(SCRIPTS)
        if rng.random() < 0.2:
            s = s + " " + rng.choice(SCRIPTS)
        if rng.random() < 0.3:
            s = unicodedata.normalize(rng.choice(["NFC", "NFD", "NFKC"]), s)
        lines.append(s)
    # numbers
    for _ in range(230):
        k = rng.randrange(10)
        if k == 0:
            s = "".join(str(rng.randrange(10)) for _ in range(rng.randint(4, 40)))
        elif k == 1:
            s = f"{rng.uniform(-1e6, 1e6):.{rng.randint(1, 9)}f}"
        elif k == 2:
            s = f"{rng.randrange(10 ** rng.randint(4, 13)):,}"
        elif k == 3:
            s = f"+{rng.randint(1, 99)} ({rng.randint(100, 999)}) {rng.randint(100, 999)}-{rng.randint(1000, 9999)}"
        elif k == 4:
            s = f"{rng.randint(1, 28)}/{rng.randint(1, 12)}/{rng.randint(1900, 2100)} at {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}"
        elif k == 5:
            s = f"v{rng.randint(0, 20)}.{rng.randint(0, 99)}.{rng.randint(0, 999)}-rc{rng.randint(1, 9)}"
        elif k == 6:
            s = f"0x{rng.randrange(16 ** 8):08X} {rng.uniform(0, 10):.3e} {rng.randint(0, 100)}%"
        elif k == 7:
            s = f"${rng.randint(0, 99999)}.{rng.randint(0, 99):02d} €{rng.randint(0, 999)},{rng.randint(0, 99):02d} ¥{rng.randint(0, 10 ** 6)}"
        elif k == 8:
            s = " ".join(str(rng.randrange(10 ** rng.randint(1, 6))) for _ in range(rng.randint(2, 8)))
        else:
            s = f"{fill('{W} {w}')} {rng.randrange(10 ** rng.randint(1, 12))} {w()} {rng.randrange(1000)}{w()}"
        lines.append(s)
    # whitespace runs
    ws = [" ", "  ", "   ", "    ", "        ", "\t", "\t\t", " \t", "\u00a0", "\u3000", "\u2009",
          "\u2003", " \u00a0 "]
    for _ in range(230):
        parts = [rng.choice(["", " ", "  ", "\t", "    "])]
        for _ in range(rng.randint(1, 5)):
            parts.append(w())
            parts.append(rng.choice(ws))
        if rng.random() < 0.5:
            parts.pop()
        lines.append("".join(parts))
    # rare unicode
    for _ in range(200):
        parts = []
        for _ in range(rng.randint(1, 4)):
            parts.append(rng.choice(RARE) * rng.choice([1, 1, 1, 2, 3]))
            if rng.random() < 0.6:
                parts.append(w())
        lines.append(rng.choice(["", " "]).join(parts))
    # special-token text in prose
    for _ in range(200):
        tok = rng.choice(SPECIAL_TEXT)
        sep1 = rng.choice(["", " ", "  ", "\t"])
        sep2 = rng.choice(["", " ", "  ", "\t"])
        k = rng.randrange(4)
        if k == 0:
            s = f"{fill('{W} {w} {w}')}{sep1}{tok}{sep2}{fill('{w} {w}.')}"
        elif k == 1:
            s = f"{tok}{sep2}{fill('{w} {w}')}"
        elif k == 2:
            s = f"{fill('{W} {w}')}{sep1}{tok}"
        else:
            s = f"{tok}{sep1}{rng.choice(SPECIAL_TEXT)}{sep2}{w()}{rng.choice(SPECIAL_TEXT)}"
        lines.append(s)
    # mixed
    for _ in range(110):
        pools = [lambda: fill(rng.choice(PROSE_TEMPLATES)), lambda: rng.choice(ZH + JA + KO),
                 lambda: rng.choice(EMOJI), lambda: rng.choice(SCRIPTS), lambda: rng.choice(RARE),
                 lambda: str(rng.randrange(10 ** 8)), lambda: rng.choice(SPECIAL_TEXT),
                 lambda: rng.choice(ws)]
        lines.append("".join(rng.choice(pools)() for _ in range(rng.randint(2, 3))))
    # short cases: single words/pairs with casing, punctuation, contractions, digits
    for _ in range(680):
        x = w()
        k = rng.randrange(8)
        if k == 0:
            x = x.upper()
        elif k == 1:
            x = x[:1].upper() + x[1:]
        elif k == 2:
            x = " " + x
        elif k == 3:
            x = x + rng.choice([".", ",", "!", "?", ":", ";", "'s", "'S", "'ll", "n't", "...", ")", "\""])
        elif k == 4:
            x = x + rng.choice([" ", "  ", "-", "_", "/", "", "'"]) + w()
        elif k == 5:
            x = x + str(rng.randrange(10 ** rng.randint(1, 5)))
        elif k == 6:
            x = rng.choice(["(", "\"", "'", "[", "#", "@", "$", "--", "<", "  "]) + x
        lines.append(x)
    lines.extend(NASTY)
    # lines that exercise the extra added tokens of `added_tokens`
    seen: set[str] = set()
    for i in range(2000):
        if len(seen) == 200:
            break
        x = fill(ADDED_TOKEN_LINES_TPL[i % len(ADDED_TOKEN_LINES_TPL)])
        if x not in seen:
            seen.add(x)
            lines.append(x)
    for s in lines:
        assert "\n" not in s and "\r" not in s, repr(s)
    return lines


def gen_docs(rng: random.Random, lines: list[str]) -> list[str]:
    docs = [
        "def fib(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    a, b = 0, 1\n    for _ in range(n):\n"
        "        a, b = b, a + b\n    return a\n\n\nif __name__ == \"__main__\":\n    print(fib(30))\n",
        "#include <cstdio>\n\nint main(int argc, char** argv) {\n\tfor (int i = 0; i < argc; ++i) {\n"
        "\t\tstd::printf(\"%d: %s\\n\", i, argv[i]);\n\t}\n\treturn 0;\n}\n",
        "{\n  \"name\": \"mil\",\n  \"version\": \"0.1.0\",\n  \"tags\": [\"llm\", \"lora\", \"推理\"],\n"
        "  \"nested\": {\"a\": [1, 2, 3], \"b\": null}\n}\n",
        "<!DOCTYPE html>\n<html>\n  <head><title>Test</title></head>\n  <body>\n    <p>Hello &amp; welcome</p>\n"
        "  </body>\n</html>\n",
        "# Heading\n\nSome *markdown* with `code` and a list:\n\n- one\n- two\n  - nested\n\n| a | b |\n|---|---|\n| 1 | 2 |\n",
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHello [/INST] Hi! </s><s>[INST] Bye [/INST]",
        "line one\r\nline two\r\n\r\nline four\r\n",
        "carriage\rreturn\ronly\r",
        "\n\nstarts with newlines and ends with many\n\n\n\n",
        "\n",
        "\n\n\n",
        "  \n  \n\t\n \t \n",
        "静夜思\n床前明月光，\n疑是地上霜。\n举头望明月，\n低头思故乡。\n",
        "Emoji 😀\nZWJ 👨‍👩‍👧‍👦\nflags 🇺🇸🇯🇵\nskin 👍🏽\n",
        "NUL\x00inside\x00\nand controls \x01\x02\x1b[0m\n",
        "Mixed: English, 中文, 日本語, 한국어, العربية, עברית, हिन्दी\n\tindented\n    spaces\n",
        "a\n b\n  c\n   d\n    e\n     f\n",
        "word " * 300 + "\n" + "number 12345 " * 100,
        "\n".join(lines[i] for i in range(0, len(lines), 97)),
        "trailing spaces   \nand tabs\t\t\nand crlf  \r\nend",
    ]
    return docs


# --------------------------------------------------------------------------------------------
# tokenizers

def build_smollm2(gguf_path: str) -> tuple[dict, dict, dict]:
    from gguf import GGUFReader

    r = GGUFReader(gguf_path)

    def field(k):
        return r.fields[k].contents()

    assert field("tokenizer.ggml.model") == "gpt2"
    assert field("tokenizer.ggml.pre") == "smollm"
    tokens = field("tokenizer.ggml.tokens")
    ttype = field("tokenizer.ggml.token_type")
    merges = field("tokenizer.ggml.merges")
    meta = {
        "bos_token_id": int(field("tokenizer.ggml.bos_token_id")),
        "eos_token_id": int(field("tokenizer.ggml.eos_token_id")),
        "unknown_token_id": int(field("tokenizer.ggml.unknown_token_id")),
        "padding_token_id": int(field("tokenizer.ggml.padding_token_id")),
        "add_bos_token": bool(field("tokenizer.ggml.add_bos_token")),
        "chat_template": field("tokenizer.chat_template"),
        "n_tokens": len(tokens), "n_merges": len(merges),
    }
    specials = [i for i, t in enumerate(ttype) if t == 3]
    assert [tokens[i] for i in specials] == SMOLLM2_SPECIALS, [tokens[i] for i in specials]
    assert specials == list(range(17))
    assert all(t == 1 for i, t in enumerate(ttype) if i >= 17)
    assert meta["add_bos_token"] is False
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == len(tokens)
    tj = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": tokens[i], "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True} for i in specials],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                           "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab, "merges": list(merges)},
    }
    cfg = {
        "add_prefix_space": False,
        "added_tokens_decoder": {str(i): {"content": tokens[i], "lstrip": False, "normalized": False,
                                          "rstrip": False, "single_word": False, "special": True}
                                 for i in specials},
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": tokens[meta["bos_token_id"]],
        "chat_template": meta["chat_template"],
        "clean_up_tokenization_spaces": False,
        "eos_token": tokens[meta["eos_token_id"]],
        "model_max_length": 8192,
        "pad_token": tokens[meta["padding_token_id"]],
        "tokenizer_class": "GPT2Tokenizer",
        "unk_token": tokens[meta["unknown_token_id"]],
        "vocab_size": len(tokens),
    }
    return tj, cfg, meta


def english_training_text(rng: random.Random, n: int) -> list[str]:
    out = []
    for _ in range(n):
        k = rng.randint(5, 18)
        ws = [rng.choice(WORDS) for _ in range(k)]
        ws[0] = ws[0][:1].upper() + ws[0][1:]
        s = " ".join(ws) + rng.choice([".", ".", ".", "?", "!", ",", ";", ":"])
        if rng.random() < 0.2:
            s += " " + str(rng.randrange(10 ** rng.randint(1, 6)))
        out.append(s)
    return out


def train_text(corpus: list[str], rng: random.Random) -> list[str]:
    # half of the corpus; never 'zebra' (the single_word added token must not be a BPE token)
    part = [s for i, s in enumerate(corpus) if i % 2 == 0 and "zebra" not in s.lower()]
    return part + english_training_text(rng, 20000)


def with_model_fields(tok, **fields):
    from tokenizers import Tokenizer

    j = json.loads(tok.to_str())
    j["model"].update(fields)
    return Tokenizer.from_str(json.dumps(j))


def build_bytelevel_llama3(corpus, rng):
    from tokenizers import Tokenizer, Regex, AddedToken, models, pre_tokenizers, decoders, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=3000, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(train_text(corpus, rng), trainer=trainer)
    tok = with_model_fields(tok, ignore_merges=True)
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in LLAMA3_SPECIALS])
    bos = LLAMA3_SPECIALS[0]
    bos_id = tok.token_to_id(bos)
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                                      special_tokens=[(bos, bos_id)])])
    cfg = {"add_bos_token": True, "add_eos_token": False, "bos_token": bos, "eos_token": "<|eot_id|>",
           "clean_up_tokenization_spaces": True, "model_max_length": 131072,
           "tokenizer_class": "PreTrainedTokenizerFast", "chat_template": None}
    return tok, cfg


def build_added_tokens(base_json: str):
    from tokenizers import Tokenizer, Regex, AddedToken, normalizers, pre_tokenizers

    tok = Tokenizer.from_str(base_json)
    tok.normalizer = normalizers.Sequence([normalizers.NFC()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=False),
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    vocab = tok.get_vocab(with_added_tokens=False)
    for content, special, lstrip, rstrip, single_word, normalized in EXTRA_ADDED:
        assert (content in vocab) == (content == "cat"), content
        t = AddedToken(content, single_word=single_word, lstrip=lstrip, rstrip=rstrip,
                       normalized=normalized, special=special)
        if special:
            tok.add_special_tokens([t])
        else:
            tok.add_tokens([t])
    cfg = {"add_bos_token": True, "add_eos_token": False, "bos_token": "<|begin_of_text|>",
           "eos_token": "<|eot_id|>", "mask_token": "<mask>", "clean_up_tokenization_spaces": True,
           "tokenizer_class": "PreTrainedTokenizerFast", "chat_template": None}
    return tok, cfg


def build_sentencepiece(corpus, rng):
    """Llama-2-style: normalizer Prepend+Replace, no pre-tokenizer, byte fallback.

    Trained with a Metaspace pre-tokenizer (so that no piece spans a '▁' inside), then the
    vocabulary is laid out as Llama 2's: <unk> <s> </s>, <0x00>..<0xFF>, learned pieces."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, decoders, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    text = train_text(corpus, rng)
    # The 160 most frequent characters (ties by code point) form the alphabet; the rest of the
    # corpus (most CJK, emoji) is left to byte fallback.  (The trainer's own limit_alphabet breaks
    # frequency ties in hash order, which is not deterministic.)
    counts: dict[str, int] = {}
    for line in text:
        for ch in line.replace(" ", "▁"):
            counts[ch] = counts.get(ch, 0) + 1
    alphabet = [c for c, _ in sorted(counts.items(), key=lambda kv: (-kv[1], ord(kv[0])))[:160]]
    if "▁" not in alphabet:
        alphabet[-1] = "▁"
    trainer = trainers.BpeTrainer(vocab_size=3000 - 259, min_frequency=2, show_progress=False,
                                  initial_alphabet=alphabet, limit_alphabet=len(alphabet), special_tokens=[])
    tok.train_from_iterator(text, trainer=trainer)
    j = json.loads(tok.to_str())
    learned = sorted(j["model"]["vocab"].items(), key=lambda kv: kv[1])
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = 3 + b
    for piece, _ in learned:
        if piece not in vocab:
            vocab[piece] = len(vocab)
    merges = j["model"]["merges"]
    model = {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
             "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
             "vocab": vocab, "merges": merges}
    added = [{"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, c in enumerate(["<unk>", "<s>", "</s>"])]
    post = {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}
    sp = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
          "normalizer": {"type": "Sequence", "normalizers": [
              {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
          "pre_tokenizer": None, "post_processor": post,
          "decoder": {"type": "Sequence", "decoders": [
              {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"},
              {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
          "model": model}
    ms = copy.deepcopy(sp)
    ms["normalizer"] = None
    ms["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": True}
    ms["decoder"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": True}
    cfg = {"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
           "unk_token": "<unk>", "pad_token": None, "legacy": False, "clean_up_tokenization_spaces": False,
           "tokenizer_class": "LlamaTokenizer", "model_max_length": 4096, "chat_template": None}
    return sp, ms, cfg


def build_spm_gguf(sp_json_path: str, gguf_path: str) -> dict:
    """A vocabulary-only GGUF (tokenizer.ggml.model "llama", as llama.cpp writes Llama 2's) holding
    the sentencepiece_bpe vocabulary: tokens, scores and token types, no merges.

    Readers rebuild the merges from the scores (transformers' generate_merges: every split of a
    piece into two vocabulary pieces, best score first), so a piece's score is -(1 + the rank of
    the merge that made it); pieces of the alphabet score below every merged piece; <unk>, <s>,
    </s> and the byte pieces score 0, as in Llama 2's.  Types: 1 normal, 2 unknown, 3 control,
    6 byte."""
    import gguf

    with open(sp_json_path, encoding="utf-8") as f:
        model = json.load(f)["model"]
    tokens = [None] * len(model["vocab"])
    for t, i in model["vocab"].items():
        tokens[i] = t
    assert all(t is not None for t in tokens)
    rank: dict[str, int] = {}
    for r, m in enumerate(model["merges"]):
        a, b = m if isinstance(m, list) else m.split(" ", 1)
        rank.setdefault(a + b, r)
    n_merges = len(model["merges"])
    scores, types = [], []
    for i, t in enumerate(tokens):
        if t == "<unk>":
            types.append(2); scores.append(0.0)
        elif t in ("<s>", "</s>"):
            types.append(3); scores.append(0.0)
        elif len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
            types.append(6); scores.append(0.0)
        else:
            types.append(1)
            scores.append(-float(1 + rank[t]) if t in rank else -float(1 + n_merges + i))
    assert tokens[:3] == ["<unk>", "<s>", "</s>"]
    w = gguf.GGUFWriter(gguf_path, "llama")
    # llama.* hyperparameters: what AutoConfig / AutoTokenizer (with torch) read to make a model
    # config from a GGUF; made up, there are no tensors
    w.add_context_length(4096)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_rope_dimension_count(16)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"n_tokens": len(tokens), "n_merged_pieces": len(rank)}


def load_gguf_tokenizer_without_torch(d: str, gguf_file: str):
    """What AutoTokenizer.from_pretrained(d, gguf_file=gguf_file) returns for a "llama" GGUF,
    without torch.

    AutoTokenizer first builds the model config from the GGUF, which for "llama" goes through
    load_gguf_checkpoint and needs torch; the config only picks the class, and for LlamaConfig
    that is TokenizersBackend (TOKENIZER_MAPPING has no "llama" entry), so this calls
    TokenizersBackend.from_pretrained(d, gguf_file=...) directly.  That path reads the metadata
    with transformers' GGUF reader, a module that imports torch for its tensor helpers only; it
    is imported with an inert stand-in for torch, removed again right after."""
    import importlib.util
    import types
    from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING_NAMES
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    assert "llama" not in TOKENIZER_MAPPING_NAMES
    if "torch" not in sys.modules and importlib.util.find_spec("torch") is None:
        class _Inert(types.ModuleType):
            def __getattr__(self, name):
                if name.startswith("__"):
                    raise AttributeError(name)
                return type(name, (), {})

        sys.modules["torch"] = _Inert("torch")
        try:
            import transformers.integrations.gguf.reader  # noqa: F401
        finally:
            del sys.modules["torch"]
    tok = TokenizersBackend.from_pretrained(d, gguf_file=gguf_file)
    assert type(tok) is TokenizersBackend
    return tok


def write_spm_gguf(d: str, texts: list[str], sp_json_path: str) -> dict:
    """spm_gguf/: tokenizer.gguf and, from transformers' tokenizer for it (AutoTokenizer's for
    gguf_file="tokenizer.gguf", see load_gguf_tokenizer_without_torch), golden.jsonl and
    decode_cases.jsonl.  ids are transformers' encode(text[, add_special_tokens=False]); the
    decoded strings are its backend tokenizers.Tokenizer's decode() (tokenizers semantics, no
    clean_up_tokenization_spaces), asserted equal to transformers' decode() on every line."""
    from tokenizers import Tokenizer

    os.makedirs(d, exist_ok=True)
    gguf_path = os.path.join(d, "tokenizer.gguf")
    info = build_spm_gguf(sp_json_path, gguf_path)
    hf = load_gguf_tokenizer_without_torch(d, "tokenizer.gguf")
    back = hf.backend_tokenizer
    n_diff_plain = 0
    with open(os.path.join(d, "golden.jsonl"), "w", encoding="utf-8", newline="\n") as f:
        for t in texts:
            ids = hf.encode(t)
            plain = hf.encode(t, add_special_tokens=False)
            assert ids == back.encode(t, add_special_tokens=True).ids, t
            assert plain == back.encode(t, add_special_tokens=False).ids, t
            n_diff_plain += ids != plain
            dec = back.decode(ids, skip_special_tokens=False)
            dec_skip = back.decode(ids, skip_special_tokens=True)
            assert dec == hf.decode(ids, skip_special_tokens=False), t
            assert dec_skip == hf.decode(ids, skip_special_tokens=True), t
            f.write(dumps({"text": t, "ids": ids, "ids_plain": plain, "decoded": dec,
                           "decoded_skip": dec_skip}) + "\n")
    nc = write_decode_cases(back, texts, random.Random(SEED + 7), os.path.join(d, "decode_cases.jsonl"))
    # how far the GGUF round trip moves tokenization away from the tokenizer.json it came from
    sp = Tokenizer.from_file(sp_json_path)
    same_as_json = sum(sp.encode(t, add_special_tokens=False).ids == hf.encode(t, add_special_tokens=False)
                       for t in texts)
    return {"vocab_size_with_added": back.get_vocab_size(True), "cases": len(texts),
            "cases_where_ids_differ_from_ids_plain": n_diff_plain, "decode_cases": nc,
            "gguf_bytes": os.path.getsize(gguf_path), "n_merged_pieces": info["n_merged_pieces"],
            "cases_where_ids_plain_equal_sentencepiece_bpe": same_as_json}


# --------------------------------------------------------------------------------------------
# golden

def dumps(o) -> str:
    return json.dumps(o, ensure_ascii=False, separators=(",", ":"))


def write_golden(tok, texts, path):
    n_diff_plain = 0
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for t in texts:
            ids = tok.encode(t, add_special_tokens=True).ids
            plain = tok.encode(t, add_special_tokens=False).ids
            n_diff_plain += ids != plain
            f.write(dumps({"text": t, "ids": ids, "ids_plain": plain,
                           "decoded": tok.decode(ids, skip_special_tokens=False),
                           "decoded_skip": tok.decode(ids, skip_special_tokens=True)}) + "\n")
    return n_diff_plain


def write_decode_cases(tok, texts, rng, path):
    """Id prefixes/slices of non-ASCII lines: partial UTF-8 -> U+FFFD, byte-fallback pieces, etc."""
    cases = []
    cand = [t for t in texts if any(ord(c) > 127 for c in t) or "<" in t]
    for t in cand[::7][:80]:
        ids = tok.encode(t, add_special_tokens=True).ids
        if len(ids) < 2:
            continue
        a = rng.randrange(len(ids))
        b = rng.randrange(a + 1, len(ids) + 1)
        for sl in (ids[:b], ids[a:b]):
            cases.append(sl)
    # single ids across the vocabulary (every 7th id), incl. byte tokens and added tokens
    n = tok.get_vocab_size(with_added_tokens=True)
    singles = sorted(set(range(0, min(n, 300))) | set(range(300, n, 13 if n < 10000 else 97)) | set(range(max(0, n - 20), n)))
    for i in singles:
        cases.append([i])
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for ids in cases:
            f.write(dumps({"ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False),
                           "decoded_skip": tok.decode(ids, skip_special_tokens=True)}) + "\n")
    return len(cases)


def llamacpp_agreement(py: str, gguf: str, texts: list[str], golden_path: str) -> dict:
    """Tokenize with llama.cpp (llama-cpp-python) and compare with the golden ids_plain."""
    code = r"""
import json, sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], vocab_only=True, verbose=False)
texts = json.load(open(sys.argv[2], encoding="utf-8"))
out = []
for t in texts:
    b = t.encode("utf-8")
    out.append([llm.tokenize(b, add_bos=False, special=True), llm.tokenize(b, add_bos=False, special=False)])
json.dump(out, open(sys.argv[3], "w"))
"""
    with tempfile.TemporaryDirectory() as d:
        tp, op = os.path.join(d, "t.json"), os.path.join(d, "o.json")
        json.dump(texts, open(tp, "w", encoding="utf-8"), ensure_ascii=False)
        subprocess.run([py, "-c", code, gguf, tp, op], check=True)
        lc = json.load(open(op))
    gold = [json.loads(l) for l in open(golden_path, encoding="utf-8")]
    same_special = [g["ids_plain"] == l[0] for g, l in zip(gold, lc)]
    nosp = [(g, l) for g, l in zip(gold, lc) if not any(s in g["text"] for s in SMOLLM2_SPECIALS)]
    same_nospecial = [g["ids_plain"] == l[1] for g, l in nosp]
    mism = [{"text": g["text"], "hf": g["ids_plain"], "llama.cpp": l[0]}
            for g, l, ok in zip(gold, lc, same_special) if not ok]
    return {"n": len(gold), "agree_special_true": sum(same_special),
            "n_without_special_text": len(nosp), "agree_special_false_on_those": sum(same_nospecial),
            "mismatches": mism}


# --------------------------------------------------------------------------------------------
# chat templates: see CHAT_TEMPLATES_SECTION below main()

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/tokenizer")
    ap.add_argument("--gguf", default=os.path.expanduser("~/.cache/mil/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--llamacpp-python", default=".venv-bench/bin/python",
                    help="a python with llama-cpp-python, for the smollm2 cross-check ('' to skip)")
    ap.add_argument("--only", default="", help="comma list: corpus,smollm2,bytelevel_llama3,"
                    "sentencepiece_bpe,metaspace_bpe,added_tokens,spm_gguf,chat")
    args = ap.parse_args()

    import tokenizers
    import transformers
    import gguf
    import jinja2
    from tokenizers import Tokenizer

    out = args.out
    os.makedirs(out, exist_ok=True)
    only = set(filter(None, args.only.split(",")))

    def want(x):
        return not only or x in only

    versions = {"python": sys.version.split()[0], "tokenizers": tokenizers.__version__,
                "transformers": transformers.__version__, "gguf": getattr(gguf, "__version__", None),
                "jinja2": jinja2.__version__, "schema_version": SCHEMA_VERSION, "seed": SEED}
    try:
        from importlib.metadata import version
        versions["gguf"] = version("gguf")
    except Exception:
        pass
    print("versions:", versions)

    corpus = gen_corpus(random.Random(SEED))
    docs = gen_docs(random.Random(SEED + 1), corpus)
    texts = corpus + docs
    with open(os.path.join(out, "corpus.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write("".join(s + "\n" for s in corpus))
    with open(os.path.join(out, "corpus_docs.jsonl"), "w", encoding="utf-8", newline="\n") as f:
        f.write("".join(dumps(d) + "\n" for d in docs))
    print(f"corpus: {len(corpus)} lines, {len(docs)} docs")
    summary = {}

    gguf_sha = hashlib.sha256(open(args.gguf, "rb").read()).hexdigest()
    versions["smollm2_gguf"] = {"file": os.path.basename(args.gguf), "sha256": gguf_sha}

    def save_tok(name, tok_or_json, cfg):
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        p = os.path.join(d, "tokenizer.json")
        if isinstance(tok_or_json, dict):
            with open(p, "w", encoding="utf-8", newline="\n") as f:
                # compact (size budget); `jq . tokenizer.json` to read it
                f.write(json.dumps(tok_or_json, ensure_ascii=False, separators=(",", ":")) + "\n")
        else:
            tok_or_json.save(p, pretty=False)
        tok = Tokenizer.from_file(p)
        if cfg is not None:
            with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8", newline="\n") as f:
                f.write(json.dumps(cfg, ensure_ascii=False, indent=2) + "\n")
        nd = write_golden(tok, texts, os.path.join(d, "golden.jsonl"))
        nc = write_decode_cases(tok, texts, random.Random(SEED + 7), os.path.join(d, "decode_cases.jsonl"))
        summary[name] = {"vocab_size_with_added": tok.get_vocab_size(True), "cases": len(texts),
                         "cases_where_ids_differ_from_ids_plain": nd, "decode_cases": nc}
        print(name, summary[name])
        return tok

    if want("smollm2"):
        tj, cfg, meta = build_smollm2(args.gguf)
        tok = save_tok("smollm2", tj, cfg)
        # round trip of every golden text
        bad = [t for t in texts if tok.decode(tok.encode(t).ids, skip_special_tokens=False) != t]
        assert not bad, bad[:5]
        if args.llamacpp_python and os.path.exists(args.llamacpp_python):
            agr = llamacpp_agreement(args.llamacpp_python, args.gguf, texts,
                                     os.path.join(out, "smollm2", "golden.jsonl"))
            mism = agr.pop("mismatches")
            summary["smollm2_vs_llama.cpp"] = agr
            print("llama.cpp agreement:", agr)
            for m in mism[:20]:
                print("  mismatch:", dumps(m)[:400])

    if want("bytelevel_llama3") or want("added_tokens"):
        l3, l3cfg = build_bytelevel_llama3(corpus, random.Random(SEED + 2))
        l3 = save_tok("bytelevel_llama3", l3, l3cfg)
        if want("added_tokens"):
            at, atcfg = build_added_tokens(l3.to_str())
            save_tok("added_tokens", at, atcfg)

    if want("sentencepiece_bpe") or want("metaspace_bpe"):
        sp, ms, spcfg = build_sentencepiece(corpus, random.Random(SEED + 3))
        save_tok("sentencepiece_bpe", sp, spcfg)
        save_tok("metaspace_bpe", ms, spcfg)

    if want("spm_gguf"):
        # from the sentencepiece_bpe vocabulary on disk (written above, or by an earlier run)
        summary["spm_gguf"] = write_spm_gguf(os.path.join(out, "spm_gguf"), texts,
                                             os.path.join(out, "sentencepiece_bpe", "tokenizer.json"))
        print("spm_gguf", summary["spm_gguf"])

    if want("chat"):
        summary["chat"] = write_chat(os.path.join(out, "chat"), os.path.join(out, "smollm2", "tokenizer.json"),
                                     build_smollm2(args.gguf)[2]["chat_template"])
        print("chat:", summary["chat"])

    files = {}
    for root, _, names in sorted(os.walk(out)):
        for n in sorted(names):
            p = os.path.join(root, n)
            rel = os.path.relpath(p, out)
            if rel == "VERSIONS.json":
                continue
            files[rel] = {"bytes": os.path.getsize(p), "sha256": hashlib.sha256(open(p, "rb").read()).hexdigest()}
    versions["files"] = files
    if only:
        # a partial run keeps the summaries of the parts it did not regenerate
        try:
            with open(os.path.join(out, "VERSIONS.json"), encoding="utf-8") as f:
                summary = {**json.load(f).get("summary", {}), **summary}
        except FileNotFoundError:
            pass
    versions["summary"] = summary
    with open(os.path.join(out, "VERSIONS.json"), "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(versions, ensure_ascii=False, indent=1, sort_keys=True) + "\n")
    total = sum(v["bytes"] for v in files.values())
    print(f"total {total} bytes in {len(files)} files under {out}")



# --------------------------------------------------------------------------------------------
# CHAT_TEMPLATES_SECTION
#
# The public templates below were written from memory of the templates that the model repos
# publish in tokenizer_config.json (no network here, and no PyPI package ships them as data);
# they keep the published templates' constructs (trim filters, raise_exception, namespace,
# loop.index0, tojson, strftime_now, tools), which is what the C++ renderer has to get right.
# Each fixture's "source" says so.  The goldens come from transformers' own apply_chat_template.

LLAMA31_TEMPLATE = r'''{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\n\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- "<|python_tag|>" + tool_call.name + ".call(" }}
            {%- for arg_name, arg_val in tool_call.arguments | items %}
                {{- arg_name + '="' + arg_val + '"' }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- endif %}
                {%- endfor %}
            {{- ")" }}
        {%- else  %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- '{"name": "' + tool_call.name + '", ' }}
            {{- '"parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}" }}
        {%- endif %}
        {%- if builtin_tools is defined %}
            {#- This means we're in ipython mode #}
            {{- "<|eom_id|>" }}
        {%- else %}
            {{- "<|eot_id|>" }}
        {%- endif %}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {%- if builtin_tools is defined %}
            {{- "<|eom_id|>" }}
        {%- else %}
            {{- "<|eot_id|>" }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
'''

LLAMA32_TEMPLATE = r'''{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
'''

LLAMA2_TEMPLATE = (
    r"{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    r"{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    r"{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    r"{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    r"{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    r"{% if loop.index0 == 0 and system_message != false %}"
    r"{% set content = '<<SYS>>\n' + system_message + '\n<</SYS>>\n\n' + message['content'] %}"
    r"{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
    r"{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    r"{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")

MISTRAL_V01_TEMPLATE = (
    r"{{ bos_token }}{% for message in messages %}"
    r"{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    r"{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    r"{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    r"{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    r"{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")

MISTRAL_V03_TEMPLATE = r'''{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}
{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}

{#- This block checks for alternating user/assistant messages, skipping tool calling messages #}
{%- set ns = namespace() %}
{%- set ns.index = 0 %}
{%- for message in loop_messages %}
    {%- if not (message.role == "tool" or message.role == "tool_results" or (message.tool_calls is defined and message.tool_calls is not none)) %}
        {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}
            {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
        {%- endif %}
        {%- set ns.index = ns.index + 1 %}
    {%- endif %}
{%- endfor %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if tools is not none and (message == user_messages[-1]) %}
            {{- "[AVAILABLE_TOOLS] [" }}
            {%- for tool in tools %}
                {%- set tool = tool.function %}
                {{- '{"type": "function", "function": {' }}
                {%- for key, val in tool.items() if key != "return" %}
                    {%- if val is string %}
                        {{- '"' + key + '": "' + val + '"' }}
                    {%- else %}
                        {{- '"' + key + '": ' + val|tojson }}
                    {%- endif %}
                    {%- if not loop.last %}
                        {{- ", " }}
                    {%- endif %}
                {%- endfor %}
                {{- "}}" }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- else %}
                    {{- "]" }}
                {%- endif %}
            {%- endfor %}
            {{- "[/AVAILABLE_TOOLS]" }}
            {%- endif %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\n\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message.tool_calls is defined and message.tool_calls is not none %}
        {{- "[TOOL_CALLS] [" }}
        {%- for tool_call in message.tool_calls %}
            {%- set out = tool_call.function|tojson %}
            {{- out[:-1] }}
            {%- if not tool_call.id is defined or tool_call.id|length != 9 %}
                {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
            {%- endif %}
            {{- ', "id": "' + tool_call.id + '"}' }}
            {%- if not loop.last %}
                {{- ", " }}
            {%- else %}
                {{- "]" + eos_token }}
            {%- endif %}
        {%- endfor %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- elif message["role"] == "tool_results" or message["role"] == "tool" %}
        {%- if message.content is defined and message.content.content is defined %}
            {%- set content = message.content.content %}
        {%- else %}
            {%- set content = message.content %}
        {%- endif %}
        {{- '[TOOL_RESULTS] {"content": ' + content|string + ", " }}
        {%- if not message.tool_call_id is defined or message.tool_call_id|length != 9 %}
            {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
        {%- endif %}
        {{- '"call_id": "' + message.tool_call_id + '"}[/TOOL_RESULTS]' }}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
'''

QWEN25_TEMPLATE = r'''{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
'''

ZEPHYR_TEMPLATE = """{% for message in messages %}
{% if message['role'] == 'user' %}
{{ '<|user|>
' + message['content'] + eos_token }}
{% elif message['role'] == 'system' %}
{{ '<|system|>
' + message['content'] + eos_token }}
{% elif message['role'] == 'assistant' %}
{{ '<|assistant|>
'  + message['content'] + eos_token }}
{% endif %}
{% if loop.last and add_generation_prompt %}
{{ '<|assistant|>' }}
{% endif %}
{% endfor %}"""

CHATML_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] "
                   "+ '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

# Not a published template: a compact tour of the Jinja features that published templates use,
# with the whitespace forms (trim_blocks/lstrip_blocks, '-' markers) that trip renderers up.
FEATURES_TEMPLATE = r'''{# comment: dropped #}
{%- macro render(m, idx) -%}
[{{ idx }}:{{ m.role | upper }}{% if m.name is defined %}({{ m.name }}){% endif %}] {{ m.content | trim }}
{%- endmacro -%}
{% set ns = namespace(n_user=0, last_role=none, found=false) %}
{% for m in messages %}
    {% if m.role == 'user' %}{% set ns.n_user = ns.n_user + 1 %}{% endif %}
    {% set ns.last_role = m.role %}
{% endfor %}
users={{ ns.n_user }} last={{ ns.last_role }} total={{ messages | length }}
{% for m in messages %}
  {% if loop.first %}first{% elif loop.last %}last{% else %}mid{% endif %} {{ loop.index }}/{{ loop.length }} rev{{ loop.revindex0 }}
  {{ render(m, loop.index0) }}
  {%- if m.content is string and m.content.startswith('skip') %}{% continue %}{% endif %}
  len={{ m.content | length }} words={{ m.content.split() | length }} up={{ m.content[:5].upper() }} rev={{ m.content[::-1][:4] }}
  {% if m.content | length > 40 %}{% break %}{% endif %}
{% endfor %}
{% set roles = messages | map(attribute='role') | list %}
roles={{ roles | join(',') }} uniq={{ roles | unique | list | sort | join('|') }} first={{ roles | first }} last={{ roles | last }}
{{ 'yes' if 'system' in roles else 'no' }} {{ 'tool' not in roles }} {{ 7 // 2 }} {{ 7 % 3 }} {{ 2 ** 5 }} {{ 7 / 2 }} {{ -3 | abs }} {{ 3.14159 | round(2) }} {{ '42' | int + 1 }} {{ 1 ~ 'a' ~ none }}
{{ (extra_var | default('dflt')) }} [{{ undefined_thing }}] {{ none }} {{ true }} {{ [1, 'a', none] }} {{ {'k': "v"} }} {{ undefined_thing is defined }} {{ none is none }} {{ true and not false }} {{ [1,2,3] | sum }} {{ 'a,b,c'.split(',') | reverse | join }}
{{ {'b': 1, 'a': 2} | tojson }} {{ {'b': 1, 'a': [1, 'é', none, true]} | tojson(indent=2) }} {{ {'z': 1, 'y': 2} | dictsort | first | first }}
{% for k, v in {'one': 1, 'two': 2}.items() %}{{ k }}={{ v }}{{ ',' if not loop.last }}{% endfor %}

{{ "  padded  " | trim }}|{{ "Title case words" | title }}|{{ "MiXeD" | lower }}|{{ "abc" | capitalize }}|{{ "a-b-c" | replace("-", "+") }}|{{ "x" * 3 }}
{%- if add_generation_prompt %}

<assistant>
{%- endif %}
{% raw %}{{ not rendered }}{% endraw %}
'''

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "City name, e.g. Zürich"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}}]


def _conversations():
    sys_m = {"role": "system", "content": "You are a concise assistant."}
    u1 = {"role": "user", "content": "Hello! How are you?"}
    a1 = {"role": "assistant", "content": "I'm fine, thanks. 😊"}
    u2 = {"role": "user", "content": "  Ça va ? 你好，世界 👋🏽\n\tLine two with a tab.  \n\n"}
    u3 = {"role": "user", "content": "Text with <|im_start|> and {{ braces }} and {% raw %} and <s>[INST]"}
    a2 = {"role": "assistant", "content": "\n  Multi-line\nanswer:\n  - one\n  - two\n"}
    return sys_m, u1, a1, u2, u3, a2


def chat_cases():
    sys_m, u1, a1, u2, u3, a2 = _conversations()
    empty_u = {"role": "user", "content": ""}
    base = [
        ([u1], True, {}), ([u1], False, {}), ([sys_m, u1], True, {}), ([u1, a1, u2], True, {}),
        ([sys_m, u1, a1, u2], False, {}), ([sys_m, u3, a2, u2], True, {}), ([empty_u], True, {}),
        ([sys_m, u2, a2], False, {}),
    ]
    weather_call = {"role": "assistant", "tool_calls": [{"id": "call12345", "type": "function", "function": {
        "name": "get_weather", "arguments": {"city": "Zürich", "unit": "celsius"}}}]}
    tool_result = {"role": "tool", "tool_call_id": "call12345", "name": "get_weather",
                   "content": "{\"temp\": 21.5, \"sky\": \"clear ☀\"}"}
    ask = {"role": "user", "content": "What's the weather in Zürich?"}
    out = {}
    out["smollm2"] = base
    out["chatml"] = base
    out["zephyr"] = base
    l31 = base + [
        ([sys_m, u1], True, {"date_string": "01 Jan 2025"}),
        ([sys_m, ask], True, {"tools": TOOLS}),
        ([ask, weather_call, tool_result], True, {"tools": TOOLS}),
        ([sys_m, ask], True, {"tools": TOOLS, "tools_in_user_message": False}),
        ([ask], True, {"builtin_tools": ["code_interpreter", "brave_search", "wolfram_alpha"]}),
        ([ask, {"role": "assistant", "tool_calls": [{"function": {"name": "brave_search", "arguments": {"query": "Zürich weather"}}}]},
          {"role": "ipython", "content": "sunny"}], True, {"builtin_tools": ["brave_search"]}),
        ({"error": True}, [sys_m], True, {"tools": TOOLS}),
        ({"error": True}, [ask, {"role": "assistant", "tool_calls": [weather_call["tool_calls"][0], weather_call["tool_calls"][0]]}], True, {}),
    ]
    out["llama3_1"] = l31
    # strftime_now would make llama3_2 depend on today's date: every case passes date_string.
    out["llama3_2"] = [(m, g, {"date_string": "26 Jul 2024", **e}) for (m, g, e) in base] + [
        ([sys_m, u1], True, {"date_string": "02 Feb 2025"}),
        ([ask, weather_call, tool_result], True, {"tools": TOOLS, "date_string": "26 Jul 2024"}),
        ({"error": True}, [sys_m], True, {"tools": TOOLS, "date_string": "26 Jul 2024"}),
    ]
    alt = [([u1], True, {}), ([u1], False, {}), ([sys_m, u1], True, {}), ([u1, a1, u2], True, {}),
           ([sys_m, u1, a1, u2], False, {}), ([sys_m, u3, a2, u2], True, {}), ([sys_m, u2, a2], False, {}),
           ({"error": True}, [u1, u2], True, {}), ({"error": True}, [a1, u1], True, {}),
           ({"error": True}, [sys_m, u1, a1, a2], True, {})]
    out["llama2"] = alt
    out["mistral_v01"] = [c for c in alt if not (isinstance(c[0], list) and c[0][0]["role"] == "system")] + [
        ({"error": True}, [sys_m, u1], True, {})]
    out["mistral_v03"] = alt + [
        ([ask], True, {"tools": TOOLS}),
        ([sys_m, ask, weather_call, tool_result], True, {"tools": TOOLS}),
        ({"error": True}, [ask, {"role": "assistant", "tool_calls": [{"id": "short", "function": {"name": "f", "arguments": {}}}]}], True, {}),
    ]
    out["qwen2_5"] = base + [
        ([sys_m, ask], True, {"tools": TOOLS}),
        ([ask], True, {"tools": TOOLS}),
        ([ask, {"role": "assistant", "content": "Let me check.", "tool_calls": [weather_call["tool_calls"][0]]},
          tool_result, dict(tool_result, content="second result"), {"role": "assistant", "content": "21.5 °C, clear."}],
         True, {"tools": TOOLS}),
        ([sys_m, u1, {"role": "system", "content": "A second system message."}, u2], True, {}),
    ]
    out["features"] = [
        ([u1], True, {}), ([sys_m, u1, a1, u2], False, {"extra_var": "given"}),
        ([{"role": "user", "content": "skip me please", "name": "bob"}, a2, u3], True, {}),
        ([u3, {"role": "assistant", "content": "x" * 50}, u1], False, {}),
        ([sys_m, u2], True, {"extra_var": 123}),
    ]
    return out


def chat_templates(smollm2_template: str):
    src_mem = ("written from memory of the template published in {} (tokenizer_config.json chat_template); "
               "no network and no PyPI package ships it, so small differences from the Hub text are possible")
    return {
        "smollm2": (smollm2_template, "<|im_start|>", "<|im_end|>",
                    "GGUF tokenizer.chat_template of SmolLM2-135M-Instruct.Q4_1.gguf"),
        "chatml": (CHATML_TEMPLATE, "<s>", "<|im_end|>", "generic ChatML template (as in many HF repos' tokenizer_config.json)"),
        "zephyr": (ZEPHYR_TEMPLATE, "<s>", "</s>", src_mem.format("HuggingFaceH4/zephyr-7b-beta")),
        "llama3_1": (LLAMA31_TEMPLATE, "<|begin_of_text|>", "<|eot_id|>", src_mem.format("meta-llama/Llama-3.1-8B-Instruct")),
        "llama3_2": (LLAMA32_TEMPLATE, "<|begin_of_text|>", "<|eot_id|>", src_mem.format("meta-llama/Llama-3.2-1B-Instruct")
                     + "; uses strftime_now unless date_string is given, so every case passes date_string"),
        "llama2": (LLAMA2_TEMPLATE, "<s>", "</s>", src_mem.format("meta-llama/Llama-2-7b-chat-hf")),
        "mistral_v01": (MISTRAL_V01_TEMPLATE, "<s>", "</s>", src_mem.format("mistralai/Mistral-7B-Instruct-v0.1")),
        "mistral_v03": (MISTRAL_V03_TEMPLATE, "<s>", "</s>", src_mem.format("mistralai/Mistral-7B-Instruct-v0.3")),
        "qwen2_5": (QWEN25_TEMPLATE, "<|endoftext|>", "<|im_end|>", src_mem.format("Qwen/Qwen2.5-7B-Instruct")
                    + " (Qwen's tokenizer_config.json has bos_token null; '<|endoftext|>' is passed but unused)"),
        "features": (FEATURES_TEMPLATE, "<s>", "</s>", "written for MIL: Jinja features used by published templates "
                     "(macro, namespace, loop vars, break/continue, filters, tests, string methods, raw)"),
    }


def write_chat(out_dir: str, smollm2_tokenizer_json: str, smollm2_template: str) -> dict:
    import jinja2
    from transformers import PreTrainedTokenizerFast

    os.makedirs(out_dir, exist_ok=True)
    tok = PreTrainedTokenizerFast(tokenizer_file=smollm2_tokenizer_json)
    cases_by = chat_cases()
    summary = {}
    for name, (tpl, bos, eos, source) in chat_templates(smollm2_template).items():
        cases = []
        for c in cases_by[name]:
            expect_error = isinstance(c[0], dict)
            if expect_error:
                c = c[1:]
            msgs, gen, extra = c
            case = {"messages": copy.deepcopy(msgs), "add_generation_prompt": gen, "extra": copy.deepcopy(extra)}
            try:
                r = tok.apply_chat_template(copy.deepcopy(msgs), chat_template=tpl, add_generation_prompt=gen,
                                            tokenize=False, bos_token=bos, eos_token=eos, **copy.deepcopy(extra))
                assert not expect_error, (name, msgs)
                case["rendered"] = r
            except jinja2.exceptions.TemplateError as e:
                assert expect_error, (name, msgs, e)
                case["error"] = True
                case["error_message"] = str(e)
            cases.append(case)
        doc = {"template": tpl, "bos_token": bos, "eos_token": eos, "source": source,
               "render": "transformers apply_chat_template(messages, chat_template=template, "
                         "add_generation_prompt=..., tokenize=False, bos_token=..., eos_token=..., **extra); "
                         "'tools' in extra is the tools argument",
               "cases": cases}
        with open(os.path.join(out_dir, name + ".json"), "w", encoding="utf-8", newline="\n") as f:
            f.write(json.dumps(doc, ensure_ascii=False, indent=1) + "\n")
        summary[name] = {"cases": len(cases), "errors": sum(1 for x in cases if x.get("error"))}
    return summary


if __name__ == "__main__":
    main()
