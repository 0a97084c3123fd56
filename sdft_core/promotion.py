"""The promotion gate: a candidate becomes champion only if it learned the skill without forgetting."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class GateConfig:
    min_gain: float = 0.0  # new-skill score must reach parent + min_gain (fractions: 0.02 = 2 points)
    max_regression: float = 0.02  # prior-capability average may fall at most this much below the parent's


@dataclass
class GateDecision:
    passed: bool
    new_skill_gain: float
    prior_change: float
    reasons: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return ("promote: " if self.passed else "keep the champion: ") + "; ".join(self.reasons)


def promotion_gate(candidate_skill: float, parent_skill: float, candidate_prior: float, parent_prior: float,
                   config: GateConfig) -> GateDecision:
    gain, change = candidate_skill - parent_skill, candidate_prior - parent_prior
    learned = gain >= config.min_gain - 1e-12
    kept = change >= -config.max_regression - 1e-12
    reasons = [
        f"new skill {100 * candidate_skill:.1f} vs parent {100 * parent_skill:.1f} ({100 * gain:+.1f}; "
        f"needs >= {100 * config.min_gain:+.1f}): {'ok' if learned else 'FAILED'}",
        f"prior average {100 * candidate_prior:.1f} vs parent {100 * parent_prior:.1f} ({100 * change:+.1f}; "
        f"allowed >= {-100 * config.max_regression:+.1f}): {'ok' if kept else 'FAILED'}",
    ]
    return GateDecision(learned and kept, gain, change, reasons)
