"""The resume state's storage under torch.distributed.checkpoint (DCP), as data only.

    ft_state/dcp/index.json      what DCP's Metadata says, as JSON: each entry's dtype, size and
                                 chunks, and where its bytes lie (file, offset, length)
    ft_state/dcp/__R_0.distcp    rank R's tensors as raw bytes (C order) and its other values
                                 (the optimizer's param_groups) as JSON

torch's own FileSystemWriter/Reader pickle the index and `torch.save` every value, and its default
load planner reads values back with `torch.load(weights_only=False)`: a checkpoint could run code.
Here nothing read from a checkpoint is unpickled: the index is JSON whose every size and offset is
checked against the real size of the file it names before anything is allocated, tensors are
bytes of exactly the length their shape needs, other values are JSON of the type the live state
holds. DCP still plans the reads, so a run resumes on another number of ranks.

    dcp.save(state, storage_writer=DataWriter(folder), planner=DataSavePlanner())
    dcp.load(state, storage_reader=DataReader(folder), planner=DataLoadPlanner())
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import re
import stat
import sys
import uuid
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import StorageReader, StorageWriter
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, DefaultSavePlanner
from torch.distributed.checkpoint.metadata import (BytesStorageMetadata, ChunkStorageMetadata, Metadata,
                                                   MetadataIndex, StorageMeta, TensorProperties,
                                                   TensorStorageMetadata)
from torch.distributed.checkpoint.planner import LoadItemType, WriteItemType
from torch.distributed.checkpoint.storage import WriteResult
from torch.distributed.checkpoint._traverse import get_element, set_element
from torch.distributed._shard._utils import narrow_tensor_by_index
from torch.futures import Future

from ftcore import layout
from ftcore.errors import UserError
from ftcore.layout import DCP_INDEX, LEGACY_DCP_INDEX

FORMAT = "ft.dcp"
VERSION = 1
_DATA_FILE = re.compile(r"^__\d{1,9}_0\.distcp$")  # a name in the folder: never a path, a link or a device
_DTYPES = {str(dtype).removeprefix("torch."): dtype for dtype in vars(torch).values() if isinstance(dtype, torch.dtype)}
_MAX_DIMS = 64


@dataclasses.dataclass(frozen=True)
class Span:
    """Where one item's bytes lie: `length` bytes at `offset` of the data file `file`."""
    file: str
    offset: int
    length: int


class Refused(UserError):
    """A resume state that is not what ft writes; nothing of it was used."""


class Older(Refused):
    """A resume state an older ft wrote through torch's pickling writer: never opened."""


# --- values other than tensors: JSON, tagged where JSON has no type of its own ---------------------


def to_json(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, tuple):
        return {"tuple": [to_json(v) for v in value]}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"dict": {k: to_json(v) for k, v in value.items()}}
    raise TypeError(f"ft's resume state holds data only, not a {type(value).__name__}")


def from_json(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [from_json(v) for v in value]
    if isinstance(value, dict) and len(value) == 1:
        (tag, inner), = value.items()
        if tag == "tuple" and isinstance(inner, list):
            return tuple(from_json(v) for v in inner)
        if tag == "dict" and isinstance(inner, dict):
            return {k: from_json(v) for k, v in inner.items()}
    raise ValueError("not a value ft writes")


def _same_kind(saved: Any, live: Any) -> bool:
    """`saved` has the shape and types of `live` (a number for a number, a tuple of the same length...)."""
    if isinstance(live, bool) or isinstance(saved, bool):
        return type(saved) is type(live)
    if isinstance(live, (int, float)):
        return isinstance(saved, (int, float))
    if isinstance(live, (list, tuple)):
        return (type(saved) is type(live) and len(saved) == len(live)
                and all(_same_kind(s, v) for s, v in zip(saved, live)))
    if isinstance(live, dict):
        return type(saved) is dict and saved.keys() == live.keys() and all(_same_kind(saved[k], live[k]) for k in live)
    return type(saved) is type(live)


# --- planners ------------------------------------------------------------------------------------


class DataSavePlanner(DefaultSavePlanner):
    """DCP's planner, with values other than tensors written as JSON instead of `torch.save`."""

    def transform_object(self, write_item, object: Any):
        if write_item.type == WriteItemType.BYTE_IO:
            return io.BytesIO(json.dumps(to_json(object)).encode())
        return object


class DataLoadPlanner(DefaultLoadPlanner):
    """DCP's planner, with values other than tensors read as JSON, each of the type the live state holds."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        fqn = read_item.dest_index.fqn
        path = self.mappings[fqn] if self.flatten_state_dict else (fqn,)
        live = get_element(self.original_state_dict, path)
        try:
            saved = from_json(json.loads(value.getvalue()))
        except (ValueError, RecursionError):
            raise Refused(f"its value of {fqn} is not JSON ft writes") from None
        if not _same_kind(saved, live):
            raise Refused(f"its value of {fqn} is a {type(saved).__name__} where this job has a {type(live).__name__}")
        set_element(self.original_state_dict, path, saved)


# --- the writer ----------------------------------------------------------------------------------


def _raw(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


class _AtPath:
    """What DCP asks of a storage layer about where it is: its folder (`self.path`), any folder."""

    path: Path

    @property
    def checkpoint_id(self) -> str:
        return str(self.path)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id) -> bool:
        return True


class DataWriter(_AtPath, StorageWriter):
    """One data file per rank (raw tensors, JSON values) and, from the coordinator, index.json."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        self.path = Path(path)
        self.save_id = str(uuid.uuid4())

    def reset(self, checkpoint_id: str | os.PathLike | None = None) -> None:
        if checkpoint_id:
            self.path = Path(checkpoint_id)
        self.save_id = str(uuid.uuid4())

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        pass

    def prepare_local_plan(self, plan):
        self.path.mkdir(parents=True, exist_ok=True)
        return plan

    def prepare_global_plan(self, plans):
        return [dataclasses.replace(plan, storage_data=f"__{rank}_0.distcp") for rank, plan in enumerate(plans)]

    def write_data(self, plan, planner) -> Future:
        name, results = plan.storage_data, []
        with open(self.path / name, "wb") as stream:
            for item in plan.items:
                data = planner.resolve_data(item)
                offset = stream.tell()
                stream.write(data.getbuffer() if item.type == WriteItemType.BYTE_IO else _raw(data))
                length = stream.tell() - offset
                results.append(WriteResult(index=item.index, size_in_bytes=length, storage_data=Span(name, offset, length)))
            stream.flush()
            os.fsync(stream.fileno())
        future: Future = Future()
        future.set_result(results)
        return future

    def finish(self, metadata: Metadata, results) -> None:
        spans = {result.index: result.storage_data for per_rank in results for result in per_rank}
        text = json.dumps(index_json(metadata, spans), separators=(",", ":"))
        tmp = self.path / f"{DCP_INDEX}.tmp"
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path / DCP_INDEX)

    def storage_meta(self) -> StorageMeta:
        return StorageMeta(checkpoint_id=str(self.path), save_id=self.save_id)


def index_json(metadata: Metadata, spans: dict[MetadataIndex, Span]) -> dict:
    """The index as JSON: Metadata's fields that DCP's planners read, and each item's span."""
    def span(index: MetadataIndex) -> dict:
        where = spans[index]
        return {"file": where.file, "offset": where.offset, "length": where.length}

    entries = []
    for key, md in metadata.state_dict_metadata.items():
        entry: dict[str, Any] = {"key": key, "path": list((metadata.planner_data or {}).get(key, (key,)))}
        if isinstance(md, BytesStorageMetadata):
            entry["bytes"] = span(MetadataIndex(key))
        else:
            entry["dtype"] = str(md.properties.dtype).removeprefix("torch.")
            entry["size"] = list(md.size)
            entry["chunks"] = [{"offsets": list(chunk.offsets), "sizes": list(chunk.sizes),
                                **span(MetadataIndex(key, chunk.offsets))} for chunk in md.chunks]
        entries.append(entry)
    return {"format": FORMAT, "version": VERSION, "byteorder": sys.byteorder, "entries": entries}


# --- the reader ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Index:
    metadata: Metadata
    spans: dict[MetadataIndex, Span]
    chunk_of: dict[MetadataIndex, tuple[torch.dtype, tuple[int, ...]]]  # a tensor chunk's dtype and shape


def _data_file(folder: Path, name: str) -> int:
    """The size of data file `name` of `folder`: a regular file, not a link."""
    try:
        info = os.lstat(folder / name)
    except OSError as err:
        raise Refused(f"its data file {name} cannot be read ({err.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise Refused(f"its data file {name} is not a regular file")
    return info.st_size


def read_regular(path: Path, limit: int = 1 << 40) -> bytes:
    """`layout.read_regular` for the resume state's files, which ft writes as plain files: no links."""
    return layout.read_regular(path, limit, follow_links=False)


def _ints(value: Any, what: str, count: int | None = None) -> list[int]:
    if (not isinstance(value, list) or len(value) > _MAX_DIMS or (count is not None and len(value) != count)
            or not all(type(v) is int and 0 <= v < 2**62 for v in value)):
        raise Refused(f"its {what} is not a list of {count if count is not None else 'up to 64'} counts")
    return value


def _span(raw: dict, key: str, sizes: dict[str, int], folder: Path) -> Span:
    name, offset, length = raw.get("file"), raw.get("offset"), raw.get("length")
    if not (isinstance(name, str) and _DATA_FILE.match(name)):
        raise Refused(f"its entry {key} names a data file ft does not write ({str(name)[:60]!r})")
    if not (type(offset) is int and type(length) is int and 0 <= offset < 2**62 and 0 <= length < 2**62):
        raise Refused(f"its entry {key} has no byte range")
    if name not in sizes:
        sizes[name] = _data_file(folder, name)
    if offset + length > sizes[name]:
        raise Refused(f"its entry {key} lies past the end of {name} ({offset} + {length} > {sizes[name]} bytes)")
    return Span(name, offset, length)


def read_index(folder: Path) -> Index:
    """The resume state's index in `folder` (ft_state/dcp), checked against its data files.

    Raises Refused for anything ft's writer would not have written, before anything is allocated
    from what the index claims: a span lies inside its file and overlaps no other, a tensor
    chunk's bytes are exactly its shape's, and the chunks of a tensor add up to the tensor."""
    index_file = folder / DCP_INDEX
    if not index_file.exists() and not index_file.is_symlink():
        if (folder / LEGACY_DCP_INDEX).exists():
            raise Older(f"its resume state is pickled ({LEGACY_DCP_INDEX}), and ft reads no pickle from a checkpoint")
        raise Refused(f"it has no {DCP_INDEX}")
    try:
        raw = json.loads(read_regular(index_file))
    except OSError as err:
        raise Refused(f"its {DCP_INDEX} cannot be read ({err.strerror})") from None
    except (ValueError, RecursionError):
        raise Refused(f"its {DCP_INDEX} is not JSON") from None
    if not (isinstance(raw, dict) and raw.get("format") == FORMAT and raw.get("version") == VERSION
            and isinstance(raw.get("entries"), list)):
        raise Refused(f"its {DCP_INDEX} is not an index ft writes (format {FORMAT} version {VERSION})")
    if raw.get("byteorder") != sys.byteorder:
        raise Refused(f"it was written on a {str(raw.get('byteorder'))[:20]}-endian machine; this one is {sys.byteorder}")

    sizes: dict[str, int] = {}
    state_dict_metadata: dict[str, Any] = {}
    planner_data: dict[str, tuple] = {}
    spans: dict[MetadataIndex, Span] = {}
    chunk_of: dict[MetadataIndex, tuple[torch.dtype, tuple[int, ...]]] = {}
    for entry in raw["entries"]:
        key = entry.get("key") if isinstance(entry, dict) else None
        if not isinstance(key, str) or key in state_dict_metadata:
            raise Refused(f"its {DCP_INDEX} has an entry without a key of its own")
        path = entry.get("path")
        if not (isinstance(path, list) and path and all(type(p) in (str, int) for p in path)):
            raise Refused(f"its entry {key} has no path")
        planner_data[key] = tuple(path)
        if "bytes" in entry and isinstance(entry["bytes"], dict):
            spans[MetadataIndex(key)] = _span(entry["bytes"], key, sizes, folder)
            state_dict_metadata[key] = BytesStorageMetadata()
            continue
        dtype = _DTYPES.get(entry.get("dtype")) if isinstance(entry.get("dtype"), str) else None
        if dtype is None or not isinstance(entry.get("chunks"), list):
            raise Refused(f"its entry {key} is neither a tensor ft writes nor a value")
        size = _ints(entry.get("size"), f"entry {key}'s size")
        chunks, volume = [], 0
        for i, chunk in enumerate(entry["chunks"]):
            if not isinstance(chunk, dict):
                raise Refused(f"its entry {key} has a chunk that is not one")
            offsets = _ints(chunk.get("offsets"), f"entry {key}'s chunk offsets", len(size))
            shape = _ints(chunk.get("sizes"), f"entry {key}'s chunk sizes", len(size))
            if any(o + s > whole for o, s, whole in zip(offsets, shape, size)):
                raise Refused(f"its entry {key} has a chunk outside the tensor")
            where = _span(chunk, key, sizes, folder)
            if where.length != math.prod(shape) * dtype.itemsize:
                raise Refused(f"its entry {key} has a chunk of {where.length} bytes where {shape} of {dtype} needs "
                              f"{math.prod(shape) * dtype.itemsize}")
            volume += math.prod(shape)
            storage_index = MetadataIndex(key, offsets, i)
            spans[storage_index], chunk_of[storage_index] = where, (dtype, tuple(shape))
            chunks.append(ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(shape)))
        if volume != math.prod(size):
            raise Refused(f"its entry {key}'s chunks hold {volume} values, not the {math.prod(size)} of its size")
        state_dict_metadata[key] = TensorStorageMetadata(TensorProperties(dtype=dtype), torch.Size(size), chunks)

    # Spans that overlap could claim more than the files hold; ft's writer never overlaps them.
    ends: dict[str, int] = {}
    for where in sorted(spans.values(), key=lambda s: (s.file, s.offset)):
        if where.offset < ends.get(where.file, 0):
            raise Refused(f"its {DCP_INDEX} places two items on the same bytes of {where.file}")
        ends[where.file] = where.offset + where.length

    metadata = Metadata(state_dict_metadata=state_dict_metadata, planner_data=planner_data, storage_data=spans,
                        storage_meta=StorageMeta())
    return Index(metadata, spans, chunk_of)


class DataReader(_AtPath, StorageReader):
    """Reads what DataWriter wrote; the index is read and checked when the reader is made."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        self.path = Path(path)
        self.index = read_index(self.path)
        self.load_id = str(uuid.uuid4())

    def reset(self, checkpoint_id: str | os.PathLike | None = None) -> None:
        if checkpoint_id and Path(checkpoint_id) != self.path:
            self.path = Path(checkpoint_id)
            self.index = read_index(self.path)
        self.load_id = str(uuid.uuid4())

    def read_metadata(self) -> Metadata:
        self.index.metadata.storage_meta.load_id = self.load_id
        return self.index.metadata

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        pass

    def prepare_local_plan(self, plan):
        return plan

    def prepare_global_plan(self, plans):
        return plans

    def read_data(self, plan, planner) -> Future:
        if not isinstance(planner, DataLoadPlanner):  # torch's own would unpickle the values
            raise TypeError("ft's resume state is read with trainer.dcp_data.DataLoadPlanner")
        by_file: dict[str, list] = {}
        for item in plan.items:
            if item.storage_index not in self.index.spans:
                raise Refused(f"its index has no bytes for {item.storage_index.fqn}")
            by_file.setdefault(self.index.spans[item.storage_index].file, []).append(item)
        for name, items in by_file.items():
            fd = os.open(self.path / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            try:
                info = os.fstat(fd)
                for item in items:
                    where = self.index.spans[item.storage_index]
                    if not stat.S_ISREG(info.st_mode) or where.offset + where.length > info.st_size:
                        raise Refused(f"its data file {name} changed while it was read")
                    data = os.pread(fd, where.length, where.offset)
                    if len(data) != where.length:
                        raise Refused(f"its data file {name} ends early")
                    if item.type == LoadItemType.BYTE_IO:
                        planner.load_bytes(item, io.BytesIO(data))
                        continue
                    dtype, shape = self.index.chunk_of[item.storage_index]
                    saved = (torch.frombuffer(bytearray(data), dtype=dtype) if data else torch.empty(0, dtype=dtype))
                    saved = narrow_tensor_by_index(saved.reshape(shape), item.storage_offsets, item.lengths)
                    target = planner.resolve_tensor(item).detach()
                    if target.size() != saved.size():
                        raise Refused(f"its {item.storage_index.fqn} has shape {tuple(saved.size())} where this job "
                                      f"has {tuple(target.size())}")
                    target.copy_(saved)
                    planner.commit_tensor(item, target)
            finally:
                os.close(fd)
        future: Future = Future()
        future.set_result(None)
        return future
