""".npy features with a manifest, and atomic files (classify's stdout records live in effnet_cli.records).

Writers take :class:`effnet_cli.results.Result` objects in input order and
never hold the whole run in memory. Files are written atomically: to a
temporary name beside the target, renamed into place when complete, so an
interrupted run never leaves a truncated file under the real name.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from effnet_cli.records import MACHINE_FORMATS, RecordWriter, classify_record  # noqa: F401 (re-exported for shards)
from effnet_cli.results import Result

_NPY_HEADER_BYTES = 128  # fixed, so the row count can be rewritten in place when the array grows


def _npy_header(dtype: np.dtype, rows: int, cols: int) -> bytes:
    text = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (rows, cols)})
    room = _NPY_HEADER_BYTES - 10 - 1  # magic(6) + version(2) + length(2), newline at the end
    return b"\x93NUMPY\x01\x00" + (_NPY_HEADER_BYTES - 10).to_bytes(2, "little") + text.ljust(room).encode() + b"\n"


class NpyAppender:
    """A 2-D .npy file that grows row block by row block, with a standard numpy header.

    The header has a fixed size, so the row count is rewritten in place after
    each block: the file on disk is a valid array of the rows written so far.
    """

    def __init__(self, path: str | Path, cols: int, dtype: Any = np.float32, *, rows: int = 0) -> None:
        self.path, self.cols, self.rows = Path(path), int(cols), rows
        self.dtype = np.dtype(dtype).newbyteorder("<")  # the .npy header says little-endian
        mode = "r+b" if rows else "wb"
        self._fh = open(self.path, mode)
        if rows:
            self._fh.seek(_NPY_HEADER_BYTES + rows * self.cols * self.dtype.itemsize)
            self._fh.truncate()
        else:
            self._fh.write(_npy_header(self.dtype, 0, self.cols))

    def append(self, block: np.ndarray) -> None:
        """Append rows (N × cols) and update the header's row count."""
        if block.ndim != 2 or block.shape[1] != self.cols:
            raise ValueError(f"expected N×{self.cols} rows, got {block.shape}")
        if len(block):
            self._fh.write(np.ascontiguousarray(block, dtype=self.dtype).tobytes())
            self.rows += len(block)
            end = self._fh.tell()
            self._fh.seek(0)
            self._fh.write(_npy_header(self.dtype, self.rows, self.cols))
            self._fh.seek(end)

    def flush(self) -> None:
        """Push written rows to the OS and to disk."""
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        """Flush and close the file."""
        if not self._fh.closed:
            self.flush()
            self._fh.close()


def temp_path_for(target: Path) -> Path:
    """A temporary name beside ``target`` (same filesystem, so the final rename is atomic)."""
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    return Path(name)


def atomic_write_bytes(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` through a temporary file and a rename."""
    tmp = temp_path_for(target)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def manifest_record(result: Result, **extra: Any) -> dict[str, Any]:
    """One manifest line: path and row (None when failed), the error when there is one."""
    record: dict[str, Any] = {"path": result.path, "row": result.row}
    record.update(extra)
    if result.error is not None:
        record["error"] = result.error
    return record


def per_file_target(directory: Path, path: str) -> Path:
    """Where ``--per-file`` writes one input's features: its path mirrored under ``directory``, plus .npy.

    Absolute paths lose their anchor and ``..`` parts are dropped, so nothing is
    ever written outside ``directory``; the full file name is kept (cat.jpg ->
    cat.jpg.npy) so cat.jpg and cat.png do not collide.
    """
    parts = [p for p in Path(path).parts if p not in ("..", ".") and p != Path(path).anchor]
    return directory.joinpath(*parts[:-1], parts[-1] + ".npy") if parts else directory / "input.npy"
