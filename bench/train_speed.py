"""genft's training loop vs a plain transformers Trainer (+ PEFT for LoRA), side by side.

All runs train the same model on the same examples (tweet_sentiment, prompt1,
loss on the answer tokens only) with the same batch size, steps, learning rate,
constant schedule, grad clipping 1.0, AdamW (the Trainer's default in
transformers 5 is already the fused AdamW) and, for LoRA, the same adapter init.
The Trainer runs twice:

* ``trainer``: fed genft's batches (genft's length-sorted micro-batches,
  flattened, through a sequential sampler). Both see identical data step by
  step, so their losses must agree: this isolates the loop itself.
* ``trainer-own``: the Trainer as a user runs it, with its default random
  sampler (more padding per batch; a different data order, hence other losses). Every run is its own child process, so peak memory
(max RSS) is per run; runs alternate genft / Trainer to spread machine noise.

Reported per run: tokens/s over the timed steps (step 1 is warm-up and not
timed; tokens are the real, non-padding tokens), peak RSS, the answer loss of
the trained model on 64 held-out dev items, computed by the same function for
both (genft's loss, tested equal to transformers' in tests/test_train_data.py),
and the largest per-step difference between the two training-loss curves.

    python bench/train_speed.py                      # ft and lora, 12 steps, batch 8
    python bench/train_speed.py --methods ft --steps 20 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

MODEL = "smollm2-135m"
TASK = "tweet_sentiment"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="ft,lora")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--train-size", type=int, default=512)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--child", nargs=2, metavar=("IMPL", "METHOD"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        impl, method = args.child
        result = {"genft": run_genft, "trainer": run_trainer,
                  "trainer-own": lambda m, a: run_trainer(m, a, own_order=True)}[impl](method, args)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("RESULT " + json.dumps(result), flush=True)
        return
    rows = []
    for method in args.methods.split(","):
        for _ in range(args.repeats):
            for impl in ("genft", "trainer", "trainer-own"):
                rows.append({"method": method, "impl": impl, **child(impl, method, args)})
                print(json.dumps(rows[-1]), flush=True)
    print_table(rows, args)


def child(impl: str, method: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", impl, method, "--steps", str(args.steps),
           "--batch-size", str(args.batch_size), "--train-size", str(args.train_size)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.exit(f"{impl} {method} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


# ---------------------------------------------------------------- shared pieces


def lr_for(method: str) -> float:
    return {"ft": 2e-4, "lora": 1e-3}[method]


def genft_batch_order(train, batch_size: int, steps: int) -> list[list[int]]:
    """The batches genft's loop takes in its first ``steps`` steps (seed 0, no grad accumulation)."""
    from genft.training.data import micro_batches

    order, epoch = [], 0
    while len(order) < steps:
        order += micro_batches(train, batch_size, seed=0, epoch=epoch)
        epoch += 1
    if any(len(b) != batch_size for b in order[:steps]):
        sys.exit("--train-size must be a multiple of --batch-size so that every batch is full")
    return order[:steps]


def examples_and_dev(tokenizer, train_size: int):
    from genft.tasks import registry
    from genft.training.data import build_examples, train_pool

    task = registry().get(TASK)
    train = build_examples([task], tokenizer, [train_pool(task, train_size)], [0], 512, seed=0)
    dev = build_examples([task], tokenizer, [task.records("dev")[:64]], [0], 512, seed=0)
    return train, dev


def dev_loss(model, dev, pad_id) -> float:
    """Mean answer-token loss on held-out items, the same function for both runs."""
    import torch

    from genft.training.data import collate
    from genft.training.methods import PromptedLM

    module = PromptedLM(model).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for b in range(0, len(dev), 16):
            batch = collate(dev[b:b + 16], pad_id)
            total += module(**batch).item()
            count += len(batch["loss_targets"])
    return total / count


# ---------------------------------------------------------------- genft


def run_genft(method: str, args) -> dict:
    import pandas as pd

    from genft.models import load_model
    from genft.training import TrainConfig, train

    loaded = load_model(MODEL)
    _, dev = examples_and_dev(loaded.tokenizer, args.train_size)
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(model=MODEL, tasks=[TASK], method=method, train_size=args.train_size,
                          steps=args.steps, batch_size=args.batch_size, lr=lr_for(method), seed=0,
                          out=f"{out}/run")
        train(cfg, progress=False, loaded=loaded)
        log = pd.read_json(f"{out}/run/train_log.jsonl", lines=True)
    timed = log[log["step"] > 1]
    model = loaded.model.merge_and_unload() if hasattr(loaded.model, "merge_and_unload") else loaded.model
    return {"tokens_per_s": timed["tokens"].sum() / timed["seconds"].sum(),
            "train_loss_last5": log["loss"].tail(5).mean(), "losses": log["loss"].tolist(),
            "dev_loss": dev_loss(model, dev, loaded.tokenizer.pad_token_id)}


# ---------------------------------------------------------------- plain Trainer


def run_trainer(method: str, args, own_order: bool = False) -> dict:
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments
    from transformers.utils import logging as hf_logging

    from genft.models import load_model

    hf_logging.disable_progress_bar()
    loaded = load_model(MODEL)
    model, tok = loaded.model, loaded.tokenizer
    train_examples, dev = examples_and_dev(tok, args.train_size)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(0)  # genft seeds its adapters' init the same way
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                                 target_modules=["q_proj", "v_proj"],
                                                 task_type="CAUSAL_LM"))
    if own_order:
        examples = train_examples
    else:
        examples = [train_examples[i] for batch in genft_batch_order(train_examples, args.batch_size,
                                                                    args.steps) for i in batch]
    data = [{"input_ids": e.input_ids, "labels": [-100] * e.loss_start + e.input_ids[e.loss_start:]}
            for e in examples]
    batch_tokens: list[int] = []

    def collate(rows):
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), tok.pad_token_id)
        labels = torch.full((len(rows), width), -100)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(r["input_ids"]), torch.tensor(r["labels"]), 1
        batch_tokens.append(int(mask.sum()))
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds, self.losses = [], []

        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.seconds.append(time.perf_counter() - self.t0)

        def on_log(self, _args, _state, _control, logs=None, **k):
            if logs and "loss" in logs:
                self.losses.append(logs["loss"])

    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(output_dir=out, per_device_train_batch_size=args.batch_size,
                                  max_steps=args.steps, learning_rate=lr_for(method),
                                  lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                                  max_grad_norm=1.0, logging_steps=1, report_to=[],
                                  save_strategy="no", seed=0, use_cpu=True,
                                  train_sampling_strategy="random" if own_order else "sequential",
                                  disable_tqdm=True, remove_unused_columns=False)
        Trainer(model=model, args=targs, train_dataset=data, data_collator=collate,
                callbacks=[timer]).train()
    model = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    tokens = batch_tokens[1:args.steps]
    return {"tokens_per_s": sum(tokens) / sum(timer.seconds[1:]),
            "train_loss_last5": statistics.mean(timer.losses[-5:]), "losses": timer.losses,
            "dev_loss": dev_loss(model, dev, tok.pad_token_id), "optim": targs.optim}


# ---------------------------------------------------------------- report


def print_table(rows: list[dict], args) -> None:
    print(f"\n{args.steps} steps, batch {args.batch_size}, {TASK} (train draw {args.train_size}), "
          f"{MODEL} fp32, torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}\n")
    print("| method | impl | tokens/s | peak RSS MB | dev loss | train loss (last 5) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['impl']} | {r['tokens_per_s']:.0f} | {r['peak_rss_mb']:.0f} | "
              f"{r['dev_loss']:.4f} | {r['train_loss_last5']:.4f} |")
    print("\n| method | vs | genft / Trainer tokens/s | genft − Trainer peak RSS MB | dev loss genft vs "
          "Trainer | max per-step train-loss difference |")
    print("|---|---|---|---|---|---|")
    for method in dict.fromkeys(r["method"] for r in rows):
        g = [r for r in rows if r["method"] == method and r["impl"] == "genft"]
        for impl, label in (("trainer", "Trainer, genft's batches"), ("trainer-own", "Trainer, own order")):
            t = [r for r in rows if r["method"] == method and r["impl"] == impl]
            speed = median(g, "tokens_per_s") / median(t, "tokens_per_s")
            mem = median(g, "peak_rss_mb") - median(t, "peak_rss_mb")
            loss = f"{median(g, 'dev_loss'):.4f} vs {median(t, 'dev_loss'):.4f}"
            gap = max(abs(a - b) for x, y in zip(g, t) for a, b in zip(x["losses"], y["losses"]))
            print(f"| {method} | {label} | {speed:.2f}x | {mem:+.0f} | {loss} | {gap:.4f} |")


def median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)

if __name__ == "__main__":
    main()
