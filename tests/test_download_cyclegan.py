"""The CycleGAN sets of the data catalogue (``cyclegan/NAME``, zips in the reference's
trainA/trainB/testA/testB layout) against the loopback server of test_download."""

from __future__ import annotations

import io
import random
import stat
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

import i2i.data.download as dl
from i2i.cli import app
from i2i.data.download import CATALOGUE, CYCLEGAN_SPLITS, DownloadError, Entry, download_dataset, ensure_data
from i2i.data.unaligned import UnalignedDataset, UnpairedParams
from i2i.recipe import DataSection
from test_download import server  # noqa: F401  (the loopback server fixture)

PUBLISHED = ["horse2zebra", "apple2orange", "summer2winter_yosemite", "monet2photo", "cezanne2photo", "ukiyoe2photo",
             "vangogh2photo", "maps", "cityscapes", "facades", "iphone2dslr_flower"]


def png(seed: str) -> bytes:
    """A real 8x8 PNG, so the extracted set loads as a dataset."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.frombytes("RGB", (8, 8), random.Random(seed).randbytes(8 * 8 * 3)).save(buffer, "PNG")
    return buffer.getvalue()


def cyclegan_zip(folder: str = "horse2zebra", counts: dict[str, int] | None = None, extra: list[zipfile.ZipInfo] = ()) -> bytes:
    """FOLDER/<split>/<i>_<side>.png as the reference's zips hold them, plus ``extra`` members."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for split, count in (counts or {"trainA": 3, "trainB": 2, "testA": 1, "testB": 1}).items():
            for i in range(count):
                archive.writestr(f"{folder}/{split}/n{i}_{split[-1]}.png", png(f"{split}{i}"))
        archive.writestr(f"{folder}/trainA/.DS_Store", b"not an image")  # ignored
        for member in extra:
            archive.writestr(member, b"x")
    return buffer.getvalue()


def entry(url: str) -> Entry:
    return Entry("cyclegan/horse2zebra", "test horses | zebras", CYCLEGAN_SPLITS, url=url)


def test_the_catalogue_holds_the_reference_sets_under_cyclegan():
    names = [name for name in CATALOGUE if name.startswith("cyclegan/")]
    assert names == [f"cyclegan/{name}" for name in PUBLISHED]
    assert CATALOGUE["cyclegan/maps"].source == "http://efrosgans.eecs.berkeley.edu/cyclegan/datasets/maps.zip"
    assert CATALOGUE["maps"].source == "http://efrosgans.eecs.berkeley.edu/pix2pix/datasets/maps.tar.gz"
    assert CATALOGUE["cyclegan/maps"].archive(Path("data")) == Path("data/cyclegan/maps.zip")


def test_download_verifies_and_extracts_a_zip(server, tmp_path):
    body = cyclegan_zip()
    catalogue = {"cyclegan/horse2zebra": entry(server.publish("cyclegan/horse2zebra.zip", body))}
    target = download_dataset("cyclegan/horse2zebra", tmp_path, catalogue, show_progress=False)
    assert target == tmp_path / "cyclegan" / "horse2zebra"
    assert sorted(p.name for p in target.iterdir()) == ["testA", "testB", "trainA", "trainB"]
    assert sorted(p.name for p in (tmp_path / "cyclegan").iterdir()) == ["horse2zebra"], "no archive or staging left"
    data = DataSection(dataset={"name": "unaligned"}, root=target, load_size=8, crop_size=8)
    dataset = UnalignedDataset(UnpairedParams(), data=data, split="train")
    assert len(dataset) == 3 and dataset[2]["input"].shape == (3, 8, 8)
    assert download_dataset("cyclegan/horse2zebra", tmp_path, catalogue, show_progress=False) == target
    assert len(server.ranges) == 1, "a verified set is not fetched again"


def test_dropped_connection_resumes_with_range(server, tmp_path):
    body = cyclegan_zip()
    server.cut_next = len(body) // 3
    catalogue = {"cyclegan/horse2zebra": entry(server.publish("horse2zebra.zip", body))}
    download_dataset("cyclegan/horse2zebra", tmp_path, catalogue, show_progress=False)
    assert server.ranges == [None, f"bytes={len(body) // 3}-"]


def test_cli_download_resumes_a_leftover_part(server, tmp_path, monkeypatch):
    body = cyclegan_zip()
    monkeypatch.setitem(dl.CATALOGUE, "cyclegan/horse2zebra", entry(server.publish("horse2zebra.zip", body)))
    (tmp_path / "cyclegan").mkdir()
    (tmp_path / "cyclegan" / "horse2zebra.zip.part").write_bytes(body[:1000])
    result = CliRunner().invoke(app, ["data", "download", "cyclegan/horse2zebra", "--root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert server.ranges == ["bytes=1000-"] and (tmp_path / "cyclegan" / "horse2zebra" / "testB").is_dir()


def link(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def fifo(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFIFO | 0o644) << 16
    return info


@pytest.mark.parametrize("member, problem", [
    (zipfile.ZipInfo("/etc/evil.png"), "an absolute path"),
    (zipfile.ZipInfo("horse2zebra/../../evil.png"), "a '..' path"),
    (link("horse2zebra/trainA/link.png"), "a link"),
    (fifo("horse2zebra/trainA/pipe.png"), "a device, FIFO or other special file"),
], ids=["absolute", "dotdot", "symlink", "fifo"])
def test_malicious_zip_is_refused(server, tmp_path, member, problem):
    body = cyclegan_zip(extra=[member])
    catalogue = {"cyclegan/horse2zebra": entry(server.publish("horse2zebra.zip", body))}
    with pytest.raises(DownloadError, match=f"refusing to extract: member .* is {problem}; nothing was extracted"):
        download_dataset("cyclegan/horse2zebra", tmp_path, catalogue, show_progress=False)
    assert sorted(p.name for p in (tmp_path / "cyclegan").iterdir()) == ["horse2zebra.zip"]


def test_corrupt_zip_is_deleted(server, tmp_path):
    body = bytearray(cyclegan_zip())
    body[len(body) // 2 : len(body) // 2 + 64] = bytes(64)  # damages a member: its CRC no longer matches
    catalogue = {"cyclegan/horse2zebra": entry(server.publish("horse2zebra.zip", bytes(body)))}
    with pytest.raises(DownloadError, match="horse2zebra.zip is corrupt.*it was deleted"):
        download_dataset("cyclegan/horse2zebra", tmp_path, catalogue, show_progress=False)
    assert list((tmp_path / "cyclegan").iterdir()) == []


def test_a_missing_side_leaves_nothing_in_place(server, tmp_path):
    body = cyclegan_zip(counts={"trainA": 2, "testA": 1, "testB": 1})
    catalogue = {"cyclegan/horse2zebra": entry(server.publish("horse2zebra.zip", body))}
    with pytest.raises(DownloadError, match=r"not a complete cyclegan/horse2zebra set: trainB/ is missing"):
        download_dataset("cyclegan/horse2zebra", tmp_path, catalogue, show_progress=False)
    assert sorted(p.name for p in (tmp_path / "cyclegan").iterdir()) == ["horse2zebra.zip"]


def test_recipe_download_reads_cyclegan_from_the_root(server, tmp_path, monkeypatch):
    monkeypatch.setitem(dl.CATALOGUE, "cyclegan/maps", Entry("cyclegan/maps", "test maps", CYCLEGAN_SPLITS,
                                                              url=server.publish("maps.zip", cyclegan_zip("maps"))))
    root = tmp_path / "data" / "cyclegan" / "maps"
    ensure_data(DataSection(dataset={"name": "unaligned"}, root=root, download=True), show_progress=False)
    assert (root / "trainA").is_dir() and not (tmp_path / "data" / "maps").exists()


def test_a_bare_cyclegan_name_points_to_its_prefixed_name(tmp_path):
    with pytest.raises(DownloadError, match="unknown dataset 'horse2zebra'; did you mean cyclegan/horse2zebra?"):
        download_dataset("horse2zebra", tmp_path)
    root = tmp_path / "data" / "horse2zebra"
    with pytest.raises(DownloadError, match=f"the CycleGAN set cyclegan/horse2zebra goes to {tmp_path / 'data' / 'cyclegan' / 'horse2zebra'}"):
        ensure_data(DataSection(dataset={"name": "unaligned"}, root=root, download=True), show_progress=False)
