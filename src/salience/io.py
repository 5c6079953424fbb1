"""Reading images from disk and turning them into model inputs.

Images are read with Pillow (any format it can open: PNG, JPEG, TIFF including
16-bit microscopy, BMP, WebP, ...), kept as uint8 arrays for display, and
converted to the model's input by a :class:`Preprocessing`: resize (by default
the shorter side to the model's size and the centre cut out, so nothing is
stretched), channel handling (a 1-channel model gets one gray channel, a
3-channel model gets gray images replicated) and normalisation
``(x * scale - mean) / std``.

In one line, a photo becomes the model input and the picture to draw maps on::

    x, image = salience.io.load_input("cat.jpg", preset="efficientnet-lite", size=224)
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ImageReadError",
    "ImageSearch",
    "ImageTooLargeError",
    "LargeImageWarning",
    "PRESETS",
    "RESIZE_MODES",
    "Preprocessing",
    "decode_bytes",
    "find_images",
    "format_bytes",
    "image_suffixes",
    "load_image",
    "load_input",
    "search_images",
]

#: Normalisation presets: name -> (scale, mean, std) applied as ``(x * scale - mean) / std``
#: on uint8 pixel values.  A 1-channel model uses the mean of the three values.
PRESETS: dict[str, tuple[float, tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": (1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "efficientnet-lite": (1 / 255, (0.498, 0.498, 0.498), (0.502, 0.502, 0.502)),
    "unit": (1 / 255, (0.0,), (1.0,)),
    "symmetric": (1 / 255, (0.5,), (0.5,)),
    "raw": (1.0, (0.0,), (1.0,)),
}

#: An image larger than this many times the model input (in height or width) is
#: resized with a :class:`LargeImageWarning`.
LARGE_FACTOR = 4

#: How an image is brought to the model's size, for people (the report shows it).
RESIZE_MODES = {
    "crop": "shorter side resized to the model's size, centre cut out (aspect ratio kept)",
    "squash": "resized to the model's size (stretched if the aspect ratio differs)",
}


class ImageReadError(ValueError):
    """An image file that cannot be read (missing, not an image, truncated or corrupt).

    Attributes
    ----------
    path : Path or None
        The file, when the error is about one.
    reason : str
        What is wrong, without the path (the message is ``"<path>: <reason>"``).
    """

    def __init__(self, message: str, *, path: str | Path | None = None,
                 reason: str | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else Path(path)
        self.reason = message if reason is None else reason

    @classmethod
    def about(cls, path: str | Path, reason: str, **kwargs) -> ImageReadError:
        """The error ``"<path>: <reason>"`` for one file."""
        return cls(f"{path}: {reason}", path=path, reason=reason, **kwargs)


class ImageTooLargeError(ImageReadError):
    """An image whose decoding would take more memory than allowed (checked before decoding).

    Attributes
    ----------
    need : int
        The estimated peak memory in bytes.
    """

    def __init__(self, message: str, need: int, *, path: str | Path | None = None,
                 reason: str | None = None) -> None:
        super().__init__(message, path=path, reason=reason)
        self.need = need


class LargeImageWarning(UserWarning):
    """An image far larger than the model's input was resized down to it."""


def image_suffixes() -> frozenset[str]:
    """File name endings Pillow can open (lower case, with the dot)."""
    from PIL import Image

    return frozenset(ext.lower() for ext in Image.registered_extensions())


@dataclass
class ImageSearch:
    """What :func:`search_images` found.

    Attributes
    ----------
    files : list of Path
        Image files to read, in order.
    notes : list of str
        One line per kind of thing left out (salience outputs, links leading
        outside a folder), for the user.
    """

    files: list[Path]
    notes: list[str]


def search_images(
    paths: Iterable[str | Path],
    *,
    exclude: Iterable[str | Path] = (),
    follow_symlinks: bool = False,
) -> ImageSearch:
    """Expand files and folders into image files, leaving out what must not be read.

    Folders are searched recursively for files whose ending Pillow knows;
    files given explicitly are kept whatever their ending (a wrong one is
    reported when the file is read).  Never read: anything inside ``exclude``
    (the output directory) or inside a directory salience wrote or is writing
    (see :func:`salience.outdir.is_salience_output`), so a report is never
    explained as input.  Symbolic links found in a folder are read only when
    they stay inside it, unless ``follow_symlinks`` (then linked folders are
    searched too, each real folder once).

    Raises
    ------
    FileNotFoundError
        A path does not exist.
    """
    suffixes = image_suffixes()
    excluded = [_real(p) for p in exclude]
    found: list[Path] = []
    outputs: list[Path] = []
    links: list[str] = []
    for raw in paths:
        path = Path(raw)
        if not (path.exists() or path.is_symlink()):
            raise FileNotFoundError(f"image path {str(path)!r} does not exist")
        owner = _output_holding(_real(path), excluded)
        if owner is not None:
            outputs.append(owner)
        elif path.is_dir():
            found.extend(_walk(path, suffixes, excluded, follow_symlinks, outputs, links))
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"image path {str(path)!r} is not a file or folder")
    notes = []
    if outputs:
        shown = ", ".join(sorted({str(p) for p in outputs}))
        notes.append(f"not reading images from salience output folder(s) {shown}")
    if links:
        notes.append(
            f"skipped {len(links)} symbolic link(s) leading outside the input folder "
            f"(first: {links[0]}); pass --follow-symlinks to read them"
        )
    return ImageSearch(files=found, notes=notes)


def find_images(
    paths: Iterable[str | Path],
    *,
    exclude: Iterable[str | Path] = (),
    follow_symlinks: bool = False,
) -> list[Path]:
    """The files of :func:`search_images` (same arguments), without its notes."""
    return search_images(paths, exclude=exclude, follow_symlinks=follow_symlinks).files


def _real(path: str | Path) -> Path:
    return Path(os.path.realpath(path))


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _output_holding(real: Path, excluded: list[Path]) -> Path | None:
    """The excluded folder or salience output that ``real`` is in (or is), else None."""
    from .outdir import is_salience_output

    for folder in excluded:
        if _inside(real, folder):
            return folder
    for folder in [real, *real.parents] if real.is_dir() else real.parents:
        if is_salience_output(folder):
            return folder
    return None


def _walk(root: Path, suffixes, excluded, follow_symlinks, outputs, links) -> list[Path]:
    """Image files below ``root``, sorted; appends left-out outputs and links."""
    from .outdir import is_salience_output

    real_root = _real(root)
    seen = {real_root}
    stack = [root]
    found = []
    while stack:  # bounded: each real folder is entered once
        folder = stack.pop()
        with os.scandir(folder) as scan:
            entries = sorted(scan, key=lambda e: e.name)
        for entry in entries:
            path = Path(entry.path)
            if entry.is_symlink():
                target = _real(path)
                if not target.exists():
                    continue  # a broken link
                if not (follow_symlinks or _inside(target, real_root)):
                    links.append(f"{path} -> {target}")
                    continue
                if target.is_dir() and not follow_symlinks:
                    continue  # a link to a folder inside: its files are found there
            else:
                target = None
            if entry.is_dir():
                real = target or _real(path)
                owner = next((f for f in excluded if _inside(real, f)), None)
                if owner is None and is_salience_output(path):
                    owner = path
                if owner is not None:
                    outputs.append(owner)
                elif real not in seen:
                    seen.add(real)
                    stack.append(path)
            elif entry.is_file() and path.suffix.lower() in suffixes:
                found.append(path)
    return sorted(found)


#: Peak bytes per pixel :func:`load_image` needs, by Pillow mode (measured on 4000x4000
#: images, rounded up by about a fifth); other modes count as RGB.
_DECODE_BYTES_PER_PIXEL = {"1": 5, "L": 5, "LA": 8, "P": 14, "I;16": 14, "I;16B": 14,
                           "I;16L": 14, "I;16N": 14, "I": 16, "F": 16}
_DECODE_BYTES_DEFAULT = 17


def decode_bytes(width: int, height: int, mode: str = "RGB") -> int:
    """About how much memory :func:`load_image` takes at its peak for such an image."""
    return int(width) * int(height) * _DECODE_BYTES_PER_PIXEL.get(mode, _DECODE_BYTES_DEFAULT)


def format_bytes(size: float) -> str:
    """``1.5 GB``, ``12 MB``, ``512 B`` (powers of 1000)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{int(size)} B"


def load_image(path: str | Path, *, max_bytes: int | None = None) -> np.ndarray:
    """Read one image as uint8: ``(H, W)`` when it is grayscale, else ``(H, W, 3)`` RGB.

    EXIF orientation is applied; transparency is dropped; 16-bit and float
    grayscale images (microscopy) are scaled by their own range to 0..255.

    Parameters
    ----------
    path : path
        The image file.
    max_bytes : int, optional
        Refuse, before decoding, an image whose decoding would take more
        memory than this (see :func:`decode_bytes`); Pillow's own
        decompression-bomb warning is then silenced, as this check replaces it.

    Raises
    ------
    ImageTooLargeError
        Decoding would need more than ``max_bytes``.
    ImageReadError
        The file cannot be opened or decoded.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    try:
        with warnings.catch_warnings():
            if max_bytes is not None:
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as opened:  # reads the header only
                if max_bytes is not None:
                    _check_decode_size(path, opened, max_bytes)
                opened.load()
                img = ImageOps.exif_transpose(opened)
    except FileNotFoundError as err:
        raise ImageReadError.about(path, "no such file") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError) as err:
        if isinstance(err, ImageReadError):
            raise
        if isinstance(err, UnidentifiedImageError):
            detail = "not a format Pillow knows, or not an image"
        else:  # the message names the file already
            detail = str(err).replace(f"'{path}'", "the file").replace(str(path), "the file")
        raise ImageReadError.about(path, f"not a readable image ({detail})") from err
    if img.width == 0 or img.height == 0:
        raise ImageReadError.about(path, f"the image is empty ({img.width}x{img.height})")
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return _to_uint8(np.array(img, dtype=np.float32))
    if img.mode in ("1", "L", "LA"):
        return np.asarray(img.convert("L"), dtype=np.uint8).copy()
    if img.mode == "P" and _palette_is_gray(img):
        return np.asarray(img.convert("L"), dtype=np.uint8).copy()
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def _check_decode_size(path: Path, img, max_bytes: int) -> None:
    need = decode_bytes(img.width, img.height, img.mode)
    if need > max_bytes:
        raise ImageTooLargeError.about(
            path, f"{img.width}x{img.height} pixels ({img.mode}) would take about "
            f"{format_bytes(need)} of memory to decode, more than the limit of "
            f"{format_bytes(max_bytes)}",
            need=need,
        )


def _palette_is_gray(img) -> bool:
    rgb = np.asarray(img.convert("RGB"))
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """Scale a float image by its finite range to 0..255, in place (large images are common)."""
    finite = np.isfinite(values)
    if finite.all():
        lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    elif finite.any():
        lo, hi = float(values[finite].min()), float(values[finite].max())
    else:
        lo = hi = 0.0
    del finite
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    np.nan_to_num(values, copy=False, nan=lo)
    with np.errstate(over="ignore"):  # +-inf became +-max float: they overflow, then clip
        values -= np.float32(lo)
        values *= np.float32(255 / (hi - lo))
    np.rint(values, out=values)
    np.clip(values, 0, 255, out=values)
    return values.astype(np.uint8)


@dataclass(frozen=True)
class Preprocessing:
    """How uint8 images become model inputs.

    Parameters
    ----------
    size : (int, int)
        Model input height and width.
    channels : int
        1 or 3: what the model's first layer takes.
    channels_last : bool
        Model layout: ``(n, H, W, C)`` if true, else ``(n, C, H, W)``.
    preset : str
        Normalisation preset from :data:`PRESETS`; ``mean``/``std``/``scale`` override it.
    mean, std : sequence of float, optional
        Per-channel values (1 or ``channels`` of them) in units of ``x * scale``.
    scale : float, optional
        Factor applied to uint8 pixel values first (``1/255`` for the presets
        except ``raw``).
    resize : {'crop', 'squash'}
        ``crop`` (the default) resizes the shorter side to ``size`` and cuts out
        the centre, keeping the aspect ratio, as ImageNet models are evaluated
        (what lies beyond the centre square of a wide photo is not seen);
        ``squash`` resizes to ``size`` exactly, stretching the image unless it
        already has the model's aspect ratio.
    """

    size: tuple[int, int] = (224, 224)
    channels: int = 3
    channels_last: bool = False
    preset: str = "imagenet"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    scale: float | None = None
    resize: str = "crop"

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(
                f"unknown normalisation preset {self.preset!r}; valid presets: {sorted(PRESETS)}"
            )
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be 'crop' or 'squash', got {self.resize!r}")
        height, width = (int(v) for v in self.size)
        if height <= 0 or width <= 0:
            raise ValueError(f"size must be two positive ints (height, width), got {self.size}")
        object.__setattr__(self, "size", (height, width))
        self.normalisation()  # fail early on bad mean/std

    def with_(self, **changes) -> Preprocessing:
        """A copy with some fields changed (None values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def normalisation(self) -> tuple[float, np.ndarray, np.ndarray]:
        """``(scale, mean, std)`` with mean and std shaped for ``channels``."""
        preset_scale, preset_mean, preset_std = PRESETS[self.preset]
        scale = preset_scale if self.scale is None else float(self.scale)
        mean = self._per_channel(self.mean if self.mean is not None else preset_mean, "mean",
                                 self.mean is None)
        std = self._per_channel(self.std if self.std is not None else preset_std, "std",
                                self.std is None)
        if not np.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be a positive number, got {scale}")
        if (std <= 0).any() or not np.isfinite(std).all():
            raise ValueError(f"std must hold positive numbers, got {std.tolist()}")
        return scale, mean, std

    def _per_channel(self, values: Sequence[float], name: str, from_preset: bool) -> np.ndarray:
        arr = np.asarray(values, dtype=np.float32).reshape(-1)
        if arr.size == 1:
            return np.repeat(arr, self.channels)
        if arr.size == self.channels:
            return arr
        if from_preset and self.channels == 1:
            return np.array([arr.mean()], dtype=np.float32)
        raise ValueError(
            f"{name} has {arr.size} values but the model takes {self.channels} channel(s); "
            f"give 1 or {self.channels} values"
        )

    def display(self, image: np.ndarray, name: str = "image") -> np.ndarray:
        """Resize one uint8 image (``(H, W)`` or ``(H, W, 3)``) to the model's size.

        The result keeps the image's own colour (gray stays ``(H, W)``); it is
        what the report draws maps on.  Warns with :class:`LargeImageWarning`
        when the image is more than ``LARGE_FACTOR`` times the input size.
        """
        from PIL import Image

        height, width = self.size
        h, w = image.shape[:2]
        if h > LARGE_FACTOR * height or w > LARGE_FACTOR * width:
            warnings.warn(
                f"{name} is {w}x{h} pixels, far larger than the model input {width}x{height}; "
                "it is resized down (details finer than the input resolution are lost)",
                LargeImageWarning,
                stacklevel=2,
            )
        pil = Image.fromarray(image)
        if self.resize == "crop":
            ratio = max(height / h, width / w)
            new_w, new_h = max(width, round(w * ratio)), max(height, round(h * ratio))
            pil = pil.resize((new_w, new_h), Image.Resampling.BILINEAR)
            left, top = (new_w - width) // 2, (new_h - height) // 2
            pil = pil.crop((left, top, left + width, top + height))
        elif (w, h) != (width, height):
            pil = pil.resize((width, height), Image.Resampling.BILINEAR)
        return np.asarray(pil, dtype=np.uint8)

    def model_input(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Stack resized uint8 images (from :meth:`display`) into a float32 model batch."""
        scale, mean, std = self.normalisation()
        batch = np.stack([self._channels(img) for img in images]).astype(np.float32)
        batch = (batch * np.float32(scale) - mean) / std
        if not self.channels_last:
            batch = batch.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(batch, dtype=np.float32)

    def _channels(self, image: np.ndarray) -> np.ndarray:
        if image.ndim == 2:
            gray = image[..., None]
            return gray if self.channels == 1 else np.repeat(gray, 3, axis=2)
        if self.channels == 3:
            return image
        # An RGB image for a 1-channel model: ITU-R 601 luma, as Pillow's "L".
        luma = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return np.clip(np.rint(luma), 0, 255)[..., None]


def load_input(
    source: str | Path | np.ndarray | Sequence[str | Path | np.ndarray],
    preset: str = "imagenet",
    size: int | tuple[int, int] = 224,
    *,
    resize: str = "crop",
    channels: int = 3,
    channels_last: bool = False,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> tuple[np.ndarray, Any]:
    """A photo (or several) as the model's input and as the picture to draw maps on.

    Parameters
    ----------
    source : path, uint8 array, or a sequence of them
        Image file(s) (anything :func:`load_image` reads) or uint8 images
        ``(H, W)`` / ``(H, W, 3)``.
    preset : str
        Normalisation from :data:`PRESETS`: ``"imagenet"`` (torchvision
        models), ``"efficientnet-lite"`` (the bundled EfficientNet-Lite0),
        ``"unit"`` (x / 255), ``"symmetric"``, ``"raw"``.
    size : int or (int, int)
        The model's input height and width.
    resize : {'crop', 'squash'}
        Keep the aspect ratio and cut out the centre (default), or stretch
        (see :class:`Preprocessing`).
    channels : {1, 3}
        What the model takes (gray and colour images are converted).
    channels_last : bool
        Model layout ``(n, H, W, C)`` instead of ``(n, C, H, W)``.
    mean, std : sequences of float, optional
        Override the preset's per-channel values.

    Returns
    -------
    x : ndarray, float32
        ``(n, C, H, W)`` (or ``(n, H, W, C)``), n = 1 for one image.
    image : ndarray or list of ndarray
        The resized uint8 image(s) exactly as the model sees them, before
        normalisation: ``(H, W, 3)`` or ``(H, W)`` for gray; a list for a
        sequence.  Pass it to :func:`salience.visualize.overlay`.  Images far
        larger than ``size`` are resized without a :class:`LargeImageWarning`.

    Raises
    ------
    ImageReadError
        A file cannot be read.
    ValueError
        An unknown preset or resize mode, a bad size, or an array that is not a
        uint8 image.

    Examples
    --------
    >>> x, image = load_input("cat.jpg", preset="efficientnet-lite")  # doctest: +SKIP
    >>> maps = salience.IntegratedGradients().explain(model, x)        # doctest: +SKIP
    >>> salience.visualize.overlay(image, maps[0])                      # doctest: +SKIP
    """
    sizes = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if len(sizes) != 2 or not all(isinstance(v, (int, np.integer)) for v in sizes):
        raise ValueError(f"size must be an int or (height, width) ints, got {size!r}")
    prep = Preprocessing(size=sizes, channels=channels, channels_last=channels_last,
                         preset=preset, mean=None if mean is None else tuple(mean),
                         std=None if std is None else tuple(std), resize=resize)
    single = isinstance(source, (str, Path, np.ndarray))
    items: list[Any] = [source] if single else list(source)  # type: ignore[arg-type]
    if not items:
        raise ValueError("source is empty; give a path, an image, or a sequence of them")
    with warnings.catch_warnings():
        # The caller chose the size: a phone photo far larger than it is the usual case.
        warnings.simplefilter("ignore", LargeImageWarning)
        images = [prep.display(_as_image(item, k)) for k, item in enumerate(items)]
    x = prep.model_input(images)
    return x, images[0] if single else images


def _as_image(item: Any, k: int) -> np.ndarray:
    if isinstance(item, (str, Path)):
        return load_image(item)
    arr = np.asarray(item)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3
                                                           and arr.shape[2] != 3):
        raise ValueError(
            f"image {k} must be a path or a uint8 image (H, W) or (H, W, 3), got "
            f"{arr.dtype} with shape {arr.shape}"
        )
    return arr
