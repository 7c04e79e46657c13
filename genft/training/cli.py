"""`genft train` and `genft diff`."""

from __future__ import annotations

import json
from typing import get_args

from genft import console
from genft.cliutil import renamed
from genft.models import ModelSpec, add_model_options, model_options
from genft.training.config import TRACKERS, TrainConfig
from genft.training.method_registry import method_names

# CLI flag -> TrainConfig field, for the options that map one to one.
_PASSTHROUGH = ["method", "train_size", "epochs", "steps", "lr", "lr_schedule",
                "warmup_steps", "warmup_ratio", "report_to", "weight_decay", "max_grad_norm", "batch_size", "grad_accum",
                "max_length", "max_truncated_share", "shots", "seed", "save_every", "prompt_length", "prompt_init",
                "prompt_init_text", "stage1_steps", "stage1_lr", "stage1_eval_every", "dev_size",
                "stage2", "promot_shots", "lora_r", "lora_alpha", "lora_dropout",
                "mixed_precision", "gradient_checkpointing"]


def register(sub) -> None:
    p = sub.add_parser(
        "train", help="fine-tune a model (FT, FTICL, LoRA, prompt tuning, ProMoT, ...)",
        description="Fine-tune a model on one or more tasks. Inputs use the task's prompt1 format; "
                    "the loss covers the answer (and its blank-line terminator) only. Runs "
                    "data-parallel under torchrun, srun or `accelerate launch --multi_gpu`. "
                    "Writes OUT/final (a genft checkpoint).")
    p.add_argument("--model", default=TrainConfig.model_fields["model"].default.name, metavar="NAME",
                   help="model alias, local directory or Hub id")
    p.add_argument("--tasks", required=True, metavar="T1,T2|family:F",
                   help="task name(s) to train on, comma-separated (family:NAME selects a family)")
    renamed(p, "--task", "--tasks")
    p.add_argument("--include", action="append", default=[], metavar="DIR",
                   help="also load task YAMLs from DIR (repeatable)")
    p.add_argument("--method", default="ft", metavar="|".join(method_names()),
                   help="training method (see docs/training.md)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output directory (new, or this run's for --resume)")
    p.add_argument("--resume", action="store_true", help="continue this run from its last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    console.add_options(p)
    p.add_argument("--report-to", default="none", metavar="|".join(TRACKERS + ("none",)),
                   help="experiment trackers, comma-separated (writing under OUT/trackers/)")
    g = p.add_argument_group("data and schedule")
    g.add_argument("--train-size", type=int, help="training items per task (default: all)")
    g.add_argument("--epochs", type=float, help="passes over the training set (give this or --steps)")
    g.add_argument("--steps", type=int, help="optimizer steps (give this or --epochs)")
    g.add_argument("--lr", type=float, help="learning rate (default depends on the method)")
    g.add_argument("--lr-schedule", choices=get_args(TrainConfig.model_fields["lr_schedule"].annotation),
                   default="constant", help="learning rate over each stage's steps "
                                            "(transformers.get_scheduler; after the warmup)")
    g.add_argument("--warmup-steps", type=int, default=0,
                   help="steps of linear warmup from 0 to --lr")
    g.add_argument("--warmup-ratio", type=float, default=0.0,
                   help="warmup over this share of each stage's steps (instead of --warmup-steps)")
    g.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    g.add_argument("--max-grad-norm", type=float, default=1.0,
                   help="clip the gradient norm to this")
    g.add_argument("--batch-size", type=int, default=8, help="per device")
    g.add_argument("--grad-accum", type=int, default=1,
                   help="batches accumulated per optimizer step")
    g.add_argument("--max-length", type=int, default=512,
                   help="tokens per training example (longer ones lose demos, then prompt tokens)")
    g.add_argument("--max-truncated-share", type=float, default=0.1,
                   help="refuse when more than this share of examples would be shortened or skipped")
    g.add_argument("--shots", type=int, help="FTICL demos per input (default: the task's fticl_shots)")
    g.add_argument("--seed", type=int, default=0, help="seed of the data order and initialization")
    g.add_argument("--save-every", type=int, help="intermediate checkpoint every N steps")
    g.add_argument("--mixed-precision", choices=["no", "bf16"], default="no",
                   help="bf16: compute in bfloat16, keep float32 weights (GPU)")
    g.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute activations in the backward pass: less memory, slower")
    g = p.add_argument_group("soft prompts and ProMoT")
    g.add_argument("--prompt-length", type=int, default=20, help="virtual tokens per soft prompt")
    g.add_argument("--prompt-init", choices=["text", "vocab", "random"], default="text",
                   help="soft prompt initialization: the embeddings of a text, of random "
                        "vocabulary tokens, or random values")
    g.add_argument("--prompt-init-text",
                   help="the text of --prompt-init text (default: the task's description)")
    g.add_argument("--stage1-steps", type=int, default=40, help="ProMoT stage 1 (soft prompt) steps")
    g.add_argument("--stage1-lr", type=float, default=3e-2, help="ProMoT stage 1 learning rate")
    g.add_argument("--stage1-eval-every", type=int,
                   help="ProMoT: keep the best stage-1 prompt on the dev set, checked every N "
                        "steps (default: stage1 steps // 4)")
    g.add_argument("--dev-size", type=int, default=32,
                   help="dev items per task for keeping the best prompt")
    g.add_argument("--stage2", choices=["full", "lora"], default="full",
                   help="ProMoT stage 2 trains the full model or a LoRA adapter")
    g.add_argument("--promot-shots", type=int, default=0,
                   help="demos in every stage-2 input (1 = ProMoT + 1-shot)")
    g = p.add_argument_group("LoRA")
    g.add_argument("--lora-r", type=int, default=8, help="LoRA rank")
    g.add_argument("--lora-alpha", type=int, default=16, help="LoRA scaling numerator")
    g.add_argument("--lora-dropout", type=float, default=0.0, help="dropout on the LoRA input")
    g.add_argument("--lora-targets", default="q_proj,v_proj", help="comma-separated module names")
    add_model_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("diff", help="how much a checkpoint's weights moved from its base model",
                       description="Mean absolute and relative parameter change, per module type "
                                   "and overall.")
    p.add_argument("base", help="the base model")
    p.add_argument("checkpoint", help="a genft checkpoint (e.g. OUT/final)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--per-layer", action="store_true",
                   help="also print mean |Δ| per layer × module type")
    p.set_defaults(func=cmd_diff)


def config_from_args(args) -> TrainConfig:
    fields = {k: getattr(args, k) for k in _PASSTHROUGH}
    model = ModelSpec.of(args.model).replace(**model_options(args))
    return TrainConfig(**fields, model=model, out=args.out, include=args.include,
                       tasks=[t.strip() for t in args.tasks.split(",") if t.strip()],
                       lora_targets=[t.strip() for t in args.lora_targets.split(",") if t.strip()])


def cmd_train(args) -> int:
    from genft.training.loop import train

    from genft import distributed

    progress = console.setup(args)
    final = train(config_from_args(args), progress=progress, resume=args.resume)
    if distributed.is_main():
        print(final)
    return 0


def cmd_diff(args) -> int:
    from genft.training.diff import format_layer_table, format_table, param_change

    stats = param_change(args.base, args.checkpoint)
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    print(format_table(stats))
    if args.per_layer:
        print()
        print(format_layer_table(stats))
    return 0
