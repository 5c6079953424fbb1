"""Guided Integrated Gradients.

- :mod:`.selection`: the selection step and the k-th smallest value, pure
  kernels on plain arrays (the paper's arithmetic): tuned for numpy, and once
  more over the few operations any framework's arrays offer (``ArrayOps``);
- :mod:`.walk`: the lockstep walk of every path around them (model rows,
  groups, buffers, the two halves that take turns with the model), on the host
  or on the model's device;
- :mod:`.method`: :class:`GuidedIG`, its parameters and baselines.
"""

from .method import GuidedIG

__all__ = ["GuidedIG"]
