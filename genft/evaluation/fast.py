"""The fast path: the shared k-shot prefix is run once, items run in batches against its KV cache.

Classification. Each item becomes one *row* ``suffix + continuation[:-1]`` per label,
except that a row which is a prefix of another row is merged into it: with
one-token labels (" positive" / " negative", the five BBC topics) every label of
an item is read off one row, at its last position. Rows are left-padded so all
scored positions sit at the end of the batch, and the vocabulary head runs only
there (``logits_to_keep``).

Generation. Greedy decoding against the prefix cache with continuous batching:
a row leaves the batch (and the cache) as soon as it has produced a blank line,
EOS or ``max_new_tokens`` tokens, and an already prefilled row takes its slot
at once, so every decode step carries a full batch (on CPU a step costs about
the same for 2 rows as for 8).

Batches are planned up front (:func:`plan_batches`) so that a run split over
several processes computes exactly the batches a single process would.
:class:`FastBackend` is this module as the ``fast`` evaluation backend (the default; see
genft.evaluation.backends, which deals the batches to processes).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch

from genft.evaluation.backends import Backend
from genft.evaluation.encoding import CellInputs, Item
from genft.evaluation.model_io import embed, generation_done


@dataclass
class Row:
    item: int  # index into CellInputs.items
    tokens: list[int]  # fed after the prefix: the item's suffix (+ continuation tokens but the last)
    reads: list[tuple[int, int, list[int]]]  # (label index, feed position predicting cont[0], cont)


def item_rows(index: int, item: Item, prefix_len: int) -> list[Row]:
    """The rows that score all labels of one item; labels whose feed is a prefix of another share it."""
    suffix = item.context[prefix_len:]
    start = len(suffix) - 1
    conts = item.continuations
    rows: list[Row] = []
    for label in sorted(range(len(conts)), key=lambda i: -len(conts[i])):
        feed = suffix + conts[label][:-1]
        row = next((r for r in rows if r.tokens[: len(feed)] == feed), None)
        if row is None:
            row = Row(index, feed, [])
            rows.append(row)
        row.reads.append((label, start, conts[label]))
    return rows


def plan_batches(inputs: CellInputs, batch_size: int, kind: str) -> list[list[Row]]:
    """Rows sorted longest first (little padding), cut into batches of at most batch_size rows;
    an item's rows stay in one batch. ``kind``: "classification" or "generation"."""
    per_item = [
        item_rows(i, it, inputs.prefix_len) if kind == "classification"
        else [Row(i, it.context[inputs.prefix_len:], [])]
        for i, it in enumerate(inputs.items)
    ]
    order = sorted(range(len(per_item)), key=lambda i: -max(len(r.tokens) for r in per_item[i]))
    batches, current = [], []
    for i in order:
        if current and len(current) + len(per_item[i]) > batch_size:
            batches.append(current)
            current = []
        current.extend(per_item[i])
    if current:
        batches.append(current)
    return batches


class PrefixCache:
    """The KV cache of soft prompt + shared prefix tokens, computed once per cell."""

    def __init__(self, model, prefix_ids: list[int], soft_prompt: torch.Tensor | None):
        self.length = len(prefix_ids) + (0 if soft_prompt is None else soft_prompt.shape[0])
        self._cache = None
        if self.length:
            with torch.inference_mode():
                embeds = embed(model, torch.tensor([prefix_ids], dtype=torch.long,
                                                   device=_device(model)), soft_prompt)
                self._cache = model(inputs_embeds=embeds, use_cache=True,
                                    logits_to_keep=1).past_key_values

    def for_batch(self, size: int):
        """A fresh cache for a batch of `size` rows (the model grows it in place)."""
        if self._cache is None:
            return None
        cache = copy.deepcopy(self._cache)
        cache.batch_repeat_interleave(size)
        return cache


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _left_pad(rows: list[list[int]], pad_id: int, prefix_len: int, device):
    """Token ids, attention mask over prefix + rows, and position ids continuing after the prefix."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), prefix_len + width), dtype=torch.long)
    mask[:, :prefix_len] = 1
    for b, r in enumerate(rows):
        ids[b, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[b, prefix_len + width - len(r):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, prefix_len:]
    return ids.to(device), mask.to(device), positions.to(device)


@torch.inference_mode()
def score_batches(model, tokenizer, inputs: CellInputs, batches: list[list[Row]], prefix: PrefixCache,
                  on_items: Callable[[int], None] = lambda n: None) -> dict[int, list[float]]:
    """Log-likelihood per label for every item in `batches`: {item index: [score per label]}."""
    scores: dict[int, list[float]] = {}
    device = _device(model)
    for batch in batches:
        ids, mask, positions = _left_pad([r.tokens for r in batch], tokenizer.pad_token_id,
                                         prefix.length, device)
        width = ids.shape[1]
        first_read = min(width - len(r.tokens) + start for r in batch for _, start, _ in r.reads)
        keep = width - first_read
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                       past_key_values=prefix.for_batch(len(batch)), use_cache=True,
                       logits_to_keep=keep).logits
        logprobs = logits.float().log_softmax(-1)  # [rows, keep, vocab]
        for b, row in enumerate(batch):
            offset = width - len(row.tokens) - first_read
            item_scores = scores.setdefault(row.item, [0.0] * len(inputs.labels))
            for label, start, cont in row.reads:
                pos = torch.arange(len(cont), device=device) + offset + start
                item_scores[label] = logprobs[b, pos, torch.tensor(cont, device=device)].sum().item()
        on_items(len({r.item for r in batch}))
    return scores


@dataclass
class _Running:
    """Rows being decoded: their cache, attention mask, and the token each feeds next (already
    part of its answer) at position next_pos."""
    items: list[int]
    cache: object
    mask: torch.Tensor  # [rows, cache length]
    next_pos: torch.Tensor  # [rows]
    tokens: list[int]

    def select(self, keep: list[int], trim: bool) -> None:
        """Keep only rows `keep`; with `trim`, also drop cache columns no remaining row attends to."""
        index = torch.tensor(keep, device=self.mask.device)
        self.cache.batch_select_indices(index)
        self.items = [self.items[b] for b in keep]
        self.tokens = [self.tokens[b] for b in keep]
        self.mask, self.next_pos = self.mask[index], self.next_pos[index]
        used = self.mask.any(0) if trim else None
        if used is not None and not bool(used.all()):
            columns = used.nonzero().squeeze(-1)
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, columns], layer.values[:, :, columns]
            self.mask = self.mask[:, columns]

    def take(self, n: int) -> "_Running":
        """Remove the first n rows and return them as a batch of their own."""
        head = copy.copy(self)
        head.cache = copy.copy(self.cache)
        head.cache.layers = [copy.copy(layer) for layer in self.cache.layers]
        head.select(list(range(n)), trim=True)
        self.select(list(range(n, len(self.items))), trim=True)
        return head

    def absorb(self, other: "_Running") -> None:
        """Append other's rows: the shorter cache is left-padded (masked out) to the longer one."""
        length = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([_pad_columns(mine.keys, length), _pad_columns(theirs.keys, length)])
            mine.values = torch.cat([_pad_columns(mine.values, length),
                                     _pad_columns(theirs.values, length)])
        self.mask = torch.cat([_pad_columns(self.mask[:, :, None], length)[:, :, 0],
                               _pad_columns(other.mask[:, :, None], length)[:, :, 0]])
        self.items += other.items
        self.next_pos = torch.cat([self.next_pos, other.next_pos])
        self.tokens += other.tokens


def _pad_columns(x: torch.Tensor, length: int) -> torch.Tensor:
    """Left-pad dim -2 (the sequence dimension of a [.., seq, dim] tensor) with zeros to `length`."""
    return torch.nn.functional.pad(x, (0, 0, length - x.shape[-2], 0))


def _mergeable(cache) -> bool:
    """Rows can join a running batch only if every cache layer is a plain growing K/V tensor."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def _prefill(model, tokenizer, rows: list[Row], prefix: PrefixCache, device):
    """The rows' suffixes run against the prefix cache: their cache and last logits."""
    ids, mask, positions = _left_pad([r.tokens for r in rows], tokenizer.pad_token_id,
                                     prefix.length, device)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                past_key_values=prefix.for_batch(len(rows)), use_cache=True, logits_to_keep=1)
    batch = _Running([r.item for r in rows], out.past_key_values, mask, positions[:, -1], [])
    return batch, out.logits[:, -1]


@torch.inference_mode()
def generate_batches(model, tokenizer, batches: list[list[Row]], prefix: PrefixCache,
                     max_new_tokens: int, on_items: Callable[[int], None] = lambda n: None
                     ) -> dict[int, list[int]]:
    """Greedy continuations {item index: new token ids}, decoded with continuous batching.

    At most ``width = max(len(b) for b in batches)`` rows go through any forward pass. Rows
    are prefilled ``width`` at a time (in planned order) into a waiting pool; a row leaves the
    decoding batch as soon as it has produced a blank line, EOS or ``max_new_tokens`` tokens,
    and waiting rows take the free slots before the next step, their caches joined to the
    running one. On CPU a decode step costs about the same for 2 or 8 rows, so keeping the
    batch full is what saves time. Each row's computation is its own (padding is masked out),
    so the tokens equal the reference's. Caches that cannot be joined (anything but plain
    growing K/V layers) fall back to running each prefilled batch to its end.
    """
    out: dict[int, list[int]] = {}
    device = _device(model)
    eos = tokenizer.eos_token_id
    width = max((len(b) for b in batches), default=0)
    queue = [row for batch in batches for row in batch]
    mergeable = False

    def advance(batch: _Running, logits: torch.Tensor) -> _Running | None:
        """Append each row's greedy token; rows that are done leave. None if none is left."""
        keep, batch.tokens = [], logits.argmax(-1).tolist()
        for b, (item, token) in enumerate(zip(batch.items, batch.tokens)):
            if token != eos:
                out[item].append(token)
                if len(out[item]) < max_new_tokens and not generation_done(tokenizer, out[item]):
                    keep.append(b)
                    continue
            on_items(1)
        if not keep:
            return None
        if len(keep) < len(batch.items):
            batch.select(keep, trim=mergeable)
        batch.next_pos = batch.next_pos + 1
        return batch

    running: _Running | None = None
    pool: _Running | None = None  # prefilled rows waiting for a slot
    while queue or pool is not None or running is not None:
        free = width - (len(running.items) if running is not None else 0)
        while free and (running is None or mergeable) and (queue or pool is not None):
            if pool is None:
                rows, queue = queue[:width], queue[width:]
                out.update({r.item: [] for r in rows})
                fresh, logits = _prefill(model, tokenizer, rows, prefix, device)
                mergeable = _mergeable(fresh.cache)
                pool = advance(fresh, logits)
                continue
            if running is None:
                running, pool = pool, None
            else:
                joining = pool if len(pool.items) <= free else pool.take(free)
                running.absorb(joining)
                pool = None if joining is pool else pool
            free = width - len(running.items)
        if running is None:
            continue
        running.mask = torch.cat([running.mask, running.mask.new_ones((len(running.items), 1))], 1)
        logits = model(input_ids=torch.tensor([[t] for t in running.tokens], device=device),
                       attention_mask=running.mask, position_ids=running.next_pos[:, None],
                       past_key_values=running.cache, use_cache=True).logits[:, -1]
        running = advance(running, logits)
    return out


class FastBackend(Backend):
    """The prefix-cached, batched HF backend (``--backend fast``, the default)."""

    name = "fast"
    description = "prefix KV cache shared by a cell's prompts, batched rows (HF transformers)"

    def plan(self, inputs: CellInputs, request: str, batch_size: int) -> list[list[Row]]:
        kind = "classification" if request == "loglikelihood" else "generation"
        return plan_batches(inputs, batch_size, kind)

    def _prefix(self, inputs: CellInputs, soft_prompt) -> PrefixCache:
        shared = inputs.items[0].context[: inputs.prefix_len] if inputs.items else []
        return PrefixCache(self.model, shared, soft_prompt)

    def score_units(self, inputs, units, soft_prompt, on_items):
        return score_batches(self.model, self.tokenizer, inputs, units,
                             self._prefix(inputs, soft_prompt), on_items)

    def generate_units(self, inputs, units, max_new_tokens, soft_prompt, on_items):
        tokens = generate_batches(self.model, self.tokenizer, units,
                                  self._prefix(inputs, soft_prompt), max_new_tokens, on_items)
        return {i: self.tokenizer.decode(t, skip_special_tokens=True) for i, t in tokens.items()}
