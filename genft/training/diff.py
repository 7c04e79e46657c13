"""How far training moved the weights: mean absolute and relative change, per module type.

The first study compares FT and FTICL by the mean absolute parameter change
from the base model. A *module type* is the last name before ``.weight`` /
``.bias`` (``q_proj``, ``down_proj``, ``input_layernorm``, ``embed_tokens``…),
so the 30 layers of a model pool into one row per kind of module. The first study
also looks at change *per layer*: ``by_layer`` keeps the same statistics per
(layer index, module type), for the parameters that belong to a numbered layer
(``model.layers.12.self_attn.q_proj.weight`` -> layer 12); embeddings and the final
norm have no layer. LoRA checkpoints are merged first; prompt-tuning checkpoints
change no weight.
"""

from __future__ import annotations

import re
from collections import defaultdict

import torch

from genft.errors import GenftError


def param_change(base, checkpoint) -> dict:
    """``{"overall": stats, "by_module": {type: stats}, "by_layer": {layer: {type: stats}}}``
    (layer indices as strings, for JSON); stats = params, mean_abs_change, mean_abs_base,
    relative_change (= sum|Δ| / sum|base|), max_abs_change."""
    from genft.models import ModelSpec, load_model

    # float32 whatever the run evaluates in: the changes are ~1e-5 of the weights, below bf16's step
    if not isinstance(base, torch.nn.Module):
        base = load_model(base if isinstance(base, ModelSpec) else str(base), dtype="float32").model
    base_model = base
    tuned = load_model(str(checkpoint), dtype="float32", device=str(base_model.device)).model
    if hasattr(tuned, "merge_and_unload"):
        tuned = tuned.merge_and_unload()
    base_params = dict(base_model.named_parameters())
    sums: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0, 0.0])
    with torch.no_grad():
        for name, after in tuned.named_parameters():
            before = base_params.get(name)
            if before is None or before.shape != after.shape:
                raise GenftError(f"{checkpoint} does not fit the base model: parameter {name} "
                                 f"{'is missing' if before is None else 'has another shape'}")
            delta = (after.float() - before.float()).abs()
            layer = layer_index(name)
            keys = [module_type(name), "overall"] + ([(layer, module_type(name))]
                                                     if layer is not None else [])
            for key in keys:
                s = sums[key]
                s[0] += delta.numel()
                s[1] += delta.sum().item()
                s[2] += before.float().abs().sum().item()
                s[3] = max(s[3], delta.max().item())
    stats = {k: {"params": int(n), "mean_abs_change": d / n, "mean_abs_base": b / n,
                 "relative_change": d / b if b else 0.0, "max_abs_change": m}
             for k, (n, d, b, m) in sums.items()}
    overall = stats.pop("overall")
    by_layer: dict[str, dict] = {}
    for (layer, module), s in sorted((k, v) for k, v in stats.items() if isinstance(k, tuple)):
        by_layer.setdefault(str(layer), {})[module] = s
    by_module = {k: v for k, v in stats.items() if isinstance(k, str)}
    return {"overall": overall, "by_module": dict(sorted(by_module.items())), "by_layer": by_layer}


_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")


def layer_index(param_name: str) -> int | None:
    """The transformer block a parameter belongs to (``model.layers.12.…`` -> 12), else None."""
    m = _LAYER.search(param_name)
    return int(m.group(1)) if m else None


def module_type(param_name: str) -> str:
    parts = param_name.split(".")
    return parts[-2] if parts[-1] in ("weight", "bias") and len(parts) > 1 else parts[-1]


def format_table(stats: dict) -> str:
    rows = [*stats["by_module"].items(), ("overall", stats["overall"])]
    width = max(len(k) for k, _ in rows)
    lines = [f"{'module':<{width}}  {'params':>12}  {'mean |Δ|':>10}  {'mean |w|':>10}  "
             f"{'relative':>10}  {'max |Δ|':>10}"]
    for name, s in rows:
        lines.append(f"{name:<{width}}  {s['params']:>12,}  {s['mean_abs_change']:>10.3e}  "
                     f"{s['mean_abs_base']:>10.3e}  {s['relative_change']:>10.3e}  "
                     f"{s['max_abs_change']:>10.3e}")
    return "\n".join(lines)


def format_layer_table(stats: dict, value: str = "mean_abs_change") -> str:
    """Layer × module type: one statistic (default mean |Δ|) per cell."""
    layers = stats.get("by_layer") or {}
    if not layers:
        return "(no per-layer statistics: the checkpoint's parameters have no layer index)"
    modules = sorted({m for per in layers.values() for m in per})
    width = max(10, *(len(m) for m in modules))
    lines = [f"{value} per layer", f"{'layer':>5}  " + "  ".join(f"{m:>{width}}" for m in modules)]
    for layer in sorted(layers, key=int):
        cells = [layers[layer].get(m, {}).get(value) for m in modules]
        lines.append(f"{layer:>5}  " + "  ".join(f"{c:>{width}.3e}" if c is not None else
                                                 f"{'-':>{width}}" for c in cells))
    return "\n".join(lines)
