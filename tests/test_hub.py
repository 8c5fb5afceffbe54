"""i2i push and hf:// sources against a Hub on 127.0.0.1 that the test starts.

FakeHub speaks the endpoints huggingface_hub calls for create_repo, create_branch,
create_commit (README validation, preupload, then the NDJSON commit with every file
inline: it answers "regular" to preupload, so no LFS or Xet storage is involved) and
hf_hub_download (HEAD and GET on resolve/). Its state is a dict: repo id -> revision ->
{path: bytes}. Writes need the test's token.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import unquote

import pytest
import torch
import yaml

TOKEN = "hf_TestTokenThatMustNeverLeak1234"
OWNER_REPO = "someone/tiny-maps"


class FakeHub(ThreadingHTTPServer):
    def __init__(self):
        super().__init__(("127.0.0.1", 0), HubHandler)
        self.repos: dict[str, dict[str, dict[str, bytes]]] = {}
        self.private: set[str] = set()
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    @staticmethod
    def commit_of(files: dict[str, bytes]) -> str:
        digest = hashlib.sha1()
        for path in sorted(files):
            digest.update(path.encode() + hashlib.sha1(files[path]).digest())
        return digest.hexdigest()


class HubHandler(BaseHTTPRequestHandler):
    server: FakeHub

    def log_message(self, *args):  # quiet
        pass

    def reply(self, status: int, body: dict | bytes = b"", headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def do_POST(self):
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self.reply(401, {"error": "Invalid credentials in Authorization header"})
        repos = self.server.repos
        if self.path == "/api/repos/create":
            request = json.loads(self.body())
            repo_id = f"{request['organization']}/{request['name']}"
            if repo_id in repos:
                return self.reply(409, {"error": "You already created this model repo"})
            repos[repo_id] = {"main": {".gitattributes": b""}}
            if request.get("visibility") == "private":
                self.server.private.add(repo_id)
            return self.reply(200, {"url": f"{self.server.url}/{repo_id}"})
        if self.path == "/api/validate-yaml":
            front_matter = json.loads(self.body())["content"].split("---\n")[1]
            yaml.safe_load(front_matter)
            return self.reply(200, {"errors": [], "warnings": []})
        found = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|commit|branch)/([^?]+)(\?.*)?", self.path)
        if not found or found[1] not in repos:
            return self.reply(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        repo, action, revision = repos[found[1]], found[2], unquote(found[3])
        if action == "branch":
            if revision in repo:
                return self.reply(409, {"error": "Reference already exists"})
            repo[revision] = dict(repo["main"])
            return self.reply(200, {})
        if revision not in repo:
            return self.reply(404, {"error": "Invalid rev id"}, {"X-Error-Code": "RevisionNotFound"})
        if action == "preupload":
            files = json.loads(self.body())["files"]
            return self.reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
        for line in self.body().splitlines():
            item = json.loads(line)
            if item["key"] == "file":
                repo[revision][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
        commit = FakeHub.commit_of(repo[revision])
        return self.reply(200, {"commitUrl": f"{self.server.url}/{found[1]}/commit/{commit}", "commitOid": commit})

    def do_HEAD(self):
        found = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", self.path)
        if not found:
            return self.reply(404, {"error": "not served by this fake"})
        repo_id, revision, path = (unquote(part) for part in found.groups())
        repo = self.server.repos.get(repo_id)
        if repo is None or (repo_id in self.server.private and self.headers.get("Authorization") != f"Bearer {TOKEN}"):
            return self.reply(401, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        if revision not in repo:
            return self.reply(404, {"error": "Invalid rev id"}, {"X-Error-Code": "RevisionNotFound"})
        files = repo[revision]
        if path not in files:
            return self.reply(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
        headers = {"X-Repo-Commit": FakeHub.commit_of(files), "ETag": f'"{hashlib.sha256(files[path]).hexdigest()}"'}
        self.reply(200, files[path], headers)

    do_GET = do_HEAD


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A FakeHub, with huggingface_hub pointed at it (its constants are read at import, so they
    are patched too), its cache and token file under tmp_path, no token from the environment."""
    from huggingface_hub import constants

    server = FakeHub()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    home = tmp_path / "hf_home"
    settings = {"ENDPOINT": server.url, "HUGGINGFACE_CO_URL_TEMPLATE": server.url + "/{repo_id}/resolve/{revision}/{filename}",
                "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"), "HF_TOKEN_PATH": str(home / "token"),
                "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"), "HF_HUB_DISABLE_XET": True,
                "HF_HUB_DISABLE_TELEMETRY": True}
    for name, value in settings.items():
        monkeypatch.setattr(constants, name, value)
    for name in ("HF_ENDPOINT", "HF_HOME"):
        monkeypatch.setenv(name, settings["ENDPOINT" if name == "HF_ENDPOINT" else name])
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield server
    server.shutdown()
    server.server_close()


def same_outputs(file_a: Path, file_b: Path) -> bool:
    from i2i.engine.inference import load_generator

    (gen_a, _, _), (gen_b, _, _) = load_generator(file_a), load_generator(file_b)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        return torch.equal(gen_a.eval()(x), gen_b.eval()(x))


def files_holding(text: str, *folders: Path) -> list[Path]:
    return [path for folder in folders for path in folder.rglob("*") if path.is_file() and text.encode() in path.read_bytes()]


def test_push_then_hf_download_gives_the_same_generator(tiny_run, hub, tmp_path, caplog):
    from i2i.engine.checkpoint import latest_checkpoint
    from i2i.hub import download_from_hub, push_to_hub

    pushed = push_to_hub(tiny_run, OWNER_REPO, token=TOKEN, quality_results=None)
    assert pushed.url == f"{hub.url}/{OWNER_REPO}" and pushed.step == 4
    stored = hub.repos[OWNER_REPO]["main"]
    assert set(stored) == {".gitattributes", "generator.safetensors", "recipe.yaml", "README.md", "samples/step_00000004.png"}
    local = latest_checkpoint(tiny_run) / "generator.safetensors"
    assert stored["generator.safetensors"] == local.read_bytes()
    assert stored["samples/step_00000004.png"] == (tiny_run / "samples" / "step_00000004.png").read_bytes()
    assert yaml.safe_load(stored["recipe.yaml"])["name"] == "tiny"

    card = stored["README.md"].decode()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front == {"library_name": "i2i", "pipeline_tag": "image-to-image", "tags": ["pix2pix", "image-to-image"]}
    assert f'i2i.load("hf://{OWNER_REPO}")' in card
    assert "![input, generated, target](samples/step_00000004.png)" in card
    assert "No metrics recorded for this run." in card

    downloaded = download_from_hub(f"hf://{OWNER_REPO}")
    assert downloaded.is_relative_to(tmp_path / "hf_home" / "hub") and downloaded.read_bytes() == local.read_bytes()
    assert same_outputs(downloaded, local)
    assert not files_holding(TOKEN, tmp_path, tiny_run) and TOKEN not in caplog.text
    assert not [path for path, content in stored.items() if TOKEN.encode() in content]


def test_load_accepts_hf_sources(tiny_run, hub):
    import i2i
    from i2i.hub import push_to_hub

    push_to_hub(tiny_run, OWNER_REPO, token=TOKEN, quality_results=None)
    translator = i2i.load(f"hf://{OWNER_REPO}", device="cpu")
    local = i2i.load(tiny_run, device="cpu")
    x = torch.rand(1, 3, 40, 24) * 2 - 1
    assert torch.equal(translator(x), local(x))


def test_push_to_a_revision_and_load_it(tiny_run, hub):
    from i2i.hub import HubError, download_from_hub, push_to_hub

    pushed = push_to_hub(tiny_run, OWNER_REPO, revision="v1", token=TOKEN, quality_results=None)
    assert pushed.url.endswith(f"{OWNER_REPO}/tree/v1")
    assert "generator.safetensors" in hub.repos[OWNER_REPO]["v1"]
    assert "generator.safetensors" not in hub.repos[OWNER_REPO]["main"]
    assert download_from_hub(f"{OWNER_REPO}@v1").read_bytes() == hub.repos[OWNER_REPO]["v1"]["generator.safetensors"]
    with pytest.raises(HubError, match="has no generator.safetensors"):
        download_from_hub(OWNER_REPO)
    with pytest.raises(HubError, match="no revision 'v2'"):
        download_from_hub(f"hf://{OWNER_REPO}@v2")


def test_clear_errors_for_what_is_not_an_i2i_generator_on_the_hub(hub):
    from i2i.hub import HubError, download_from_hub

    hub.repos["someone/a-diffusion-model"] = {"main": {"README.md": b"# not i2i", "model.safetensors": b"..."}}
    with pytest.raises(HubError, match=r"hf://someone/a-diffusion-model has no generator.safetensors: it is not an i2i generator"):
        download_from_hub("hf://someone/a-diffusion-model")
    with pytest.raises(HubError, match="no such repository, or it is private"):
        download_from_hub("someone/nothing-here")
    for bad in ("hf://just-a-name", "hf://a/b/c", "hf://a/b@"):
        with pytest.raises(HubError, match="expected hf://owner/name"):
            download_from_hub(bad)


def test_private_repo_needs_the_token_and_a_push_without_one_changes_nothing(tiny_run, hub, monkeypatch):
    from i2i.hub import HubError, download_from_hub, push_to_hub

    with pytest.raises(HubError, match=r"pushing to someone/tiny-maps at http://127.0.0.1:\d+ failed: .*401"):
        push_to_hub(tiny_run, OWNER_REPO, quality_results=None)
    assert hub.repos == {}
    push_to_hub(tiny_run, OWNER_REPO, private=True, token=TOKEN, quality_results=None)
    with pytest.raises(HubError, match="private and no token was found"):
        download_from_hub(OWNER_REPO)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert download_from_hub(OWNER_REPO).is_file()


def test_card_lists_the_metrics_the_run_recorded_up_to_the_pushed_step(tiny_run, tmp_path):
    from i2i.model_card import recorded_evaluations

    run = shutil.copytree(tiny_run, tmp_path / "run")
    with open(run / "log.jsonl", "a") as log:
        # step 1: a log from before records named their mode (train mode then); step 6 is after
        # the pushed checkpoint (4)
        for step, fid, mode in ((1, 320.0, None), (2, 301.5, "instance"), (6, 250.0, "instance")):
            log.write(json.dumps({"step": step, "epoch": 0, "eval_images": 8, "eval_fid": fid, "eval_kid": 0.25,
                                  "eval_ssim": 0.125, "eval_psnr": 14.5, **({"eval_mode": mode} if mode else {})}) + "\n")
    results = tmp_path / "quality.jsonl"
    metrics = {"images": 100, "fid": 280.25, "kid": 0.2, "ssim": 0.2, "psnr": 15.0, "kid_std": 0.01}
    results.write_text("".join(json.dumps(record) + "\n" for record in (
        {"checkpoint": str(run), "steps_trained": 4, "split": "val", "mode": "eval", "metrics": metrics},
        {"checkpoint": str(tmp_path / "another_run"), "steps_trained": 4, "split": "val", "mode": "eval", "metrics": metrics},
    )))
    found = recorded_evaluations(run, 4, results)
    assert [(e.measured_by, e.step, e.images, e.mode, e.metrics["fid"]) for e in found] == [
        ("evaluation during training", 1, 8, "train", 320.0),
        ("evaluation during training", 2, 8, "instance", 301.5),
        ("i2i bench quality", 4, 100, "eval", 280.25),
    ]


def test_card_table_rows(tiny_run):
    from i2i.engine.inference import load_generator
    from i2i.model_card import Evaluation, model_card

    _, recipe, metadata = load_generator(tiny_run)
    card = model_card(OWNER_REPO, recipe, metadata["recipe"], 4, "0.1.0", None,
                      [Evaluation("i2i bench quality", 4, "val", 100, "eval", {"fid": 280.25, "kid": None, "ssim": 0.2, "psnr": 15.0})])
    assert "| i2i bench quality | 4 | val | 100 | eval | 280.2 | n/a | 0.2 | 15 |" in card
    assert "The run wrote no sample grid." in card and "No metrics recorded" not in card


def test_cli_push_takes_the_token_from_the_environment_and_never_prints_it(tiny_run, hub, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from i2i.cli import app

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    result = CliRunner().invoke(app, ["push", str(tiny_run), "--repo", OWNER_REPO, "--results", str(tmp_path / "none.jsonl")])
    assert result.exit_code == 0, result.output
    assert f"{hub.url}/{OWNER_REPO}" in result.output and f'i2i.load("hf://{OWNER_REPO}")' in result.output
    assert TOKEN not in result.output and not files_holding(TOKEN, tmp_path)


def test_with_the_hub_unreachable_a_downloaded_generator_loads_from_the_cache_and_errors_say_so(tiny_run, hub, monkeypatch):
    from huggingface_hub.utils import _http

    from i2i.hub import HubError, download_from_hub, push_to_hub

    # Without a cached copy huggingface_hub retries an unreachable Hub five times over 23 s: skip the waits.
    no_waits = SimpleNamespace(**{name: getattr(time, name) for name in dir(time) if not name.startswith("_")})
    no_waits.sleep = lambda seconds: None
    monkeypatch.setattr(_http, "time", no_waits)

    push_to_hub(tiny_run, OWNER_REPO, token=TOKEN, quality_results=None)
    cached = download_from_hub(OWNER_REPO)
    hub.shutdown()
    hub.server_close()
    assert download_from_hub(OWNER_REPO) == cached
    with pytest.raises(HubError, match=r"generator.safetensors is not in the cache and the Hub \(http://127.0.0.1:\d+\) cannot be reached"):
        download_from_hub("someone/never-downloaded")
    with pytest.raises(HubError, match=r"pushing to someone/tiny-maps at http://127.0.0.1:\d+ failed"):
        push_to_hub(tiny_run, OWNER_REPO, token=TOKEN, quality_results=None)
