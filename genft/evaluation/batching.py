"""Choosing a batch size from free memory (``--batch-size auto``).

The estimate is deliberately simple: per row, the KV cache over prefix + row (+ new
tokens), one layer's transient activations and attention scores, and the kept
logits, all doubled for safety; half of the free memory goes to the batch. On CPU
large batches stop paying off early, so the result is capped lower than on GPU.
"""

from __future__ import annotations

import torch

CPU_CAP, GPU_CAP = 32, 128


def free_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return 4 << 30


def bytes_per_row(config, context_len: int, row_len: int, keep: int) -> int:
    cfg = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    hidden = cfg.hidden_size
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or hidden // heads
    inter = getattr(cfg, "intermediate_size", 4 * hidden)
    width = 4  # fp32 upper bound
    total = context_len + row_len
    kv = cfg.num_hidden_layers * 2 * kv_heads * head_dim * total * width
    activations = row_len * (4 * hidden + 3 * inter) * width + heads * row_len * total * width
    logits = keep * cfg.vocab_size * 4 * 2
    return 2 * (kv + activations + logits)


def auto_batch_size(model, context_len: int, row_len: int, keep: int) -> int:
    device = next(model.parameters()).device
    per_row = bytes_per_row(model.config, context_len, row_len, keep)
    cap = GPU_CAP if device.type == "cuda" else CPU_CAP
    return max(1, min(cap, free_memory(device) // 2 // per_row))
