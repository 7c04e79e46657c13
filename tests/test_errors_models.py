"""The bad-input matrix of docs/errors.md, model layer: checkpoints, adapters and soft prompts
that are corrupt, truncated or made for another base model each give one GenftError line.

Fixtures are tiny random Llama models (hidden size 16 and 24, one layer) saved with the
default model's tokenizer, so every load takes well under a second.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from genft.errors import GenftError
from genft.models import CHECKPOINT_FILE, load_model


def _tiny(folder: Path, hidden: int) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    from genft.models import DEFAULT_MODEL, resolve

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=hidden, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=64)
    LlamaForCausalLM(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(resolve(DEFAULT_MODEL)) / name, folder / name)
    return folder


def _lora(base_dir: Path, out: Path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"])).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    """base16 / base24: plain models; lora24: an adapter trained for base24."""
    root = tmp_path_factory.mktemp("models")
    base16, base24 = _tiny(root / "base16", 16), _tiny(root / "base24", 24)
    return {"root": root, "base16": base16, "base24": base24,
            "lora16": _lora(base16, root / "lora16"), "lora24": _lora(base24, root / "lora24")}


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and msg
    return msg


def checkpoint(folder: Path, meta: dict, full_from: Path | None = None) -> Path:
    """A genft checkpoint directory (``full_from``: copy a full model's files into it)."""
    if full_from is not None:
        shutil.copytree(full_from, folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CHECKPOINT_FILE).write_text(json.dumps(meta))
    return folder


def soft_prompt(folder: Path, tensor: torch.Tensor, key: str = "prompt") -> str:
    from safetensors.torch import save_file

    (folder / "soft_prompts").mkdir(parents=True, exist_ok=True)
    save_file({key: tensor}, folder / "soft_prompts" / "t.safetensors")
    return "soft_prompts/t.safetensors"


def test_good_fixtures_load(fx, tmp_path):
    """The baseline: what the error tests break does load when intact."""
    ck = checkpoint(tmp_path / "ck", {"base_model": str(fx["base16"]), "weights": "lora",
                                      "method": "promot", "tasks": ["t"]})
    shutil.copytree(fx["lora16"], ck / "adapter")
    (ck / CHECKPOINT_FILE).write_text(json.dumps({
        "base_model": str(fx["base16"]), "weights": "lora", "method": "promot", "tasks": ["t"],
        "soft_prompts": {"t": soft_prompt(ck, torch.randn(4, 16))}}))
    loaded = load_model(str(ck))
    assert loaded.method == "promot" and loaded.soft_prompt_for("t").shape == (4, 16)
    assert loaded.soft_prompt_for("other") is None
    assert load_model(str(fx["lora24"])).method == "lora"


def test_unknown_model_name():
    with pytest.raises(GenftError) as e:
        load_model("no-such-model")
    assert one_line(e).startswith("unknown model 'no-such-model': not a directory, a Hub id")


@pytest.mark.parametrize("keep", [0.5, 0.0001])
def test_truncated_model_weights(fx, tmp_path, keep):
    ck = checkpoint(tmp_path / "ck", {"base_model": "smollm2-135m", "weights": "full"},
                    full_from=fx["base16"])
    weights = ck / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: max(1, int(len(data) * keep))])
    with pytest.raises(GenftError) as e:
        load_model(str(ck))
    msg = one_line(e)
    assert msg.startswith(f"cannot load model '{ck}': ") and "header" in msg


@pytest.mark.parametrize("content, message", [
    ("{not json", "corrupt checkpoint metadata (Expecting property name"),
    ("[1, 2]", "corrupt checkpoint metadata: expected a JSON object, got list"),
    ('{"weights": "full"}', "corrupt checkpoint metadata: 'base_model' must be a str, got None"),
    ('{"base_model": "x", "weights": "everything"}', "weights 'everything' is not one of full, lora, base"),
    ('{"base_model": "x", "weights": "base", "soft_prompts": ["a"]}', "'soft_prompts' must be a dict"),
])
def test_garbage_checkpoint_metadata(tmp_path, content, message):
    (tmp_path / CHECKPOINT_FILE).write_text(content)
    with pytest.raises(GenftError) as e:
        load_model(str(tmp_path))
    assert one_line(e).startswith(f"{tmp_path / CHECKPOINT_FILE}: ") and message in one_line(e)


def test_soft_prompt_of_the_wrong_width(fx, tmp_path):
    ck = tmp_path / "ck"
    rel = soft_prompt(ck, torch.randn(4, 24))  # trained on the 24-wide model
    checkpoint(ck, {"base_model": str(fx["base16"]), "weights": "base", "soft_prompts": {"t": rel}})
    with pytest.raises(GenftError) as e:
        load_model(str(ck))
    assert one_line(e) == (f"{ck / rel}: soft prompt of shape [4, 24] does not fit the model's hidden "
                           f"size 16: expected [n_virtual_tokens, 16] (trained for another base model?)")


def test_soft_prompt_truncated_or_foreign(fx, tmp_path):
    ck = tmp_path / "ck"
    rel = soft_prompt(ck, torch.randn(4, 16))
    checkpoint(ck, {"base_model": str(fx["base16"]), "weights": "base", "soft_prompts": {"t": rel}})
    data = (ck / rel).read_bytes()
    (ck / rel).write_bytes(data[:-8])
    with pytest.raises(GenftError) as e:
        load_model(str(ck))
    assert one_line(e).startswith(f"{ck / rel}: cannot read soft prompt (")
    soft_prompt(ck, torch.randn(4, 16), key="embedding")
    with pytest.raises(GenftError) as e:
        load_model(str(ck))
    assert one_line(e) == f"{ck / rel}: not a genft soft prompt: no tensor 'prompt' (found ['embedding'])"


def test_lora_adapter_for_another_base_model(fx, tmp_path):
    adapter = shutil.copytree(fx["lora24"], tmp_path / "adapter")
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(
        json.dumps({**config, "base_model_name_or_path": str(fx["base16"])}))
    with pytest.raises(GenftError) as e:
        load_model(str(adapter))
    msg = one_line(e)
    assert msg.startswith(f"adapter {adapter} does not fit its base model (trained for another one?): "
                          f"size mismatch for ") and "(and 3 more)" in msg


def test_lora_checkpoint_whose_adapter_belongs_to_another_base(fx, tmp_path):
    ck = checkpoint(tmp_path / "ck", {"base_model": str(fx["base16"]), "weights": "lora"})
    shutil.copytree(fx["lora24"], ck / "adapter")
    with pytest.raises(GenftError) as e:
        load_model(str(ck))
    assert "does not fit its base model" in one_line(e) and "size mismatch" in one_line(e)


def test_pickled_adapter_weights_are_refused(fx, tmp_path, monkeypatch):
    adapter = shutil.copytree(fx["lora16"], tmp_path / "adapter")
    (adapter / "adapter_model.safetensors").rename(adapter / "adapter_model.bin")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    with pytest.raises(GenftError) as e:
        load_model(str(adapter))
    assert one_line(e) == (f"{adapter}: no adapter_model.safetensors (found ['README.md', "
                           f"'adapter_config.json', 'adapter_model.bin']); genft loads adapter "
                           f"weights only as safetensors, never pickled .bin files")


@pytest.mark.parametrize("content, message", [
    ("{oops", "corrupt PEFT adapter config (Expecting property name"),
    ('{"r": 2}', "corrupt PEFT adapter config: 'base_model_name_or_path' must be a str, got None"),
])
def test_corrupt_adapter_config(tmp_path, content, message):
    (tmp_path / "adapter_config.json").write_text(content)
    with pytest.raises(GenftError) as e:
        load_model(str(tmp_path))
    assert message in one_line(e)


# ---------------------------------------------------------------- label words vs the tokenizer


@pytest.fixture(scope="module")
def uncased_tokenizer():
    """A real (tokenizers-backed) uncased word-level tokenizer that strips accents, like
    BERT-uncased: "Positive" and "positive" become the same token, a lone accent nothing."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "positive": 1, "negative": 2}, unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents(),
                                           normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok)


@pytest.fixture(scope="module")
def smol_tokenizer():
    from genft.models import DEFAULT_MODEL, load_tokenizer

    return load_tokenizer(DEFAULT_MODEL)


def _task(tmp_path, words: str):
    from test_errors_tasks import make_task
    from genft.tasks.task import load_task_file

    rows = [{"text": f"t{i}", "label": w.strip()} for i in range(4) for w in words.split(",")]
    return load_task_file(make_task(tmp_path, words=words, rows=rows) / "task.yaml")


def test_label_words_that_tokenize_identically(tmp_path, uncased_tokenizer):
    from genft.tasks import check_label_words

    task = _task(tmp_path, "Positive, positive")
    with pytest.raises(GenftError) as e:
        check_label_words(task, uncased_tokenizer)
    assert one_line(e) == (f"task 'mytask' ({task.path}): label words 'Positive' and 'positive' "
                           f"tokenize to the same tokens [1]; the model cannot tell them apart — "
                           f"choose distinct words")


def test_label_word_that_tokenizes_to_nothing(tmp_path, uncased_tokenizer):
    from genft.tasks import check_label_words

    task = _task(tmp_path, "positive, \u0301")
    with pytest.raises(GenftError) as e:
        check_label_words(task, uncased_tokenizer)
    assert "label word '\u0301' tokenizes to nothing with this model's tokenizer" in one_line(e)


def test_label_words_sharing_a_first_token(tmp_path, smol_tokenizer):
    """SmolLM2 splits " not_entailment" and " not_sure" into tokens starting with " not":
    fine for log-likelihood scoring, indistinguishable for first-token scoring."""
    from genft.tasks import check_label_words

    task = _task(tmp_path, "not_entailment, not_sure")
    check_label_words(task, smol_tokenizer, "loglik")
    with pytest.raises(GenftError) as e:
        check_label_words(task, smol_tokenizer, "first-token")
    assert "label words 'not_entailment' and 'not_sure' start with the same token (id 441), so " \
           "first-token scoring cannot tell them apart" in one_line(e)


def test_builtin_label_words_pass_with_the_default_tokenizer(tasks, smol_tokenizer):
    from genft.tasks import check_label_words

    for task in tasks.all():
        for scoring in ("loglik", "first-token"):
            check_label_words(task, smol_tokenizer, scoring)
