"""Small pieces both scorers share: soft-prompt embeddings and the generation stop rule."""

from __future__ import annotations

import torch

from genft.tasks.prompts import TERMINATOR


def embed(model, input_ids: torch.Tensor, soft_prompt: torch.Tensor | None) -> torch.Tensor:
    """Token embeddings, with the soft prompt's virtual tokens in front of every row.

    The virtual tokens take positions 0..V-1 and shift every real token by V (as PEFT
    prompt tuning does), so answer scores must be read V positions later.
    """
    embeds = model.get_input_embeddings()(input_ids)
    if soft_prompt is None:
        return embeds
    soft = soft_prompt.to(embeds.dtype).to(embeds.device)
    return torch.cat([soft.unsqueeze(0).expand(embeds.shape[0], -1, -1), embeds], dim=1)


def generation_done(tokenizer, new_tokens: list[int]) -> bool:
    """A generated answer is complete once it contains the terminator (a blank line)."""
    return TERMINATOR in tokenizer.decode(new_tokens, skip_special_tokens=True)
