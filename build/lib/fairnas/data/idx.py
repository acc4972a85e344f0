"""Reader and writer for the IDX format used by MNIST and Fashion-MNIST.

An IDX file is: two zero bytes, a dtype code byte, a dimension-count byte, one big-endian
uint32 per dimension, then the row-major data in big-endian order. Files may be gzip-compressed.

Why not torchvision's reader (``torchvision.datasets.mnist.read_sn3_pascalvincent_tensor``): it
reads only uncompressed files, while Debian's ``dataset-fashion-mnist`` package (fairnas' default
source) ships them gzipped, and it checks a file with bare ``assert``s, so a truncated or foreign
file gives an AssertionError with no message instead of the errors of docs/bad-inputs.md. The
writer makes the IDX files of the tests.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from fairnas.errors import IDXError

__all__ = ["IDXError", "find_idx_file", "read_idx", "write_idx"]

# IDX dtype codes -> big-endian numpy dtypes.
_CODE_TO_DTYPE: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_KIND_TO_CODE: dict[tuple[str, int], int] = {(d.kind, d.itemsize): c for c, d in _CODE_TO_DTYPE.items()}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        head = f.read(2)
    # Sniff the gzip magic rather than trusting the suffix: some mirrors ship misnamed files.
    if head == _GZIP_MAGIC:
        try:
            with gzip.open(path, "rb") as f:
                return f.read()
        except (OSError, EOFError, zlib.error) as e:
            raise IDXError(f"{path}: corrupt or truncated gzip stream ({e}); delete it and fetch it again") from e
    return path.read_bytes()


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a numpy array.

    Args:
        path: File to read.

    Returns:
        Array in native byte order with the shape stored in the header.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        IDXError: If the header is invalid or the payload size does not match it.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise IDXError(f"{path}: file has {len(raw)} bytes, too short for an IDX header")
    zero1, zero2, code, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero1 != 0 or zero2 != 0 or code not in _CODE_TO_DTYPE:
        raise IDXError(f"{path}: not an IDX file (magic bytes {raw[:4].hex()})")
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise IDXError(f"{path}: truncated header ({len(raw)} bytes, expected at least {header_len})")
    shape = struct.unpack(f">{ndim}I", raw[4:header_len])
    dtype = _CODE_TO_DTYPE[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = len(raw) - header_len
    if actual != expected:
        raise IDXError(
            f"{path}: payload has {actual} bytes but header shape {tuple(shape)} needs {expected}; "
            "the file is truncated or corrupt"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(shape)
    # Native byte order and a writable copy so torch.from_numpy works without warnings.
    return data.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | os.PathLike[str], array: np.ndarray, compress: bool | None = None) -> Path:
    """Write an array as an IDX file.

    Args:
        path: Destination file.
        array: Array of dtype uint8, int8, int16, int32, float32 or float64.
        compress: Gzip the output; by default when ``path`` ends in ``.gz``.

    Returns:
        The path written.
    """
    path = Path(path)
    array = np.asarray(array)
    code = _KIND_TO_CODE.get((array.dtype.kind, array.dtype.itemsize))
    if code is None:
        raise IDXError(f"dtype {array.dtype} cannot be stored in IDX")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(_CODE_TO_DTYPE[code], copy=False).tobytes()
    if compress if compress is not None else path.suffix == ".gz":
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


def find_idx_file(directory: str | os.PathLike[str], name: str) -> Path | None:
    """Return ``directory/name`` or ``directory/name.gz``, whichever exists (uncompressed first).

    Args:
        directory: Folder to look in.
        name: File name without ``.gz``.

    Returns:
        The existing path, or None.
    """
    for candidate in (Path(directory) / name, Path(directory) / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None
