"""Writing the report: ``report.html`` (self-contained, figures inlined as PNG data URIs)
and ``report.md`` (figures under ``report_files/``), both from the same sections."""

from __future__ import annotations

import base64
import html
import io
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from genft.report import data as D
from genft.report import figures as F

NORMALIZE_TEXT = {
    "chance": "normalized score = (score − chance) / (perfect − chance) × 100, with chance = 1 / "
              "number of labels for classification and 0 for generation, perfect = 1 (every metric, BLEU included, is stored as a fraction in [0, 1]): "
              "0 is chance level, 100 is perfect, negative is below chance",
    "raw": "normalized score = score / perfect × 100 (the config chose `normalize: raw`; chance "
           "level is not subtracted)",
}
SCORE_TEXT = ("Scores are each test set's primary metric (the first metric of its task YAML: "
              "accuracy for classification, ROUGE-L F for headline generation), averaged over "
              "training seeds, evaluated shots and prompt formats; final models of the largest "
              "training size.")
SPEC_TEXT = ("Format specialization rate (\"label answers\"): for a model trained on classification, "
             "the share of its predictions on generation test sets whose normalized text "
             "(lower-cased, surrounding whitespace and punctuation removed) is exactly one of its "
             "training tasks' label words. The base model's rate uses the same words and is the "
             "reference. \"Empty answers\": the share of empty predictions.")


@dataclass
class Section:
    title: str
    text: str = ""
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    figures: list[tuple[str, plt.Figure]] = field(default_factory=list)


def build_report(out: str | Path) -> Path:
    """Write report.html and report.md into ``out``; return the HTML path."""
    out = Path(out)
    data = D.collect(out)
    sections = make_sections(data)
    title = _title(data)
    files = out / "report_files"
    files.mkdir(exist_ok=True)
    for folder in (out, files):
        _remove_stale_temporaries(folder)
    pngs = {}
    for s in sections:
        for i, (caption, fig) in enumerate(s.figures):
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
            plt.close(fig)
            name = f"{_slug(s.title)}-{i}.png"
            write_atomic(files / name, buf.getvalue())
            pngs[(s.title, i)] = (name, base64.b64encode(buf.getvalue()).decode())
    write_atomic(out / "report.md", _markdown(title, sections, pngs).encode("utf-8"))
    path = out / "report.html"
    write_atomic(path, _html(title, sections, pngs).encode("utf-8"))
    return path


def _remove_stale_temporaries(folder: Path) -> None:
    """Temporary files left by a writer that was killed (its process is gone)."""
    for tmp in folder.glob(".*.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary name in the same folder, then rename over ``path``: a run killed
    mid-write leaves the previous file (or none), never half of one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _title(data: D.ReportData) -> str:
    cfg = data.runs[-1]["config"] if data.runs else {}
    return f"genft report — {cfg.get('name', 'experiment')} ({cfg.get('model', '?')})"


def make_sections(data: D.ReportData) -> list[Section]:
    cfg = data.runs[-1]["config"] if data.runs else {}
    sections = [Section("Overview", _overview(data, cfg))]
    if data.table.empty:
        sections[0].text += " No results are stored yet."
        return sections + [_metadata(data)]

    s = Section("In-domain, out-of-domain and cross-task summary",
                SCORE_TEXT + " Columns without “(raw)” are mean normalized scores over the test sets "
                "of that relation (" + NORMALIZE_TEXT[data.normalize] + "); “(raw)” columns average "
                "the raw primary metrics.")
    s.tables.append(("", D.relation_summary(data)))
    sections.append(s)

    spec = D.specialization(data)
    s = Section("Format specialization", SPEC_TEXT)
    if spec.empty:
        s.text += " (No classification-trained model was tested on a generation task.)"
    else:
        s.tables.append(("", spec))
    sections.append(s)

    s = Section("Heatmaps: training tasks × test sets",
                SCORE_TEXT + " Top: each method's score; bottom: its difference from the base "
                "model's in-context score on the same cells.")
    fig = F.heatmaps(data)
    if fig:
        s.figures.append(("", fig))
    for group in data.groups:
        s.tables.append((f"trained on {group}", D.heat(data, group).reset_index()))
    sections.append(s)

    s = Section("k-shot curves", "Primary metric per number of in-context examples, per test set; "
                "solid lines prompt1, dashed prompt2; averaged over training seeds.")
    for group in data.groups:
        if (fig := F.kshot_curves(data, group)) is not None:
            s.figures.append((f"trained on {group}", fig))
    sections.append(s)

    size_figs = [(g, f) for g in data.groups if (f := F.size_curves(data, g)) is not None]
    if size_figs:
        sections.append(Section("Training-size curves", "Primary metric averaged over shots, "
                                "formats and seeds, per training-set size.",
                                figures=[(f"trained on {g}", f) for g, f in size_figs]))

    over = D.over_training(data)
    if not over.empty:
        s = Section("Specialization over training",
                    "Intermediate checkpoints evaluated on the checkpoint grid (config "
                    "`checkpoints:`): the label-answer rate on generation test sets and the mean "
                    "cross-task score, per training step; step 0 is the base model.")
        if (fig := F.training_curves(over)) is not None:
            s.figures.append(("", fig))
        s.tables.append(("", over))
        sections.append(s)

    norm = D.normalized_average(data)
    s = Section("Normalized average over held-out tasks",
                "Held-out tasks are the config's `held_out` test sets (minus the model's own "
                "training tasks) or, if it names none, the test sets of families the model was "
                "not trained on (cross-task). Per held-out test set, " + NORMALIZE_TEXT[data.normalize] + "; the "
                "table averages it over the held-out sets (equal weight per set), at each k every "
                "held-out set was evaluated with, and over all evaluated k; formats averaged.")
    if norm.empty:
        s.text += " (No held-out test sets in this run.)"
    else:
        s.tables.append(("", norm))
    sections.append(s)

    pc = D.param_changes(data)
    if not pc.empty:
        sections.append(Section("Parameter change from the base model",
                                "From genft.training.param_change: mean absolute change of the "
                                "weights, relative change (sum |Δ| / sum |base weights|) and the "
                                "largest change, overall and per module type (q_proj, down_proj, "
                                "…; LoRA merged first; a soft prompt is not a weight).",
                                tables=[("", pc)]))
    sections.append(_metadata(data))
    return sections


def _overview(data: D.ReportData, cfg: dict) -> str:
    t = data.table
    models = t[["model", "train_tasks"]].drop_duplicates() if not t.empty else t
    parts = [cfg.get("description", "").strip(),
             f"Model {cfg.get('model', '?')}; trained on {', '.join(cfg.get('train_tasks', []))} "
             f"with {', '.join(cfg.get('methods', {})) or 'no methods'}; "
             f"{t['cell_key'].nunique() if not t.empty else 0} evaluation cells of "
             f"{len(models)} models on {t['test_task'].nunique() if not t.empty else 0} test sets. "
             f"The base model's in-context results are the reference row."]
    return " ".join(p for p in parts if p)


def _metadata(data: D.ReportData) -> Section:
    rows, stage_rows = [], []
    for r in data.runs:
        wall = round(r["finished"] - r["started"], 1) if r["finished"] else None
        rows.append({"run": r["id"], "started": time.strftime("%Y-%m-%d %H:%M:%S",
                                                             time.localtime(r["started"])),
                     "status": r["status"], "wall time (s)": wall,
                     "seeds": ", ".join(map(str, r["config"].get("seeds", []))),
                     "eval seed": r["config"].get("eval_seed"),
                     **{f"{k}": v for k, v in r["meta"].get("versions", {}).items()}})
        for stage, secs in r["stages"].items():
            stage_rows.append({"run": r["id"], "stage": stage, "seconds": round(secs, 1)})
    hw = data.runs[-1]["meta"].get("hardware", {}) if data.runs else {}
    text = "Hardware: " + ", ".join(f"{k} {v}" for k, v in hw.items()) + "."
    return Section("Run metadata", text, tables=[("runs", pd.DataFrame(rows)),
                                                 ("wall time per stage", pd.DataFrame(stage_rows))])


# ---------------------------------------------------------------- rendering


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and pd.isna(v)) or v is pd.NA:
        return "–"
    if isinstance(v, float):
        if v != 0 and abs(v) < 1e-2:
            return f"{v:.2e}"
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def _rows(df: pd.DataFrame) -> list[list[str]]:
    return [[_fmt(v) for v in row] for row in df.itertuples(index=False)]


def _md_table(df: pd.DataFrame) -> str:
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "|" + "---|" * len(df.columns)
    return "\n".join([head, sep, *("| " + " | ".join(r) + " |" for r in _rows(df))])


def _html_table(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r) + "</tr>"
                   for r in _rows(df))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _markdown(title: str, sections: list[Section], pngs: dict) -> str:
    out = [f"# {title}", ""]
    for s in sections:
        out += [f"## {s.title}", "", s.text, ""]
        for caption, df in s.tables:
            out += ([f"**{caption}**", ""] if caption else []) + [_md_table(df), ""]
        for i, (caption, _) in enumerate(s.figures):
            out += [f"![{caption or s.title}](report_files/{pngs[(s.title, i)][0]})", ""]
    return "\n".join(out)


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1300px;margin:2em auto;
padding:0 1.5em;color:#222;line-height:1.45}
h1{font-size:1.6em;border-bottom:2px solid #444;padding-bottom:.3em}
h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ccc}
p.note{color:#444;font-size:.93em}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.88em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f0f0f0} td:first-child,td:nth-child(2){text-align:left}
img{max-width:100%;margin:.5em 0}
figcaption{font-size:.85em;color:#555}
nav a{margin-right:1em;font-size:.9em}
"""


def _html(title: str, sections: list[Section], pngs: dict) -> str:
    nav = "".join(f'<a href="#{_slug(s.title)}">{html.escape(s.title)}</a>' for s in sections)
    body = [f"<h1>{html.escape(title)}</h1>", f"<nav>{nav}</nav>"]
    for s in sections:
        body.append(f'<h2 id="{_slug(s.title)}">{html.escape(s.title)}</h2>')
        body.append(f'<p class="note">{html.escape(s.text)}</p>')
        for i, (caption, _) in enumerate(s.figures):
            b64 = pngs[(s.title, i)][1]
            body.append(f'<figure><img alt="{html.escape(caption or s.title)}" '
                        f'src="data:image/png;base64,{b64}"><figcaption>{html.escape(caption)}'
                        f"</figcaption></figure>")
        for caption, df in s.tables:
            if caption:
                body.append(f"<h3>{html.escape(caption)}</h3>")
            body.append(_html_table(df))
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>")


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")
