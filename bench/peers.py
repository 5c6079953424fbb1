"""Peer libraries of the new methods for the benchmarks: pytorch-grad-cam (CAM
family) and Captum (Input x Gradient, Lime, KernelShap), each as a callable doing
the same work as salience on the same module, images, targets and settings.

pytorch-grad-cam 1.5.x imports torchvision at module level for preprocessing,
SESS and detection targets, none of which its CAM classes use; no torchvision can
be installed beside the pinned torch, so when it is missing a stand-in holding
only the imported names is registered first (the CAM classes never touch it; the
tests assert as much).
"""

from __future__ import annotations

import functools
import importlib.util
import sys
import types
from typing import Any

import numpy as np

__all__ = ["captum_input_x_gradient", "captum_surrogate", "grad_cam_peer", "pytorch_grad_cam"]


@functools.lru_cache(maxsize=1)
def pytorch_grad_cam() -> Any:
    """The ``pytorch_grad_cam`` module, or None when grad-cam is not installed."""
    if importlib.util.find_spec("pytorch_grad_cam") is None:
        return None
    if importlib.util.find_spec("torchvision") is None:
        _register_torchvision_stand_in()
    import pytorch_grad_cam
    import pytorch_grad_cam.score_cam

    # Score-CAM draws a progress bar per image; off, so the bench log stays readable.
    pytorch_grad_cam.score_cam.tqdm = types.SimpleNamespace(tqdm=lambda it, **_: it)
    return pytorch_grad_cam


def _register_torchvision_stand_in() -> None:
    def unusable(*_args, **_kwargs):
        raise RuntimeError("the torchvision stand-in of the benchmarks was used")

    names = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional",
             "torchvision.ops")
    modules = {name: types.ModuleType(name) for name in names}
    for attr in ("Compose", "Normalize", "ToTensor"):
        setattr(modules["torchvision.transforms"], attr, unusable)
    modules["torchvision.transforms.functional"].resize = unusable
    modules["torchvision.ops"].box_iou = unusable
    modules["torchvision"].transforms = modules["torchvision.transforms"]
    modules["torchvision"].ops = modules["torchvision.ops"]
    modules["torchvision.transforms"].functional = modules["torchvision.transforms.functional"]
    sys.modules.update(modules)


def grad_cam_peer(class_name: str):
    """``make(setup, best)`` -> a callable running pytorch-grad-cam's ``class_name``
    on the setup's images and targets (its rescaled, resized maps), or None."""

    def make(setup, best: int):
        lib = pytorch_grad_cam()
        if lib is None:
            return None
        import torch
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        from salience.torch import find_layer

        layer = find_layer(setup.module, setup.layer_name)
        x = torch.as_tensor(setup.x)
        targets = [ClassifierOutputTarget(int(t)) for t in setup.targets]

        def run():
            # Built per call: its hooks stay on the layer until released, and would
            # otherwise also run (and keep activations) in salience's and the floor's calls.
            with getattr(lib, class_name)(model=setup.module, target_layers=[layer]) as cam:
                cam.batch_size = best  # Score-CAM's masked inputs per forward
                return cam(input_tensor=x, targets=targets)

        return run

    return make


def captum_input_x_gradient(setup, best: int):
    import torch
    from captum.attr import InputXGradient

    algo = InputXGradient(setup.module)
    x, t = torch.as_tensor(setup.x), torch.as_tensor(setup.targets)
    return lambda: algo.attribute(x, target=t)


def captum_surrogate(kind: str, n_samples: int, n_segments: int):
    """Captum's ``Lime`` or ``KernelShap`` with ``n_samples`` on the SLIC superpixels
    salience makes by default (segmented inside the timed call, as salience does),
    one image per call (Captum fits one model per example)."""

    def make(setup, best: int):
        import torch
        from captum.attr import KernelShap, Lime

        from salience.methods.surrogate import superpixels

        algo = (Lime if kind == "lime" else KernelShap)(setup.module)
        x = torch.as_tensor(setup.x)

        def run():
            masks = superpixels(np.moveaxis(setup.x, 1, -1), n_segments)
            return [algo.attribute(x[i:i + 1], target=int(setup.targets[i]),
                                   feature_mask=torch.as_tensor(masks[i])[None, None],
                                   n_samples=n_samples, perturbations_per_eval=best)
                    for i in range(len(x))]

        return run

    return make
