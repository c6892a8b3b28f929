"""Names that live in two places agree: the spec's names with the registries that implement them, and the
documented error codes with the ones the code raises."""

from __future__ import annotations

import re
from typing import get_args

from rlprune_core import errors
from rlprune_core.agents import AGENTS
from rlprune_core.selection import CRITERIA, GLOBAL
from rlprune_core.spec import AgentName, BaselineName, CriterionName
from store.models import ServiceErrorCode

from ..support.paths import REPO


def test_the_spec_names_every_agent_and_criterion_there_is_and_no_other():
    assert set(get_args(AgentName)) == set(AGENTS)
    assert set(get_args(CriterionName)) == set(CRITERIA)
    assert set(get_args(BaselineName)) == {*CRITERIA, *(f"{c}@agent" for c in CRITERIA), GLOBAL}


def _codes() -> set[str]:
    raised = {cls.code for cls in vars(errors).values()
              if isinstance(cls, type) and issubclass(cls, errors.RlpruneError) and cls is not errors.RlpruneError}
    return raised | {code.value for code in ServiceErrorCode}


def test_the_api_documentation_lists_every_error_code_a_job_can_fail_with():
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", (REPO / "docs" / "api.md").read_text(), re.MULTILINE))
    assert _codes() <= documented, f"undocumented: {sorted(_codes() - documented)}"
