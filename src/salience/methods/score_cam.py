"""Score-CAM: channels weighted by the score of the input masked with each of them."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..arrays import channels_last
from ..model import CONVOLUTION_LAYER_VALUES, OUTPUT_LAYER_VALUES, Model
from ..numeric import ONE_THREAD_PRODUCT, one_blas_thread_unless, softmax_rows
from ..schedule import overlap_for_array_work, run_rows
from .base import collect_rows
from .cam_base import CAMMethod, bilinear_matrix, finish_maps, layer_arrays, weighted_channel_sum
from .masking import apply_masks, image_size

__all__ = ["ScoreCAM", "channel_masks", "score_cam_weights"]


class ScoreCAM(CAMMethod):
    """``ReLU(sum_k w_k A_k)`` with ``w = softmax_k(score(x * M_k))``.

    Each channel ``A_k`` of the layer, upsampled to the input's size and
    scaled to [0, 1], is a mask ``M_k``; the model's score for the input
    multiplied by that mask says how much the region the channel sees
    supports the target, and the softmax over channels turns those scores
    into weights (the paper's Algorithm 1).  No gradients are needed: one
    layer row per image, then one forward row per image and channel, all
    masked inputs of all images sent through the row scheduler in chunks of
    ``batch_size`` (built one chunk at a time).

    Parameters
    ----------
    align_corners : bool
        How channels are upsampled to masks (bilinear): True aligns the corner
        pixels, as PyTorch's ``UpsamplingBilinear2d`` does in pytorch-grad-cam;
        False aligns pixel centres (edges repeated), as PyTorch's
        ``interpolate(mode="bilinear")`` does by default.
    resize, broadcast
        As in :class:`salience.GradCAM`.
    batch_size : int
        Largest number of rows (layer rows, then masked inputs) per model call.

    References
    ----------
    Wang, Wang, Du, Yang, Zhang, Ding, Mardziel, Hu. "Score-CAM:
    Score-Weighted Visual Explanations for Convolutional Neural Networks",
    CVPR workshops 2020. https://arxiv.org/abs/1910.01279
    """

    name = "ScoreCAM"
    title = "Score-CAM"
    keys = (CONVOLUTION_LAYER_VALUES,)

    def __init__(self, align_corners: bool = True, resize: bool = True, broadcast: bool = False,
                 batch_size: int = 32) -> None:
        super().__init__(resize, broadcast, batch_size)
        self.align_corners = bool(align_corners)

    def _runs_one_call(self, n: int) -> bool:
        return False  # a layer call, then the masked inputs' calls

    def _explain(self, model: Model, x: np.ndarray, targets: np.ndarray | None) -> np.ndarray:
        is_last = channels_last(model)
        size = image_size(x, is_last)
        out = collect_rows(model, x, targets, [CONVOLUTION_LAYER_VALUES], self.batch_size,
                           self.name)
        values, _ = layer_arrays(out[CONVOLUTION_LAYER_VALUES], None, is_last, self.title)
        n, k = values.shape[:2]
        owners = np.repeat(np.arange(n), k)  # row r: image r // k masked by channel r % k
        scores = np.empty(n * k)
        # All of a run's masks in one call when they are small (that call's two products
        # and four passes cost about the same for 16 masks as for 8): one 32 px image's
        # 16 masks at batch_size=8, 1.26 -> 1.22-1.24x the tiny CNN's floor.  Larger
        # ones a chunk at a time, spread over the chunks as the helper thread needs them
        # (32 images' masks in blocks of 256 read 1.17x slower than in chunks of 64).
        every_mask = None
        if len(owners) * size[0] * size[1] <= _ALL_MASKS_VALUES:
            every_mask = channel_masks(values.reshape(n * k, *values.shape[2:]), size,
                                       self.align_corners, dtype=x.dtype)

        def make_rows(start: int, stop: int) -> np.ndarray:
            masks = every_mask[start:stop] if every_mask is not None else channel_masks(
                values[owners[start:stop], np.arange(start, stop) % k], size,
                self.align_corners, dtype=x.dtype)
            return apply_masks(x, owners[start:stop], masks, is_last)

        def consume(start: int, stop: int, outputs: Mapping[str, np.ndarray]) -> None:
            scores[start:stop] = outputs[OUTPUT_LAYER_VALUES]

        run_rows(model, [OUTPUT_LAYER_VALUES], owners, make_rows, consume, targets,
                 self.batch_size, self.name,
                 overlap=overlap_for_array_work(self.batch_size, len(owners), x[0].size))
        weights = score_cam_weights(scores.reshape(n, k))
        cams = np.maximum(weighted_channel_sum(weights, values), 0)
        return finish_maps(cams, x, is_last, self.resize, self.broadcast)


#: The most mask values Score-CAM makes in one call for a whole run (256 KiB of float32):
#: 64 masks of 32 x 32.
_ALL_MASKS_VALUES = 1 << 16

# Added to each upsampled channel's range before scaling it to [0, 1], as
# pytorch-grad-cam does: a channel that varies by rounding noise only gives a
# near-zero mask, not that noise stretched to [0, 1].
_SPAN_EPS = 1e-8


def channel_masks(channels: np.ndarray, size: tuple[int, int], align_corners: bool,
                  dtype: np.dtype | type = np.float64) -> np.ndarray:
    """Layer channels ``(m, h, w)`` upsampled (bilinear) to ``size``, each scaled to
    [0, 1] by its own minimum and range (plus ``_SPAN_EPS``; a constant channel
    gives an all-zero mask), in ``dtype``.

    The upsampling and scaling run in float64 whatever ``dtype`` (float32 weights
    would leave a constant channel a range of rounding noise, stretched to [0, 1]);
    the last division writes ``dtype`` directly, the same values as a cast after it.
    """
    (h, w), (height, width) = channels.shape[1:], size
    # small products (threads only contend), often below OpenBLAS's one-thread size
    with one_blas_thread_unless(height * max(h * w, w * width) < ONE_THREAD_PRODUCT):
        up = (bilinear_matrix(h, height, align_corners) @ channels
              @ bilinear_matrix(w, width, align_corners).T)
    flat = up.reshape(len(up), -1)
    low = flat.min(axis=1)[:, None, None]
    span = flat.max(axis=1)[:, None, None] - low
    up -= low
    return np.divide(up, span + _SPAN_EPS, out=np.empty(up.shape, dtype=dtype))


def score_cam_weights(scores: np.ndarray) -> np.ndarray:
    """Softmax over channels of the masked inputs' scores ``(n, k)``."""
    return softmax_rows(scores)
