"""The plugin's own hooks: custom attacks, model and data loaders, and result sinks.

Implement them in the rootdir ``conftest.py`` or an installed plugin, exactly like pytest's
hooks (an implementation may take any subset of the parameters named here; specs only ever
gain parameters). The built-in attacks and loaders go through these same hooks (as
``trylast`` implementations), so a user's implementation always wins. Outside pytest,
:func:`pytest_advrobust.evaluate` loads the ``conftest.py`` next to the pyproject.toml and
any ``plugins=`` it is given, so the same hooks apply.
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
    scores), ``stats`` (a dict kept for the whole pass and stored in the result) and
    ``state`` (what its ``fit`` function returned). Options arrive with ``-`` -> ``_``;
    check keys not declared in ``options`` are configuration errors. The engine projects
    the result onto the eps ball and clips it to ``input-range``. A name that is already
    registered keeps its first registration, and users' hooks run before the built-ins, so
    registering ``"fgsm"`` replaces the built-in FGSM.
    """


@hookspec(firstresult=True)
def pytest_advrobust_load_model(spec: "ModelSpec", config: Any) -> "Classifier | Any | None":
    """Load the model ``spec.model`` for ``spec`` (a :class:`~pytest_advrobust.ModelSpec`), or
    return None to leave it to the next loader.

    Return a :class:`~pytest_advrobust.models.base.Classifier`, or a torch module (any
    callable from a raw-unit batch to ``[batch, classes]`` scores), which is wrapped with
    the spec's ``input-range``, ``normalize`` and ``output-kind``. The first non-None answer
    wins; the built-in loader (TorchScript, ``torch.export``, factories, ONNX) runs last.
    When this hook is implemented, ``model`` references the built-in loader does not know
    (``model = "keras://digits"``) pass configuration checks for the hook to claim.
    ``config`` is the pytest config, or None outside pytest.
    """


@hookspec(firstresult=True)
def pytest_advrobust_load_data(spec: "ModelSpec", config: Any) -> Any:
    """The evaluation data for ``spec`` (``spec.data`` names it), or None to leave it to the
    built-in sources (a ``.npz`` file, ``"pkg.module:callable"``).

    Return ``(inputs, labels)`` (numpy arrays or torch tensors) or an iterable of such
    batches; it is called once per pass over the data and validated like the built-in
    sources. When this hook is implemented, ``data`` references the built-ins do not know
    pass configuration checks. ``config`` is the pytest config, or None outside pytest.
    """


@hookspec
def pytest_advrobust_result(result: "AttackResult") -> None:
    """Called with every gate result as soon as it is computed and judged (a hand-written
    test's ``advrobust`` fixture calls are its own business and are not reported), in the process that computed it (an xdist worker, under ``-n``):
    send it to a dashboard, MLflow, a chat channel."""
