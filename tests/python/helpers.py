"""Shared helpers: a `mil serve` process, raw HTTP, SSE and Prometheus parsing."""
from __future__ import annotations

import json
import os
import re
import resource
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import requests

REPO = Path(__file__).resolve().parents[2]
DEMO_ANSWERS_PATH = REPO / "tests" / "fixtures" / "lora" / "demo_answers.json"
CAPS_DIR = REPO / "examples" / "adapters" / "smollm2-caps"
PIRATE_DIR = REPO / "examples" / "adapters" / "smollm2-pirate"

# The default model's chat template with its default system prompt (what /v1/chat/completions
# renders for one user message; demo_answers.json's prompt_ids are this text's tokens).
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
TIMEOUT = 180


def chat_prompt(question: str) -> str:
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
            f"<|im_start|>assistant\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 8192 if hard == resource.RLIM_INFINITY else min(hard, 8192)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


raise_nofile = _raise_nofile


class MilServer:
    """One `mil serve` process on a free port of 127.0.0.1."""

    def __init__(self, binary, model, log_path: Path, args=(), env=None):
        self.binary = str(binary)
        self.model = str(model)
        self.log_path = Path(log_path)
        self.args = [str(a) for a in args]
        self.extra_env = dict(env or {})
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.returncode = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        cmd = [self.binary, "serve", "--model-id", self.model, "--hostname", "127.0.0.1",
               "--port", str(self.port)]
        if os.environ.get("MIL_TEST_THREADS"):
            cmd += ["--threads", os.environ["MIL_TEST_THREADS"]]
        return cmd + self.args

    def start(self, timeout: float = 180):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("MIL_") and k not in ("HF_ENDPOINT", "HF_TOKEN")}
        env.update(self.extra_env)
        for attempt in range(3):
            self.port = free_port()
            log = open(self.log_path, "ab")
            log.write(f"\n==== {' '.join(self.command())}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         env=env, preexec_fn=_raise_nofile)
            log.close()
            deadline = time.time() + timeout
            while time.time() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    r = requests.get(self.url + "/health", timeout=2)
                    if r.status_code == 200:
                        return self
                except requests.RequestException:
                    pass
                time.sleep(0.2)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError(f"mil serve did not become healthy in {timeout}s:\n"
                                   f"{self.log_tail()}")
            if "address already in use" not in self.log_tail().lower():
                break
        raise RuntimeError(f"mil serve exited with {self.proc.returncode} during start-up:\n"
                           f"{self.log_tail()}")

    def signal(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 120) -> int:
        try:
            self.returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self.returncode = "killed after timeout"
        return self.returncode

    def stop(self, timeout: float = 120):
        """SIGTERM and wait; returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    # --- raw HTTP ---------------------------------------------------------------------
    def get(self, path, **kw) -> requests.Response:
        kw.setdefault("timeout", TIMEOUT)
        return requests.get(self.url + path, **kw)

    def post(self, path, body=None, **kw) -> requests.Response:
        kw.setdefault("timeout", TIMEOUT)
        if body is not None and not isinstance(body, (str, bytes)):
            kw["json"] = body
        elif body is not None:
            kw["data"] = body
            kw.setdefault("headers", {}).setdefault("Content-Type", "application/json")
        return requests.post(self.url + path, **kw)

    def generate(self, inputs, **params) -> dict:
        r = self.post("/generate", {"inputs": inputs, "parameters": params})
        assert r.status_code == 200, f"/generate -> {r.status_code}: {r.text}"
        return r.json()

    def tokenize(self, inputs) -> list[dict]:
        r = self.post("/tokenize", {"inputs": inputs})
        assert r.status_code == 200, f"/tokenize -> {r.status_code}: {r.text}"
        return r.json()

    def metrics(self) -> "Metrics":
        r = self.get("/metrics")
        assert r.status_code == 200, r.text
        return Metrics.parse(r.text)

    def info(self) -> dict:
        r = self.get("/info")
        assert r.status_code == 200, r.text
        return r.json()


def sse_data(lines: Iterator[bytes]) -> Iterator[str]:
    """The payloads of `data:` lines (with or without a space after the colon)."""
    for raw in lines:
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8")
        line = raw.rstrip("\r\n")
        if line.startswith("data:"):
            yield line[5:].lstrip(" ")


def stream_events(resp: requests.Response) -> list:
    """All SSE events of a streaming response: parsed JSON, or the string "[DONE]"."""
    out = []
    for payload in sse_data(resp.iter_lines()):
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def tgi_error(resp: requests.Response, status: int, error_type: str) -> dict:
    """Asserts a TGI error answer: status and {"error": str, "error_type": type}."""
    assert resp.status_code == status, f"expected {status}, got {resp.status_code}: {resp.text[:500]}"
    body = resp.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body
    assert body.get("error_type") == error_type, body
    return body


def openai_error(resp: requests.Response, status: int) -> dict:
    """Asserts an OpenAI-shaped error: {"error": {"message", "type", "param": null, "code": status}}."""
    assert resp.status_code == status, f"expected {status}, got {resp.status_code}: {resp.text[:500]}"
    body = resp.json()
    err = body.get("error")
    assert isinstance(err, dict), body
    assert isinstance(err.get("message"), str) and err["message"], body
    assert isinstance(err.get("type"), str), body
    assert "param" in err and err["param"] is None, body
    assert err.get("code") == status, body
    return err


# --- Prometheus text format ------------------------------------------------------------
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\d+)?$')
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


class Metrics:
    def __init__(self):
        self.types: dict[str, str] = {}
        self.samples: list[tuple[str, dict, float]] = []

    @classmethod
    def parse(cls, text: str) -> "Metrics":
        m = cls()
        for line in text.splitlines():
            line = line.strip()
            if not line:
                continue
            if line.startswith("#"):
                parts = line.split(None, 3)
                if len(parts) >= 4 and parts[1] == "TYPE":
                    m.types[parts[2]] = parts[3].strip()
                continue
            mm = _SAMPLE.match(line)
            assert mm, f"unparsable metrics line: {line!r}"
            name, _, labels_text, value = mm.group(1), mm.group(2), mm.group(3), mm.group(4)
            labels = {}
            if labels_text:
                pos = 0
                while pos < len(labels_text):
                    lm = _LABEL.match(labels_text, pos)
                    assert lm, f"bad labels in {line!r}"
                    labels[lm.group(1)] = bytes(lm.group(2), "utf-8").decode("unicode_escape")
                    pos = lm.end()
            v = float(value.replace("+Inf", "inf").replace("-Inf", "-inf"))
            m.samples.append((name, labels, v))
        return m

    def value(self, name: str, default=None, **labels) -> float | None:
        """Sum of the samples named `name` whose labels include `labels`."""
        found = [v for n, l, v in self.samples
                 if n == name and all(l.get(k) == str(x) for k, x in labels.items())]
        return sum(found) if found else default

    def has(self, name: str) -> bool:
        return any(n == name for n, _, _ in self.samples)

    def family_type(self, name: str) -> str | None:
        return self.types.get(name)


def wait_until(pred, timeout: float, interval: float = 0.2, what: str = "condition"):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
