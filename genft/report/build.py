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
    "chance": "normalized score = (score − chance) / (perfect − chance) × 100, with chance = the "
              "classification test set's chance level (the rule applied is stated in the tidy "
              "table's docs; the value used per test set is listed under the normalized "
              "averages) and 0 for generation, perfect = 1 (every metric, BLEU included, is stored "
              "as a fraction in [0, 1]): 0 is chance level, 100 is perfect, negative is below chance",
    "raw": "normalized score = score / perfect × 100 (the config chose `normalize: raw`; chance "
           "level is not subtracted)",
}
SCORE_TEXT = ("Scores are each test set's primary metric (the first metric of its task YAML: "
              "accuracy for classification, ROUGE-L F for headline generation), averaged over "
              "training seeds, evaluated shots and prompt formats; final models of the largest "
              "training size.")
SPEC_TEXT = ("Format specialization rate (\"label answers\"): for a model trained on classification, "
             "the share of its predictions on generation test sets that answer with one of its "
             "training tasks' label words, as the tidy table stores it (`label_answer_rate`; "
             "where the store also has `label_answer_rate_strict`, both are shown: loose = the "
             "first word, after cutting at the first blank line and stripping punctuation and "
             "case, is a label word; strict = the whole normalized answer is one). The base "
             "model's rate uses the same words and is the reference. \"Empty answers\": the "
             "share of empty predictions.")


@dataclass
class Section:
    title: str
    text: str = ""
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    figures: list[tuple[str, plt.Figure]] = field(default_factory=list)
    collapsed: bool = False  # HTML: tables inside <details>, for reference material
    lead: bool = False  # the answer the page leads with: highlighted
    lead_lines: list[str] = field(default_factory=list)  # one plain sentence each, before the text


def build_report(out: str | Path) -> Path | None:
    """Write report.html and report.md into ``out``; return the HTML path, or None (and
    write nothing) while no cell has finished. A run still going gets a partial report."""
    out = Path(out)
    data = D.collect(out)
    if data.table.empty:
        return None
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
    sections = [Section("Overview", _overview(data, cfg)), _answer(data)]
    s = Section("In-domain, out-of-domain and cross-task summary",
                SCORE_TEXT + " Columns without “(raw)” are mean normalized scores over the test sets "
                "of that relation (" + NORMALIZE_TEXT[data.normalize] + "); “(raw)” columns average "
                "the raw primary metrics.")
    s.tables.append(("", D.relation_summary(data)))
    sections += [s, _heatmaps(data), _examples(data), _specialization(data), _kshot(data)]
    if (spread := _seeds(data)) is not None:
        sections.append(spread)
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
    sections += [_normalized(data), _training(data)]
    if (pc := _param_change(data)) is not None:
        sections.append(pc)
    sections.append(_metadata(data))
    return sections


def _answer(data: D.ReportData) -> Section:
    s = Section("Did fine-tuning hurt generalization?",
                "Change of each method's mean normalized score from the base model's in-context "
                "score on the same test sets, in points (0 = chance, 100 = perfect), per relation "
                "to the training tasks: below 0 means fine-tuning hurt. In brackets, where "
                "per-item scores allow it: the paired comparison on the same items (method − base "
                "in the raw primary metric, its standard error and bootstrap p-value).", lead=True)
    table = D.answer(data)
    if table.empty:
        s.text += " (No trained model has finished cells yet.)"
        return s
    s.tables.append(("", table))
    for rel in D.RELATIONS:
        said = [f"{r['model']} {r[rel].split(' ')[0]}" for _, r in table.iterrows() if isinstance(r[rel], str)]
        if said:
            s.lead_lines.append(f"{rel.capitalize()} change vs base (points): {', '.join(said)}.")
    return s


def _heatmaps(data: D.ReportData) -> Section:
    s = Section("Heatmaps: training tasks × test sets",
                SCORE_TEXT + " First figure: each method's score (the base model's in-context "
                "score on top), one colour scale per metric shared by every method; second: the "
                "difference from the base model on a diverging scale centred on 0.")
    s.figures += F.heatmaps(data)
    for group in data.groups:
        s.tables.append((f"trained on {group}", D.heat(data, group).reset_index()))
    return s


def _examples(data: D.ReportData) -> Section:
    s = Section("Example predictions on cross-task test sets",
                "The first stored items of each cross-task test set: the gold answer, the base "
                "model's answer and each method's answer to the same prompt (final models of the "
                "largest training size, first seed).")
    for group in data.groups:
        for cell, df in D.examples(data, group).items():
            s.tables.append((f"trained on {group}: {cell}", df))
    if not s.tables:
        s.text += " (No cross-task cells in this run.)"
    return s


def _specialization(data: D.ReportData) -> Section:
    s = Section("Format specialization", SPEC_TEXT)
    rates = D.rates(data)
    if rates.empty:
        s.text += " (No classification-trained model was tested on a generation task.)"
    else:
        s.tables.append(("", rates))
    return s


def _kshot(data: D.ReportData) -> Section:
    s = Section("k-shot curves", "Primary metric per number of in-context examples, per test set; "
                "solid lines prompt1, dashed prompt2; averaged over training seeds (x marks: each "
                "seed's own value, where a model has several). Bars: 95% "
                "interval (± 1.96 standard errors) where the store has standard errors.")
    for group in data.groups:
        if (fig := F.kshot_curves(data, group)) is not None:
            s.figures.append((f"trained on {group}", fig))
    return s


def _seeds(data: D.ReportData) -> Section | None:
    table = D.seed_spread(data)
    if table.empty:
        return None
    return Section("Spread over training seeds",
                   "Each trained model's value per training seed (the seed sets the data order, "
                   "FTICL's demos and LoRA's init), their mean, standard deviation (n − 1), min and "
                   "max: the primary score averaged over the evaluated shots and formats and, on "
                   "generation test sets of a classification-trained model, the label-answer and "
                   "empty-answer rates. A difference between methods smaller than this spread is "
                   "not a finding. Final models of the largest training size; the base model is "
                   "not trained and has one value.", tables=[("", table)])


def _normalized(data: D.ReportData) -> Section:
    norm = D.normalized_average(data)
    s = Section("Normalized average over held-out tasks",
                "Held-out tasks are the config's `held_out` test sets (minus the model's own "
                "training tasks) or, if it names none, the test sets of families the model was "
                "not trained on (cross-task). Per held-out test set, " + NORMALIZE_TEXT[data.normalize] + "; the "
                "table averages it over the held-out sets (equal weight per set), at each k every "
                "held-out set was evaluated with, and over all evaluated k; formats averaged. "
                "The chance level of each classification test set, as applied, is listed below.")
    if norm.empty:
        s.text += " (No held-out test sets in this run.)"
    else:
        s.tables.append(("", norm))
    if not (chance := D.chance_levels(data)).empty:
        s.tables.append(("chance level per classification test set", chance))
    return s


def _training(data: D.ReportData) -> Section:
    s = Section("Training", "Loss per optimizer step of every training job (from its "
                "train_log.jsonl; ProMoT's stage-1 dev loss as open diamonds) and each job's "
                "hyperparameters (the settings in which jobs differ are columns; truncation counts "
                "— training examples shortened by dropping whole demos, or skipped because the "
                "answer did not fit — where the trainer stored them).")
    if (fig := F.loss_curves(D.train_logs(data))) is not None:
        s.figures.append(("training loss per step", fig))
    if not (jobs := D.jobs(data)).empty:
        s.tables.append(("hyperparameters per job", jobs))
    if not s.figures and not s.tables:
        s.text += " (No training job has finished yet.)"
    return s


def _param_change(data: D.ReportData) -> Section | None:
    pc, layers = D.param_changes(data), D.per_layer(data)
    if pc.empty and layers.empty:
        return None
    s = Section("Parameter change from the base model",
                "From genft.training.param_change: mean absolute change of the weights, relative "
                "change (sum |Δ| / sum |base weights|) and the largest change, overall and per "
                "module type (q_proj, down_proj, …; LoRA merged first; a soft prompt is not a "
                "weight), and per layer where stored.", collapsed=True)
    if (fig := F.per_layer(layers)) is not None:
        s.figures.append(("relative change per layer", fig))
    if not pc.empty:
        s.tables.append(("", pc))
    return s


def _overview(data: D.ReportData, cfg: dict) -> str:
    t = data.table
    models = t[["model", "train_tasks"]].drop_duplicates() if not t.empty else t
    parts = [cfg.get("description", "").strip(),
             f"Model {cfg.get('model', '?')}; trained on {', '.join(cfg.get('train_tasks', []))} "
             f"with {', '.join(cfg.get('methods', {})) or 'no methods'}; "
             f"{t['cell_key'].nunique() if not t.empty else 0} evaluation cells of "
             f"{len(models)} models on {t['test_task'].nunique() if not t.empty else 0} test sets. "
             f"The base model's in-context results are the reference row."]
    if data.running:
        parts.append(f"Partial report: run {data.runs[-1]['id']} is still going (or was killed); "
                     f"the cells finished so far are shown.")
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
    numeric = [pd.api.types.is_numeric_dtype(df[c]) for c in df.columns]
    opening = ['<td class="num">' if n else "<td>" for n in numeric]
    body = "".join("<tr>" + "".join(f"{o}{html.escape(v)}</td>" for v, o in zip(r, opening))
                   + "</tr>" for r in _rows(df))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _markdown(title: str, sections: list[Section], pngs: dict) -> str:
    out = [f"# {title}", ""]
    for s in sections:
        out += [f"## {s.title}", "", *(f"**{line}**\n" for line in s.lead_lines), s.text, ""]
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
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f0f0f0} td.num{text-align:right;font-variant-numeric:tabular-nums}
section.answer{background:#f6f8fc;border-left:4px solid #3465a4;padding:.2em 1em .6em;
margin-top:1.2em} section.answer h2{margin-top:.6em} section.answer table{font-size:1em}
details summary{cursor:pointer;color:#225;margin:.4em 0}
img{max-width:100%;margin:.5em 0}
figcaption{font-size:.85em;color:#555}
nav a{margin-right:1em;font-size:.9em}
"""


def _html(title: str, sections: list[Section], pngs: dict) -> str:
    nav = "".join(f'<a href="#{_slug(s.title)}">{html.escape(s.title)}</a>' for s in sections)
    body = [f"<h1>{html.escape(title)}</h1>", f"<nav>{nav}</nav>",
            *(_html_section(s, pngs) for s in sections)]
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>")


def _html_section(s: Section, pngs: dict) -> str:
    css = ' class="answer"' if s.lead else ""
    body = [f'<section id="{_slug(s.title)}"{css}>', f"<h2>{html.escape(s.title)}</h2>"]
    body += [f"<p>{html.escape(p)}</p>" for p in s.lead_lines]
    body.append(f'<p class="note">{html.escape(s.text)}</p>')
    for i, (caption, _) in enumerate(s.figures):
        b64 = pngs[(s.title, i)][1]
        body.append(f'<figure><img alt="{html.escape(caption or s.title)}" '
                    f'src="data:image/png;base64,{b64}"><figcaption>{html.escape(caption)}'
                    f"</figcaption></figure>")
    tables = []
    for caption, df in s.tables:
        if caption:
            tables.append(f"<h3>{html.escape(caption)}</h3>")
        tables.append(_html_table(df))
    if s.collapsed and tables:
        tables = ["<details><summary>show the tables</summary>", *tables, "</details>"]
    return "".join(body + tables) + "</section>"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")
