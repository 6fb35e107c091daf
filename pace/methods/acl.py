"""ACL (Zhuang et al., NeurIPS 2022): analytic class-incremental learning.

A frozen backbone (ACL trains it on the base session only; here optional FSA plays that part), a
ReLU random "buffer" expansion, and a recursive least-squares head: R and W are updated with the
Woodbury identity each session (the paper's Eq. 2-3), with a fixed regularisation gamma. The result
equals the joint ridge solution on all sessions, whatever the partition.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from pace.config import MethodConfig
from pace.methods.base import register_method
from pace.methods.parts import AnalyticConfig, FSAConfig
from pace.methods.ranpac import AnalyticLearner


class ACLConfig(MethodConfig):
    """Recursive (Woodbury) analytic learning with a fixed ridge gamma on a frozen backbone."""

    name: Literal["acl"] = "acl"
    SEARCH_SPACE: ClassVar[dict[str, dict[str, Any]]] = {
        # ACL's gamma; its backbone stays as pretrained (fsa off), as in the paper's comparison
        "analytic.lam": {"type": "log", "low": 0.01, "high": 1000.0},
    }
    fsa: FSAConfig = Field(default_factory=lambda: FSAConfig(enabled=False))
    analytic: AnalyticConfig = Field(default_factory=lambda: AnalyticConfig(
        form="recursive", ridge="fixed", lam=1.0, proj_dim=8192))


@register_method(ACLConfig)
class ACL(AnalyticLearner):
    pass
