"""Fixtures for the serving tests: they start the real `mil serve` binary and drive it over
HTTP with unmodified PyPI clients (openai, text-generation, lorax-client, huggingface_hub,
aiohttp, requests).

Environment:
  MIL_BIN             the `mil` executable (default <repo>/build/src/mil)
  MIL_DEFAULT_MODEL   the default model (default ~/.cache/mil/models/SmolLM2-135M-Instruct.Q4_1.gguf)
  MIL_TEST_THREADS    --threads for the servers (default: the server's own default)
  MIL_LOAD_CLIENTS    concurrent streams of the load test (default 1000)

Nothing is skipped: a missing binary, model or demo adapter ends the session with an error.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import (  # noqa: E402
    REPO,
    MilServer,
    DEMO_ANSWERS_PATH,
)


def _default_model() -> Path:
    if os.environ.get("MIL_DEFAULT_MODEL"):
        return Path(os.environ["MIL_DEFAULT_MODEL"])
    cache = Path(os.environ.get("MIL_CACHE", Path.home() / ".cache" / "mil"))
    return cache / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _mil_bin() -> Path:
    return Path(os.environ.get("MIL_BIN", REPO / "build" / "src" / "mil"))


def pytest_sessionstart(session):
    problems = []
    binary = _mil_bin()
    model = _default_model()
    if not binary.is_file() or not os.access(binary, os.X_OK):
        problems.append(f"mil binary not found or not executable: {binary} (set MIL_BIN)")
    else:
        probe = subprocess.run([str(binary), "serve", "--help"], capture_output=True, text=True)
        if probe.returncode != 0:
            problems.append(f"`{binary} serve --help` failed (rc {probe.returncode}): "
                            f"{(probe.stdout + probe.stderr)[-2000:]}")
    if not model.is_file():
        problems.append(f"default model not found: {model} (run `make model` or set MIL_DEFAULT_MODEL)")
    for name in ("smollm2-caps", "smollm2-pirate"):
        if not (REPO / "examples" / "adapters" / name / "adapter_model.safetensors").is_file():
            problems.append(f"demo adapter missing: examples/adapters/{name}")
    if not DEMO_ANSWERS_PATH.is_file():
        problems.append(f"missing {DEMO_ANSWERS_PATH}")
    if problems:
        pytest.exit("serving tests cannot run:\n  " + "\n  ".join(problems), returncode=2)


@pytest.fixture(scope="session")
def mil_bin() -> Path:
    return _mil_bin()


@pytest.fixture(scope="session")
def model_path() -> Path:
    return _default_model()


@pytest.fixture(scope="session")
def demo():
    """The demo adapters' greedy answers (tests/fixtures/lora/demo_answers.json)."""
    with open(DEMO_ANSWERS_PATH) as f:
        return json.load(f)


@pytest.fixture(scope="session")
def work_dir():
    d = Path(tempfile.mkdtemp(prefix="mil-pytest-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def adapter_dir(work_dir) -> Path:
    """--adapter-dir: copies of the demo adapters, plus a symlink that leads outside."""
    d = work_dir / "adapters"
    d.mkdir()
    for name in ("smollm2-caps", "smollm2-pirate"):
        shutil.copytree(REPO / "examples" / "adapters" / name, d / name)
    # A symlink inside the adapter dir that points outside it: must be refused (422).
    os.symlink(REPO / "examples" / "adapters" / "smollm2-caps", d / "escape")
    return d


DEMO_LORAS = ("caps=" + str(REPO / "examples/adapters/smollm2-caps") + ","
              "pirate=" + str(REPO / "examples/adapters/smollm2-pirate"))

# The main server's limits (tests rely on them).
MAX_INPUT_TOKENS = 512
MAX_TOTAL_TOKENS = 640
SERVED_NAME = "smollm2-test"


@pytest.fixture(scope="session")
def server(mil_bin, model_path, work_dir, adapter_dir):
    """The main `mil serve`: demo adapters, an adapter dir, small KV cache, explicit limits."""
    s = MilServer(mil_bin, model_path, work_dir / "main.log", args=[
        "--served-model-name", SERVED_NAME,
        "--lora-adapters", DEMO_LORAS,
        "--adapter-dir", str(adapter_dir),
        "--huggingface-hub-cache", str(work_dir / "hub-main"),
        "--kv-cache-memory", "96",
        "--max-input-tokens", str(MAX_INPUT_TOKENS),
        "--max-total-tokens", str(MAX_TOTAL_TOKENS),
        "--max-concurrent-requests", "256",
    ])
    s.start()
    yield s
    rc = s.stop()
    assert rc == 0, f"mil serve exited with {rc} after SIGTERM; log tail:\n{s.log_tail()}"
