"""XRAI: region-level attribution.

- :mod:`.segments`: candidate regions (Felzenszwalb at several scales, masks,
  dilation), pure functions of one image;
- :mod:`.ranking`: the greedy ('full') and one-shot ('fast') rankings and the
  heatmap, pure functions of one attribution map and its masks;
- :mod:`.method`: :class:`XRAI`, which computes IG while worker threads segment.
"""

from .method import XRAI, XRAIResult
from .ranking import xrai_regions
from .segments import FELZENSZWALB_SCALES, SegmentMasks, felzenszwalb_masks

__all__ = [
    "XRAI",
    "XRAIResult",
    "SegmentMasks",
    "felzenszwalb_masks",
    "xrai_regions",
    "FELZENSZWALB_SCALES",
]
