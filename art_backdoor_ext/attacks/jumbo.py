"""
Jumbo contamination: random backdoor settings drawn from the jumbo distribution, and shadow datasets.

:class:`JumboDistribution` samples one backdoor setting ``(m, t, alpha, y_t, p)`` (mask, pattern, opacity,
target, poison rate); :class:`JumboSetting` holds it and inserts it into images; :class:`JumboContamination`
(an ART ``PoisoningAttackBlackBox``) builds one shadow dataset per ``poison`` call (MBDS Algorithm 1, lines
3-8) and :meth:`JumboContamination.generate_shadow_datasets` yields many, lazily.

Conventions, and where they differ from the papers:

- Opacity. MBDS Eq. 4 writes ``x' = (1 - m) * x + m * ((1 - a) * t + a * x)`` with ``a`` the opacity of the
  *image*. The MNTD code (where the distribution comes from) and this module use ``alpha = 1 - a``, the opacity
  of the *trigger*: ``x' = (1 - alpha * m) * x + alpha * m * t``. ``alpha = 1`` replaces the masked pixels.
- Trigger location. MNTD draws the top-left corner with ``randint(H - s)``, which never touches the last row or
  column; here it is uniform over all ``H - s + 1`` valid positions, as the papers describe.
- Poisoned copies are *appended* (as in MNTD and Algorithm 1, line 8): ``n_poison = max(1, round(p * N))``
  samples are drawn without replacement, triggered, relabelled ``y_t`` and added after the ``N`` clean ones, so
  the poisoned fraction of a shadow dataset is ``p / (1 + p)``. Sources whose label already is ``y_t`` are kept
  (MBDS filters them later, at feature extraction).
- Patterns are in pixel units (mapped from ``[0, 1]`` to ``clip_values``), stored channels-first and full size.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from art.attacks.attack import PoisoningAttackBlackBox

from art_backdoor_ext._validation import Instance, Interval, Options, ParamsMixin, check_images, check_labels
from art_backdoor_ext.exceptions import DataError, InvalidParameterError

logger = logging.getLogger(__name__)

__all__ = ["JumboDistribution", "JumboSetting", "JumboContamination", "ShadowDataset"]

RandomState = int | np.random.Generator | None
_RANDOM_STATE = [Interval(int, 0, None), Instance(np.random.Generator), None]
_PAIR = Instance((tuple, list), label="a pair (low, high)")


# ---------------------------------------------------------------------------------------------- helpers
def _rng(random_state: RandomState) -> np.random.Generator:
    if isinstance(random_state, np.random.Generator):
        return random_state
    return np.random.default_rng(random_state)


def _infer_channels_first(shape: tuple[int, ...]) -> bool:
    """Channels-first if axis -3 has size 1 or 3 (also when ambiguous), else channels-last if the last does."""
    if shape[-3] in (1, 3):
        return True
    if shape[-1] in (1, 3):
        return False
    raise DataError(
        f"cannot infer the channel axis of images of shape {shape}: expected size 1 or 3 at axis "
        f"{len(shape) - 3} (channels-first) or at the last axis (channels-last); pass channels_first explicitly"
    )


def _check_pair(owner: str, name: str, value: Any, low: float, high: float, *, open_low: bool = False) -> None:
    """``value`` must be ``(a, b)`` with ``low <= a <= b <= high`` (``low < a`` when ``open_low``)."""
    interval = Interval(float, low, high if math.isfinite(high) else None, closed="right" if open_low else "both")
    if not (isinstance(value, (tuple, list)) and len(value) == 2 and all(interval.accepts(v) for v in value)):
        bounds = f"{'(' if open_low else '['}{low}, {high}{']' if math.isfinite(high) else ')'}"
        raise InvalidParameterError(f"{owner}: {name} must be a pair (low, high) of numbers in {bounds}, got {value!r}")
    if value[0] > value[1]:
        raise InvalidParameterError(f"{owner}: {name} must have low <= high, got {value!r}")


def _check_clip_values(owner: str, value: Any) -> None:
    ok = isinstance(value, (tuple, list)) and len(value) == 2 and all(Interval(float).accepts(v) for v in value)
    if not ok or value[0] >= value[1]:
        raise InvalidParameterError(f"{owner}: clip_values must be a pair (min, max) with min < max, got {value!r}")


def _set_params_atomically(obj: ParamsMixin, kwargs: dict[str, Any]) -> None:
    previous = obj.get_params()
    try:
        ParamsMixin.set_params(obj, **kwargs)
    except Exception:
        for name, value in previous.items():
            setattr(obj, name, value)
        raise


# ---------------------------------------------------------------------------------------------- setting
@dataclass
class JumboSetting:
    """
    One backdoor setting of the jumbo distribution and its insertion (MBDS Eq. 4, trigger-opacity convention).

    :ivar mask: ``(H, W)`` float array, 1 on the trigger region, 0 elsewhere.
    :ivar pattern: ``(C, H, W)`` trigger pattern in pixel units, channels-first, full size (``C`` may be 1).
    :ivar alpha: Trigger opacity in ``[0, 1]``: ``x' = (1 - alpha * m) * x + alpha * m * t``.
    :ivar target: Target class ``y_t``.
    :ivar rate: Poison rate ``p``: ``round(p * N)`` triggered copies are appended to ``N`` clean samples.
    :ivar kind: ``"patch"`` (a square of side ``size``) or ``"blend"`` (the full image).
    :ivar size: Side of the square patch; ``None`` for the full image.
    :ivar location: ``(row, col)`` of the trigger's top-left corner (``(0, 0)`` for the full image).
    :ivar eps: The colour-pattern spread ``eps`` (``None`` for a binary pattern).
    :ivar clip_values: ``(min, max)`` pixel range; :meth:`apply` clips to it.
    """

    mask: np.ndarray
    pattern: np.ndarray
    alpha: float
    target: int
    rate: float
    kind: str = "patch"
    size: int | None = None
    location: tuple[int, int] = (0, 0)
    eps: float | None = None
    clip_values: tuple[float, float] = (0.0, 1.0)

    def apply(self, x: np.ndarray, *, channels_first: bool | None = None) -> np.ndarray:
        """
        Insert the trigger into a copy of ``x``: ``x' = (1 - alpha * m) * x + alpha * m * t``, clipped.

        :param x: Batch ``(N, C, H, W)`` / ``(N, H, W, C)`` or one image ``(C, H, W)`` / ``(H, W, C)``.
        :param channels_first: Layout of ``x``; ``None`` infers it (axis -3 of size 1 or 3 -> channels-first).
        :return: Triggered copy of ``x``: same shape and dtype (integers are rounded), clipped to ``clip_values``.
        :raises DataError: wrong number of dimensions, dtype, spatial size or channels.
        """
        x = np.asarray(x)
        if x.ndim not in (3, 4):
            raise DataError(
                f"expected a batch (N, C, H, W) / (N, H, W, C) or one image (C, H, W) / (H, W, C), "
                f"got shape {x.shape}"
            )
        is_int = np.issubdtype(x.dtype, np.integer)
        if x.dtype == np.bool_ or not (is_int or np.issubdtype(x.dtype, np.floating)):
            raise DataError(f"expected real-valued images (float or integer dtype), got dtype {x.dtype}")
        first = _infer_channels_first(x.shape) if channels_first is None else channels_first
        x4 = x[None] if x.ndim == 3 else x
        xc = x4 if first else np.moveaxis(x4, -1, 1)
        channels, height, width = xc.shape[1:]
        if (height, width) != self.mask.shape:
            raise DataError(f"the setting was drawn for {self.mask.shape} images but x has spatial size "
                            f"{(height, width)} (x shape {x.shape}, channels_first={first})")
        if self.pattern.shape[0] not in (1, channels):
            raise DataError(f"the pattern has {self.pattern.shape[0]} channels but x has {channels}")
        weight = self.alpha * np.asarray(self.mask, dtype=np.float64)
        out = (1.0 - weight) * xc.astype(np.float64) + weight * np.asarray(self.pattern, dtype=np.float64)
        out = np.clip(out, self.clip_values[0], self.clip_values[1])
        out = out if first else np.moveaxis(out, 1, -1)
        out = out[0] if x.ndim == 3 else out
        return np.ascontiguousarray((np.rint(out) if is_int else out).astype(x.dtype))

    def to_dict(self, *, include_arrays: bool = True) -> dict[str, Any]:
        """JSON-serialisable dict (plain Python types); arrays as nested lists unless ``include_arrays=False``."""
        out: dict[str, Any] = {
            "kind": self.kind,
            "size": None if self.size is None else int(self.size),
            "location": [int(v) for v in self.location],
            "alpha": float(self.alpha),
            "target": int(self.target),
            "rate": float(self.rate),
            "eps": None if self.eps is None else float(self.eps),
            "clip_values": [float(v) for v in self.clip_values],
            "image_size": [int(v) for v in self.mask.shape],
            "channels": int(self.pattern.shape[0]),
        }
        if include_arrays:
            out["mask"] = np.asarray(self.mask, dtype=float).tolist()
            out["pattern"] = np.asarray(self.pattern, dtype=float).tolist()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JumboSetting:
        """Rebuild a setting from :meth:`to_dict` output (with arrays)."""
        if "mask" not in data or "pattern" not in data:
            raise DataError("from_dict needs the 'mask' and 'pattern' arrays; use to_dict(include_arrays=True)")
        return cls(
            mask=np.asarray(data["mask"], dtype=np.float32),
            pattern=np.asarray(data["pattern"], dtype=np.float32),
            alpha=float(data["alpha"]),
            target=int(data["target"]),
            rate=float(data["rate"]),
            kind=str(data.get("kind", "patch")),
            size=data.get("size"),
            location=tuple(int(v) for v in data.get("location", (0, 0))),  # type: ignore[arg-type]
            eps=data.get("eps"),
            clip_values=tuple(float(v) for v in data.get("clip_values", (0.0, 1.0))),  # type: ignore[arg-type]
        )


# ---------------------------------------------------------------------------------------------- distribution
class JumboDistribution(ParamsMixin):
    """
    Implementation of the jumbo distribution of backdoor settings (Xu et al., 2021), used by MBDS (Eq. 4).

    | Paper link: https://arxiv.org/abs/1910.03137 (MNTD)

    One draw: the trigger covers the full image with probability ``full_image_probability`` (a blend trigger,
    ``alpha ~ U(blend_alpha)``), otherwise a square of side drawn uniformly from ``patch_sizes`` at a uniform
    valid location (``alpha ~ U(patch_alpha)``, set to 1.0 when above ``patch_alpha_threshold``). The pattern is
    binary with a uniform number of ones in ``[1, s^2 - 1]`` for grayscale images (``pattern_kind="auto"``) and,
    for colour images, ``eps ~ U(pattern_eps)`` then ``U(-eps, 1 + eps)`` per pixel and channel, clipped to
    ``[0, 1]``; it is then mapped to ``clip_values``. Target uniform over the classes; rate ``p ~ U(rate)``.
    The defaults are MNTD's (five sizes ``{2, 3, 4, 5, full}`` equally likely).

    :param patch_sizes: Sides of the square patch, drawn uniformly (may be empty when
        ``full_image_probability == 1``).
    :param full_image_probability: Chance of the full-image (blend) trigger; MNTD: 1/5.
    :param patch_alpha: ``(low, high)`` of the patch opacity.
    :param patch_alpha_threshold: Patch opacities above it become 1.0 (MNTD: 0.5); ``None`` keeps them.
    :param blend_alpha: ``(low, high)`` of the full-image opacity.
    :param rate: ``(low, high)`` of the poison rate ``p`` (``0 < low``, ``high <= 1``).
    :param pattern_eps: ``(low, high)`` of the colour-pattern spread ``eps``.
    :param pattern_kind: ``"auto"`` (binary for one channel, eps rule for more), ``"binary"`` or ``"uniform"``.

    Example::

        dist = JumboDistribution(rate=(0.1, 0.2))
        setting = dist.sample((1, 28, 28), nb_classes=10, random_state=0)
        x_triggered = setting.apply(x)   # (N, 1, 28, 28) in [0, 1]
    """

    _parameter_constraints: dict[str, list[Any]] = {
        "patch_sizes": [Instance((tuple, list), label="a tuple of ints >= 1")],
        "full_image_probability": [Interval(float, 0, 1)],
        "patch_alpha": [_PAIR],
        "patch_alpha_threshold": [Interval(float, 0, 1), None],
        "blend_alpha": [_PAIR],
        "rate": [_PAIR],
        "pattern_eps": [_PAIR],
        "pattern_kind": [Options(("auto", "binary", "uniform"))],
    }

    def __init__(
        self,
        *,
        patch_sizes: Sequence[int] = (2, 3, 4, 5),
        full_image_probability: float = 0.2,
        patch_alpha: tuple[float, float] = (0.2, 0.6),
        patch_alpha_threshold: float | None = 0.5,
        blend_alpha: tuple[float, float] = (0.05, 0.2),
        rate: tuple[float, float] = (0.05, 0.5),
        pattern_eps: tuple[float, float] = (0.0, 1.0),
        pattern_kind: str = "auto",
    ) -> None:
        self.patch_sizes = patch_sizes
        self.full_image_probability = full_image_probability
        self.patch_alpha = patch_alpha
        self.patch_alpha_threshold = patch_alpha_threshold
        self.blend_alpha = blend_alpha
        self.rate = rate
        self.pattern_eps = pattern_eps
        self.pattern_kind = pattern_kind
        self._check_params()

    def _check_params(self) -> None:
        super()._check_params()
        owner = type(self).__name__
        sizes = self.patch_sizes
        if not all(Interval(int, 1, None).accepts(s) for s in sizes):
            raise InvalidParameterError(f"{owner}: patch_sizes must hold ints >= 1, got {sizes!r}")
        if len(sizes) == 0 and self.full_image_probability < 1:
            raise InvalidParameterError(
                f"{owner}: patch_sizes is empty but full_image_probability={self.full_image_probability!r} < 1; "
                "give at least one patch size or set full_image_probability=1.0"
            )
        _check_pair(owner, "patch_alpha", self.patch_alpha, 0.0, 1.0)
        _check_pair(owner, "blend_alpha", self.blend_alpha, 0.0, 1.0)
        _check_pair(owner, "rate", self.rate, 0.0, 1.0, open_low=True)
        _check_pair(owner, "pattern_eps", self.pattern_eps, 0.0, math.inf)

    def set_params(self, **kwargs: Any) -> None:
        """Set validated parameters; on a rejected value every parameter keeps its previous value."""
        _set_params_atomically(self, kwargs)

    def sample(
        self,
        image_shape: Sequence[int],
        *,
        nb_classes: int,
        clip_values: tuple[float, float] = (0.0, 1.0),
        random_state: RandomState = None,
    ) -> JumboSetting:
        """
        Draw one setting ``(m, t, alpha, y_t, p)`` (MBDS Algorithm 1, line 3: ``gen_jumbo_setting()``).

        :param image_shape: Channels-first image shape ``(C, H, W)``.
        :param nb_classes: Number of classes; the target is uniform over ``0 .. nb_classes - 1``.
        :param clip_values: Pixel range the pattern is mapped to.
        :param random_state: Seed or generator (a generator is advanced).
        :raises DataError: a drawn patch size larger than the image.
        """
        owner = type(self).__name__
        if not (len(image_shape) == 3 and all(Interval(int, 1, None).accepts(v) for v in image_shape)):
            raise InvalidParameterError(f"{owner}.sample: image_shape must be (C, H, W) ints >= 1, "
                                        f"got {image_shape!r}")
        if not Interval(int, 1, None).accepts(nb_classes):
            raise InvalidParameterError(f"{owner}.sample: nb_classes must be an int >= 1, got {nb_classes!r}")
        _check_clip_values(f"{owner}.sample", clip_values)
        rng = _rng(random_state)
        channels, height, width = (int(v) for v in image_shape)

        full = len(self.patch_sizes) == 0 or rng.random() < self.full_image_probability
        if full:
            size, (ph, pw), (row, col) = None, (height, width), (0, 0)
            alpha = float(rng.uniform(*self.blend_alpha))
        else:
            size = int(self.patch_sizes[int(rng.integers(len(self.patch_sizes)))])
            if size > min(height, width):
                raise DataError(f"{owner}: drew patch size {size} but the images are only {height}x{width}; "
                                "lower patch_sizes")
            ph = pw = size
            row, col = int(rng.integers(height - size + 1)), int(rng.integers(width - size + 1))
            alpha = float(rng.uniform(*self.patch_alpha))
            if self.patch_alpha_threshold is not None and alpha > self.patch_alpha_threshold:
                alpha = 1.0

        binary = self.pattern_kind == "binary" or (self.pattern_kind == "auto" and channels == 1)
        eps: float | None = None
        if binary:
            n_cells = ph * pw
            n_ones = int(rng.integers(1, max(2, n_cells)))  # MNTD: randint(1, s^2) ones, at least one zero
            flat = np.zeros(n_cells)
            flat[rng.choice(n_cells, size=n_ones, replace=False)] = 1.0
            small = flat.reshape(1, ph, pw)
        else:
            eps = float(rng.uniform(*self.pattern_eps))
            small = np.clip(rng.uniform(-eps, 1.0 + eps, size=(channels, ph, pw)), 0.0, 1.0)
        low, high = float(clip_values[0]), float(clip_values[1])
        pattern = np.full((small.shape[0], height, width), low, dtype=np.float32)
        pattern[:, row:row + ph, col:col + pw] = low + small * (high - low)
        mask = np.zeros((height, width), dtype=np.float32)
        mask[row:row + ph, col:col + pw] = 1.0

        target = int(rng.integers(nb_classes))
        rate = float(rng.uniform(*self.rate))
        return JumboSetting(mask=mask, pattern=pattern, alpha=alpha, target=target, rate=rate,
                            kind="blend" if full else "patch", size=size, location=(row, col), eps=eps,
                            clip_values=(low, high))


# ---------------------------------------------------------------------------------------------- attack
@dataclass
class ShadowDataset:
    """
    One shadow dataset: the ``N`` clean samples followed by the poisoned copies.

    :ivar x: Images, same layout and dtype as the input.
    :ivar y: Labels, integer or one-hot like the input.
    :ivar is_poison: Boolean ``(N + n_poison,)``; True for the appended triggered copies.
    :ivar source_indices: Index into the input of each poisoned copy's original, ``(n_poison,)``.
    :ivar setting: The backdoor setting used.
    """

    x: np.ndarray
    y: np.ndarray
    is_poison: np.ndarray
    source_indices: np.ndarray
    setting: JumboSetting

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (sizes and the setting without its arrays)."""
        return {
            "n_samples": int(len(self.x)),
            "n_poison": int(self.is_poison.sum()),
            "setting": self.setting.to_dict(include_arrays=False),
        }


class JumboContamination(ParamsMixin, PoisoningAttackBlackBox):
    """
    Implementation of Jumbo contamination (Xu et al., 2021; Wu et al., MBDS): each shadow dataset is the clean
    set plus triggered, relabelled copies of a random subset, under a setting drawn from the jumbo distribution.

    | Paper link: https://arxiv.org/abs/1910.03137 (MNTD, the jumbo distribution)
    | Paper: "Defending Against Backdoor Attacks on Deep Neural Networks by Meta Backdoor Analysis" (MBDS,
      Eq. 4 and Algorithm 1)

    :param distribution: The :class:`JumboDistribution` (``None``: MNTD's defaults).
    :param nb_classes: Number of classes for the target; ``None`` infers it from one-hot labels' width or as
        ``max(y) + 1`` (pass it when a subset may miss the last classes).
    :param channels_first: Layout of ``x``; ``None`` infers it (axis 1 of size 1 or 3 -> NCHW, else NHWC).
    :param clip_values: ``(min, max)`` pixel range of ``x``; patterns are mapped to it and outputs clipped.
    :param random_state: Seed or generator. The random stream starts at construction and restarts on
        ``set_params``; successive ``poison`` calls draw new settings.

    After :meth:`poison`: ``last_setting``, ``last_is_poison`` (boolean mask over the returned arrays),
    ``last_poison_indices`` (their indices) and ``last_source_indices`` (the originals' indices in ``x``).

    Example::

        attack = JumboContamination(nb_classes=10, random_state=0)
        x_shadow, y_shadow = attack.poison(x_clean, y_clean)      # NCHW in [0, 1], integer or one-hot y
        attack.last_setting.to_dict(include_arrays=False)
        for shadow in attack.generate_shadow_datasets(x_clean, y_clean, 64):
            train(shadow.x, shadow.y)
    """

    _estimator_requirements: tuple[Any, ...] = ()
    _parameter_constraints: dict[str, list[Any]] = {
        "distribution": [Instance(JumboDistribution), None],
        "nb_classes": [Interval(int, 1, None), None],
        "channels_first": [Instance(bool), None],
        "clip_values": [_PAIR],
        "random_state": _RANDOM_STATE,
    }
    attack_params = list(_parameter_constraints)

    def __init__(
        self,
        *,
        distribution: JumboDistribution | None = None,
        nb_classes: int | None = None,
        channels_first: bool | None = None,
        clip_values: tuple[float, float] = (0.0, 1.0),
        random_state: RandomState = None,
    ) -> None:
        super().__init__()
        self.distribution = distribution
        self.nb_classes = nb_classes
        self.channels_first = channels_first
        self.clip_values = clip_values
        self.random_state = random_state
        self.last_setting: JumboSetting | None = None
        self.last_is_poison: np.ndarray | None = None
        self.last_poison_indices: np.ndarray | None = None
        self.last_source_indices: np.ndarray | None = None
        self._check_params()

    def _check_params(self) -> None:
        super()._check_params()
        _check_clip_values(type(self).__name__, self.clip_values)
        self._random = _rng(self.random_state)

    def set_params(self, **kwargs: Any) -> None:
        """Set validated parameters (restarts the random stream); a rejected value changes nothing."""
        _set_params_atomically(self, kwargs)

    @property
    def _distribution(self) -> JumboDistribution:
        return JumboDistribution() if self.distribution is None else self.distribution

    # ------------------------------------------------------------------ public
    def poison(self, x: np.ndarray, y: np.ndarray | None = None, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
        """
        Build one shadow dataset (MBDS Algorithm 1, lines 3-8) under a freshly drawn setting.

        :param x: Clean images ``(N, C, H, W)`` or ``(N, H, W, C)``, float, values in ``clip_values``.
        :param y: Labels ``(N,)`` integers or ``(N, K)`` one-hot (returned in the same form).
        :return: ``(x_shadow, y_shadow)``: the ``N`` clean samples followed by ``max(1, round(p * N))``
            triggered copies labelled ``y_t``; dtype and layout of the inputs.
        """
        if kwargs:
            raise InvalidParameterError(f"{type(self).__name__}.poison got unexpected arguments {sorted(kwargs)}")
        x_checked, y_arr, is_one_hot, nb_classes, first = self._check_inputs(x, y)
        shadow = self._make_shadow(x_checked, y_arr, is_one_hot, nb_classes, first, self._random)
        self.last_setting = shadow.setting
        self.last_is_poison = shadow.is_poison
        self.last_poison_indices = np.flatnonzero(shadow.is_poison)
        self.last_source_indices = shadow.source_indices
        return shadow.x, shadow.y

    def generate_shadow_datasets(self, x: np.ndarray, y: np.ndarray, n: int) -> Iterator[ShadowDataset]:
        """
        Yield ``n`` shadow datasets lazily (MBDS Algorithm 1), each with its own setting.

        Inputs are checked now; datasets are built one at a time when iterated. Dataset ``u`` depends only on a
        seed drawn from ``random_state`` at this call and on ``u``.

        :param x: Clean images, as for :meth:`poison`.
        :param y: Labels, as for :meth:`poison`.
        :param n: Number of shadow datasets (>= 1).
        :return: An iterator of :class:`ShadowDataset`.
        """
        if not Interval(int, 1, None).accepts(n):
            raise InvalidParameterError(f"{type(self).__name__}.generate_shadow_datasets: n must be an int >= 1, "
                                        f"got {n!r}")
        x_checked, y_arr, is_one_hot, nb_classes, first = self._check_inputs(x, y)
        base_seed = int(self._random.integers(2**63))

        def generate() -> Iterator[ShadowDataset]:
            for u in range(int(n)):
                rng = np.random.default_rng([base_seed, u])
                yield self._make_shadow(x_checked, y_arr, is_one_hot, nb_classes, first, rng)

        return generate()

    # ------------------------------------------------------------------ steps
    def _check_inputs(self, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray, bool, int, bool]:
        owner = type(self).__name__
        if y is None:
            raise DataError(f"{owner} needs the labels y of the clean samples, got None")
        if not isinstance(x, np.ndarray) or x.ndim != 4:
            shape = getattr(x, "shape", None)
            raise DataError(f"x must be a numpy array of images (N, C, H, W) or (N, H, W, C), got "
                            f"{type(x).__name__} of shape {shape}")
        check_images(x, clip_values=(float(self.clip_values[0]), float(self.clip_values[1])), allow_float64=True)
        first = _infer_channels_first(x.shape) if self.channels_first is None else self.channels_first
        y_arr = np.asarray(y)
        is_one_hot = y_arr.ndim == 2 and y_arr.shape[1] > 1
        if self.nb_classes is not None:
            nb_classes = int(self.nb_classes)
        elif is_one_hot:
            nb_classes = int(y_arr.shape[1])
        else:
            try:
                nb_classes = int(np.max(y_arr)) + 1
            except (TypeError, ValueError):
                raise DataError(f"y must hold integer class labels, got {y_arr.dtype}") from None
        check_labels(y_arr, n_samples=len(x), nb_classes=nb_classes, allow_one_hot=True)
        return x, y_arr, is_one_hot, nb_classes, first

    def _make_shadow(self, x: np.ndarray, y: np.ndarray, is_one_hot: bool, nb_classes: int,
                     first: bool, rng: np.random.Generator) -> ShadowDataset:
        n = len(x)
        image_shape = x.shape[1:] if first else (x.shape[3], x.shape[1], x.shape[2])
        clip = (float(self.clip_values[0]), float(self.clip_values[1]))
        setting = self._distribution.sample(image_shape, nb_classes=nb_classes, clip_values=clip, random_state=rng)
        n_poison = min(n, max(1, int(math.floor(setting.rate * n + 0.5))))
        sources = np.sort(rng.choice(n, size=n_poison, replace=False))
        x_poison = setting.apply(x[sources], channels_first=first)
        x_out = np.concatenate([x, x_poison], axis=0)
        if is_one_hot:
            y_poison = np.zeros((n_poison, y.shape[1]), dtype=y.dtype)
            y_poison[:, setting.target] = 1
        else:  # (N,) or (N, 1) class indices, dtype kept
            y_poison = np.full((n_poison,) + y.shape[1:], setting.target, dtype=y.dtype)
        y_out = np.concatenate([y, y_poison], axis=0)
        is_poison = np.zeros(n + n_poison, dtype=bool)
        is_poison[n:] = True
        logger.debug("Jumbo shadow dataset: %s, %d clean + %d poisoned", setting.kind, n, n_poison)
        return ShadowDataset(x=x_out, y=y_out, is_poison=is_poison, source_indices=sources, setting=setting)
