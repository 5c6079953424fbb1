"""Model-randomisation sanity check: do the maps change when the model's weights do?

The layers of a copy of the model are re-initialised one after the other,
from the output down to the input (cascading) or one at a time
(independent), and after each step the maps are compared with the maps of
the trained model by Spearman rank correlation (signed and of absolute
values) and SSIM.  A method whose maps stay the same explains the input, not
the model.  The caller's model is never changed: the check works on a deep
copy, and the global torch random state is restored afterwards.

Only PyTorch models are supported for now (``salience.keras`` does not exist
yet).

References
----------
Adebayo, Gilmer, Muelly, Goodfellow, Hardt, Kim. "Sanity Checks for Saliency
Maps", NeurIPS 2018. https://arxiv.org/abs/1810.03292
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from .._validate import as_float_batch
from ._checks import as_map_batch, normalise01

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


def randomisable_layers(module: Any) -> list[str]:
    """Names of the submodules holding a weight matrix or kernel of their own
    (convolutions, linear layers, embeddings), in registration order."""
    names = []
    for name, sub in module.named_modules():
        if name and any(p.ndim >= 2 for p in sub.parameters(recurse=False)):
            names.append(name)
    return names


def model_randomisation(
    module: Any,
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
    """Run the model-randomisation test on a copy of a PyTorch model.

    Parameters
    ----------
    module : torch.nn.Module
        The trained model.  Left untouched (weights, modes, flags, RNG).
    method : Method or callable
        A salience method (anything with ``explain(model, x, targets)``) or a
        callable with that signature returning maps.
    x : array_like, shape (n, *input_shape)
        Inputs in the module's layout.
    targets : None, int, n ints, or weights
        What to explain; None is the trained model's top class, kept fixed
        for the randomised models.
    layers : sequence of str, optional
        Dotted names of the layers to randomise, listed input to output.
        Default: :func:`randomisable_layers`.
    cascading : bool
        True: randomise from the last listed layer down, keeping earlier
        randomisations; False: randomise each layer alone.
    seed : int
        Seed of the new weights (``torch.manual_seed`` inside a forked RNG).
    wrap_kwargs : mapping, optional
        Extra arguments of ``salience.torch.wrap`` (``layer=`` for Grad-CAM,
        ``channels_last=``, ...).
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
    try:
        import torch
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the sanity check needs PyTorch: pip install salience[torch]") from err
    from .. import torch as salience_torch
    from .._validate import resolve_targets

    if not isinstance(module, torch.nn.Module):
        raise TypeError(
            f"module must be a torch.nn.Module (Keras is not supported yet), got "
            f"{type(module).__name__}"
        )
    explain = _explain_function(method)
    x = as_float_batch(x)
    wrap_kwargs = dict(wrap_kwargs or {})
    if "layer" in wrap_kwargs and isinstance(wrap_kwargs["layer"], torch.nn.Module):
        raise TypeError("give wrap_kwargs['layer'] as a dotted name: the check works on a copy")
    names = list(randomisable_layers(module) if layers is None else layers)
    available = dict(module.named_modules())
    missing = [n for n in names if n not in available or n == ""]
    if missing or not names:
        raise ValueError(
            f"layers {missing or names} are not layers of the model; choose from "
            f"{randomisable_layers(module)}"
        )

    work = copy.deepcopy(module)
    trained = dict(work.state_dict())
    trained = {k: v.clone() for k, v in trained.items()}
    model = salience_torch.wrap(work, **wrap_kwargs)
    resolved = resolve_targets(model, x, targets)
    is_last = bool(getattr(model, "channels_last", False))
    reference_maps = _maps(explain, model, x, resolved, is_last)

    order = names[::-1]  # output first
    results = {"spearman": [], "spearman_abs": [], "ssim": []}
    kept = [reference_maps[0]] if keep_maps else None
    with torch.random.fork_rng(devices=[]):
        for step, name in enumerate(order):
            if not cascading:
                work.load_state_dict(trained)
            torch.manual_seed(seed + step)
            _reinitialise(dict(work.named_modules())[name], torch)
            signed, absolute = _maps(explain, model, x, resolved, is_last)
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
    absolute = as_map_batch(np.abs(maps), "maps", channels_last=is_last)
    return signed, absolute


def _reinitialise(layer: Any, torch: Any) -> None:
    """New random weights for one layer: its own init scheme when it has one."""
    with torch.no_grad():
        if callable(getattr(layer, "reset_parameters", None)):
            layer.reset_parameters()
            return
        for p in layer.parameters(recurse=False):
            std = float(p.std()) if p.numel() > 1 and float(p.std()) > 0 else 0.01
            p.normal_(0.0, std)
