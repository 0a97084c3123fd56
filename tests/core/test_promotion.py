import pytest

from sdft_core.promotion import GateConfig, promotion_gate


@pytest.mark.parametrize("candidate_skill, candidate_prior, passed, failed_parts", [
    (0.60, 0.50, True, []),
    (0.55, 0.48, True, []),  # exactly parent + min_gain and parent - max_regression: inclusive
    (0.549, 0.50, False, ["new skill"]),
    (0.60, 0.479, False, ["prior average"]),
    (0.40, 0.30, False, ["new skill", "prior average"]),
])
def test_gate_needs_the_gain_and_tolerates_only_the_allowed_regression(candidate_skill, candidate_prior, passed,
                                                                        failed_parts):
    decision = promotion_gate(candidate_skill, 0.50, candidate_prior, 0.50, GateConfig(min_gain=0.05,
                                                                                       max_regression=0.02))
    assert decision.passed is passed
    assert decision.new_skill_gain == pytest.approx(candidate_skill - 0.50)
    assert decision.prior_change == pytest.approx(candidate_prior - 0.50)
    failed = [reason.split(" ")[0] + (" skill" if reason.startswith("new") else " average")
              for reason in decision.reasons if reason.endswith("FAILED")]
    assert failed == failed_parts
    assert decision.summary().startswith("promote" if passed else "keep the champion")
