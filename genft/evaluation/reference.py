"""The reference scorer: one item (and one label) at a time, the whole sequence every time.

No batching, no padding, no caches shared between items — small enough to check
by eye. The fast path (:mod:`genft.evaluation.fast`) is tested against it and
must give the same predictions and log-probs within 1e-4. :class:`ReferenceBackend` is
this module as the ``reference`` evaluation backend (``genft eval --backend reference``).
"""

from __future__ import annotations

import torch

from genft.evaluation.backends import Backend
from genft.evaluation.encoding import Item
from genft.evaluation.model_io import embed, generation_done


@torch.inference_mode()
def score_item(model, item: Item, soft_prompt: torch.Tensor | None) -> list[float]:
    """Log-likelihood of each of the item's continuations (the tokens its scoring rule scores)."""
    scores = []
    for cont in item.continuations:
        ids = torch.tensor([item.context + cont], device=model.device)
        embeds = embed(model, ids, soft_prompt)
        logprobs = model(inputs_embeds=embeds).logits[0].float().log_softmax(-1)
        start = embeds.shape[1] - len(cont) - 1  # the position that predicts cont[0]
        scores.append(sum(logprobs[start + j, tok].item() for j, tok in enumerate(cont)))
    return scores


@torch.inference_mode()
def generate_item(model, tokenizer, item: Item, soft_prompt: torch.Tensor | None,
                  max_new_tokens: int) -> list[int]:
    """Greedy decoding with the model's own step-by-step KV cache; returns the new token ids."""
    embeds = embed(model, torch.tensor([item.context], device=model.device), soft_prompt)
    out = model(inputs_embeds=embeds, use_cache=True)
    new: list[int] = []
    while True:
        token = int(out.logits[0, -1].argmax())
        if token == tokenizer.eos_token_id:
            return new
        new.append(token)
        if len(new) >= max_new_tokens or generation_done(tokenizer, new):
            return new
        out = model(input_ids=torch.tensor([[token]], device=model.device), past_key_values=out.past_key_values,
                    use_cache=True)


class ReferenceBackend(Backend):
    """One item at a time, the whole sequence every time (``--backend reference``)."""

    name = "reference"
    description = "one item and one label at a time, no batching or shared cache (for checking)"

    def score_units(self, inputs, units, soft_prompt, on_items):
        out = {}
        for unit in units:
            for i in unit:
                out[i] = score_item(self.model, inputs.items[i], soft_prompt)
            on_items(len(unit))
        return out

    def generate_units(self, inputs, units, max_new_tokens, soft_prompt, on_items):
        out = {}
        for unit in units:
            for i in unit:
                new = generate_item(self.model, self.tokenizer, inputs.items[i], soft_prompt,
                                    max_new_tokens)
                out[i] = self.tokenizer.decode(new, skip_special_tokens=True)
            on_items(len(unit))
        return out
