"""LIME and Kernel SHAP on superpixels: exact answers on additive models, the
solvers, and agreement with Captum's ``Lime`` / ``KernelShap`` given the same
feature mask and the coalitions Captum drew (recorded from its fit)."""

from __future__ import annotations

import numpy as np
import pytest

import salience
from salience.methods.kernel_shap import draw_shapley_coalitions, kernel_shap_values
from salience.methods.lime import cosine_kernel, weighted_lasso
from salience.model import OUTPUT_LAYER_VALUES

SQUARES = (np.arange(8)[:, None] // 2) * 4 + np.arange(8)[None, :] // 2  # 16 2x2 features


def feature_contributions(linear, image, target, labels, baseline=0.0):
    """For score = sum(V_t * x): each feature's share V_t . (x - baseline) over its pixels."""
    terms = (linear.V[target] * (image - baseline)).sum(axis=-1)
    return np.array([terms[labels == k].sum() for k in range(labels.max() + 1)])


@pytest.mark.parametrize("cls", [salience.KernelSHAP, salience.LIME])
@pytest.mark.parametrize("baseline", [0.0, 0.3])
def test_an_additive_model_gets_each_features_contribution(cls, baseline, linear, images):
    # score(x) is linear, so every coalition's score is exactly f(b) + z . contributions:
    # any unpenalised least-squares fit recovers the contributions, whatever the weights.
    targets = np.array([0, 2, 1])
    extra = {"alpha": 0.0} if cls is salience.LIME else {}
    maps = cls(n_samples=60, feature_mask=SQUARES, baseline=baseline, seed=0, batch_size=25,
               **extra).explain(linear, images, targets)
    assert maps.shape == images.shape
    for i in range(3):
        expected = feature_contributions(linear, images[i], targets[i], SQUARES, baseline)
        np.testing.assert_allclose(maps[i, :, :, 0], expected[SQUARES], rtol=1e-9, atol=1e-10)
        np.testing.assert_array_equal(maps[i, :, :, 0], maps[i, :, :, 2])


def test_kernel_shap_values_add_up_to_the_score_difference(analytic, images):
    targets = np.array([1, 0, 2])
    maps = salience.KernelSHAP(n_samples=50, feature_mask=SQUARES, baseline=0.0,
                               seed=3).explain(analytic, images, targets)
    gap = analytic.score(images, targets) - analytic.score(np.zeros_like(images), targets)
    per_feature = np.array([[m[SQUARES == k, 0][0] for k in range(16)] for m in maps])
    np.testing.assert_allclose(per_feature.sum(axis=1), gap, rtol=1e-10)


def test_kernel_shap_values_with_fewer_coalitions_than_features_take_the_least_norm():
    # 12 coalitions of 30 features: many exact fits; the values are the one of least
    # norm among them (the constraint substituted), as an SVD-based solver finds it.
    rng = np.random.default_rng(0)
    z = (rng.uniform(size=(12, 30)) < 0.5).astype(float)
    scores, full, empty = rng.normal(size=12), 1.5, -0.25
    phi = kernel_shap_values(z, scores, full, empty)
    assert phi.sum() == pytest.approx(full - empty, rel=1e-12)
    np.testing.assert_allclose(empty + z @ phi, scores, atol=1e-10)  # an exact fit
    design, rhs = z[:, :-1] - z[:, -1:], scores - empty - z[:, -1] * (full - empty)
    least_norm = np.linalg.pinv(design) @ rhs
    np.testing.assert_allclose(phi[:-1], least_norm, atol=1e-10)


def test_shapley_coalitions_start_full_and_empty_and_follow_the_kernel():
    z = draw_shapley_coalitions(np.random.default_rng(0), 20002, 6)
    assert z[0].sum() == 6 and z[1].sum() == 0
    sizes = z[2:].sum(axis=1)
    assert sizes.min() >= 1 and sizes.max() <= 5
    kernel = np.array([5 / (k * (6 - k)) for k in range(1, 6)])
    observed = np.bincount(sizes, minlength=6)[1:] / len(sizes)
    np.testing.assert_allclose(observed, kernel / kernel.sum(), atol=0.01)
    by_feature = z[2:].mean(axis=0)  # within a size, every feature alike
    assert by_feature.max() - by_feature.min() < 0.02


def test_weighted_lasso_equals_scikit_learns():
    linear_model = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(0)
    z = (rng.uniform(size=(200, 12)) < 0.5).astype(float)
    y = z @ rng.normal(size=12) * 3 + rng.normal(size=200) * 0.1 + 2
    w = rng.uniform(0.1, 1, size=200)
    for alpha in (0.01, 0.3):
        coefficients, intercept = weighted_lasso(z, y, w, alpha)
        reference = linear_model.Lasso(alpha=alpha, tol=1e-12, max_iter=100000).fit(
            z, y, sample_weight=w)
        np.testing.assert_allclose(coefficients, reference.coef_, rtol=1e-8, atol=1e-10)
        assert abs(intercept - reference.intercept_) < 1e-8
        assert (coefficients == 0).any() or alpha < 0.1  # the penalty zeroes small weights


def test_weighted_lasso_with_fewer_samples_than_features_equals_scikit_learns():
    # LIME's usual regime at few samples: a rank-deficient Gram matrix, correlated
    # features, supports that are singular on the way (the active-set steps' hard case)
    linear_model = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(1)
    for n, k in ((24, 50), (12, 40)):
        z = (rng.uniform(size=(n, k)) < 0.5).astype(float)
        y = z @ rng.normal(size=k) * 0.1 + rng.normal(size=n) * 0.05
        w = rng.uniform(0.1, 1, size=n)
        coefficients, intercept = weighted_lasso(z, y, w, 0.01)
        reference = linear_model.Lasso(alpha=0.01, tol=1e-14, max_iter=10**6).fit(
            z, y, sample_weight=w)
        assert 0 < (coefficients != 0).sum() < n
        np.testing.assert_allclose(coefficients, reference.coef_, rtol=1e-7, atol=1e-9)
        assert abs(intercept - reference.intercept_) < 1e-8


def test_weighted_lasso_warns_when_it_runs_out_of_sweeps():
    rng = np.random.default_rng(2)
    z = (rng.uniform(size=(30, 20)) < 0.5).astype(float)
    y = z @ rng.normal(size=20)
    with pytest.warns(RuntimeWarning, match="did not converge in 1 sweeps"):
        weighted_lasso(z, y, np.ones(30), 0.01, max_sweeps=1)


def test_batch_size_and_batching_images_do_not_change_maps(analytic, images):
    z = (np.random.default_rng(4).uniform(size=(30, 16)) < 0.5).astype(int)
    together = salience.LIME(feature_mask=SQUARES, coalitions=z, batch_size=7).explain(
        analytic, images, 1)
    analytic.calls = 0
    for i in range(3):
        alone = salience.LIME(feature_mask=SQUARES, coalitions=z, batch_size=64).explain(
            analytic, images[i:i + 1], 1)
        np.testing.assert_allclose(together[i:i + 1], alone, rtol=1e-9, atol=1e-12)
    assert analytic.calls == 3


class SquaredSum:
    """score(x) = (w . x)^2: not additive over features, so the fit depends on the
    coalitions drawn (an additive model gets its exact answer from any of them)."""

    channels_last = True

    def __init__(self, shape=(8, 8, 3)):
        self.w = np.random.default_rng(5).normal(size=int(np.prod(shape)))

    def __call__(self, x, targets, keys):
        return {OUTPUT_LAYER_VALUES: (x.reshape(len(x), -1) @ self.w) ** 2}


@pytest.mark.parametrize("cls", [salience.LIME, salience.KernelSHAP])
def test_one_feature_mask_per_image(cls, images):
    # (n, H, W) masks: image i is explained on its own mask, as if alone.
    model = SquaredSum()
    z = (np.random.default_rng(6).uniform(size=(30, 16)) < 0.5).astype(int)
    z[0], z[1] = 1, 0  # the image and the baseline, which Kernel SHAP needs
    masks = np.stack([SQUARES, SQUARES.T, 15 - SQUARES])
    extra = {"alpha": 0.0} if cls is salience.LIME else {}
    together = cls(feature_mask=masks, coalitions=z, batch_size=7, **extra).explain(
        model, images, None)
    for i in range(3):
        alone = cls(feature_mask=masks[i], coalitions=z, batch_size=64, **extra).explain(
            model, images[i:i + 1], None)
        assert np.abs(alone).max() > 0
        np.testing.assert_allclose(together[i:i + 1], alone, rtol=1e-9, atol=1e-12)
    shared = cls(feature_mask=SQUARES, coalitions=z, batch_size=7, **extra).explain(
        model, images, None)
    assert not np.allclose(together[1], shared[1])  # image 1 did use its own mask


@pytest.mark.parametrize("cls", [salience.LIME, salience.KernelSHAP])
def test_drawn_coalitions_come_from_one_stream_in_image_order(cls, images):
    # Each image's features and coalitions are made when its first row is built
    # (beside the model's calls for earlier images): the draws must still be those
    # of one stream taken image after image, on each image's own superpixels.
    from salience.methods.surrogate import superpixels
    from salience.numeric import as_random_state

    analytic = SquaredSum()
    extra = {"alpha": 0.0} if cls is salience.LIME else {}
    method = cls(n_samples=40, n_segments=6, seed=7, batch_size=9, **extra)
    together = method.explain(analytic, images, None)
    rng = as_random_state(7)
    for i, labels in enumerate(superpixels(images, 6)):
        design = method._draw(rng, len(np.unique(labels)))
        alone = cls(feature_mask=labels, coalitions=design, batch_size=64, **extra).explain(
            analytic, images[i:i + 1], None)
        assert np.abs(alone).max() > 0
        np.testing.assert_allclose(together[i:i + 1], alone, rtol=1e-9, atol=1e-12)


def test_default_features_are_slic_superpixels(analytic, images):
    maps = salience.KernelSHAP(n_samples=40, n_segments=6, seed=0).explain(analytic, images, 0)
    from salience.methods.surrogate import superpixels

    for i, labels in enumerate(superpixels(images, 6)):
        assert 2 <= labels.max() + 1 <= 12
        for k in range(labels.max() + 1):  # one value per superpixel
            assert np.ptp(maps[i, :, :, 0][labels == k]) == 0


def test_gray_and_channels_first_images(model_classes):
    analytic_cls, _ = model_classes
    gray = np.random.default_rng(0).normal(size=(2, 8, 8))
    maps = salience.LIME(n_samples=30, n_segments=4, seed=0).explain(
        analytic_cls(shape=(8, 8)), gray, 0)
    assert maps.shape == (2, 8, 8) and np.isfinite(maps).all()
    first = analytic_cls(shape=(3, 8, 8), channels_last=False)
    x = np.random.default_rng(1).normal(size=(2, 3, 8, 8))
    maps = salience.KernelSHAP(n_samples=30, feature_mask=SQUARES, seed=0).explain(first, x, 0)
    assert maps.shape == x.shape
    np.testing.assert_array_equal(maps[:, 0], maps[:, 2])


@pytest.mark.parametrize("baseline", [0.0, 0.7])
def test_cosine_kernel_equals_the_cosine_of_the_masked_copies(baseline):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(5, 6, 7, 3))
    masks = rng.uniform(size=(5, 6, 7)) * (rng.uniform(size=(5, 6, 7)) < 0.6)
    masks[0] = 0  # all hidden
    copies = baseline + (images - baseline) * masks[..., None]
    a, b = images.reshape(5, -1), copies.reshape(5, -1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosine = np.where(norms > 0, (a * b).sum(axis=1) / np.where(norms > 0, norms, 1), 0)
    got = np.array([
        cosine_kernel((image**2).sum(-1).ravel(), image.sum(-1).ravel(), 3, baseline,
                      mask.reshape(1, -1), 0.8)[0]
        for image, mask in zip(images, masks)])
    # one image, several masks in one call
    together = cosine_kernel((images[1]**2).sum(-1).ravel(), images[1].sum(-1).ravel(), 3,
                             baseline, masks.reshape(5, -1), 0.8)
    assert together[1] == pytest.approx(got[1], rel=1e-12)
    np.testing.assert_allclose(got, np.exp(-((1 - cosine) ** 2) / (2 * 0.8**2)), rtol=1e-12)
    if baseline == 0:
        assert got[0] == pytest.approx(np.exp(-1 / (2 * 0.8**2)))  # zero copy: similarity 0


@pytest.mark.parametrize("baseline", [0.0, 0.7])
def test_cosine_kernel_of_coalitions_equals_that_of_their_pixel_masks(baseline):
    # What LIME computes per row: the kernel from K per-feature sums instead of
    # H x W per-pixel ones; the same numbers up to summation order.
    rng = np.random.default_rng(1)
    image = rng.normal(size=(6, 7, 3))
    labels = rng.integers(0, 5, size=(6, 7))
    labels[0, :5] = np.arange(5)  # every feature present
    coalitions = rng.integers(0, 2, size=(9, 5)).astype(np.int8)
    coalitions[0] = 0
    squares, sums = (image**2).sum(-1).ravel(), image.sum(-1).ravel()
    by_pixel = cosine_kernel(squares, sums, 3, baseline,
                             coalitions[:, labels].reshape(9, -1), 0.8)
    flat = labels.ravel()
    by_feature = cosine_kernel(np.bincount(flat, squares), np.bincount(flat, sums), 3, baseline,
                               coalitions, 0.8, np.bincount(flat))
    np.testing.assert_allclose(by_feature, by_pixel, rtol=1e-12)
    assert len(np.unique(by_pixel.round(12))) > 3  # the coalitions give different weights


# ----------------------------------------------------------------- Captum

torch = pytest.importorskip("torch")


class _Recording:
    """A Captum interpretable model that keeps the data it is fitted on (coalitions,
    scores and weights, as Captum drew and computed them) and fits the wrapped one."""

    def __init__(self, inner):
        self.inner = inner
        self.batches = None

    def fit(self, loader):
        self.batches = [batch for batch in loader]
        return self.inner.fit(self.batches)

    def representation(self):
        return self.inner.representation()

    def data(self):
        assert len(self.batches) == 1
        return [t.numpy() for t in self.batches[0]]


@pytest.fixture(scope="module")
def captum_setup():
    pytest.importorskip("captum")
    pytest.importorskip("sklearn")
    import salience.torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4),
        torch.nn.Flatten(), torch.nn.Linear(128, 5)).double().eval()
    with torch.no_grad():
        net[-1].weight.mul_(100)  # scores that vary enough for Lasso(alpha=0.01) to keep terms
    x = np.random.default_rng(0).uniform(size=(1, 3, 16, 16))
    mask = (np.arange(16)[:, None] // 4) * 4 + np.arange(16)[None, :] // 4
    model = salience.torch.wrap(net)
    target = int(model.predict(x).argmax())
    return net, model, x, mask, target


@pytest.mark.parametrize("solver_tol, rtol", [
    # Lasso solved until float32 rounding dominates (Captum fits float32 copies of the
    # data; a tighter tol stalls there), so coefficients agree to float32 precision.
    (1e-7, 1e-5),
    # Captum's default Lasso stops once its duality gap is below 1e-4 x the squared
    # norm of the centred scores: the objective is that close, coefficients within
    # about 1e-3 of their scale.
    (None, 1e-3),
])
def test_lime_equals_captums_given_its_coalitions(captum_setup, solver_tol, rtol):
    from captum._utils.models.linear_model import SkLearnLasso
    from captum.attr import Lime

    net, model, x, mask, target = captum_setup
    lasso = SkLearnLasso(alpha=0.01) if solver_tol is None else SkLearnLasso(
        alpha=0.01, tol=solver_tol, max_iter=100000)
    recording = _Recording(lasso)
    torch.manual_seed(1)
    theirs = Lime(net, interpretable_model=recording).attribute(
        torch.tensor(x), target=target, feature_mask=torch.tensor(mask)[None, None],
        n_samples=300, perturbations_per_eval=64).numpy()
    coalitions, scores, weights = recording.data()
    ours = salience.LIME(feature_mask=mask, coalitions=coalitions.astype(int)).explain(
        model, x, target)
    scale = np.abs(theirs).max()
    assert scale > 0 and (theirs != 0).sum() > theirs.size / 4
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=rtol * scale)
    # the weights are Captum's cosine kernel (computed in float32 there)
    pixel_masks = coalitions[:, mask].reshape(len(coalitions), -1)
    image = np.moveaxis(x[0], 0, -1).reshape(-1, 3)
    squares, sums = (image**2).sum(axis=1), image.sum(axis=1)
    ours_w = cosine_kernel(squares, sums, 3, 0.0, pixel_masks, 1.0)
    np.testing.assert_allclose(ours_w, weights, rtol=1e-6)


def test_kernel_shap_equals_captums_given_its_coalitions(captum_setup):
    from captum._utils.models.linear_model import SkLearnLinearRegression
    from captum.attr import KernelShap

    net, model, x, mask, target = captum_setup
    explainer = KernelShap(net)
    recording = _Recording(SkLearnLinearRegression())
    explainer.interpretable_model = recording
    torch.manual_seed(2)
    theirs = explainer.attribute(
        torch.tensor(x), target=target, feature_mask=torch.tensor(mask)[None, None],
        n_samples=300, perturbations_per_eval=64).numpy()
    coalitions, _, weights = recording.data()
    assert weights[0] == weights[1] == 1e6  # Captum's stand-in for the exact constraint
    ours = salience.KernelSHAP(feature_mask=mask, coalitions=coalitions.astype(int)).explain(
        model, x, target)
    # float32 data in Captum's fit, and its 1e6 weights in place of the constraint.
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-5 * np.abs(theirs).max())
