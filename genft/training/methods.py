"""The pieces the training methods are built from, on top of one loop.

A method (defined once, in genft/training/method_registry.py) is a list of
*stages*; a stage says which parameters train (the model:
all of it, LoRA adapters, or nothing; the soft prompts: train, frozen, absent),
how many demos go in front of each input, and for how long at what rate:

=============  ===============================================  ==========  =========
method         model                                            prompts     demos
=============  ===============================================  ==========  =========
ft, multitask  full                                             --          0
fticl          full                                             --          K
lora           LoRA                                             --          0
prompt-tuning  frozen                                           train       0
joint          full                                             train       0
promot         1: frozen (best prompt on dev kept)              train       0
               2: full or LoRA                                  frozen      0 or 1
=============  ===============================================  ==========  =========

The soft prompts are PEFT ``PromptEmbedding`` modules (one per task), kept
outside the model so that the forward pass can prepend them as input embeddings
and still compute the LM head only at the positions that carry loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genft.errors import GenftError
from genft.training.method_registry import Stage, stages, uses_prompts  # noqa: F401 (re-exported)


def make_prompts(cfg, tasks, model, model_path: str) -> nn.ModuleList:
    """One PEFT PromptEmbedding per task, initialized from text, vocabulary samples or noise."""
    from peft import PromptTuningConfig, PromptTuningInit
    from peft.tuners.prompt_tuning import PromptEmbedding

    embeddings = model.get_input_embeddings()
    init = {"text": PromptTuningInit.TEXT, "vocab": PromptTuningInit.SAMPLE_VOCAB,
            "random": PromptTuningInit.RANDOM}[cfg.prompt_init]
    prompts = nn.ModuleList()
    for i, task in enumerate(tasks):
        torch.manual_seed(cfg.seed + i)
        text = cfg.prompt_init_text or task.spec.description or task.name
        config = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=cfg.prompt_length,
                                    token_dim=embeddings.weight.shape[1], num_transformer_submodules=1,
                                    prompt_tuning_init=init, prompt_tuning_init_text=text,
                                    tokenizer_name_or_path=model_path)
        prompt = PromptEmbedding(config, embeddings)
        if init == PromptTuningInit.RANDOM:  # PEFT's N(0, 1) is far off the embedding scale
            nn.init.normal_(prompt.embedding.weight, std=embeddings.weight.std().item())
        prompts.append(prompt.to(embeddings.weight.dtype))
    return prompts


def add_lora(cfg, model):
    """Wrap the model with fresh LoRA adapters; absent target modules are a user error.

    The adapters' random init is seeded from ``cfg.seed``: the same seed gives the same run.
    """
    from peft import LoraConfig, get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    missing = [t for t in cfg.lora_targets if t not in names]
    if missing:
        raise GenftError(f"LoRA target module(s) {missing} are not in the model; its linear "
                         f"layers are {sorted(names)}")
    config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                        target_modules=list(cfg.lora_targets), task_type="CAUSAL_LM")
    torch.manual_seed(cfg.seed)
    return get_peft_model(model, config)


def set_trainable(lm: nn.Module, prompts: nn.ModuleList | None, stage: Stage) -> None:
    """Freeze/unfreeze by hand (PEFT's helpers refuse prompt-learning setups)."""
    for name, p in lm.named_parameters():
        if stage.model == "full":
            p.requires_grad_(True)
        elif stage.model == "lora":
            p.requires_grad_("lora_" in name)
        else:
            p.requires_grad_(False)
    if prompts is not None:
        prompts.requires_grad_(stage.prompts == "train")


class PromptedLM(nn.Module):
    """A causal LM (+ optional per-task soft prompts) whose forward returns the summed answer loss.

    Wrapping the loss in one module keeps data-parallel wrappers (DDP, FSDP,
    DeepSpeed) in charge of the forward pass. The decoder runs on all tokens but
    the vocabulary head only at the loss positions: on a 49k vocabulary that is
    most of the compute saved.
    """

    def __init__(self, lm: nn.Module, prompts: nn.ModuleList | None = None):
        super().__init__()
        self.lm = lm
        self.prompts = prompts

    @property
    def core(self) -> nn.Module:
        """The transformers model inside (under PEFT's LoRA wrapper, if any)."""
        return self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm

    @property
    def n_virtual(self) -> int:
        return 0 if self.prompts is None else self.prompts[0].embedding.weight.shape[0]

    def soft_prompts(self, task_index: torch.Tensor) -> torch.Tensor:
        """Each row's task prompt, [rows, n_virtual, hidden], looked up as an embedding of the task id.

        Not ``table[task_index]``: on CPU with more than one thread the backward of advanced
        indexing adds the rows of one task with atomic float adds, in whatever order the
        threads arrive, so two runs of the same seed drifted apart (ProMoT's soft prompts
        by 2e-4 after 30 steps, amplified by stage 2 into different answers; torch lists it
        among its nondeterministic operations). ``F.embedding``'s CPU backward sums each
        task's rows in a fixed order (tested at two threads; on CUDA not measured).
        """
        table = torch.stack([p.embedding.weight for p in self.prompts])  # [tasks, n, hidden]
        rows = F.embedding(task_index, table.flatten(1))
        return rows.view(len(task_index), *table.shape[1:])

    def forward(self, input_ids, loss_rows, loss_cols, loss_targets, task_index):
        core = self.core
        embeds = core.get_input_embeddings()(input_ids)
        if self.prompts is not None:
            embeds = torch.cat([self.soft_prompts(task_index).to(embeds.dtype), embeds], dim=1)
        hidden = core.get_decoder()(inputs_embeds=embeds, use_cache=False).last_hidden_state
        logits = core.get_output_embeddings()(hidden[loss_rows, loss_cols + self.n_virtual])
        return F.cross_entropy(logits.float(), loss_targets, reduction="sum")


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: weight decay only on the >= 2-D weight matrices (nanoGPT's rule).

    Norm weights and biases (1-D), embeddings and soft prompts (both ``nn.Embedding``
    tables; a tied LM head is the embedding table) are not decayed: decay would pull a
    norm's gain and a prompt's vectors towards zero, which is no regularization of a
    linear map. Frozen parameters are left out.
    """
    tables = {id(p) for m in module.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and id(p) not in tables else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]
