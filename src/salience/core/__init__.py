"""Drop-in replacement for PAIR ``saliency.core``: ``import salience.core as saliency``.

Same classes, methods, arguments, defaults and constants as ``saliency==0.2.1``,
the same calls to ``call_model_function`` (rows per call, order, keys) and the
same numbers on the same inputs; the work is done by the batch-first methods
of :mod:`salience`.  ``Occlusion.GetMask(..., batch_size=n)`` is a salience
extension that sends up to ``n`` rows per call; the batch-first API
(``salience.Occlusion``, ``salience.SmoothGrad``, ...) packs rows freely.
"""

from ..visualize import visualize_image_diverging as VisualizeImageDiverging
from ..visualize import visualize_image_grayscale as VisualizeImageGrayscale
from .base import (
    CONVOLUTION_LAYER_VALUES,
    CONVOLUTION_OUTPUT_GRADIENTS,
    INPUT_OUTPUT_GRADIENTS,
    OUTPUT_LAYER_VALUES,
    SHAPE_ERROR_MESSAGE,
    CoreSaliency,
)
from .guided_ig import GuidedIG
from .methods import BlurIG, GradCam, GradientSaliency, IntegratedGradients, Occlusion
from .xrai import XRAI, XRAIOutput, XRAIParameters

__all__ = [
    "CoreSaliency",
    "GradientSaliency",
    "IntegratedGradients",
    "BlurIG",
    "Occlusion",
    "GradCam",
    "GuidedIG",
    "XRAI",
    "XRAIParameters",
    "XRAIOutput",
    "CONVOLUTION_LAYER_VALUES",
    "CONVOLUTION_OUTPUT_GRADIENTS",
    "INPUT_OUTPUT_GRADIENTS",
    "OUTPUT_LAYER_VALUES",
    "SHAPE_ERROR_MESSAGE",
    "VisualizeImageGrayscale",
    "VisualizeImageDiverging",
]
