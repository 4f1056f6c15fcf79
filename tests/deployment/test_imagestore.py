"""The image store behind one interface: a local folder, or any fsspec URL (``file://`` on a
shared mount, ``memory://`` in one process). Writes are atomic and leave no temporary file
when refused; names never escape the store; settings and the deployment file name it."""

from __future__ import annotations

import errno
import io
import os
import uuid
from pathlib import Path

import pytest
from PIL import Image

from hadis_celery.imagestore import ImageStore, image_store, is_url, location
from hadis_celery.settings import Settings

from .conftest import write_deployment


def _png(color: str = "red") -> Image.Image:
    return Image.new("RGB", (16, 8), color)


@pytest.mark.parametrize("kind", ["folder", "file", "memory"])
def test_write_read_list_delete(kind, tmp_path):
    where = {"folder": str(tmp_path / "imgs"), "file": f"file://{tmp_path}/imgs",
             "memory": f"memory://hadis-{uuid.uuid4().hex[:8]}/imgs"}[kind]
    st = ImageStore(where)
    st.ensure()
    assert st.write_png("abc.png", _png()) == "abc.png"
    assert st.exists("abc.png") and not st.exists("nope.png")
    assert Image.open(io.BytesIO(st.read_bytes("abc.png"))).size == (16, 8)
    assert Image.open(st.open("abc.png")).getpixel((0, 0)) == (255, 0, 0)
    assert st.names() == ["abc.png"]  # no temporary file left
    st.write_png("../../escape.png", _png("blue"))  # a name, never a path out of the store
    assert sorted(st.names()) == ["abc.png", "escape.png"]
    if kind != "memory":
        assert (tmp_path / "imgs" / "abc.png").is_file()
        assert not (tmp_path / "escape.png").exists()
    with pytest.raises(FileNotFoundError):
        st.read_bytes("nope.png")
    assert st.delete("abc.png") and not st.delete("abc.png")
    assert st.names() == ["escape.png"]


def test_a_refused_write_raises_oserror_and_leaves_no_temporary_file(tmp_path):
    """The kernel refuses the write (ENOSPC from /dev/full, where the temporary file is):
    the error is an OSError with its errno, and nothing is left behind."""
    if not os.path.exists("/dev/full"):
        pytest.fail("this test needs /dev/full (Linux)")
    folder = tmp_path / "full"
    folder.mkdir()
    for where in (str(folder), f"file://{folder}"):
        st = ImageStore(where)
        st.write_png("a.png", _png())
        (folder / ".b.png.tmp").symlink_to("/dev/full")
        with pytest.raises(OSError) as info:
            st.write_png("b.png", _png())
        assert info.value.errno == errno.ENOSPC
        assert sorted(p.name for p in folder.iterdir()) == ["a.png"], where


def test_urls_settings_and_the_deployment_file(tmp_path, monkeypatch, router_json):
    from hadis_celery.settings import DEFAULT_PROFILE

    assert is_url("s3://bucket/x") and is_url("file:///x") and is_url("memory://x")
    assert not is_url("/var/images") and not is_url("var/images") and not is_url("C:/x")
    with pytest.raises(ValueError, match="nosuchproto"):
        ImageStore("nosuchproto://x")
    s = Settings(image_dir=tmp_path / "local")
    assert location(s) == str((tmp_path / "local").resolve())
    monkeypatch.setenv("HADIS_IMAGE_STORE", f"file://{tmp_path}/shared")
    assert image_store(Settings()).location == f"file://{tmp_path}/shared"
    assert Settings().to_env()["HADIS_IMAGE_STORE"] == f"file://{tmp_path}/shared"
    monkeypatch.delenv("HADIS_IMAGE_STORE")
    models = [{"name": "SDXL-Lightning", "queue": "sdxl", "id": 0}]
    for store, field, want in ((f"file://{tmp_path}/s", "image_store", f"file://{tmp_path}/s"),
                               ("pics", "image_dir", tmp_path / "pics")):
        f = write_deployment(tmp_path / "d.toml", models, router=router_json,
                             table={"source": str(DEFAULT_PROFILE)})
        with f.open("a") as fh:
            fh.write(f'\n[images]\nstore = "{store}"\n')
        got = getattr(Settings(deployment=str(f)), field)
        assert (Path(got) if field == "image_dir" else got) == want
