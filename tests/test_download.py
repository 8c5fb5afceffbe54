"""The downloader end to end against an HTTP server on 127.0.0.1 that the test starts
(Range requests, dropped connections); the real host is never contacted."""

from __future__ import annotations

import hashlib
import io
import random
import socket
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from i2i.cli import app
from i2i.data import download as dl
from i2i.data.download import DownloadError, Entry, download_dataset, ensure_data
from i2i.recipe import DataSection


class Server:
    """Serves ``files`` (path -> bytes) with Range support; ``cut_next`` bytes ends the next response early."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.ranges: list[str | None] = []
        self.cut_next: int | None = None
        self.honour_range = True
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                header = self.headers.get("Range") if server.honour_range else None
                server.ranges.append(self.headers.get("Range"))
                start = int(header.removeprefix("bytes=").split("-")[0]) if header else 0
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.end_headers()
                    return
                self.send_response(206 if header else 200)
                if header:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                payload = body[start:]
                if server.cut_next is not None:
                    payload, server.cut_next = payload[: server.cut_next], None
                    self.close_connection = True
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def publish(self, name: str, body: bytes) -> str:
        self.files[f"/{name}"] = body
        return f"{self.url}/{name}"


@pytest.fixture
def server():
    serving = Server()
    yield serving
    serving.httpd.shutdown()
    serving.httpd.server_close()


def tar_gz(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def dataset_archive(name: str = "maps", counts: dict[str, int] | None = None) -> bytes:
    """A gzip'd tar of NAME/<split>/<i>.jpg with incompressible contents, so it is big enough to cut."""
    members = []
    for split, count in (counts or {"train": 3, "val": 2}).items():
        for i in range(1, count + 1):
            members.append((tarfile.TarInfo(f"{name}/{split}/{i}.jpg"), random.Random(f"{split}{i}").randbytes(4096)))
    return tar_gz(members)


def entry(url: str, sha256: str | None = None, counts: dict[str, int] | None = None) -> Entry:
    return Entry("maps", "test maps", counts or {"train": 3, "val": 2}, url=url, sha256=sha256)


def test_download_verifies_and_extracts(server, tmp_path):
    body = dataset_archive()
    url = server.publish("maps.tar.gz", body)
    catalogue = {"maps": entry(url, hashlib.sha256(body).hexdigest())}
    target = download_dataset("maps", tmp_path, catalogue, show_progress=False)
    assert target == tmp_path / "maps"
    assert sorted(p.name for p in (target / "train").iterdir()) == ["1.jpg", "2.jpg", "3.jpg"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps"], "archive, .part and staging are gone"
    assert download_dataset("maps", tmp_path, catalogue, show_progress=False) == target
    assert len(server.ranges) == 1, "a verified set is not fetched again"


def test_dropped_connection_resumes_with_range(server, tmp_path):
    body = dataset_archive()
    server.cut_next = len(body) // 3
    catalogue = {"maps": entry(server.publish("maps.tar.gz", body), hashlib.sha256(body).hexdigest())}
    download_dataset("maps", tmp_path, catalogue, show_progress=False)
    assert server.ranges == [None, f"bytes={len(body) // 3}-"]
    assert (tmp_path / "maps" / "val" / "2.jpg").is_file()


def test_cli_download_resumes_a_leftover_part(server, tmp_path, monkeypatch):
    body = dataset_archive()
    monkeypatch.setitem(dl.CATALOGUE, "maps", entry(server.publish("maps.tar.gz", body), hashlib.sha256(body).hexdigest()))
    (tmp_path / "maps.tar.gz.part").write_bytes(body[:1000])
    result = CliRunner().invoke(app, ["data", "download", "maps", "--root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert server.ranges == ["bytes=1000-"]
    assert len(list((tmp_path / "maps" / "train").iterdir())) == 3


@pytest.mark.parametrize("leftover", ["whole", "ignored-range"])
def test_leftover_part_that_is_whole_or_not_resumable(server, tmp_path, leftover):
    body = dataset_archive()
    server.honour_range = leftover == "whole"  # a whole .part gets 416; a server without Range resends all
    (tmp_path / "maps.tar.gz.part").write_bytes(body if leftover == "whole" else body[:1000])
    download_dataset("maps", tmp_path, {"maps": entry(server.publish("maps.tar.gz", body))}, show_progress=False)
    assert len(list((tmp_path / "maps" / "val").iterdir())) == 2


def test_offline_message_names_url_and_manual_steps(tmp_path):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/maps.tar.gz"
    with pytest.raises(DownloadError) as error:
        download_dataset("maps", tmp_path, {"maps": entry(url)}, show_progress=False, retries=1)
    message = str(error.value)
    assert url in message and "curl" in message and str(tmp_path / "maps.tar.gz") in message


def test_corrupted_archive_is_deleted(server, tmp_path):
    body = dataset_archive()
    broken = body[: len(body) // 2]
    with pytest.raises(DownloadError, match="corrupt"):
        download_dataset("maps", tmp_path, {"maps": entry(server.publish("maps.tar.gz", broken))}, show_progress=False)
    assert list(tmp_path.iterdir()) == []


def test_checksum_mismatch_is_refused(server, tmp_path):
    body = dataset_archive()
    catalogue = {"maps": entry(server.publish("maps.tar.gz", body + b"x"), hashlib.sha256(body).hexdigest())}
    with pytest.raises(DownloadError, match="sha256"):
        download_dataset("maps", tmp_path, catalogue, show_progress=False)
    assert list(tmp_path.iterdir()) == []


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.mark.parametrize(
    "member, problem",
    [
        (_member("/tmp/evil.jpg"), "absolute"),
        (_member("maps/../../evil.jpg"), "'..'"),
        (_member("maps/train/link.jpg", tarfile.SYMTYPE, "/etc/passwd"), "link"),
        (_member("maps/train/hard.jpg", tarfile.LNKTYPE, "maps/train/1.jpg"), "link"),
        (_member("maps/train/dev", tarfile.CHRTYPE), "device"),
    ],
    ids=["absolute", "dotdot", "symlink", "hardlink", "device"],
)
def test_malicious_archive_is_refused(server, tmp_path, member, problem):
    good = [(tarfile.TarInfo("maps/train/1.jpg"), b"x" * 10)]
    body = tar_gz(good + [(member, b"evil" if member.isfile() else None)])
    root = tmp_path / "root"
    with pytest.raises(DownloadError, match=problem):
        download_dataset("maps", root, {"maps": entry(server.publish("maps.tar.gz", body))}, show_progress=False)
    assert not (root / "maps").exists() and not (tmp_path / "evil.jpg").exists()
    assert [p.name for p in root.iterdir()] == ["maps.tar.gz"], "nothing was extracted"


def test_wrong_image_count_leaves_nothing_in_place(server, tmp_path):
    body = dataset_archive(counts={"train": 2, "val": 2})
    with pytest.raises(DownloadError, match="holds 2 images, expected 3.*Nothing was extracted"):
        download_dataset("maps", tmp_path, {"maps": entry(server.publish("maps.tar.gz", body))}, show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps.tar.gz"], "no maps/ and no staging folder"


def test_recipe_download_fetches_a_missing_root(server, tmp_path, monkeypatch):
    body = dataset_archive()
    monkeypatch.setitem(dl.CATALOGUE, "maps", entry(server.publish("maps.tar.gz", body)))
    data = DataSection(dataset={"name": "aligned"}, root=tmp_path / "sets" / "maps", download=True)
    ensure_data(data, show_progress=False)
    assert (tmp_path / "sets" / "maps" / "train" / "3.jpg").is_file()
    unknown = data.model_copy(update={"root": tmp_path / "mine"})
    with pytest.raises(DownloadError, match="'mine'.*not a downloadable set"):
        ensure_data(unknown, show_progress=False)
