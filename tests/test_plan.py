"""Config validation and plan expansion: keys, dedupe, auto test sets, the examples' sizes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from genft.errors import GenftError
from genft.experiments.config import ExperimentConfig, load_config, parse_config
from genft.experiments.plan import auto_tests, build_plan, describe
from genft.tasks import registry

EXAMPLES = Path(__file__).parent.parent / "examples"

BASE = {"train_tasks": ["tweet_sentiment"], "methods": {"ft": {}},
        "test": ["tweet_sentiment", "bbc_headline"], "shots": {"sentiment": [0, 2], "summarization": [1]}}


def plan_of(**changes):
    return build_plan(ExperimentConfig.model_validate({**BASE, **changes}))


def test_cells_are_the_grid_and_keys_are_stable():
    p1, p2 = plan_of(), plan_of()
    assert len(p1.jobs) == 1 and len(p1.cells) == 2 * 3  # (base, ft) × (tweets 0/2, headline 1)
    assert [c.key for c in p1.cells] == [c.key for c in p2.cells]
    assert len({c.key for c in p1.cells}) == len(p1.cells)


def test_keys_change_with_what_determines_a_result_and_only_with_that():
    base = plan_of()
    keys = {c.key for c in base.cells}
    # a new format adds cells but keeps the old ones
    more = {c.key for c in plan_of(formats=["prompt1", "prompt2"]).cells}
    assert keys < more and len(more) == 2 * len(keys)
    # another learning rate changes the trained model's cells, not the base model's
    lr = plan_of(training={"steps": 40, "lr": 1e-4})
    assert lr.jobs[0].key != base.jobs[0].key
    assert {c.key for c in lr.cells if c.model.is_base} == {c.key for c in base.cells if c.model.is_base}
    assert not {c.key for c in lr.cells if not c.model.is_base} & keys
    # the classification rule changes classification cells only
    ft = {c.key for c in plan_of(scoring="first-token").cells}
    assert {c.task for c in base.cells if c.key not in ft} == {"tweet_sentiment"}
    # and generation cells are stored as what they are: greedy decoding, no rule passed on
    gen = [c for c in plan_of(scoring="first-token").cells if c.type == "generation"]
    assert gen and {c.scoring for c in gen} == {"greedy"}
    assert all("scoring" not in c.eval_kwargs(8) for c in gen)
    # a limit changes every cell; the description changes nothing
    assert not {c.key for c in plan_of(limit=10).cells} & keys
    assert {c.key for c in plan_of(description="x", name="other").cells} == keys


def test_the_same_job_under_two_names_is_trained_once_and_keyed_alike():
    p = plan_of(methods={"ft": {}, "ft-again": {"method": "ft"}})
    assert p.jobs[0].key == p.jobs[1].key
    assert len({c.key for c in p.cells}) == len(p.cells) == 6  # nothing computed twice


def test_auto_selects_in_domain_ood_and_other_families_offline():
    reg = registry()
    names = [t.name for t in auto_tests(reg, [reg.get("bbc_topic")])]
    assert names[0] == "bbc_topic"
    assert {"tweet_sentiment", "bbc_headline", "bbc_headline_ood"} <= set(names)
    assert all(reg.get(n).spec.source.kind != "hub" for n in names)  # offline stays offline
    p = plan_of(test=["auto"], exclude=["bbc_headline_ood"], train_tasks=["bbc_headline"],
                shots=[0])
    assert {t.name for t in p.tests} == {"bbc_headline", "tweet_sentiment", "bbc_topic"}


def test_shots_and_limits_resolve_by_task_then_family_then_default():
    p = plan_of(test=["tweet_sentiment", "bbc_topic", "bbc_headline"],
                shots={"bbc_topic": [0], "sentiment": [2], "default": [1]},
                limit={"classification": 50, "bbc_headline": 7})
    base = {(c.task, c.shots, c.limit) for c in p.cells if c.model.is_base}
    assert base == {("tweet_sentiment", 2, 50), ("bbc_topic", 0, 50), ("bbc_headline", 1, 7)}
    # without `shots`, each task's own default k list is used
    p = plan_of(shots=None, test=["bbc_topic"])
    assert sorted(c.shots for c in p.cells if c.model.is_base) == [0, 5]


def test_intermediate_checkpoints_add_a_small_grid():
    p = plan_of(training={"steps": 10}, checkpoints={"every": 3})
    steps = sorted(c.model.step for c in p.cells if c.model.step is not None)
    assert steps == [3, 6, 9]  # the generation test set, its smallest k, the first format
    assert {(c.task, c.shots) for c in p.cells if c.model.step} == {("bbc_headline", 1)}
    assert p.jobs[0].settings["save_every"] == 3


@pytest.mark.parametrize("bad, message", [
    ({"methods": {"base": {}}}, "always included"),
    ({"methods": {"fast": {}}}, "needs `method:`"),
    ({"methods": {"ft": {"lr": -1}}}, "greater than 0"),
    ({"formats": ["prompt3"]}, "prompt1"),
    ({"sampler": "nearest"}, "unknown sampler"),
    ({"trian_tasks": ["x"]}, "did you mean \"train_tasks\""),
    ({"training": {"steps": 5, "epochs": 1}}, "not both"),
])
def test_bad_configs_fail_with_one_line_naming_file_line_and_field(tmp_path, bad, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**BASE, **bad}))
    with pytest.raises(GenftError) as e:
        load_config(path)
    assert message in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_unknown_tasks_and_trainer_fields_are_clear_errors():
    with pytest.raises(GenftError, match="unknown task 'tweet_sentimnt'.*did you mean"):
        plan_of(train_tasks=["tweet_sentimnt"])
    with pytest.raises(GenftError, match="config: unknown key 'methods.ft.lora_rank' "
                                         "\\(did you mean \"lora_r\"\\?\\)"):
        parse_config({**BASE, "methods": {"ft": {"lora_rank": 4}}})


def test_dry_run_text_counts_jobs_cells_and_tokens():
    text = describe(plan_of())
    assert "training runs: 1" in text and "evaluation cells: 6 (0 already" in text
    assert "tokens to process" in text


def test_quickstart_plan():
    p = build_plan(load_config(EXAMPLES / "quickstart.yaml"), EXAMPLES)
    assert [j.method for j in p.jobs] == ["ft", "fticl", "promot"]
    assert {t.name for t in p.tests} == {"tweet_sentiment", "bbc_topic", "bbc_headline"}
    assert len(p.models()) == 4


def test_cpu_study_plan():
    p = build_plan(load_config(EXAMPLES / "cpu_study.yaml"), EXAMPLES)
    # FT / FTICL / ProMoT, each over three training seeds: the report shows their spread
    assert sorted((j.method, j.seed) for j in p.jobs) == sorted(
        (m, s) for m in ("ft", "fticl", "promot") for s in (0, 1, 2))


def test_paper_a_expands_to_the_study_grid():
    p = build_plan(load_config(EXAMPLES / "paper_a.yaml"), EXAMPLES)
    # 5 tasks × 3 sizes × (FT, FTICL small k, FTICL large k)
    assert len(p.jobs) == 45
    assert {j.total_steps for j in p.jobs} == {250, 500, 750}  # 2 epochs at global batch 16
    fticl = {(j.tasks[0], j.settings["shots"]) for j in p.jobs if j.label == "fticl-large"}
    assert fticl == {("xsum", 2), ("socialiqa", 2), ("amazon", 4), ("paws", 4), ("mnli_m", 5)}
    assert len(p.tests) == 18
    # 46 models × 18 test sets × 4 shot counts × 2 formats
    assert len(p.cells) == 46 * 18 * 4 * 2 == 6624


def test_promot_expands_to_the_study_grid():
    p = build_plan(load_config(EXAMPLES / "promot.yaml"), EXAMPLES)
    # 6 single-task methods × 2 tasks + multi-task FT + multi-task ProMoT
    assert len(p.jobs) == 14
    assert sum(1 for m in p.models() if m.step is None) == 15
    assert {(j.label, j.tasks) for j in p.jobs if len(j.tasks) > 1} == {
        ("multitask", ("rte_binary", "wmt14_en_fr")), ("promot-multitask", ("rte_binary", "wmt14_en_fr"))}
    # 15 models × 10 test sets × (1, 4) shots, + FT and ProMoT followed every 100 of 1,000
    # steps (9 intermediate checkpoints each, 2 tasks) on TriviaQA 1-shot
    assert len(p.cells) == 15 * 10 * 2 + 4 * 9 == 336
