"""adapter_source "hub" against a fake Hugging Face Hub (http.server in a thread): downloads with
the request's api_token or HF_TOKEN, revisions, 401/403/404, a connection dropped mid-file (424,
nothing half-written in the cache, a retry works), redirects, and tokens never logged."""
from __future__ import annotations

import http.server
import os
import threading
from pathlib import Path

import pytest
import requests
from lorax import Client as LoraxClient
from lorax.errors import NotFoundError, ShardNotReadyError, UnknownError

from helpers import CAPS_DIR, MilServer, chat_prompt, tgi_error

Q0 = "What is the capital of France?"
REQUEST_TOKEN = "hf_request_token_0123456789"
ENV_TOKEN = "hf_env_token_9876543210"
FILES = {name: (CAPS_DIR / name).read_bytes() for name in ("adapter_config.json", "adapter_model.safetensors")}


class FakeHub:
    """Serves /{org}/{repo}/resolve/{revision}/{file} for a few test repos."""

    def __init__(self):
        self.log: list[tuple[str, str, str]] = []  # (method, path, authorization)
        self.drop = True
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_HEAD(self):
                self.handle_any(head=True)

            def do_GET(self):
                self.handle_any(head=False)

            def send_plain(self, status, body=b"", headers=()):
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if body:
                    self.wfile.write(body)

            def handle_any(self, head):
                auth = self.headers.get("Authorization", "")
                hub.log.append((self.command, self.path, auth))
                parts = self.path.split("?")[0].strip("/").split("/")
                if parts[0] == "cdn" and len(parts) == 2 and parts[1] in FILES:
                    return self.send_file(FILES[parts[1]], head)
                if len(parts) != 5 or parts[2] != "resolve":
                    return self.send_plain(404, b'{"error":"not found"}')
                repo, rev, fname = f"{parts[0]}/{parts[1]}", parts[3], parts[4]
                if fname not in FILES:
                    return self.send_plain(404, b'{"error":"Entry not found"}')
                if repo in ("mil-test/caps", "mil-test/caps-private"):
                    if auth != f"Bearer {REQUEST_TOKEN}":
                        return self.send_plain(401, b'{"error":"Invalid credentials"}')
                elif repo == "mil-test/caps-env":
                    if auth != f"Bearer {ENV_TOKEN}":
                        return self.send_plain(401, b'{"error":"Invalid credentials"}')
                elif repo == "mil-test/caps-rev":
                    if rev != "v2":
                        return self.send_plain(404, b'{"error":"Revision not found"}')
                elif repo == "mil-test/denied":
                    return self.send_plain(401, b'{"error":"Access to this repo is restricted"}')
                elif repo == "mil-test/forbidden":
                    return self.send_plain(403, b'{"error":"Forbidden"}')
                elif repo == "mil-test/redirect":
                    if fname == "adapter_model.safetensors":
                        return self.send_plain(302, b"", [("Location", f"/cdn/{fname}")])
                elif repo == "mil-test/flaky":
                    if fname == "adapter_model.safetensors" and hub.drop:
                        data = FILES[fname]
                        self.send_response(200)
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                        if not head:
                            self.wfile.write(data[: len(data) // 2])
                            self.wfile.flush()
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                else:
                    return self.send_plain(404, b'{"error":"Repository not found"}')
                return self.send_file(FILES[fname], head)

            def send_file(self, data, head):
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("ETag", '"%d"' % len(data))
                self.end_headers()
                if not head:
                    self.wfile.write(data)

        class Server(http.server.ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                pass  # the dropped connections are deliberate

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def gets(self, repo):
        return [(p, a) for m, p, a in self.log if m == "GET" and p.startswith(f"/{repo}/")]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def hub():
    h = FakeHub()
    yield h
    h.close()


@pytest.fixture(scope="module")
def hub_cache(work_dir):
    return work_dir / "hub-cache"


@pytest.fixture(scope="module")
def hub_server(mil_bin, model_path, work_dir, hub, hub_cache):
    s = MilServer(mil_bin, model_path, work_dir / "hub.log",
                  args=["--huggingface-hub-cache", str(hub_cache), "--kv-cache-memory", "32", "--max-batch-prefill-tokens", "512",
                        "--lora-adapters", f"caps={CAPS_DIR}"],
                  env={"HF_ENDPOINT": hub.url, "HF_TOKEN": ENV_TOKEN}).start()
    yield s
    assert s.stop() == 0, s.log_tail()
    log = s.log_path.read_text(errors="replace")
    assert REQUEST_TOKEN not in log and ENV_TOKEN not in log, "a Hub token was written to the log"


@pytest.fixture(scope="module")
def lorax(hub_server):
    return LoraxClient(hub_server.url, timeout=180)


@pytest.fixture(scope="module")
def caps_ref(hub_server):
    return hub_server.generate(chat_prompt(Q0), max_new_tokens=16, adapter_id="caps", details=True)


def post_hub(server, adapter_id, **params):
    return server.post("/generate", {"inputs": chat_prompt(Q0), "parameters": dict(
        max_new_tokens=16, adapter_id=adapter_id, adapter_source="hub", **params)})


def test_hub_download_with_request_token(hub_server, lorax, hub, hub_cache, caps_ref, demo):
    r = lorax.generate(chat_prompt(Q0), adapter_id="mil-test/caps", adapter_source="hub",
                       api_token=REQUEST_TOKEN, max_new_tokens=16, details=False)
    assert r.generated_text == caps_ref["generated_text"] == demo["caps"][0]
    raw = post_hub(hub_server, "mil-test/caps", api_token=REQUEST_TOKEN, details=True)
    assert [t["id"] for t in raw.json()["details"]["tokens"]] == [t["id"] for t in caps_ref["details"]["tokens"]]
    gets = hub.gets("mil-test/caps")
    paths = {p for p, _ in gets}
    assert "/mil-test/caps/resolve/main/adapter_config.json" in paths
    assert "/mil-test/caps/resolve/main/adapter_model.safetensors" in paths
    assert all(a == f"Bearer {REQUEST_TOKEN}" for _, a in gets)
    # cached: the files are in --huggingface-hub-cache, and a second request does not download
    cached = {f.read_bytes() for f in hub_cache.rglob("*") if f.is_file()}
    assert FILES["adapter_model.safetensors"] in cached and FILES["adapter_config.json"] in cached
    n = len(hub.gets("mil-test/caps"))
    r2 = lorax.generate(chat_prompt(Q0), adapter_id="mil-test/caps", adapter_source="hub",
                        api_token=REQUEST_TOKEN, max_new_tokens=16, details=False)
    assert r2.generated_text == r.generated_text
    assert len(hub.gets("mil-test/caps")) == n


def test_hub_hf_token_from_env(lorax, hub, caps_ref):
    r = lorax.generate(chat_prompt(Q0), adapter_id="mil-test/caps-env", adapter_source="hub",
                       max_new_tokens=16, details=False)
    assert r.generated_text == caps_ref["generated_text"]
    assert all(a == f"Bearer {ENV_TOKEN}" for _, a in hub.gets("mil-test/caps-env"))


def test_hub_revision(hub_server, hub, caps_ref):
    r = post_hub(hub_server, "mil-test/caps-rev@v2")
    assert r.status_code == 200, r.text
    assert r.json()["generated_text"] == caps_ref["generated_text"]
    assert {p for p, _ in hub.gets("mil-test/caps-rev")} >= {
        "/mil-test/caps-rev/resolve/v2/adapter_config.json",
        "/mil-test/caps-rev/resolve/v2/adapter_model.safetensors"}
    tgi_error(post_hub(hub_server, "mil-test/caps-rev@v9"), 404, "not_found")


@pytest.mark.parametrize("repo", ["mil-test/denied", "mil-test/forbidden"])
def test_hub_access_denied_401(hub_server, lorax, repo):
    r = post_hub(hub_server, repo, api_token="hf_whatever")
    body = tgi_error(r, 401, "unauthorized")
    assert "denied" in body["error"].lower(), body
    with pytest.raises(UnknownError, match="401"):
        lorax.generate(chat_prompt(Q0), adapter_id=repo, adapter_source="hub", max_new_tokens=2)


def test_hub_wrong_token_401(hub_server, hub):
    # a repo nobody downloaded yet (once cached, MIL serves an adapter without asking the Hub)
    tgi_error(post_hub(hub_server, "mil-test/caps-private", api_token="hf_wrong"), 401, "unauthorized")
    # no api_token: HF_TOKEN (the wrong token for this repo) is sent
    tgi_error(post_hub(hub_server, "mil-test/caps-private"), 401, "unauthorized")
    assert {a for _, a in hub.gets("mil-test/caps-private")} == {"Bearer hf_wrong", f"Bearer {ENV_TOKEN}"}


def test_hub_not_found_404(hub_server, lorax):
    tgi_error(post_hub(hub_server, "mil-test/missing"), 404, "not_found")
    with pytest.raises(NotFoundError):
        lorax.generate(chat_prompt(Q0), adapter_id="mil-test/missing", adapter_source="hub", max_new_tokens=2)


def test_hub_follows_redirects(hub_server, caps_ref, hub):
    """huggingface.co answers LFS files with a redirect to its CDN."""
    r = post_hub(hub_server, "mil-test/redirect")
    assert r.status_code == 200, r.text
    assert r.json()["generated_text"] == caps_ref["generated_text"]


def _partial_files(cache: Path):
    full = FILES["adapter_model.safetensors"]
    bad = []
    for f in cache.rglob("*") if cache.exists() else []:
        if f.is_file():
            data = f.read_bytes()
            if 0 < len(data) < len(full) and full.startswith(data):
                bad.append(str(f))
    return bad


def test_hub_dropped_download_424_then_retry(hub_server, lorax, hub, hub_cache, caps_ref):
    hub.drop = True
    r = post_hub(hub_server, "mil-test/flaky")
    assert r.status_code == 424, r.text
    assert r.json()["error"] and r.json()["error_type"], r.text  # SERVING.md names no type for it
    with pytest.raises(ShardNotReadyError):
        lorax.generate(chat_prompt(Q0), adapter_id="mil-test/flaky", adapter_source="hub", max_new_tokens=2,
                       details=False)
    assert not _partial_files(hub_cache), _partial_files(hub_cache)
    assert hub_server.get("/health").status_code == 200
    hub.drop = False
    r = lorax.generate(chat_prompt(Q0), adapter_id="mil-test/flaky", adapter_source="hub", max_new_tokens=16,
                       details=False)
    assert r.generated_text == caps_ref["generated_text"]
    assert not _partial_files(hub_cache)


def test_hub_stream(hub_server, lorax, caps_ref):
    events = list(lorax.generate_stream(chat_prompt(Q0), adapter_id="mil-test/caps-env",
                                        adapter_source="hub", max_new_tokens=16))
    assert events[-1].generated_text == caps_ref["generated_text"]
