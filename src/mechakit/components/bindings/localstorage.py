"""bindings.localstorage: files under one root folder, as Dapr's local storage binding.

Operations (request metadata in brackets):

- ``create`` [``fileName``, ``decodeBase64``]: writes the data (atomically: readers never see
  half a file). Without ``fileName`` a UUID name is made. The name is returned in the
  response metadata ``fileName`` and, as in Dapr, in the body ``{"fileName": ...}``.
  ``decodeBase64=true`` stores the base64-decoded data (Dapr guesses instead; we never do).
- ``get`` [``fileName``, ``encodeBase64``]: the file's bytes, base64-encoded on request.
- ``delete`` [``fileName``]: removes the file.
- ``list`` [``fileName`` = a sub-folder, ``prefix``, ``maxResults``]: a JSON array of file
  names relative to the root, sorted; ``prefix`` and ``maxResults`` may also come in the
  request data as a JSON object (metadata wins).

A name can never reach outside the root: ``..`` segments, absolute paths and symlinks that
resolve outside are refused with ``InvalidRequestError`` (Dapr silently clamps them), as are
names too long for the file system and names that use a file as a folder (``a.txt/b``): the
request is wrong, not the binding. A missing file on get or delete is ``NotFoundError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import stat
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path, PurePath
from typing import TypeVar

from mechakit.components._shared.requests import metadata_value
from mechakit.components.bindings._storage import StorageBinding, json_response
from mechakit.core.bindings import InvokeRequest, InvokeResponse
from mechakit.core.errors import (
    ComponentError,
    InvalidRequestError,
    MetadataError,
    NotFoundError,
)
from mechakit.core.metadata import Settings, setting

T = TypeVar("T")


class LocalStorageSettings(Settings):
    ignored_metadata = frozenset({"direction", "route"})

    root_path: str = setting(
        description="The folder files are read from and written to; created when missing.",
        example="/tmp/files",
    )


class LocalStorageBinding(StorageBinding[LocalStorageSettings]):
    OBJECT = "file"

    def __init__(self) -> None:
        super().__init__()
        self._root: Path | None = None
        self._name_max = 255
        self._path_max = 4096

    async def open(self) -> None:
        root = await asyncio.to_thread(self._prepare_root, self.settings.root_path)
        self._name_max = _path_limit(root, "PC_NAME_MAX", 255)
        self._path_max = _path_limit(root, "PC_PATH_MAX", 4096)
        self._root = root

    async def ping(self) -> None:
        root = self._require_root()
        if not await asyncio.to_thread(root.is_dir):
            raise ComponentError(
                f"rootPath {str(root)!r} is no longer a folder", component=self.label
            )

    async def create_object(self, request: InvokeRequest) -> InvokeResponse:
        name = metadata_value(request.metadata, "fileName") or str(uuid.uuid4())
        path = await self._resolve(name)
        data = self.data_to_store(request, name, decode=False)
        try:
            await asyncio.to_thread(_write_atomically, path, data)
        except OSError as exc:
            raise await self._os_error(exc, name, path, "write") from exc
        relative = self._relative(path)
        return json_response({"fileName": relative}, {"fileName": relative})

    async def get_object(self, request: InvokeRequest) -> InvokeResponse:
        name = self.required_option(request, "fileName")
        path = await self._resolve(name)
        data = await self._on_disk("read", name, path, path.read_bytes)
        data = self.data_to_return(request, data, encode=False)
        return InvokeResponse(data=data, metadata={"fileName": self._relative(path)})

    async def delete_object(self, request: InvokeRequest) -> InvokeResponse:
        name = self.required_option(request, "fileName")
        path = await self._resolve(name)
        await self._on_disk("delete", name, path, lambda: _unlink_file(path))
        return InvokeResponse()

    async def list_objects(self, request: InvokeRequest) -> InvokeResponse:
        options = self.list_options(
            request, ("prefix", "maxResults"), example='{"prefix": "logs/", "maxResults": 10}'
        )
        root = self._require_root()
        folder_name = metadata_value(request.metadata, "fileName")
        folder = await self._resolve(folder_name, folder=True) if folder_name else root
        prefix = str(options.get("prefix") or "")
        limit = options.get("maxResults")
        names = await self._on_disk(
            "list", folder_name, folder, lambda: _walk_files(root, folder), folder=True
        )
        selected = [name for name in names if name.startswith(prefix)]
        if limit is not None:
            selected = selected[:limit]
        return json_response(selected)

    async def _resolve(self, name: str, *, folder: bool = False) -> Path:
        """The absolute path of ``name``, refusing any name that would leave the root.

        Only a ``folder`` (to list) may be the root itself.
        """
        root = self._require_root()
        relative = PurePath(name)
        if "\x00" in name:
            why = "contains a NUL character"
        elif relative.is_absolute() or relative.drive or relative.root:
            why = "is an absolute path; use a name relative to rootPath"
        elif ".." in relative.parts:
            why = "contains '..'; names must stay inside rootPath"
        elif (too_long := self._length_problem(name, root / relative)) is not None:
            why = too_long
        else:
            path = await asyncio.to_thread((root / relative).resolve)
            if path == root and not folder:
                why = "names rootPath itself, not a file in it"
            elif not path.is_relative_to(root):
                why = "resolves outside rootPath (through a symlink)"
            else:
                return path
        raise InvalidRequestError(
            f"fileName {_shown(name)} {why}", component=self.label, field="fileName", key=name
        )

    async def _on_disk(
        self, action: str, name: str, path: Path, work: Callable[[], T], *, folder: bool = False
    ) -> T:
        """``work`` on ``path`` in a worker thread: a missing file (or ``folder``) is
        ``NotFoundError``, any other OS error the one :meth:`_os_error` words."""
        try:
            return await asyncio.to_thread(work)
        except FileNotFoundError:
            what = "folder" if folder else "file"
            raise NotFoundError(
                f"{what} {name!r} not found", component=self.label, key=name
            ) from None
        except OSError as exc:
            raise await self._os_error(exc, name, path, action, folder=folder) from exc

    async def _os_error(
        self, exc: OSError, name: str, path: Path, action: str, *, folder: bool = False
    ) -> ComponentError:
        """The request's fault (a folder, a file used as a folder, too long) or else the binding's."""
        shown = _shown(name)
        if isinstance(exc, IsADirectoryError):
            why = "is a folder"
        elif isinstance(exc, NotADirectoryError):
            in_the_way = await asyncio.to_thread(_file_in_the_way, self._require_root(), path)
            if in_the_way == path:
                why = "is a file, not a folder to list" if folder else "is not a folder"
            elif in_the_way is not None:
                why = f"uses the file {self._relative(in_the_way)!r} as a folder"
            else:
                why = "uses a file as a folder"
        elif exc.errno == errno.ENAMETOOLONG:
            why = "is too long for the file system"
        else:
            return ComponentError(
                f"cannot {action} {'folder' if folder else 'file'} {shown}: {exc.strerror or exc}",
                component=self.label,
                key=name,
            )
        return InvalidRequestError(
            f"fileName {shown} {why}", component=self.label, field="fileName", key=name
        )

    def _length_problem(self, name: str, path: Path) -> str | None:
        """Checked before touching the disk, so a refused create leaves no folders behind."""
        try:
            for part in PurePath(name).parts:
                size = len(os.fsencode(part))
                if size > self._name_max:
                    return (
                        f"is too long: the part {_shown(part)} is {size} bytes, the file system "
                        f"allows {self._name_max} per name"
                    )
            full = len(os.fsencode(str(path)))
        except UnicodeEncodeError:
            return "cannot be encoded as a file name"
        if full >= self._path_max:
            return (
                f"is too long: the full path would be {full} bytes, the file system allows "
                f"{self._path_max - 1}"
            )
        return None

    def _relative(self, path: Path) -> str:
        return path.relative_to(self._require_root()).as_posix()

    def _require_root(self) -> Path:
        return self.opened(self._root)

    def _prepare_root(self, configured: str) -> Path:
        """Creates the root when missing and resolves its symlinks, so later checks compare real paths."""
        root = Path(configured).expanduser()

        def refused(problem: str) -> MetadataError:
            return MetadataError(
                f"metadata 'rootPath': {problem}", component=self.label, field="rootPath"
            )

        try:
            root.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise refused(f"{configured!r} is a file, not a folder") from None
        except OSError as exc:
            raise refused(f"cannot create folder {configured!r}: {exc.strerror or exc}") from None
        resolved = root.resolve()
        for forbidden in _FORBIDDEN_ROOTS:
            if resolved == forbidden or resolved.is_relative_to(forbidden):
                raise refused(
                    f"{configured!r} is inside {str(forbidden)!r}, which is never allowed"
                )
        return resolved


_FORBIDDEN_ROOTS = tuple(
    Path(p) for p in ("/proc", "/sys", "/boot", "/var/run/secrets", "/run/secrets")
)
"""System folders a binding must never expose (as Dapr refuses them)."""


def _path_limit(root: Path, name: str, default: int) -> int:
    try:
        return os.pathconf(root, name)
    except (OSError, ValueError):
        return default


def _shown(name: str) -> str:
    """``name`` quoted, cut short when long: errors stay readable and the full name is the key."""
    if len(name) <= 64:
        return repr(name)
    return f"{name[:32]!r}... ({len(name)} characters)"


def _file_in_the_way(root: Path, path: Path) -> Path | None:
    """The first of ``path`` and its folders under ``root`` that exists but is not a folder."""
    for candidate in [*reversed(path.parents), path]:
        if candidate == root or not candidate.is_relative_to(root):
            continue
        try:
            mode = candidate.stat().st_mode
        except OSError:
            return None
        if not stat.S_ISDIR(mode):
            return candidate
    return None


def _write_atomically(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        # mkdir says EEXIST when a file sits where a folder should be.
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path)) from None
    # The temp name stays short so that a name near the file system's limit can be written.
    prefix = f".{path.name[:32]}."
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise


def _unlink_file(path: Path) -> None:
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    path.unlink()


def _walk_files(root: Path, folder: Path) -> list[str]:
    """Relative names of the files under ``folder`` that resolve inside ``root``."""
    # stat, not exists(): exists() hides ENOTDIR ("a.txt/b") as a missing folder.
    if not stat.S_ISDIR(folder.stat().st_mode):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder))
    names: list[str] = []
    for directory, _, files in os.walk(folder):
        for file_name in files:
            path = Path(directory, file_name)
            if path.resolve().is_relative_to(root) and path.is_file():
                names.append(path.relative_to(root).as_posix())
    return sorted(names)
