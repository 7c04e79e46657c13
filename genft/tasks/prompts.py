"""Prompt text: templates, the answer separator, demos and the k-shot prompt.

One rule, used identically by training and evaluation (tested in tests/test_prompts.py):

* **Separator.** The answer follows the prompt after exactly one space. A rendered
  prompt never ends in spaces or tabs: they are stripped, because the space belongs to
  the answer (NLI Prompt-2 "The relation is " renders as "The relation is", and the
  model reads/learns " entailment"). Only a prompt ending in a newline gets no space.
  The study's code used no space after the colon; with BPE tokenizers like SmolLM2's
  and Llama's, " positive" is one word token while ":positive" splits unnaturally.
  With this rule ``tokens(prompt)`` is a prefix of
  ``tokens(prompt + target_text(prompt, answer))``, which training's loss mask and
  evaluation's scores rely on (tested for every built-in task). A prompt ending in a
  space broke it: "is " + "x" tokenizes as "is" + " x", not "is" + " " + "x".
* **Terminator.** Every answer a model sees or learns ends with a blank line
  (``"\\n\\n"``); generation is cut at the first blank line. A demo is therefore
  ``prompt(demo) + separator + answer + "\\n\\n"``, and k demos are concatenated
  before ``prompt(query)``.
* **Chat template** (a model with ``chat_template: true``; :func:`model_prompt`, the one
  function training and evaluation both call). The whole k-shot prompt above, unchanged,
  is one user message, rendered by the tokenizer's own chat template with the generation
  prompt (the assistant header) at its end; the answer continues right after that header.
  The separator rule applies to the rendered text as to any prompt: the common headers
  (ChatML's ``<|im_start|>assistant\\n``, Llama 3's) end in a newline, so no space comes
  before the answer. The terminator is unchanged: training teaches answer + blank line
  inside the assistant turn, and generation is cut at the first blank line or stops at the
  tokenizer's end-of-sequence token (a chat model's end of turn: SmolLM2's ``<|im_end|>``).
  Demos stay inside the user message (not as earlier turns), so with first-k demos every
  wrapped prompt still starts with the same text and the evaluator's shared token prefix
  keeps them (tests/test_chat_template.py checks the cache stays exact).
"""

from __future__ import annotations

from collections.abc import Sequence

from jinja2 import StrictUndefined, TemplateSyntaxError, meta, nodes
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from genft.errors import GenftError

TERMINATOR = "\n\n"

# Immutable sandbox: templates can read fields but reach no Python internals.
# keep_trailing_newline: a prompt's exact text is the study's, to the last character.
_ENV = ImmutableSandboxedEnvironment(
    undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False
)
_ENV.globals.clear()  # no range/cycler/namespace…: a template sees the record's fields and nothing else


def check_template(template: str, fields: set[str], where: str) -> None:
    """Fail early (when the task file loads) on syntax errors, fields the task does not
    define, and any reach for Python internals (an attribute or key starting with "_").
    The sandbox refuses the latter at render time too; this names the file up front."""
    try:
        ast = _ENV.parse(template)
    except TemplateSyntaxError as e:
        raise GenftError(f"{where}: template syntax error on line {e.lineno}: {e.message}") from None
    reached = {_reached_name(n) for n in ast.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter))}
    internal = sorted((n for n in reached if n is not None and n.startswith(("_", "<"))),
                      key=lambda n: (template.find(n), n))
    if internal:
        raise GenftError(f"{where}: template refused by the sandbox: it reaches for Python internals "
                         f"({', '.join(internal)}); templates may only read fields")
    used = meta.find_undeclared_variables(ast)
    unknown = sorted(used - fields)
    if unknown:
        raise GenftError(
            f"{where}: template uses undefined field(s) {unknown}; defined fields: {sorted(fields)}"
        )


def _reached_name(node: nodes.Node) -> str | None:
    """The attribute name an expression reads: ``x.name``, ``x["name"]``, ``x|attr("name")``."""
    if isinstance(node, nodes.Getattr):
        return node.attr
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
        return str(node.arg.value)
    if isinstance(node, nodes.Filter) and node.name == "attr" and node.args:
        arg = node.args[0]
        return str(arg.value) if isinstance(arg, nodes.Const) else "<computed attr() name>"
    return None


def render(template: str, record: dict) -> str:
    """The prompt text for one record (trailing spaces stripped: see the separator rule)."""
    try:
        return _ENV.from_string(template).render(**record).rstrip(" \t")
    except SecurityError as e:
        raise GenftError(f"template refused by the sandbox: {e}") from None
    except UndefinedError as e:
        raise GenftError(f"template: {e.message}") from None


def separator(prompt: str) -> str:
    """What goes between a prompt and its answer (see the module docstring)."""
    return "" if not prompt or prompt[-1] in "\r\n" else " "


def target_text(prompt: str, answer: str) -> str:
    """The text a model should produce after ``prompt``: separator, answer, terminator."""
    return separator(prompt) + answer + TERMINATOR


def cut_generation(text: str) -> str:
    """A generated answer ends at the first blank line (the terminator)."""
    return text.split(TERMINATOR, 1)[0].strip()


def check_chat_template(tokenizer, model: str) -> None:
    """Refuse ``chat_template: true`` for a tokenizer that carries no chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise GenftError(f"model {model!r}: chat_template is on, but its tokenizer has no chat "
                         f"template (no chat_template in tokenizer_config.json or "
                         f"chat_template.jinja); use a chat/instruct model or chat_template: false")


def model_prompt(tokenizer, prompt: str, chat_template: bool) -> str:
    """The text the model reads for ``prompt`` (a k-shot prompt): the prompt itself, or with
    ``chat_template`` the prompt as one user turn of the tokenizer's chat template, ending in
    the assistant header (see the module docstring).

    Trailing spaces are stripped as :func:`render` strips them (the separator rule). A BOS
    token written by the template is dropped when the tokenizer adds one itself, so the token
    ids equal ``apply_chat_template(..., tokenize=True)``'s, never a doubled BOS.
    """
    if not chat_template:
        return prompt
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                             add_generation_prompt=True, tokenize=False)
    except Exception as e:  # no template, or one that raises on a lone user turn
        check_chat_template(tokenizer, getattr(tokenizer, "name_or_path", "?"))
        raise GenftError(f"the tokenizer's chat template failed on a user turn: "
                         f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}"
                         ) from None
    bos = tokenizer.bos_token
    if bos and text.startswith(bos) and _adds_bos(tokenizer):
        text = text[len(bos):]
    return text.rstrip(" \t")


def _adds_bos(tokenizer) -> bool:
    """Whether tokenizing with special tokens puts a BOS token in front."""
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    return len(with_special) > len(plain) and with_special[0] == tokenizer.bos_token_id


def kshot_prompt(template: str, query: dict, demos: Sequence[dict]) -> str:
    """k demos (each with its answer and terminator) followed by the query's prompt."""
    parts = []
    for demo in demos:
        p = render(template, demo)
        parts.append(p + target_text(p, demo["output"]))
    return "".join(parts) + render(template, query)
