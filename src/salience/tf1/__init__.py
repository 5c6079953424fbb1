"""Drop-in replacement for PAIR ``saliency.tf1``: ``import salience.tf1 as saliency``.

The same classes, ``GetMask(x_value, feed_dict=None, ...)`` signatures and
defaults as ``saliency==0.2.1``, running on ``tensorflow.compat.v1`` graphs of
current TensorFlow (build the graph inside ``with tf.Graph().as_default():``;
eager execution need not be disabled).  ``y`` is the explained score, one
value per row (e.g. ``logits[:, k]``), and ``x`` the input placeholder, batch
first.  The gradient ops are added to the graph once per object; the maps
are computed by the batch-first methods of :mod:`salience`, with the same
``session.run`` calls as PAIR (``Occlusion.GetMask(..., batch_size=n)`` is a
salience extension that runs up to ``n`` occluded copies at once).

:func:`wrap` turns a graph into a Model for the batch-first API
(``salience.IntegratedGradients().explain(salience.tf1.wrap(...), images)``).
"""

from ..core.xrai import XRAIOutput, XRAIParameters
from ..model import (
    CONVOLUTION_LAYER_VALUES,
    CONVOLUTION_OUTPUT_GRADIENTS,
    INPUT_OUTPUT_GRADIENTS,
    OUTPUT_LAYER_VALUES,
)
from ..visualize import visualize_image_diverging as VisualizeImageDiverging
from ..visualize import visualize_image_grayscale as VisualizeImageGrayscale
from ._model import TF1Model, wrap
from .base import X_SHAPE_ERROR_MESSAGE, Y_SHAPE_ERROR_MESSAGE, TF1CoreSaliency, TF1Saliency
from .methods import (
    XRAI,
    BlurIG,
    GradCam,
    GradientSaliency,
    GuidedBackprop,
    GuidedIG,
    IntegratedGradients,
    Occlusion,
)

__all__ = [
    "TF1Saliency",
    "TF1CoreSaliency",
    "GradientSaliency",
    "IntegratedGradients",
    "BlurIG",
    "GuidedIG",
    "XRAI",
    "XRAIParameters",
    "XRAIOutput",
    "Occlusion",
    "GradCam",
    "GuidedBackprop",
    "VisualizeImageGrayscale",
    "VisualizeImageDiverging",
    "create_tf1_call_model_function",
    "wrap",
    "TF1Model",
    "X_SHAPE_ERROR_MESSAGE",
    "Y_SHAPE_ERROR_MESSAGE",
    "CONVOLUTION_LAYER_VALUES",
    "CONVOLUTION_OUTPUT_GRADIENTS",
    "INPUT_OUTPUT_GRADIENTS",
    "OUTPUT_LAYER_VALUES",
]


def create_tf1_call_model_function(graph, session, y, x, conv_layer=None):
    """A PAIR ``call_model_function`` running the graph; ``call_model_args`` is the
    feed_dict (see :func:`wrap` for the arguments)."""
    return wrap(graph, session, y, x, conv_layer=conv_layer).call_model_function()

