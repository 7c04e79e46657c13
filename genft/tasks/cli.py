"""`genft tasks` and `genft prompt`: see what tasks exist and exactly what the model will read."""

from __future__ import annotations

import argparse
import json

from genft.errors import GenftError
from genft.models import DEFAULT_MODEL, ModelSpec, add_chat_template_option, prompt_tokenizer
from genft.tasks.demos import SAMPLERS, make_sampler
from genft.tasks.prompts import model_prompt
from genft.tasks.registry import registry
from genft.tasks.schema import FORMATS


def add_include_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--include", action="append", default=[], metavar="DIR",
                        help="also load task YAMLs from DIR (repeatable)")


def register(sub) -> None:
    p = sub.add_parser("tasks", help="list the available tasks",
                       description="List every task: name, family, type, source and split sizes.")
    add_include_option(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--no-sizes", action="store_true",
                   help="skip split sizes (they need to read every dataset)")
    p.set_defaults(func=cmd_tasks)

    p = sub.add_parser("prompt", help="print the exact prompt text for a test item",
                       description="Print exactly what the model will read for one test item.")
    add_include_option(p)
    p.add_argument("task", help="a task name (see `genft tasks`)")
    p.add_argument("--shots", type=int, default=0, help="number of demonstrations")
    p.add_argument("--format", choices=FORMATS, default="prompt1", help="the prompt wording")
    p.add_argument("--index", type=int, default=0, help="which test item")
    p.add_argument("--sampler", choices=SAMPLERS, default="first", help="how demos are chosen")
    p.add_argument("--seed", type=int, default=0, help="seed of the random sampler")
    p.add_argument("--answer", action="store_true", help="also print the gold answer after the prompt")
    p.add_argument("--model", help="show the prompt as this model reads it: wrapped in its chat "
                                   "template with --chat-template, or when it is a checkpoint "
                                   "trained with one (default with --chat-template: smollm2-135m)")
    add_chat_template_option(p)
    p.set_defaults(func=cmd_prompt)


def _source_label(task) -> str:
    s = task.spec.source
    return {"hub": f"hub:{s.dataset}" + (f"/{s.config}" if s.config else ""),
            "package": f"package:{s.package}", "local": "local"}[s.kind]


def task_rows(tasks, with_sizes: bool) -> list[dict]:
    rows = []
    for t in tasks:
        row = {"name": t.name, "family": t.family, "type": t.type, "domain": t.spec.domain,
               "source": _source_label(t)}
        if with_sizes:
            try:
                row["sizes"] = t.sizes()
                row["dropped"] = t.dropped
            except GenftError as e:  # e.g. a Hub dataset while offline: list it anyway
                row["sizes"] = None
                row["unavailable"] = str(e)
        rows.append(row)
    return rows


def cmd_tasks(args) -> None:
    rows = task_rows(registry(tuple(args.include)).all(), with_sizes=not args.no_sizes)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'name':28} {'family':20} {'type':15} {'domain':6} {'source':36} sizes")
    for r in rows:
        sizes = ("unavailable offline" if r.get("unavailable") else
                 " ".join(f"{k}={v}" for k, v in (r.get("sizes") or {}).items()))
        duplicates = sum(n for why, n in (r.get("dropped") or {}).items()
                         if why.startswith("duplicate"))
        if duplicates:
            sizes += f" (duplicates removed: {duplicates})"
        print(f"{r['name']:28} {r['family']:20} {r['type']:15} {r['domain']:6} {r['source']:36} {sizes}")


def cmd_prompt(args) -> None:
    task = registry(tuple(args.include)).get(args.task)
    tests = task.records("test")
    if not 0 <= args.index < len(tests):
        raise GenftError(f"--index {args.index} is out of range: {task.name} has {len(tests)} test items")
    query = tests[args.index]
    sampler = make_sampler(args.sampler, task.records("fewshot"), args.shots, task.labels, args.seed)
    prompt = task.prompt(query, sampler.demos(query, args.index), args.format)
    if args.model or args.chat_template:
        spec = ModelSpec.of(args.model or DEFAULT_MODEL).replace(chat_template=args.chat_template)
        tokenizer, chat = prompt_tokenizer(spec)
        prompt = model_prompt(tokenizer, prompt, chat)
    print(prompt, end="")
    if args.answer:
        print(f"\n--- gold answer: {query['output']!r}")
    else:
        print()
