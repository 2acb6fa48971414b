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


SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"


def _read_safetensors_file(path):
    """Tensors of one .safetensors file, in header order."""
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
    return tensors


def _read_sharded(directory):
    """Tensors of model.safetensors.index.json and the shards it names,
    checked as the C++ common::SafetensorsCheckpoint checks them."""
    index_path = os.path.join(directory, SAFETENSORS_INDEX)

    def invalid(what):
        return ValueError("safetensors index '%s': %s" % (index_path, what))

    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        for k in keys:
            if keys.count(k) > 1:
                raise invalid("duplicate JSON key '%s'" % k)
        return dict(pairs)

    with open(index_path, "rb") as f:
        text = f.read()
    try:
        index = json.loads(text, object_pairs_hook=no_duplicates)
    except ValueError as e:
        if str(e).startswith("safetensors index"):
            raise
        raise invalid("not valid JSON (%s)" % e) from None
    if not isinstance(index, dict):
        raise invalid("not a JSON object")
    if "metadata" in index and not isinstance(index["metadata"], dict):
        raise invalid('"metadata" is not an object')
    weight_map = index.get("weight_map")
    if weight_map is None:
        raise invalid('missing "weight_map"')
    if not isinstance(weight_map, dict):
        raise invalid('"weight_map" is not an object')
    if not weight_map:
        raise invalid('"weight_map" lists no tensors')
    for name, shard in weight_map.items():
        if not name:
            raise invalid('"weight_map" has an empty tensor name')
        if not isinstance(shard, str):
            raise invalid('"weight_map" value of tensor %r is not a string' % name)
        if shard in ("", ".", "..") or "/" in shard or "\0" in shard:
            raise invalid('"weight_map" maps tensor %r to shard %r, which is not a plain '
                          "file name in the checkpoint directory" % (name, shard))
    holder = {}
    tensors = []
    for shard in sorted(set(weight_map.values())):
        for t in _read_safetensors_file(os.path.join(directory, shard)):
            if t.name in holder:
                raise invalid("tensor '%s' is in shard '%s' and in shard '%s'"
                              % (t.name, holder[t.name], shard))
            holder[t.name] = shard
            tensors.append(t)
    for name, shard in sorted(weight_map.items()):
        if holder.get(name) != shard:
            raise invalid('"weight_map" maps tensor \'%s\' to shard \'%s\', which does '
                          "not hold it" % (name, shard))
    for name, shard in sorted(holder.items()):
        if name not in weight_map:
            raise invalid("shard '%s' holds tensor '%s', which \"weight_map\" does not list"
                          % (shard, name))
    return tensors


def read_safetensors(path):
    """Tensors of a .safetensors file or of a checkpoint directory in Hugging
    Face layout (DIR/model.safetensors or, when that is absent,
    DIR/model.safetensors.index.json and the shards it names), sorted by
    name. Only F32 and BF16 tensors are supported. Raises OSError
    (FileNotFoundError for a missing file or shard) or ValueError (a corrupt
    file, or an index that is malformed or disagrees with its shards)."""
    if os.path.isdir(path):
        single = os.path.join(path, SAFETENSORS_FILE)
        if os.path.exists(single):  # as transformers, the single file wins
            tensors = _read_safetensors_file(single)
        elif os.path.exists(os.path.join(path, SAFETENSORS_INDEX)):
            tensors = _read_sharded(path)
        else:
            raise FileNotFoundError("%s holds neither %s nor %s"
                                    % (path, SAFETENSORS_FILE, SAFETENSORS_INDEX))
    else:
        tensors = _read_safetensors_file(path)
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
