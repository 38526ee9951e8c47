"""The growing ``.npy`` of a run in progress: a standard array file that stays valid as rows arrive."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np

from effnet_cli.output.atomic import create_exclusive, fsync_file, open_partial

__all__ = ["NpyAppender", "npy_rows"]

_NPY_HEADER_BYTES = 128  # fixed, so the row count can be rewritten in place when the array grows


def _npy_header(dtype: np.dtype, rows: int, cols: int) -> bytes:
    text = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (rows, cols)})
    room = _NPY_HEADER_BYTES - 10 - 1  # magic(6) + version(2) + length(2), newline at the end
    return b"\x93NUMPY\x01\x00" + (_NPY_HEADER_BYTES - 10).to_bytes(2, "little") + text.ljust(room).encode() + b"\n"


class NpyAppender:
    """A 2-D .npy file that grows row block by row block, with a standard numpy header.

    The header has a fixed size, so the row count is rewritten in place after
    each block: the file on disk is a valid array of the rows written so far.
    A new file is created exclusively (a file or symlink already there is an
    error, never written through); with ``resume`` an existing partial file of
    ours is reopened (not through a symlink) and cut back to ``rows`` rows.
    """

    def __init__(self, path: str | Path, cols: int, dtype: Any = np.float32, *, rows: int = 0,
                 resume: bool = False) -> None:
        self.path, self.cols, self.rows = Path(path), int(cols), rows
        self.dtype = np.dtype(dtype).newbyteorder("<")  # the .npy header says little-endian
        if resume or rows:
            self._fh = open_partial(self.path)
            self._fh.seek(0)
            self._fh.write(_npy_header(self.dtype, rows, self.cols))
            self._fh.seek(_NPY_HEADER_BYTES + rows * self.cols * self.dtype.itemsize)
            self._fh.truncate()
        else:
            self._fh = create_exclusive(self.path)
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
        fsync_file(self._fh)

    def close(self) -> None:
        """Flush and close the file."""
        if not self._fh.closed:
            try:
                self.flush()
            finally:
                with contextlib.suppress(OSError):  # after a failed flush: the bytes it kept fail again
                    self._fh.close()


def npy_rows(path: Path, cols: int, dtype: Any) -> int:
    """Rows a partial .npy holds with the expected width and dtype; -1 when it is not such an array."""
    try:
        with open(path, "rb") as fh:
            if np.lib.format.read_magic(fh) != (1, 0):
                return -1  # ours are always version 1.0
            shape, fortran, found = np.lib.format.read_array_header_1_0(fh)
    except (ValueError, OSError, EOFError):
        return -1
    if len(shape) != 2 or shape[1] != cols or fortran or found != np.dtype(dtype).newbyteorder("<"):
        return -1
    return int(shape[0])
