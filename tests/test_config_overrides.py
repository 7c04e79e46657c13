"""`genft run CONFIG KEY=VALUE...`, `--model`, and every training key in `training:` and in
each method entry (docs/config.md#overrides, #training)."""

from __future__ import annotations

import pytest
import yaml

import genft
from genft.cli import main
from genft.errors import GenftError
from genft.experiments.config import (GRID_KEYS, ExperimentConfig, MethodSpec, Training,
                                      load_config, training_keys)
from genft.experiments.plan import build_plan
from genft.experiments.store import Store
from genft.training.config import TrainConfig
from test_run_fakes import make_backends

BASE = {"name": "ov", "train_tasks": ["tweet_sentiment"], "methods": {"ft": {}, "fticl": {"shots": 1}},
        "training": {"steps": 2, "batch_size": 2}, "test": ["tweet_sentiment", "bbc_headline"],
        "shots": {"sentiment": [0], "summarization": [1]}, "limit": 3}


@pytest.fixture
def cfg_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(BASE, sort_keys=False))
    return path


# ---------------------------------------------------------------- overrides


def test_overrides_are_applied_before_validation_and_parsed_as_yaml(cfg_file):
    cfg = load_config(cfg_file, ["training.lr=1e-4", "model=HuggingFaceTB/SmolLM2-360M",
                                 "methods.ft.steps=20", "shots.sentiment=[0,4]",
                                 "methods.lora={lora_r: 4}", "checkpoints.every=1"])
    assert cfg.training.lr == 1e-4 and cfg.model.name == "HuggingFaceTB/SmolLM2-360M"
    assert cfg.methods["ft"].steps == 20 and cfg.methods["fticl"].shots == 1
    assert cfg.shots == {"sentiment": [0, 4], "summarization": [1]}
    assert cfg.methods["lora"].lora_r == 4 and cfg.checkpoints.every == 1
    # the file is untouched; without overrides it loads as it was
    assert load_config(cfg_file).training.lr is None and "lora" not in load_config(cfg_file).methods


def test_an_override_is_the_same_config_as_the_edited_file(cfg_file, tmp_path):
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump({**BASE, "training": {"steps": 2, "batch_size": 2, "lr": 1e-4},
                                      "methods": {"ft": {"steps": 3}, "fticl": {"shots": 1}}}))
    a = build_plan(load_config(cfg_file, ["training.lr=1e-4", "methods.ft.steps=3"]))
    b = build_plan(load_config(edited))
    assert [j.key for j in a.jobs] == [j.key for j in b.jobs]
    assert [c.key for c in a.cells] == [c.key for c in b.cells]
    assert a.config.model_dump() == b.config.model_dump()


@pytest.mark.parametrize("override, message", [
    ("training.warmup_step=5",
     "override 'training.warmup_step=5': unknown key 'warmup_step' (did you mean \"warmup_steps\"?)"),
    ("trainin.lr=1", "override 'trainin.lr=1': unknown key 'trainin' (did you mean \"training\"?)"),
    ("methods.ft.lora_rr=4", "override 'methods.ft.lora_rr=4': unknown key 'lora_rr' (did you mean \"lora_r\"?)"),
    ("training.lr=-1", "override 'training.lr=-1': training.lr: Input should be greater than 0"),
    ("formats=[prompt3]", "override 'formats=[prompt3]': formats.0: Input should be 'prompt1' or 'prompt2'"),
    ("training.seed=3", "override 'training.seed=3': training: `seed` cannot be set in `training:`: "
                        "training seeds come from the top-level `seeds`"),
    ("methods.ft.tasks=[a]", "methods.ft: `tasks` cannot be set in a method entry"),
    ("training.epochs=2", "override 'training.epochs=2': training: set `steps` or `epochs`, not both"),
    ("lr", "override 'lr': expected KEY=VALUE with a dotted KEY, e.g. training.lr=1e-4"),
    ("training..lr=1", "override 'training..lr=1': expected KEY=VALUE"),
    ("shots=[0, 1", "override 'shots=[0, 1': the value is not valid YAML"),
    ("name.x=1", "override 'name.x=1': `name` is 'ov', not a mapping; set it whole (name=VALUE)"),
])
def test_a_bad_override_is_one_line_naming_it_exit_2(cfg_file, capsys, override, message):
    assert main(["run", str(cfg_file), override, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("genft: error: ") and message in err and err.count("\n") == 1, err


def test_a_problem_of_the_file_itself_still_names_the_file_and_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**BASE, "training": {"steps": 2, "warmup_step": 1}}, sort_keys=False))
    with pytest.raises(GenftError) as e:
        load_config(path, ["training.lr=1e-4"])
    assert str(e.value).startswith(f"{path}:") and "unknown key 'training.warmup_step'" in str(e.value)
    assert "override" not in str(e.value)


def test_overrides_anywhere_after_the_config_and_model_flags(cfg_file, capsys):
    assert main(["run", str(cfg_file), "methods.ft.steps=7", "--dry-run", "training.lr=1e-3",
                 "--model", "org/other", "--dtype", "float32"]) == 0
    text = capsys.readouterr().out
    assert "model org/other" in text and "steps=7" in text
    with pytest.raises(SystemExit) as e:  # argparse's own exit
        main(["run", str(cfg_file), "--dry-run", "--bogus", "a=1"])
    assert e.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_dash_dash_model_is_model_equals_name_after_the_overrides(cfg_file):
    by_flag = genft.run(cfg_file, model="org/m", overrides=["model=org/x"], dry_run=True,
                        echo=lambda s: None, dtype="bfloat16")
    assert by_flag.plan.config.model.name == "org/m" and by_flag.plan.config.model.dtype == "bfloat16"
    # model.name keeps the entry's other options
    spec = load_config(cfg_file, ["model={name: a, dtype: bfloat16}", "model.name=b"]).model
    assert (spec.name, spec.dtype) == ("b", "bfloat16")


def test_the_api_takes_overrides_for_a_dict_or_a_config_object():
    a = genft.run(BASE, overrides=["methods.ft.steps=5"], dry_run=True, echo=lambda s: None)
    b = genft.run(ExperimentConfig.model_validate(BASE), overrides=["methods.ft.steps=5"],
                  dry_run=True, echo=lambda s: None)
    assert a.plan.config.methods["ft"].steps == b.plan.config.methods["ft"].steps == 5
    assert BASE["methods"]["ft"] == {}  # the caller's dict is not modified
    with pytest.raises(GenftError, match="override 'trainin.lr=1': unknown key 'trainin'"):
        genft.run(BASE, overrides=["trainin.lr=1"], dry_run=True)


def test_the_stored_run_is_the_overridden_config_and_resumes_by_it(cfg_file, tmp_path):
    out = tmp_path / "out"
    kw = dict(backends=make_backends(), progress=False, report=False, echo=lambda s: None)
    first = genft.run(cfg_file, out, overrides=["methods.ft.lr=1e-3"], **kw)
    assert first.trained == 2 and first.computed == 6
    runs = Store(out / "results.db").runs()
    assert runs[-1]["config"]["methods"]["ft"]["lr"] == 1e-3
    again = genft.run(cfg_file, out, overrides=["methods.ft.lr=1e-3"], **kw)
    assert (again.trained, again.computed) == (0, 0)  # same overrides: nothing to do
    other = genft.run(cfg_file, out, overrides=["methods.ft.lr=2e-3"], **kw)
    assert (other.trained, other.computed) == (1, 2)  # only FT's model and its 2 cells


# ---------------------------------------------------------------- training keys


def test_every_trainconfig_key_the_grid_does_not_set_is_a_training_and_method_key():
    assert set(training_keys()) == set(TrainConfig.model_fields) - set(GRID_KEYS)
    for key in training_keys():
        assert key in Training.model_fields and key in MethodSpec.model_fields, key
    # the grid's own keys are refused in both places with where the value comes from
    for key in GRID_KEYS:
        with pytest.raises(ValueError, match="cannot be set in `training:`"):
            Training.model_validate({key: 1})
    with pytest.raises(ValueError, match="cannot be set in a method entry.*`checkpoints"):
        MethodSpec.model_validate({"save_every": 1})


def test_a_shared_training_key_reaches_every_job_and_a_method_entry_wins():
    cfg = {**BASE, "training": {"steps": 2, "warmup_steps": 1, "weight_decay": 0.1,
                                "lr_schedule": "linear", "shots": 2},
           "methods": {"ft": {"weight_decay": 0.0}, "fticl": {}}}
    jobs = {j.label: j.settings for j in build_plan(ExperimentConfig.model_validate(cfg)).jobs}
    assert jobs["ft"]["warmup_steps"] == jobs["fticl"]["warmup_steps"] == 1
    assert jobs["ft"]["lr_schedule"] == "linear"
    assert jobs["ft"]["weight_decay"] == 0.0 and jobs["fticl"]["weight_decay"] == 0.1
    assert jobs["fticl"]["shots"] == 2  # training.shots holds where the entry sets none


def test_shared_or_per_method_or_default_the_same_setting_is_the_same_job():
    def key(**cfg):
        return build_plan(ExperimentConfig.model_validate({**BASE, **cfg})).jobs[0].key

    shared = key(training={"steps": 2, "batch_size": 2, "warmup_steps": 1})
    per_method = key(methods={"ft": {"warmup_steps": 1}, "fticl": {"shots": 1}})
    assert shared == per_method != key()
    # a key set at the trainer's default is the job it always was
    assert key(training={"steps": 2, "batch_size": 2, "warmup_steps": 0, "lora_r": 8}) == key()


def test_training_dumps_only_the_keys_it_always_had_unless_more_are_set():
    """The run's config hash is a hash of this dump: configs without the new keys keep it."""
    assert set(Training().model_dump()) == {"steps", "epochs", "lr", "batch_size", "grad_accum",
                                            "max_length", "max_truncated_share"}
    assert Training(warmup_steps=3, mixed_precision="no").model_dump()["warmup_steps"] == 3
    assert "mixed_precision" not in Training(mixed_precision="no").model_dump()
    assert set(MethodSpec(lora_r=4).model_dump()) == {"method", "group", "steps", "epochs", "lr",
                                                      "batch_size", "grad_accum", "max_length",
                                                      "shots", "lora_r"}


def test_a_misspelled_training_key_in_a_file_is_one_line_with_the_nearest_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train_tasks: [tweet_sentiment]\nmethods:\n  ft: {}\n"
                    "training:\n  steps: 2\n  warmup_step: 5\n")
    with pytest.raises(GenftError) as e:
        load_config(path)
    assert str(e.value) == (f"{path}:6: unknown key 'training.warmup_step' "
                            f"(did you mean \"warmup_steps\"?)")
    path.write_text("train_tasks: [tweet_sentiment]\nmethods:\n  ft:\n    lora_rr: 4\n")
    with pytest.raises(GenftError) as e:
        load_config(path)
    assert str(e.value) == f"{path}:4: unknown key 'methods.ft.lora_rr' (did you mean \"lora_r\"?)"
    path.write_text("train_tasks: [tweet_sentiment]\nmethods:\n  ft:\n    prompt_init: words\n")
    with pytest.raises(GenftError, match=r"c.yaml:4: methods.ft.prompt_init: Input should be "):
        load_config(path)
