"""TensorFlow pieces shared by ``salience.keras`` and ``salience.tf1``: Guided
Backprop's ReLU rule for the gradients of a graph.

TensorFlow looks up an op's own ``_gradient_function`` before the registered
gradient of its type when ``tf.gradients`` builds a backward graph, so the rule
is given to the graph's ``Relu`` and ``Relu6`` ops while their gradient ops are
built and taken back right after; the graph's ops are not otherwise changed,
and nothing global is.  The Keras adapter does this in a traced function's own
graph, which no other caller sees; ``salience.tf1`` in the user's graph, under
its graph-building lock.
"""

from __future__ import annotations

from typing import Any

from ._adapter import warn_caller

__all__ = ["guided_gradients"]

# Ops that run another function: ReLUs inside it get that function's own gradient.
_FUNCTION_OPS = frozenset({
    "PartitionedCall", "StatefulPartitionedCall", "If", "StatelessIf", "While",
    "StatelessWhile", "Case", "StatelessCase",
})
_RELU_OPS = frozenset({"Relu", "Relu6"})


def _guided_relu(op: Any, grad: Any) -> Any:
    """Backward of ``Relu`` under the guided rule: the incoming gradient's positive
    part, where the op's output is > 0 (TensorFlow's own rule on that part)."""
    import tensorflow as tf

    return tf.raw_ops.ReluGrad(gradients=tf.nn.relu(grad), features=op.outputs[0])


def _guided_relu6(op: Any, grad: Any) -> Any:
    """Backward of ``Relu6``: the same, where the output is strictly inside (0, 6)."""
    import tensorflow as tf

    return tf.raw_ops.Relu6Grad(gradients=tf.nn.relu(grad), features=op.outputs[0])


_GUIDED_RULES = {"Relu": _guided_relu, "Relu6": _guided_relu6}


def guided_gradients(graph: Any, y: Any, x: Any) -> Any:
    """``tf.gradients(y, x)[0]`` built in ``graph`` with Guided Backprop's rule for
    every ``Relu`` and ``Relu6`` op (None where ``y`` does not depend on ``x``).

    Raises ValueError when ReLUs run inside a function the override cannot reach
    (a called ``tf.function``, a SavedModel, a loop or branch); warns when the
    graph has no ReLU at all (the map is then the plain gradient).  The caller
    makes sure nobody else builds gradients in ``graph`` meanwhile.
    """
    import tensorflow as tf

    operations = graph.get_operations()
    for op in operations:
        if op.type in _FUNCTION_OPS and _calls_relus(graph, op):
            raise ValueError(
                f"Guided Backprop cannot reach the ReLUs inside {op.type} op {op.name!r} (a "
                "function the model calls: a tf.function, a SavedModel layer, a loop or a "
                "branch), so its guided gradient cannot be computed")
    changed = []
    try:
        for op in operations:
            if op.type in _RELU_OPS:
                if not hasattr(op, "_gradient_function"):  # pragma: no cover - other TF versions
                    raise RuntimeError(
                        "this TensorFlow version does not allow a per-op gradient override; "
                        "Guided Backprop needs TensorFlow >= 2.4")
                changed.append((op, op._gradient_function))
                op._gradient_function = _GUIDED_RULES[op.type]
        if not changed:
            warn_caller(
                "Guided Backprop found no Relu or Relu6 op in the graph, so the map equals "
                "the plain gradient")
        return tf.gradients(y, x)[0]
    finally:
        for op, previous in changed:
            op._gradient_function = previous


def _calls_relus(graph: Any, op: Any) -> bool:
    """Whether a function ``op`` runs (or any function those call) holds a ReLU op;
    True when a function cannot be looked up (better refused than wrongly guided)."""
    pending = list(_function_names(op.node_def))
    seen: set[str] = set()
    while pending:  # each function once
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            definition = graph._get_function(name).cached_definition
        except Exception:  # noqa: BLE001 - TF internals differ between versions
            return True
        for node in definition.node_def:
            if node.op in _RELU_OPS:
                return True
            pending.extend(_function_names(node))
    return False


def _function_names(node_def: Any) -> list[str]:
    names = []
    for value in node_def.attr.values():
        if value.HasField("func"):
            names.append(value.func.name)
        names.extend(f.name for f in value.list.func)
    return names
