"""The fast path: the shared k-shot prefix is run once, items run in batches against its KV cache.

Classification. Each item becomes one *row* ``suffix + continuation[:-1]`` per label,
except that a row which is a prefix of another row is merged into it: with
one-token labels (" positive" / " negative", the five BBC topics) every label of
an item is read off one row, at its last position. Rows are left-padded so all
scored positions sit at the end of the batch, and the vocabulary head runs only
there (``logits_to_keep``).

Generation. Greedy decoding against the prefix cache, one token per step for a
left-padded batch; a row leaves the batch (and the cache) as soon as it has
produced a blank line, EOS or ``max_new_tokens`` tokens, so short answers stop
costing compute.

Batches are planned up front (:func:`plan_batches`) so that a run split over
several processes computes exactly the batches a single process would.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch

from genft.evaluation.encoding import CellInputs, Item
from genft.evaluation.model_io import embed, generation_done


@dataclass
class Row:
    item: int  # index into CellInputs.items
    tokens: list[int]  # fed after the prefix: the item's suffix (+ continuation tokens but the last)
    reads: list[tuple[int, int, list[int]]]  # (label index, feed position predicting cont[0], cont)


def item_rows(index: int, item: Item, prefix_len: int, first_token: bool) -> list[Row]:
    """The rows that score all labels of one item; labels whose feed is a prefix of another share it."""
    suffix = item.context[prefix_len:]
    start = len(suffix) - 1
    conts = [c[:1] if first_token else c for c in item.continuations]
    rows: list[Row] = []
    for label in sorted(range(len(conts)), key=lambda i: -len(conts[i])):
        feed = suffix + conts[label][:-1]
        row = next((r for r in rows if r.tokens[: len(feed)] == feed), None)
        if row is None:
            row = Row(index, feed, [])
            rows.append(row)
        row.reads.append((label, start, conts[label]))
    return rows


def plan_batches(inputs: CellInputs, batch_size: int, kind: str, first_token: bool = False
                 ) -> list[list[Row]]:
    """Rows sorted longest first (little padding), cut into batches of at most batch_size rows;
    an item's rows stay in one batch."""
    per_item = [
        item_rows(i, it, inputs.prefix_len, first_token) if kind == "classification"
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


@torch.inference_mode()
def generate_batches(model, tokenizer, batches: list[list[Row]], prefix: PrefixCache,
                     max_new_tokens: int, on_items: Callable[[int], None] = lambda n: None
                     ) -> dict[int, list[int]]:
    """Greedy continuations {item index: new token ids}; rows leave the batch when done."""
    out: dict[int, list[int]] = {}
    device = _device(model)
    eos = tokenizer.eos_token_id
    for batch in batches:
        ids, mask, positions = _left_pad([r.tokens for r in batch], tokenizer.pad_token_id,
                                         prefix.length, device)
        cache = prefix.for_batch(len(batch))
        live = [r.item for r in batch]  # item index of each remaining row
        new: dict[int, list[int]] = {i: [] for i in live}
        next_pos = positions[:, -1] + 1
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                       past_key_values=cache, use_cache=True, logits_to_keep=1).logits
        while live:
            tokens = logits[:, -1].argmax(-1).tolist()
            keep = []
            for b, (item, token) in enumerate(zip(live, tokens)):
                if token == eos:
                    continue
                new[item].append(token)
                if len(new[item]) < max_new_tokens and not generation_done(tokenizer, new[item]):
                    keep.append(b)
            if not keep:
                break
            if len(keep) < len(live):
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                mask, next_pos = mask[index], next_pos[index]
            live = [live[b] for b in keep]
            step = torch.tensor([[tokens[b]] for b in keep], device=device)
            mask = torch.cat([mask, mask.new_ones((len(keep), 1))], dim=1)
            logits = model(input_ids=step, attention_mask=mask, position_ids=next_pos[:, None],
                           past_key_values=cache, use_cache=True).logits
            next_pos = next_pos + 1
        out.update(new)
        on_items(len(batch))
    return out
