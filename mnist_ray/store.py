"""The result store: paths, bytes, Parquet rows and safetensors weights, in a folder or an
object-store URI. Reading rows back is a query (mnist_ray/query.py).

    from mnist_ray.store import Store
    store = Store("mnist-ray-store")             # or "s3://bucket/prefix", "file:///data/x"
    store.write_row("runs", row)                  # one row, one new file
    uri, sha256 = store.write_weights(run_id, weights)

Layout, readable by any Parquet reader (pyarrow.dataset, pandas, DuckDB, Spark):

    <store>/runs/<run_id>.parquet                 one row per training run
    <store>/evaluations/<eval_id>.parquet         one row per evaluation
    <store>/weights/<run_id>.safetensors          the trained weights, no pickle
    <store>/weights/<run_id>.onnx                 the model exported for the shards (artifact.py)
    <store>/sweeps/<sweep_id>.parquet             one row per sweep: definition, status, best
    <store>/checkpoints/<run_id>/epoch-00000003.safetensors   state while training (8 digits)

Every file is written under a temporary name starting with '.' and then moved to its
final, unique name, so concurrent writers never collide and readers never see half a
file (pyarrow.dataset and DuckDB's `*.parquet` globs skip the temporary names).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import uuid
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mnist_ray.config import WEIGHT_SHAPES, check_id, first_line
from mnist_ray.errors import NamedError
from mnist_ray.schema import KEYS, SCHEMAS

DEFAULT_STORE = "mnist-ray-store"  # a folder in the current directory


class StoreError(NamedError):
    """The store can't be used or a file in it is bad; the message names the place (or
    `about="store", value=location`: the CLI writes `--store PATH: ...`)."""


def new_id(kind: str) -> str:
    """Unique and sortable by time: run-20261126-180203-a1b2c3."""
    return f"{kind}-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def now() -> datetime:
    return datetime.now(UTC)


class Store:
    def __init__(self, location: str | os.PathLike = DEFAULT_STORE):
        self.location = str(location)
        try:
            if "://" in self.location:
                self.fs, self.root = pafs.FileSystem.from_uri(self.location)
            else:
                self.fs = pafs.LocalFileSystem()
                self.root = os.path.abspath(os.path.expanduser(self.location))
        except (pa.ArrowException, ValueError, OSError) as exc:
            raise StoreError(first_line(exc), about="store", value=self.location) from None
        self.root = self.root.rstrip("/")

    @property
    def is_local(self) -> bool:
        """A folder on this machine (DuckDB reads it directly; other stores go through Arrow)."""
        return isinstance(self.fs, pafs.LocalFileSystem)

    def __repr__(self) -> str:
        return f"Store({self.location!r})"

    # -- paths ---------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def uri(self, *parts: str) -> str:
        """Where a file is, in the form the user gave the store."""
        if "://" in self.location:
            # options stay at the end: s3://b/p?endpoint_override=h:9000 -> s3://b/p/x?endpoint...
            base, sep, query = self.location.partition("?")
            return "/".join([base.rstrip("/"), *parts]) + sep + query
        return self.path(*parts)

    # -- writing -------------------------------------------------------------------------------
    def check_writable(self) -> None:
        """Create the layout and prove a file can be written, before any work starts."""
        probe = self.path(f".probe-{uuid.uuid4().hex}")
        try:
            for folder in ("runs", "evaluations", "weights"):
                self.fs.create_dir(self.path(folder), recursive=True)
            with self.fs.open_output_stream(probe) as out:
                out.write(b"ok")
            self.fs.delete_file(probe)
        except (OSError, pa.ArrowException) as exc:
            raise StoreError(
                f"not writable ({first_line(exc)}); choose a folder or URI you can write to",
                about="store",
                value=self.location,
            ) from None

    def write_bytes(self, relpath: str, data: bytes) -> str:
        """Write under a temporary name beside the target, then move it into place."""
        final = self.path(relpath)
        folder, name = final.rsplit("/", 1)
        tmp = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp"
        try:
            self.fs.create_dir(folder, recursive=True)
            with self.fs.open_output_stream(tmp) as out:
                out.write(data)
            self.fs.move(tmp, final)
        except (OSError, pa.ArrowException) as exc:
            _quiet_delete(self.fs, tmp)
            raise StoreError(f"{self.uri(relpath)}: write failed ({first_line(exc)})") from None
        return self.uri(relpath)

    def write_row(self, table: str, row: dict) -> str:
        """One row as one Parquet file, `<table>/<id>.parquet`."""
        key = check_id(row[KEYS[table]], KEYS[table])
        arrow = pa.Table.from_pylist([row], schema=SCHEMAS[table])
        sink = pa.BufferOutputStream()
        pq.write_table(arrow, sink)
        return self.write_bytes(f"{table}/{key}.parquet", sink.getvalue().to_pybytes())

    # -- reading -------------------------------------------------------------------------------
    def read_bytes(self, relpath: str) -> bytes:
        try:
            with self.fs.open_input_stream(self.path(relpath)) as f:
                return f.read()
        except FileNotFoundError:
            raise StoreError(f"{self.uri(relpath)}: not found") from None
        except (OSError, pa.ArrowException) as exc:
            raise StoreError(f"{self.uri(relpath)}: {first_line(exc)}") from None

    def list(self, folder: str, suffix: str = "") -> list[str]:
        """Relative paths of the visible files in a folder (skipping '.' and '_' names)."""
        try:
            infos = self.fs.get_file_info(
                pafs.FileSelector(self.path(folder), allow_not_found=True)
            )
        except (OSError, pa.ArrowException) as exc:
            raise StoreError(first_line(exc), about="store", value=self.location) from None
        names = [
            i.base_name
            for i in infos
            if i.type == pafs.FileType.File
            and not i.base_name.startswith((".", "_"))
            and i.base_name.endswith(suffix)
        ]
        return [f"{folder}/{n}" for n in sorted(names)]

    def check_exists(self) -> None:
        """For commands that only read: a store that isn't there is a mistyped path, not an
        empty store."""
        try:
            found = self.fs.get_file_info(self.root).type
        except (OSError, pa.ArrowException) as exc:
            raise StoreError(first_line(exc), about="store", value=self.location) from None
        if found == pafs.FileType.NotFound:
            raise StoreError(
                "no such store (nothing at that path)", about="store", value=self.location
            )
        if found != pafs.FileType.Directory:
            raise StoreError("not a folder", about="store", value=self.location)

    # -- weights -------------------------------------------------------------------------------
    def write_weights(self, run_id: str, weights: dict[str, np.ndarray]) -> tuple[str, str]:
        """Save as safetensors; returns (uri, sha256) for the run row."""
        data = encode_tensors(weights, {"run_id": run_id})
        uri = self.write_bytes(f"weights/{check_id(run_id)}.safetensors", data)
        return uri, hashlib.sha256(data).hexdigest()

    def write_artifact(self, run_id: str, data: bytes) -> str:
        """Save a run's exported model (artifact.py) beside its weights; returns its sha256."""
        self.write_bytes(f"weights/{check_id(run_id)}.onnx", data)
        return hashlib.sha256(data).hexdigest()

    def read_artifact(self, run: dict) -> bytes | None:
        """The run's exported model, refused unless it hashes to the row's onnx_sha256;
        None for a run that has none (a user's model, an older run)."""
        if not run.get("onnx_sha256"):
            return None
        return self._checked(f"weights/{check_id(run['run_id'])}.onnx", run, "onnx_sha256")

    def _checked(self, relpath: str, run: dict, column: str) -> bytes:
        """The file's bytes, refused unless they hash to the run row's `column`."""
        data = self.read_bytes(relpath)
        digest = hashlib.sha256(data).hexdigest()
        if digest != run[column]:
            raise StoreError(
                f"{self.uri(relpath)}: sha256 {digest[:12]}... does not match run "
                f"{run['run_id']} ({run[column][:12]}...); the file was changed, "
                "refusing to load it"
            )
        return data

    def check_weights(self, run: dict) -> None:
        """Refuse the run if its weights file no longer hashes to the row's weights_sha256."""
        self._checked(f"weights/{check_id(run['run_id'])}.safetensors", run, "weights_sha256")

    def read_weights(
        self,
        run: dict,
        shapes: dict[str, tuple[int, ...]] = WEIGHT_SHAPES,
        dtypes: dict[str, str] | None = None,
    ) -> dict[str, np.ndarray]:
        """The run's weights, refused unless they hash to the run row's sha256 and have
        `shapes` and `dtypes` (the model's: model.weight_layout(run["model"]); the softmax
        model's, all float32, by default). safetensors holds raw arrays, so loading can
        never run code."""
        relpath = f"weights/{check_id(run['run_id'])}.safetensors"
        data = self._checked(relpath, run, "weights_sha256")
        weights = decode_tensors(data, self.uri(relpath))
        if unknown := sorted(set(weights) - set(shapes)):
            raise StoreError(f"{self.uri(relpath)}: holds {unknown[0]}; not weights of this model")
        for name, shape in shapes.items():
            got = weights.get(name)
            dtype = (dtypes or {}).get(name, "float32")
            if got is None or got.shape != shape or str(got.dtype) != dtype:
                found = None if got is None else f"{got.dtype}{list(got.shape)}"
                raise StoreError(
                    f"{self.uri(relpath)}: {name} is {found}, expected {dtype}{list(shape)}; "
                    "not weights of this model"
                )
            if np.issubdtype(got.dtype, np.floating) and not np.isfinite(got).all():
                raise StoreError(f"{self.uri(relpath)}: {name} holds NaN or infinity")
        return weights


def tensors_digest(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over the tensors alone: each name, dtype, shape and bytes, in sorted name
    order. Equal for any two runs with identical weights, whatever else their files hold
    (the safetensors header names the run, so weights_sha256 differs between them)."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.require(arrays[name], requirements="C")  # 0-d stays 0-d
        h.update(f"{name}\0{a.dtype.str}\0{list(a.shape)}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def encode_tensors(arrays: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> bytes:
    from safetensors.numpy import save

    return save({k: np.require(v, requirements="C") for k, v in arrays.items()}, metadata=metadata)


def decode_tensors(data: bytes, where: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    try:
        return load(data)
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise StoreError(f"{where}: not a safetensors file ({first_line(exc)})") from None


def _quiet_delete(fs: pafs.FileSystem, path: str) -> None:
    with contextlib.suppress(OSError, pa.ArrowException):
        fs.delete_file(path)
