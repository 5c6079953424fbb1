"""Model-randomisation sanity check: do the maps change when the model's weights do?

The layers of a copy of the model are re-initialised one after the other,
from the output down to the input (cascading) or one at a time
(independent), and after each step the maps are compared with the maps of
the trained model by Spearman rank correlation (signed and of absolute
values) and SSIM.  A method whose maps stay the same explains the input, not
the model.  The caller's model is never changed: the check works on a copy
(``copy.deepcopy`` of a PyTorch module, ``clone_model`` of a Sequential or
functional Keras model), the global torch random state is restored
afterwards, and Keras initialisers are seeded explicitly.

References
----------
Adebayo, Gilmer, Muelly, Goodfellow, Hardt, Kim. "Sanity Checks for Saliency
Maps", NeurIPS 2018. https://arxiv.org/abs/1810.03292
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from .._adapter import layer_weights
from ..checks import as_float_batch, resolve_targets
from ..numeric import normalise01
from ._checks import as_map_batch

__all__ = ["SanityResult", "model_randomisation", "randomisable_layers", "rank_correlation",
           "ssim"]


@dataclass(frozen=True)
class SanityResult:
    """Similarity of the maps of randomised models to the trained model's maps.

    Attributes
    ----------
    layers : list of str
        The randomised layers, in the order they were randomised.
    cascading : bool
        True if the randomisations accumulate (layer k and all before it).
    spearman, spearman_abs, ssim : ndarray, shape (n_layers, n_images)
        Rank correlation of the maps, of their absolute values, and SSIM of
        the absolute maps scaled to [0, 1].
    maps : ndarray or None, shape (n_layers + 1, n_images, H, W)
        The 2-D maps of the trained model (first) and after each step, when
        asked for with ``keep_maps=True``.
    """

    layers: list[str]
    cascading: bool
    spearman: np.ndarray
    spearman_abs: np.ndarray
    ssim: np.ndarray
    maps: np.ndarray | None = field(default=None, repr=False)

    def as_rows(self) -> list[dict[str, Any]]:
        """The table: one dict per layer with the means over images."""
        return [
            {
                "layer": name,
                "spearman": float(np.nanmean(self.spearman[i])),
                "spearman_abs": float(np.nanmean(self.spearman_abs[i])),
                "ssim": float(np.nanmean(self.ssim[i])),
            }
            for i, name in enumerate(self.layers)
        ]


def randomisable_layers(model: Any) -> list[str]:
    """Names of the layers holding a weight matrix or kernel of their own
    (convolutions, dense/linear layers, embeddings), input to output.

    PyTorch: dotted names in ``named_modules()``; Keras: layer names.
    """
    return layer_weights(model).layers()


def model_randomisation(
    model: Any,
    method: Any,
    x: Any,
    targets: Any = None,
    *,
    layers: Sequence[str] | None = None,
    cascading: bool = True,
    seed: int = 0,
    wrap_kwargs: Mapping[str, Any] | None = None,
    keep_maps: bool = False,
) -> SanityResult:
    """Run the model-randomisation test on a copy of a PyTorch or Keras model.

    Parameters
    ----------
    model : torch.nn.Module or keras.Model
        The trained model.  Left untouched (weights, modes, flags, RNG).  A
        Keras model must be Sequential or functional (it is cloned with
        ``clone_model``).
    method : Method or callable
        A salience method (anything with ``explain(model, x, targets)``) or a
        callable with that signature returning maps.
    x : array_like, shape (n, *input_shape)
        Inputs in the model's layout.
    targets : None, int, n ints, or weights
        What to explain; None is the trained model's top class, kept fixed
        for the randomised models.
    layers : sequence of str, optional
        Names of the layers to randomise, listed input to output.  Default:
        :func:`randomisable_layers`.
    cascading : bool
        True: randomise from the last listed layer down, keeping earlier
        randomisations; False: randomise each layer alone.
    seed : int
        Seed of the new weights (layer ``k`` of the order uses ``seed + k``).
    wrap_kwargs : mapping, optional
        Extra arguments of ``salience.torch.wrap`` / ``salience.keras.wrap``
        (``layer=`` by name for Grad-CAM, ``channels_last=``, ...).
    keep_maps : bool
        Keep every step's 2-D maps in the result (for pictures).

    Returns
    -------
    SanityResult
        ``.as_rows()`` is the table; :func:`salience.metrics.plots.plot_sanity`
        draws it.

    References
    ----------
    Adebayo, Gilmer, Muelly, Goodfellow, Hardt, Kim. "Sanity Checks for
    Saliency Maps", NeurIPS 2018. https://arxiv.org/abs/1810.03292
    """

    backend = layer_weights(model)
    explain = _explain_function(method)
    x = as_float_batch(x)
    wrap_kwargs = dict(wrap_kwargs or {})
    if "layer" in wrap_kwargs and not isinstance(wrap_kwargs["layer"], (str, type(None))):
        raise TypeError("give wrap_kwargs['layer'] as a name: the check works on a copy")
    available = backend.layers(every=True)
    names = list(backend.layers() if layers is None else layers)
    missing = [n for n in names if n not in available]
    if missing or not names:
        raise ValueError(
            f"layers {missing or names} are not layers of the model; choose from "
            f"{backend.layers()}"
        )

    work = backend.copy()
    trained = backend.state(work)
    wrapped = backend.wrap(work, wrap_kwargs)
    resolved = resolve_targets(wrapped, x, targets)
    is_last = bool(getattr(wrapped, "channels_last", True))
    reference_maps = _maps(explain, wrapped, x, resolved, is_last)

    order = names[::-1]  # output first
    results: dict[str, list[np.ndarray]] = {"spearman": [], "spearman_abs": [], "ssim": []}
    kept = [reference_maps[0]] if keep_maps else None
    with backend.random_state():
        for step, name in enumerate(order):
            if not cascading:
                backend.restore(work, trained)
            backend.reinitialise(work, name, seed + step)
            signed, absolute = _maps(explain, wrapped, x, resolved, is_last)
            results["spearman"].append(rank_correlation(reference_maps[0], signed, name))
            results["spearman_abs"].append(rank_correlation(reference_maps[1], absolute, name))
            results["ssim"].append(ssim(normalise01(reference_maps[1]), normalise01(absolute)))
            if kept is not None:
                kept.append(signed)
    return SanityResult(
        layers=order,
        cascading=cascading,
        spearman=np.array(results["spearman"]),
        spearman_abs=np.array(results["spearman_abs"]),
        ssim=np.array(results["ssim"]),
        maps=np.stack(kept) if kept is not None else None,
    )


def rank_correlation(a: np.ndarray, b: np.ndarray, what: str = "") -> np.ndarray:
    """Spearman rank correlation of each pair of maps of two ``(n, H, W)`` batches.

    A constant map has no ranking: its correlation is NaN, with a warning.
    """
    out = np.empty(len(a))
    for i, (u, v) in enumerate(zip(a.reshape(len(a), -1), b.reshape(len(b), -1))):
        if np.ptp(u) == 0 or np.ptp(v) == 0:
            warnings.warn(
                f"map {i}{' after randomising ' + what if what else ''} is constant; its rank "
                "correlation is undefined (NaN)",
                RuntimeWarning,
                stacklevel=2,
            )
            out[i] = np.nan
            continue
        out[i] = stats.spearmanr(u, v).statistic
    return out


def ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM (``skimage.metrics.structural_similarity``) of each pair of maps in [0, 1]."""
    from skimage.metrics import structural_similarity

    side = min(a.shape[1:])
    if side < 3:
        raise ValueError(f"SSIM needs maps of at least 3x3 pixels, got {a.shape[1:]}")
    window = min(7, side if side % 2 else side - 1)
    return np.array([structural_similarity(u, v, data_range=1.0, win_size=window)
                     for u, v in zip(a, b)])


def _explain_function(method: Any) -> Callable[..., Any]:
    if hasattr(method, "explain") and callable(method.explain):
        return method.explain
    if callable(method):
        return method
    raise TypeError(
        "method must be a salience Method (with explain(model, x, targets)) or such a "
        f"callable, got {type(method).__name__}"
    )


def _maps(explain, model, x, targets, is_last) -> tuple[np.ndarray, np.ndarray]:
    maps = np.asarray(explain(model, x, targets), dtype=np.float64)
    signed = as_map_batch(maps, "maps", channels_last=is_last)
    absolute = as_map_batch(maps, "maps", channels_last=is_last, reduction="abs_sum")
    return signed, absolute
