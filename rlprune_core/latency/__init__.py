"""Latency, measured on the target: where (:mod:`.target`), how (:mod:`.timing`), a table a search can
price thousands of candidates with (:mod:`.table`), and the report's before/after comparison
(:mod:`.comparison`). The latency budget that uses them is :class:`rlprune_core.budgets.LatencyBudget`."""
