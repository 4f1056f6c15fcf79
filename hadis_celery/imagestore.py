"""The image store: where workers write the served images and the front door reads them.

One interface over a URL, so that a front door on another host can serve what a worker
made: a local folder (a path, the default ``HADIS_IMAGE_DIR``), or any fsspec URL
(``file:///shared/images`` on a network mount, ``s3://bucket/images`` with ``s3fs``
installed, ``memory://`` within one process for tests). ``HADIS_IMAGE_STORE`` (or
``[images] store`` in the deployment file) names it.

Writes are atomic where the filesystem allows it: a local folder (and ``file://``) writes a
hidden temporary file and renames it, and a failed write (disk full, read-only) leaves no
temporary file behind; object stores (``s3://``...) make an object visible only once its
upload completed. A refused write raises ``OSError`` (``errno`` kept where the filesystem
gives one), which the worker turns into the storage fault (``docs/faults.md``).
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

    from hadis_celery.settings import Settings

log = logging.getLogger(__name__)


def is_url(text: str) -> bool:
    """Whether ``text`` is an fsspec URL (``scheme://...``) rather than a local path."""
    head, sep, _ = str(text).partition("://")
    return bool(sep) and head.replace("+", "").replace("-", "").isalnum() and len(head) > 1


class ImageStore:
    """Images by name (``<query id>.png``) under one folder or fsspec URL."""

    def __init__(self, location: str | os.PathLike[str]) -> None:
        text = str(location)
        if not text:
            raise ValueError("image store: empty location")
        self.location = text
        if is_url(text):
            import fsspec

            try:
                self.fs, root = fsspec.core.url_to_fs(text)
            except (ImportError, ValueError) as exc:  # unknown protocol, missing driver
                raise ValueError(f"image store {text}: {exc}") from None
            self.root = root.rstrip("/") or "/"
            self.local = type(self.fs).__name__ == "LocalFileSystem"
        else:
            self.fs = None
            self.root = str(Path(text).expanduser().resolve())
            self.local = True

    def __repr__(self) -> str:
        return f"ImageStore({self.location!r})"

    def __str__(self) -> str:
        return self.location

    def _path(self, name: str) -> str:
        name = Path(name).name  # a name, never a path out of the store
        return f"{self.root}/{name}" if self.root != "/" else f"/{name}"

    def ensure(self) -> None:
        """Create the folder (a no-op on object stores without folders)."""
        if self.fs is None:
            Path(self.root).mkdir(parents=True, exist_ok=True)
        else:
            self.fs.makedirs(self.root, exist_ok=True)

    def write_png(self, name: str, img: Image.Image) -> str:
        """Write ``img`` as ``name`` atomically; returns ``name``; raises ``OSError``."""
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        self.write_bytes(name, buf.getvalue())
        return name

    def write_bytes(self, name: str, data: bytes) -> None:
        """``data`` as ``name``: a hidden temporary file then a rename on filesystems with
        renames; a failed write leaves no temporary file. Raises ``OSError``."""
        final = self._path(name)
        if not self.local:  # object stores: an object appears once its upload completed
            try:
                self.fs.pipe_file(final, data)
            except OSError:
                raise
            except Exception as exc:  # a driver's own error type: one OSError to handle
                raise OSError(f"{type(exc).__name__}: {exc}") from exc
            return
        tmp = self._path(f".{Path(name).name}.tmp")
        try:
            if self.fs is None:
                with open(tmp, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, final)
            else:
                with self.fs.open(tmp, "wb") as fh:
                    fh.write(data)
                self.fs.mv(tmp, final)
        except BaseException:
            try:
                if self.fs is None:
                    Path(tmp).unlink(missing_ok=True)
                elif self.fs.exists(tmp):
                    self.fs.rm(tmp)
            except OSError as exc:
                log.warning("cannot remove %s (%s)", tmp, exc)
            raise

    def exists(self, name: str) -> bool:
        p = self._path(name)
        return os.path.isfile(p) if self.fs is None else bool(self.fs.isfile(p))

    def read_bytes(self, name: str) -> bytes:
        """The image's bytes; ``FileNotFoundError`` when it is not there."""
        p = self._path(name)
        if self.fs is None:
            with open(p, "rb") as fh:
                return fh.read()
        try:
            return self.fs.cat_file(p)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise FileNotFoundError(f"{self.location}/{Path(name).name}: {exc}") from exc

    def open(self, name: str):
        """A binary file object of the image (for ``send_file``); ``FileNotFoundError``."""
        return io.BytesIO(self.read_bytes(name))

    def delete(self, name: str) -> bool:
        """Remove ``name``; whether it was there."""
        p = self._path(name)
        if self.fs is None:
            try:
                os.unlink(p)
                return True
            except FileNotFoundError:
                return False
        if not self.fs.exists(p):
            return False
        self.fs.rm(p)
        return True

    def entries(self) -> list[tuple[str, float | None]]:
        """Every file in the store, temporary ones included, with its modification time
        (seconds since the epoch; None where the filesystem does not say): what retention
        needs to remove old unreferenced images and leftovers of interrupted writes."""
        if self.fs is None:
            root = Path(self.root)
            if not root.is_dir():
                return []
            out = []
            for e in os.scandir(root):
                if e.is_file():
                    try:
                        out.append((e.name, e.stat().st_mtime))
                    except OSError:
                        continue
            return out
        try:
            infos = self.fs.ls(self.root, detail=True)
        except FileNotFoundError:
            return []
        return [(Path(i["name"]).name, _mtime(i)) for i in infos if i.get("type") == "file"]

    def names(self) -> list[str]:
        """The names in the store (temporary files left out), sorted."""
        if self.fs is None:
            root = Path(self.root)
            found = [p.name for p in root.iterdir()] if root.is_dir() else []
        else:
            try:
                found = [Path(p).name for p in self.fs.ls(self.root, detail=False)]
            except FileNotFoundError:
                found = []
        return sorted(n for n in found if not n.startswith("."))


def _mtime(info: dict) -> float | None:
    """An fsspec ``info`` dict's modification time: the key differs by filesystem."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        v = info.get(key)
        if v is None:
            continue
        if hasattr(v, "timestamp"):
            return float(v.timestamp())
        try:
            return float(v)
        except (TypeError, ValueError):
            continue
    return None


def location(s: Settings) -> str:
    """The settings' image store: ``HADIS_IMAGE_STORE`` (or the deployment's ``[images]
    store``) when set, else the folder ``HADIS_IMAGE_DIR``."""
    return str(getattr(s, "image_store", "") or Path(s.image_dir).resolve())


def image_store(s: Settings) -> ImageStore:
    """The ``ImageStore`` of settings ``s``."""
    return ImageStore(location(s))
