import math

import pytest

from sdft_core.evaluation.comparison import build_comparison
from sdft_core.evaluation.suite import TaskResult
from sdft_core.promotion import (
    ALREADY_CHAMPION,
    CHAMPION_MOVED_ON,
    GATE_FAILED,
    PROMOTED,
    GateConfig,
    champion_outcome,
    dominates,
    needs_retrain_from_champion,
    promotion_gate,
)

GATE = GateConfig(min_gain=0.0, max_regression=0.02)
PRIOR_OK = {"candidate_prior": 0.50, "parent_prior": 0.50, "prior_ci": (-0.01, 0.01)}


def failed(decision) -> list[str]:
    return [reason.split(" ")[0] for reason in decision.reasons if reason.endswith("FAILED")]


def test_a_gain_whose_interval_reaches_below_min_gain_does_not_pass():
    # what the gate promoted on point estimates: science +4.0 with a paired interval of [-6, +14]
    decision = promotion_gate(0.54, 0.50, config=GATE, skill_ci=(-0.06, 0.14), **PRIOR_OK)
    assert decision.passed is False and failed(decision) == ["new"]
    assert decision.new_skill_gain == pytest.approx(0.04) and decision.new_skill_ci == (-0.06, 0.14)
    assert decision.reasons[0] == (
        "new skill 54.0 vs parent 50.0: +4.0 [-6.0, +14.0]: the interval's lower bound must be >= +0.0: FAILED"
    )
    assert decision.summary().startswith("keep the champion: new skill")


def test_a_gain_shown_by_its_interval_passes():
    decision = promotion_gate(0.55, 0.50, config=GATE, skill_ci=(0.01, 0.09), **PRIOR_OK)
    assert decision.passed is True and failed(decision) == []
    assert decision.reasons[0].endswith("[+1.0, +9.0]: the interval's lower bound must be >= +0.0: ok")
    assert decision.summary().startswith("promote: ")
    # the lower bound against min_gain, inclusive
    assert promotion_gate(0.55, 0.50, config=GateConfig(min_gain=0.01), skill_ci=(0.01, 0.09), **PRIOR_OK).passed
    assert not promotion_gate(0.55, 0.50, config=GateConfig(min_gain=0.02), skill_ci=(0.01, 0.09), **PRIOR_OK).passed


@pytest.mark.parametrize(
    "candidate_prior, prior_ci, kept",
    [
        (0.49, (-0.04, 0.02), True),  # -1.0 with an interval reaching -4.0: a regression beyond 2 points is not shown
        (0.47, (-0.06, -0.025), False),  # the whole interval below -2.0: a regression beyond the tolerance is shown
        (0.475, (-0.05, 0.01), False),  # the point estimate itself is below -2.0
        (0.48, (-0.04, -0.02), True),  # exactly at the tolerance: inclusive
        (0.52, (0.0, 0.04), True),
    ],
)
def test_the_prior_average_fails_on_a_shown_regression_or_a_point_beyond_the_tolerance(candidate_prior, prior_ci, kept):
    decision = promotion_gate(0.60, 0.50, candidate_prior, 0.50, GATE, skill_ci=(0.05, 0.15), prior_ci=prior_ci)
    assert decision.passed is kept
    assert failed(decision) == ([] if kept else ["prior"])
    assert decision.prior_change == pytest.approx(candidate_prior - 0.50)
    assert "the point and the interval's upper bound must be >= -2.0" in decision.reasons[1]


def test_without_prior_tasks_or_with_an_unmeasured_interval_the_gate_fails():
    decision = promotion_gate(
        0.60, 0.50, math.nan, math.nan, GATE, skill_ci=(0.05, 0.15), prior_ci=(math.nan, math.nan)
    )
    assert not decision.passed and failed(decision) == ["prior"] and "not measured" in decision.reasons[1]
    assert not promotion_gate(0.60, 0.50, config=GATE, skill_ci=(math.nan, math.nan), **PRIOR_OK).passed


def test_domination_by_the_baseline_fails_the_gate_only_when_required():
    required = GateConfig(require_not_dominated_by_baseline=True)
    shown = {"skill_ci": (0.01, 0.09), **PRIOR_OK}  # candidate: new skill 55.0, prior 50.0
    # the SFT baseline learned more and forgot no more: it dominates
    decision = promotion_gate(0.55, 0.50, config=required, baseline=(0.60, 0.50), **shown)
    assert decision.passed is False and decision.dominated is True and failed(decision) == ["SFT"]
    assert decision.reasons[2] == (
        "SFT baseline (new skill 60.0, prior average 50.0) vs candidate (new skill 55.0, "
        "prior average 50.0): the baseline dominates the candidate: FAILED"
    )
    # off by default: the same comparison is reported but decides nothing
    off = promotion_gate(0.55, 0.50, config=GATE, baseline=(0.60, 0.50), **shown)
    assert off.passed is True and off.dominated is True and "not required" in off.reasons[2]
    # better on one side, worse on the other: no domination
    traded = promotion_gate(0.55, 0.50, config=required, baseline=(0.70, 0.45), **shown)
    assert traded.passed is True and traded.dominated is False and traded.reasons[2].endswith("ok")
    # equal points are not domination
    equal = promotion_gate(0.55, 0.50, config=required, baseline=(0.55, 0.50), **shown)
    assert equal.passed is True and equal.dominated is False
    # no baseline evaluated: nothing to compare, the requirement holds vacuously
    alone = promotion_gate(0.55, 0.50, config=required, **shown)
    assert alone.passed is True and alone.dominated is None and len(alone.reasons) == 2


def test_dominates():
    assert dominates((0.6, 0.5), (0.5, 0.5)) and dominates((0.5, 0.6), (0.5, 0.5))
    assert not dominates((0.5, 0.5), (0.5, 0.5)) and not dominates((0.6, 0.4), (0.5, 0.5))
    assert not dominates((0.5, 0.5), (0.6, 0.5))


def _result(task: str, scores: list[float]) -> TaskResult:
    return TaskResult(task, "acc", sum(scores) / len(scores), len(scores), [str(i) for i in range(len(scores))], scores)


def test_the_comparison_table_feeds_the_gate_with_paired_intervals():
    skill = [0.0] * 10
    results = {
        "parent": {"toy": _result("toy", skill), "arc": _result("arc", [1.0, 0.0] * 5)},
        "candidate": {"toy": _result("toy", [1.0] * 6 + [0.0] * 4), "arc": _result("arc", [1.0, 0.0] * 5)},
        "baseline": {"toy": _result("toy", [1.0] * 3 + [0.0] * 7), "arc": _result("arc", [0.0] * 10)},
    }
    drift = {
        who: {"mean": kl, "ci": [kl / 2, 2 * kl], "tokens": 10, "sequences": 2}
        for who, kl in (("base", 0.0), ("parent", 0.0), ("candidate", 0.01), ("baseline", 0.2))
    }
    table = build_comparison(results, "toy", ["arc"], drift)
    assert [r["task"] for r in table.rows] == ["toy (new skill)", "arc", "prior average"]
    first = table.rows[0]
    assert first["parent"] == 0.0 and first["candidate"] == 0.6 and first["baseline"] == pytest.approx(0.3)
    assert first["delta"] == pytest.approx(0.6) and first["delta_ci"][0] > 0.2  # a gain shown by its interval
    assert first["candidate_minus_baseline"] == pytest.approx(0.3) and "base" not in first
    assert table.rows[-1]["baseline_delta"] == pytest.approx(-0.5) and table.rows[-1]["delta_ci"] == [0.0, 0.0]
    assert [m["model"] for m in table.models] == ["parent", "candidate", "baseline"]
    assert table.model("baseline")["kl_to_base"] == 0.2 and table.summary()["kl_to_base"]["base"]["mean"] == 0.0
    inputs = table.gate_inputs()
    assert inputs["baseline"] == (pytest.approx(0.3), 0.0) and inputs["prior_ci"] == (0.0, 0.0)
    decision = promotion_gate(**inputs, config=GateConfig(require_not_dominated_by_baseline=True))
    assert decision.passed and decision.dominated is False
    labels = table.points({"parent": "base (parent)", "candidate": "SDFT", "baseline": "SFT"})
    assert labels["SFT\nKL(base||model) 0.2"] == (0.0, pytest.approx(0.3))


def test_a_passing_candidate_replaces_only_the_champion_it_was_trained_from():
    passed = promotion_gate(0.6, 0.2, skill_ci=(0.2, 0.6), config=GATE, **PRIOR_OK)
    failed_gate = promotion_gate(0.2, 0.2, skill_ci=(-0.1, 0.1), config=GATE, **PRIOR_OK)
    first = champion_outcome(passed, candidate=1, champion=None, parent=None, parent_label="base:tiny")
    assert first.promote and first.summary.startswith("promoted to champion (was none): promote: ")
    assert champion_outcome(passed, candidate=3, champion=2, parent=2, parent_label="sdft/2").promote
    again = champion_outcome(passed, candidate=2, champion=2, parent=1, parent_label="sdft/1")
    assert not again.promote and again.summary.startswith("already champion: ")
    # the champion moved on (2 -> 4) while candidate 5 trained from 2: promoting it would drop 4's skills
    moved = champion_outcome(passed, candidate=5, champion=4, parent=2, parent_label="sdft/2")
    assert not moved.promote and moved.summary.startswith(
        "champion unchanged (4): the candidate was trained from sdft/2, not the current champion; its skill is "
        "retrained from the champion"
    )
    kept = champion_outcome(failed_gate, candidate=2, champion=1, parent=1, parent_label="sdft/1")
    assert not kept.promote and kept.summary.startswith("champion unchanged (1): keep the champion: ")
    assert champion_outcome(failed_gate, 1, None, None, "base:tiny").summary.startswith("champion unchanged (none)")
    # the codes a sensor reads from the registry
    assert [o.code for o in (first, again, moved, kept)] == [PROMOTED, ALREADY_CHAMPION, CHAMPION_MOVED_ON, GATE_FAILED]
    # a candidate from the base model while another skill became the first champion
    assert champion_outcome(passed, candidate=2, champion=1, parent=None, parent_label="base:tiny").code == (
        CHAMPION_MOVED_ON
    )


def test_only_a_passing_candidate_that_found_the_champion_moved_on_is_retrained():
    assert needs_retrain_from_champion(CHAMPION_MOVED_ON, "a.dir", "a.dir", held=False)
    assert not needs_retrain_from_champion(CHAMPION_MOVED_ON, "a.dir", "a.dir", held=True)  # already in it
    assert not needs_retrain_from_champion(CHAMPION_MOVED_ON, "a.dir", "b.dir", held=False)  # data changed since
    for code in (PROMOTED, ALREADY_CHAMPION, GATE_FAILED, None):
        assert not needs_retrain_from_champion(code, "a.dir", "a.dir", held=False)
