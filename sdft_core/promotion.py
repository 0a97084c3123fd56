"""The promotion gate: a candidate becomes champion only if it shows that it learned the skill without forgetting.

The gate decides on the paired 95% bootstrap intervals of candidate - parent (items paired by id), not on point
estimates: a gain of +4 points whose interval is [-6, +14] is not shown, so it does not pass.

- new skill: passes when the interval's lower bound is >= `min_gain` (the gain is shown, not only measured);
- prior-capability average: fails when its point estimate or the upper bound of its interval is below
  -`max_regression` (a regression beyond the tolerance is shown, or is the best estimate);
- optionally (`require_not_dominated_by_baseline`), when an SFT baseline trained on the same data, parent and
  budget was evaluated: fails when the baseline dominates the candidate (at least as good on the new skill and on
  the prior average, strictly better on one; equal points are not domination).

A candidate that passes becomes champion only if it was trained from the current champion (`champion_outcome`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

_EPS = 1e-12


@dataclass
class GateConfig:
    # new skill: the lower bound of the paired 95% interval of candidate - parent must be >= min_gain
    # (fractions: 0.02 = 2 points; 0 = the gain must be shown to be non-negative)
    min_gain: float = 0.0
    # prior-capability average: fails when the point estimate of candidate - parent, or the upper bound of its
    # paired 95% interval, is below -max_regression (0.02 = 2 points)
    max_regression: float = 0.02
    # when an SFT baseline was evaluated (sft_baseline enabled): fail if the baseline dominates the candidate
    # (new skill and prior average both >= the candidate's, one of them strictly greater)
    require_not_dominated_by_baseline: bool = False


@dataclass
class GateDecision:
    passed: bool
    new_skill_gain: float
    prior_change: float
    reasons: list[str] = field(default_factory=list)
    new_skill_ci: tuple[float, float] = (math.nan, math.nan)
    prior_ci: tuple[float, float] = (math.nan, math.nan)
    dominated: bool | None = None  # None: no baseline was evaluated

    def summary(self) -> str:
        return ("promote: " if self.passed else "keep the champion: ") + "; ".join(self.reasons)


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Point a = (new skill, prior average) dominates b: >= on both, > on at least one (equal is not)."""
    at_least = all(x >= y - _EPS for x, y in zip(a, b))
    better = any(x > y + _EPS for x, y in zip(a, b))
    return at_least and better


def _points(value: float) -> str:
    return f"{100 * value:+.1f}"


def _interval(low: float, high: float) -> str:
    return f"[{_points(low)}, {_points(high)}]"


def promotion_gate(
    candidate_skill: float,
    parent_skill: float,
    candidate_prior: float,
    parent_prior: float,
    config: GateConfig,
    *,
    skill_ci: tuple[float, float],
    prior_ci: tuple[float, float],
    baseline: tuple[float, float] | None = None,
) -> GateDecision:
    """Decide on candidate - parent's paired 95% intervals: `skill_ci` of the new skill's score, `prior_ci` of the
    prior-capability average (scores as fractions). `baseline`: the SFT baseline's (new skill, prior average)."""
    gain, change = candidate_skill - parent_skill, candidate_prior - parent_prior
    skill_low, skill_high = (float(x) for x in skill_ci)
    prior_low, prior_high = (float(x) for x in prior_ci)

    learned = skill_low >= config.min_gain - _EPS  # False for NaN: an unmeasured gain is not shown
    new_skill = (
        f"new skill {100 * candidate_skill:.1f} vs parent {100 * parent_skill:.1f}: "
        f"{_points(gain)} {_interval(skill_low, skill_high)}: the interval's lower bound must be >= "
        f"{_points(config.min_gain)}: {'ok' if learned else 'FAILED'}"
    )

    if math.isnan(change) or math.isnan(prior_high):
        kept = False
        prior = "prior average not measured (no prior tasks): FAILED"
    else:
        kept = change >= -config.max_regression - _EPS and prior_high >= -config.max_regression - _EPS
        prior = (
            f"prior average {100 * candidate_prior:.1f} vs parent {100 * parent_prior:.1f}: {_points(change)} "
            f"{_interval(prior_low, prior_high)}: the point and the interval's upper bound must be >= "
            f"{_points(-config.max_regression)}: {'ok' if kept else 'FAILED'}"
        )
    reasons = [new_skill, prior]

    dominated = None
    not_dominated = True
    if baseline is not None:
        dominated = dominates(baseline, (candidate_skill, candidate_prior))
        points = (
            f"SFT baseline (new skill {100 * baseline[0]:.1f}, prior average {100 * baseline[1]:.1f}) vs "
            f"candidate (new skill {100 * candidate_skill:.1f}, prior average {100 * candidate_prior:.1f}): "
        )
        if config.require_not_dominated_by_baseline:
            not_dominated = not dominated
            reasons.append(
                points
                + (
                    "the baseline dominates the candidate: FAILED"
                    if dominated
                    else "the baseline does not dominate the candidate: ok"
                )
            )
        else:
            reasons.append(
                points
                + (
                    "the baseline dominates the candidate"
                    if dominated
                    else "the baseline does not dominate the candidate"
                )
                + " (not required: require_not_dominated_by_baseline is off)"
            )
    return GateDecision(
        learned and kept and not_dominated,
        gain,
        change,
        reasons,
        (skill_low, skill_high),
        (prior_low, prior_high),
        dominated,
    )


# What a registration did to the champion; recorded on the version (tag `sdft.outcome`) so that a sensor can find
# the candidates to retrain.
PROMOTED = "promoted"
ALREADY_CHAMPION = "already_champion"
GATE_FAILED = "gate_failed"
CHAMPION_MOVED_ON = "champion_moved_on"


@dataclass(frozen=True)
class ChampionOutcome:
    promote: bool  # make the candidate the champion
    summary: str  # what became of the champion, and why
    code: str  # PROMOTED, ALREADY_CHAMPION, GATE_FAILED or CHAMPION_MOVED_ON


def champion_outcome(
    decision: GateDecision, candidate: int, champion: int | None, parent: int | None, parent_label: str
) -> ChampionOutcome:
    """What the gate's decision on registry version `candidate` does to the champion (`champion`: its version now,
    None without one; `parent`: the version the candidate was trained from, None for the base model).

    A candidate that passed replaces the champion only when it was trained from it: the champion may have moved on
    while the candidate trained, and promoting the candidate then would drop the skills the newer champion learned.
    Such a candidate is CHAMPION_MOVED_ON: its skill is retrained from the new champion, not dropped.
    """
    if not decision.passed:
        return ChampionOutcome(False, f"champion unchanged ({champion or 'none'}): {decision.summary()}", GATE_FAILED)
    if champion == candidate:
        return ChampionOutcome(False, f"already champion: {decision.summary()}", ALREADY_CHAMPION)
    if champion != parent:
        return champion_moved_on(champion, parent_label)
    return ChampionOutcome(True, f"promoted to champion (was {champion or 'none'}): {decision.summary()}", PROMOTED)


def champion_moved_on(champion: int | None, parent_label: str) -> ChampionOutcome:
    """A candidate that passed its gate against `parent_label`, which is no longer the champion."""
    return ChampionOutcome(
        False,
        f"champion unchanged ({champion or 'none'}): the candidate was trained from "
        f"{parent_label}, not the current champion; its skill is retrained from the champion",
        CHAMPION_MOVED_ON,
    )


def needs_retrain_from_champion(outcome: str | None, trained_md5: str | None, current_md5: str, held: bool) -> bool:
    """Retrain a skill from the champion when its newest registered version passed its gate but found the champion
    moved on, on the skill's current data, and no version in the champion's ancestry holds the skill at that data
    (`held`). A failed gate is not retried: the data or the settings must change first."""
    return outcome == CHAMPION_MOVED_ON and trained_md5 == current_md5 and not held
