"""Evaluation speed, side by side: genft's fast path vs lm-evaluation-harness vs genft's reference path.

    python bench/eval_speed.py            # both workloads, all three systems
    python bench/eval_speed.py --quick    # 40 / 10 items, no reference (a smoke test)

Workloads (the default model, fp32, CPU):
  cls  tweet_sentiment, 4 shots (first-k), Prompt-1, 250 items, label log-likelihood, batch 8
  gen  bbc_headline,    1 shot  (first-k), Prompt-1,  50 items, greedy, ≤30 new tokens, batch 8

Every system runs in its own child process (so peak memory is its own), one after the other,
workload by workload, in this one invocation. lm-eval (HF backend, same weights, same k, same batch
size) runs offline on a task YAML + local JSONL written here to a temp dir; its rendered contexts and
continuations are checked to be byte-identical to genft's prompts before any number is printed.
Reported per system: wall time of the whole process (imports, model load, everything) and of the
evaluation alone, items/s for both, peak RSS, the score, and predictions that differ from genft.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKLOADS = {
    "cls": {"task": "tweet_sentiment", "shots": 4, "format": "prompt1", "limit": 250, "metric": "accuracy"},
    "gen": {"task": "bbc_headline", "shots": 1, "format": "prompt1", "limit": 50, "metric": "rouge_l"},
}
SYSTEMS = ("genft", "lm-eval", "reference")
BATCH = 8

LMEVAL_UTILS = '''
from rouge_score import rouge_scorer

_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def process_results(doc, results):
    return {"rouge_l": _SCORER.score(doc["output"], results[0].strip())["rougeL"].fmeasure}
'''


# ------------------------------------------------------------------ workers (child processes)


def run_genft(work: dict, reference: bool) -> dict:
    from genft.evaluation import evaluate_cell
    from genft.models import load_model
    from genft.tasks import registry

    loaded = load_model()
    task = registry().get(work["task"])
    start = time.perf_counter()
    result = evaluate_cell(loaded, task, work["shots"], work["format"], limit=work["limit"],
                           batch_size=BATCH, progress=False,
                           backend="reference" if reference else "fast")
    seconds = time.perf_counter() - start
    return {"eval_seconds": seconds, "score": result.metrics[work["metric"]],
            "predictions": [i["prediction"] for i in result.items],
            "scores": [i.get("scores") for i in result.items]}


def write_lmeval_task(work: dict, folder: Path) -> str:
    """A task YAML + local JSONL that make lm-eval render exactly genft's prompt and continuations:
    demos are `prompt + " " + answer`, joined by a blank line, then the query's prompt."""
    from genft.tasks import registry

    task = registry().get(work["task"])
    template = task.spec.template(work["format"])
    folder.mkdir(parents=True, exist_ok=True)
    name = f"genft_bench_{work['task']}"
    for split, records in (("test", task.records("test")[: work["limit"]]),
                           ("fewshot", task.records("fewshot"))):
        with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for r in records:
                row = {**r}
                if task.labels:
                    row["gold"] = task.labels.index(r["output"])
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    lines = [
        f"task: {name}",
        "dataset_path: json",
        "dataset_kwargs:",
        "  data_files:",
        f"    test: {json.dumps(str(folder / 'test.jsonl'))}",
        f"    fewshot: {json.dumps(str(folder / 'fewshot.jsonl'))}",
        "test_split: test",
        "fewshot_split: fewshot",
        "fewshot_config:",
        "  sampler: first_n",
        f"doc_to_text: {json.dumps(template)}",
        'target_delimiter: " "',
        'fewshot_delimiter: "\\n\\n"',
    ]
    if task.labels:
        lines += ["output_type: multiple_choice", "doc_to_target: gold",
                  f"doc_to_choice: {json.dumps(task.labels)}",
                  "metric_list:", "  - metric: acc", "    aggregation: mean", "    higher_is_better: true"]
    else:
        (folder / "utils.py").write_text(LMEVAL_UTILS)
        lines += ["output_type: generate_until", 'doc_to_target: "{{output}}"',
                  "generation_kwargs:", '  until: ["\\n\\n"]', "  do_sample: false",
                  f"  max_gen_toks: {task.spec.max_new_tokens}",
                  "process_results: !function utils.process_results",
                  "metric_list:", "  - metric: rouge_l", "    aggregation: mean",
                  "    higher_is_better: true"]
    (folder / f"{name}.yaml").write_text("\n".join(lines) + "\n")
    return name


def run_lmeval(work: dict, folder: Path) -> dict:
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from genft.models import DEFAULT_MODEL, resolve

    name = write_lmeval_task(work, folder)
    lm = HFLM(pretrained=resolve(DEFAULT_MODEL), dtype=torch.float32, batch_size=BATCH, device="cpu")
    start = time.perf_counter()
    task = TaskManager(include_path=str(folder)).load([name])["tasks"]
    task = next(iter(task.values()))
    out = simple_evaluate(model=lm, tasks=[task], num_fewshot=work["shots"], log_samples=True)
    seconds = time.perf_counter() - start
    samples = sorted(out["samples"][name], key=lambda s: s["doc_id"])
    metric = "acc" if work["metric"] == "accuracy" else "rouge_l"
    # the strings lm-eval builds its requests from (its sample log normalizes some whitespace)
    docs = list(task.test_docs())
    result = {"eval_seconds": seconds, "score": out["results"][name][f"{metric},none"],
              "contexts": [task.fewshot_context(d, num_fewshot=work["shots"]) for d in docs]}
    if metric == "acc":
        result["continuations"] = [[task.config.target_delimiter + c for c in task.doc_to_choice(d)]
                                   for d in docs]
        result["scores"] = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
        from genft.tasks import registry

        words = registry().get(work["task"]).labels
        result["predictions"] = [words[max(range(len(sc)), key=lambda j: sc[j])] for sc in result["scores"]]
    else:
        result["predictions"] = [s["filtered_resps"][0].split("\n\n")[0].strip() for s in samples]
    return result


def worker(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    work = {**WORKLOADS[args.workload]}
    if args.limit:
        work["limit"] = args.limit
    if args.system == "lm-eval":
        result = run_lmeval(work, Path(args.tmp) / args.workload)
    else:
        result = run_genft(work, reference=args.system == "reference")
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["threads"] = torch.get_num_threads()
    Path(args.result).write_text(json.dumps(result))


# ------------------------------------------------------------------ driver


def genft_prompts(work: dict) -> tuple[list[str], list[list[str]]]:
    from genft.tasks import registry
    from genft.tasks.prompts import separator

    task = registry().get(work["task"])
    tests, demos = task.records("test")[: work["limit"]], task.records("fewshot")[: work["shots"]]
    prompts = [task.prompt(q, demos, work["format"]) for q in tests]
    return prompts, [[separator(p) + w for w in task.labels] for p in prompts]


def run_child(system: str, workload: str, limit: int | None, tmp: str, threads: int | None) -> dict:
    result_file = Path(tmp) / f"{system}-{workload}.json"
    cmd = [sys.executable, __file__, "--worker", "--system", system, "--workload", workload,
           "--tmp", tmp, "--result", str(result_file)]
    if limit:
        cmd += ["--limit", str(limit)]
    if threads:
        cmd += ["--threads", str(threads)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_CACHE": str(Path(tmp) / "hf_datasets")}
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{system} on {workload} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(result_file.read_text())
    result["wall_seconds"] = wall
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", default="cls,gen")
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--quick", action="store_true", help="40 classification / 10 generation items, "
                   "no reference (checks the harness, not the targets)")
    p.add_argument("--threads", type=int, help="torch threads in every child (default: torch's)")
    p.add_argument("--note", default="", help="printed with the results (e.g. 'machine shared')")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--system", help=argparse.SUPPRESS)
    p.add_argument("--workload", help=argparse.SUPPRESS)
    p.add_argument("--limit", type=int, help=argparse.SUPPRESS)
    p.add_argument("--tmp", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    systems = [s for s in args.systems.split(",") if s]
    if args.quick:
        systems = [s for s in systems if s != "reference"]
    load = os.getloadavg()
    print(f"# genft eval speed — {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average at start {load[0]:.1f}; {args.note}".rstrip("; "))
    rows = []
    with tempfile.TemporaryDirectory(prefix="genft-eval-bench-") as tmp:
        for workload in args.workloads.split(","):
            work = {**WORKLOADS[workload]}
            limit = ({"cls": 40, "gen": 10}[workload] if args.quick else None)
            if limit:
                work["limit"] = limit
            results = {}
            for system in systems:
                print(f"running {system} on {workload} ...", file=sys.stderr, flush=True)
                results[system] = run_child(system, workload, limit, tmp, args.threads)
            if "lm-eval" in results:
                check_identical_prompts(work, results["lm-eval"])
            rows += report_rows(workload, work, results)
        print_table(rows)
        print(f"load average at end {os.getloadavg()[0]:.1f}")


def check_identical_prompts(work: dict, lmeval: dict) -> None:
    prompts, conts = genft_prompts(work)
    if lmeval["contexts"] != prompts:
        bad = next(i for i, (a, b) in enumerate(zip(lmeval["contexts"], prompts)) if a != b)
        sys.exit(f"lm-eval's prompt {bad} differs from genft's:\n{lmeval['contexts'][bad]!r}\n{prompts[bad]!r}")
    if "continuations" in lmeval and lmeval["continuations"] != conts:
        sys.exit("lm-eval's continuations differ from genft's")


def report_rows(workload: str, work: dict, results: dict) -> list[dict]:
    n = work["limit"]
    base = results.get("genft")
    rows = []
    for system, r in results.items():
        differ = "-" if base is None or system == "genft" else \
            sum(a != b for a, b in zip(r["predictions"], base["predictions"]))
        max_diff = None
        if base and system != "genft" and r.get("scores") and base["scores"][0] is not None:
            max_diff = max(abs(x - y) for a, b in zip(r["scores"], base["scores"])
                           for x, y in zip(a if isinstance(a, list) else a.values(), b.values()))
        rows.append({"workload": f"{workload} ({work['task']}, {work['shots']}-shot, {n} items)",
                     "system": system, "wall_s": r["wall_seconds"], "eval_s": r["eval_seconds"],
                     "items_s_wall": n / r["wall_seconds"], "items_s_eval": n / r["eval_seconds"],
                     "peak_mb": r["peak_rss_mb"], "metric": work["metric"], "score": r["score"],
                     "differ": differ, "max_logprob_diff": max_diff, "threads": r["threads"]})
    if base and "lm-eval" in results:
        lm = results["lm-eval"]
        rows.append({"workload": rows[0]["workload"], "system": "genft / lm-eval",
                     "wall_s": lm["wall_seconds"] / base["wall_seconds"],
                     "eval_s": lm["eval_seconds"] / base["eval_seconds"], "ratio": True,
                     "peak_mb": base["peak_rss_mb"] / lm["peak_rss_mb"]})
    return rows


def print_table(rows: list[dict]) -> None:
    print("\n| workload | system | items/s (whole process) | items/s (evaluation) | wall s | eval s "
          "| peak RSS MB | score | predictions ≠ genft | max |Δ log-prob| |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r.get("ratio"):
            print(f"| {r['workload']} | **genft / lm-eval** | **{r['wall_s']:.2f}×** | **{r['eval_s']:.2f}×** "
                  f"| | | {r['peak_mb']:.2f}× | | | |")
            continue
        diff = "" if r["max_logprob_diff"] is None else f"{r['max_logprob_diff']:.1e}"
        print(f"| {r['workload']} | {r['system']} | {r['items_s_wall']:.2f} | {r['items_s_eval']:.2f} "
              f"| {r['wall_s']:.1f} | {r['eval_s']:.1f} | {r['peak_mb']:.0f} "
              f"| {r['metric']} {r['score']:.4f} | {r['differ']} | {diff} |")


if __name__ == "__main__":
    main()
