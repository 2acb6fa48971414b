"""Weights on the client side: safetensors reading and the UpdateWeights
stream encoding (header with a CRC-32C manifest, then 1 MiB chunks), the same
format as the C++ SDK's sdk/cpp/weights.h. Pure Python (no numpy needed);
CRC-32C uses the `crc32c` module when installed, else a table-driven loop
(fine for small models; ~10-20 MB/s)."""

import json
import os
import struct

from lockstep_client._proto.lockstep.v1 import common_pb2

DEFAULT_CHUNK_BYTES = 1 << 20
MAX_CHUNK_BYTES = 4 << 20

_DTYPES = {"F32": common_pb2.DTYPE_F32, "BF16": common_pb2.DTYPE_BF16}
_DTYPE_BYTES = {common_pb2.DTYPE_F32: 4, common_pb2.DTYPE_BF16: 2}


def _make_crc_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _make_crc_table()

try:  # optional accelerator
    import crc32c as _crc32c_module  # type: ignore

    def crc32c(data, crc=0):
        """CRC-32C (Castagnoli) of `data`, continuing from `crc`."""
        return _crc32c_module.crc32c(bytes(data), crc)
except ImportError:  # pragma: no cover - depends on the host
    def crc32c(data, crc=0):
        """CRC-32C (Castagnoli) of `data`, continuing from `crc`."""
        table = _CRC_TABLE
        c = crc ^ 0xFFFFFFFF
        for b in bytes(data):
            c = table[(c ^ b) & 0xFF] ^ (c >> 8)
        return c ^ 0xFFFFFFFF


class Tensor:
    """One tensor: name, wire dtype (common_pb2.DTYPE_*), shape and its
    row-major little-endian bytes."""

    __slots__ = ("name", "dtype", "shape", "data")

    def __init__(self, name, dtype, shape, data):
        self.name = name
        self.dtype = dtype
        self.shape = list(shape)
        self.data = memoryview(data).cast("B")
        numel = 1
        for d in self.shape:
            if d < 0:
                raise ValueError("tensor %r has a negative dim" % name)
            numel *= d
        size = _DTYPE_BYTES.get(dtype)
        if size is None:
            raise ValueError("tensor %r has no valid dtype" % name)
        if numel * size != len(self.data):
            raise ValueError("tensor %r holds %d bytes; shape and dtype need %d"
                             % (name, len(self.data), numel * size))

    def converted_to(self, dtype):
        """A copy stored as `dtype` (F32 -> BF16 rounds to nearest even)."""
        if dtype == self.dtype:
            return self
        n = len(self.data) // _DTYPE_BYTES[self.dtype]
        if dtype == common_pb2.DTYPE_BF16:
            words = struct.unpack("<%dI" % n, self.data)
            out = []
            for u in words:
                if (u & 0x7FFFFFFF) > 0x7F800000:
                    out.append((u >> 16) | 0x40)
                else:
                    out.append(((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF)
            return Tensor(self.name, dtype, self.shape, struct.pack("<%dH" % n, *out))
        halves = struct.unpack("<%dH" % n, self.data)
        return Tensor(self.name, dtype, self.shape,
                      struct.pack("<%dI" % n, *[h << 16 for h in halves]))


def read_safetensors(path):
    """Tensors of a .safetensors file (or DIR/model.safetensors), sorted by
    name. Only F32 and BF16 tensors are supported."""
    if os.path.isdir(path):
        path = os.path.join(path, "model.safetensors")
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise ValueError("%s: too short for a safetensors file" % path)
    (header_len,) = struct.unpack("<Q", blob[:8])
    if 8 + header_len > len(blob):
        raise ValueError("%s: header runs past the end of the file" % path)
    header = json.loads(blob[8:8 + header_len])
    base = 8 + header_len
    view = memoryview(blob)
    tensors = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(entry["dtype"])
        if dtype is None:
            raise ValueError("%s: tensor %r has unsupported dtype %s"
                             % (path, name, entry["dtype"]))
        begin, end = entry["data_offsets"]
        if base + end > len(blob):
            raise ValueError("%s: tensor %r runs past the end of the file" % (path, name))
        tensors.append(Tensor(name, dtype, entry["shape"], view[base + begin:base + end]))
    tensors.sort(key=lambda t: t.name)
    return tensors


def weight_update_messages(tensors, target_version, source="lockstep python client",
                           chunk_bytes=DEFAULT_CHUNK_BYTES):
    """Yields the UpdateWeights stream (common_pb2.WeightUpdate messages) for
    `tensors`: the header, then each tensor's chunks, in name order. A fresh
    call yields the same stream again (which makes uploads retryable)."""
    if not 1 <= chunk_bytes <= MAX_CHUNK_BYTES:
        raise ValueError("chunk_bytes %d outside [1, %d]" % (chunk_bytes, MAX_CHUNK_BYTES))
    tensors = sorted(tensors, key=lambda t: t.name)
    if not tensors:
        raise ValueError("no tensors to send")
    header = common_pb2.WeightUpdateHeader(target_version=target_version, source=source)
    for t in tensors:
        header.tensors.add(name=t.name, dtype=t.dtype, shape=t.shape,
                           total_bytes=len(t.data), crc32c=crc32c(t.data))
    yield common_pb2.WeightUpdate(header=header)
    for t in tensors:
        for off in range(0, len(t.data), chunk_bytes):
            piece = bytes(t.data[off:off + chunk_bytes])
            yield common_pb2.WeightUpdate(chunk=common_pb2.TensorChunk(
                name=t.name, offset=off, data=piece, crc32c=crc32c(piece)))
