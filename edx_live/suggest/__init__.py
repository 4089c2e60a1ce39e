"""Follow-up targets and stop advice: what to look at next, and when to stop. Pure: documents in, documents out."""

from .advice import AdviceOptions, stop_advice
from .targets import PLAN_NAME, TargetOptions, follow_up_targets, targets_document

__all__ = ["AdviceOptions", "PLAN_NAME", "TargetOptions", "follow_up_targets", "stop_advice", "targets_document"]
