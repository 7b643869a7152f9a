"""Rows of an array on disk, read without loading the array: `.npy` files and `.npz` members.

A `.npy` file is a header (dtype, shape, memory order) followed by the array's bytes in C order,
so rows [a, b) of an array of shape [n, *rest] are the bytes
    offset + a * row_bytes  ..  offset + b * row_bytes,   row_bytes = prod(rest) * itemsize,
which one positioned read returns. An `.npz` is a zip of `.npy` members: a member stored
uncompressed (`np.savez`) is read the same way at its offset inside the zip (after the member's
local header); a compressed member (`np.savez_compressed`) is inflated once, in 1 MiB pieces, into
a `.npy` in a scratch folder and read from there. Reads are plain file reads into fresh arrays, not
memory maps, so a row read once does not stay resident.

Object arrays (pickles) are refused, never unpickled; a Fortran-ordered or version-3 `.npy` (rare)
is loaded whole, since its rows are not contiguous or its header is not one numpy reads publicly.
"""

from __future__ import annotations

import math
import shutil
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from graphopt.errors import InputError

LOCAL_HEADER = 30  # bytes of a zip local file header before its name and extra field
COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class ArrayFile:
    """An array of `shape` and `dtype` whose C-order bytes start at `offset` in `path`; `loaded`
    holds the array itself when it cannot be read by rows."""

    path: Path
    offset: int
    dtype: np.dtype
    shape: tuple[int, ...]
    loaded: np.ndarray | None = None

    @property
    def row_bytes(self) -> int:
        return math.prod(self.shape[1:]) * self.dtype.itemsize

    def rows(self, start: int, stop: int) -> np.ndarray:
        """A fresh array of rows [start, stop) along the first axis."""
        if self.loaded is not None:
            return self.loaded[start:stop].copy()
        size = (stop - start) * self.row_bytes
        buffer = bytearray(size)
        with open(self.path, "rb") as handle:
            handle.seek(self.offset + start * self.row_bytes)
            if handle.readinto(buffer) != size:
                raise InputError(f"{self.path}: the array's data ends early (truncated file)")
        return np.frombuffer(buffer, self.dtype).reshape((stop - start, *self.shape[1:]))

    def whole(self) -> np.ndarray:
        if self.loaded is not None:
            return self.loaded.copy()
        if not self.shape:
            return self.rows(0, 1).reshape(())
        return self.rows(0, self.shape[0])


def npy_array(path: Path) -> ArrayFile:
    """The array in a `.npy` file."""
    with open(path, "rb") as handle:
        return _array_at(handle, path, 0, stored=path.stat().st_size)


def npz_arrays(path: Path, scratch: Path) -> dict[str, ArrayFile]:
    """The arrays of an `.npz` by member name (without `.npy`); compressed members are inflated
    into `scratch`."""
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: not a readable .npz file ({exc})") from None
    arrays = {}
    with archive, open(path, "rb") as handle:
        for info in archive.infolist():
            name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if info.compress_type == zipfile.ZIP_STORED:
                handle.seek(info.header_offset)
                local = handle.read(LOCAL_HEADER)
                if len(local) != LOCAL_HEADER or local[:4] != b"PK\x03\x04":
                    raise InputError(f"{path}: member '{name}' has a damaged zip header")
                name_bytes, extra_bytes = struct.unpack("<HH", local[26:30])
                arrays[name] = _array_at(handle, path, info.header_offset + LOCAL_HEADER + name_bytes + extra_bytes,
                                         name, info.file_size)
            else:
                arrays[name] = npy_array(_inflate(archive, info, path, scratch / f"{len(arrays)}.npy"))
    return arrays


def _inflate(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, target: Path) -> Path:
    try:
        with archive.open(info) as source, open(target, "wb") as sink:
            shutil.copyfileobj(source, sink, COPY_CHUNK)
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"{path}: member '{info.filename}' cannot be inflated ({exc})") from None
    return target


def _array_at(handle, path: Path, start: int, member: str | None = None, stored: int | None = None) -> ArrayFile:
    """The array whose `.npy` bytes begin at `start` in the open file `handle`."""
    where = f"{path}: member '{member}'" if member else f"{path}"

    def refuse(why: str) -> InputError:
        if member:
            return InputError(f"{where} is not a .npy array ({why}); graphopt reads plain arrays only")
        return InputError(f"{where}: not a readable .npy file ({why})")

    handle.seek(start)
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            fortran, shape, dtype = True, (), None  # read whole below
    except (ValueError, OSError, EOFError) as exc:
        raise refuse("a pickle or other raw bytes" if member else
                     str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__) from None
    if dtype is not None and dtype.hasobject:
        objects = "Python objects, loaded only by unpickling: allow_pickle=False"
        raise InputError(f"{path}: not a readable .npz file (member '{member}' holds {objects})" if member
                         else f"{path}: not a readable .npy file (it holds {objects})")
    offset = handle.tell()
    if fortran:
        return ArrayFile(path, offset, np.dtype(dtype or np.uint8), tuple(shape), _load_whole(handle, start, where))
    nbytes = math.prod(shape) * dtype.itemsize
    if stored is not None and offset - start + nbytes > stored:
        raise refuse(f"holds fewer bytes than its header's shape {list(shape)} needs: truncated")
    return ArrayFile(path, offset, dtype, tuple(shape))


def _load_whole(handle, start: int, where: str) -> np.ndarray:
    handle.seek(start)
    try:
        array = np.lib.format.read_array(handle, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{where}: not readable .npy data ({exc})") from None
    return np.ascontiguousarray(array)
