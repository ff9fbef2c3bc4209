"""The plugin's own hooks: custom attacks, model loaders and result sinks.

Implement them in a ``conftest.py`` or an installed plugin, exactly like pytest's hooks.
The built-in attacks and loaders go through these same hooks (as ``trylast``
implementations), so a user's implementation always wins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .attacks import AttackRegistry
    from .config import ModelSpec
    from .models.base import Classifier
    from .results import AttackResult

hookspec = pluggy.HookspecMarker("pytest")


@hookspec
def pytest_advrobust_add_attacks(registry: "AttackRegistry") -> None:
    """Register attacks by name, for use as ``attack = "NAME"`` in ``[[tool.advrobust.checks]]``.

    ``registry.attack("shift", options={"direction": 1.0})`` returns a decorator for a
    function ``perturb(model, x, y, eps, rng, **options)`` that returns the perturbed batch.
    It may take any subset of these arguments, plus ``grad`` (the input gradient of the
    loss at ``x``, computed once per batch and shared), ``scores`` (the clean class
    scores), ``stats`` (a dict whose numbers are summed into the report) and ``state``
    (what its ``fit`` function returned). The engine projects the result onto the eps ball
    and clips it to ``input-range``.
    """


@hookspec(firstresult=True)
def pytest_advrobust_load_model(spec: "ModelSpec", config: Any) -> "Classifier | None":
    """Load the model ``spec.model`` as a :class:`~pytest_advrobust.Classifier`, or return None.

    The first non-None answer wins; the built-in loader (TorchScript, ``torch.export``,
    factories, ONNX) runs last. ``config`` is the pytest config, or None outside pytest.
    """


@hookspec
def pytest_advrobust_result(result: "AttackResult") -> None:
    """Called with every gate result as soon as it is computed (send it to a dashboard)."""
