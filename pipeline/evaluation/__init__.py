"""The evaluate stage's helpers: the evaluation sets, metrics, similarity, perplexity and the reply cache."""


class EvaluationSetError(ValueError):
    """An evaluation set (the held-out split or the anchor set) breaks a rule; the message names the set and rule.
    Raised before any model is loaded, so a broken set costs seconds, not a night."""
