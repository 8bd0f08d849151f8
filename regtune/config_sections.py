"""The sections of a :class:`~regtune.config.Config`: one frozen dataclass per section
(``data``, ``model``, ``loss``, ``aug``, ``amortise``; ``train`` is in
:mod:`regtune.config_train`), each documenting its keys and validating its values in
``__post_init__`` (a bad value raises :class:`~regtune.errors.ConfigError` naming the key)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import ConfigError

SIMILARITIES = ("ncc", "mse", "mi")
REGULARISERS = ("diffusion", "bending")
LABEL_LOSSES = ("dice", "sqerr")
PAIR_MODES = ("random", "all")


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"config key '{key}': {msg}")


@dataclass(frozen=True)
class DataConfig:
    """Where the volumes come from and how they are prepared.

    root: a Learn2Reg-layout folder (``imagesTr/``, ``labelsTr/``); ``None`` means the
        embedded synthetic phantom dataset, generated on first use.
    downsample: training resolution factor (1 = full 64^3, 2 = 32^3). Evaluation always
        upsamples the field and scores at full resolution.
    val_subjects: number of subjects held out for validation (subject-level split); the
        validation pairs pick the best epoch (and, in a study, the best trial).
    val_pairs: number of fixed validation pairs drawn among the validation subjects.
    test_subjects: number of labelled subjects reserved as the test split: never trained
        on, never used to pick an epoch or a trial; ``regtune evaluate`` scores them
        (0 = no test split; evaluation then falls back to the validation pairs, labelled so).
    test_pairs: number of fixed test pairs drawn among the test subjects.
    split_seed: seed of the subject split and of the validation/test pair lists. The test
        subjects depend only on this seed and ``test_subjects`` (not on ``val_subjects``).
    clip_low / clip_high: per-image percentiles clipped before rescaling to [0, 1].
    normalise: per-image normalisation on (true, strongly recommended); false keeps the
        stored intensities (only for data already normalised; ``regtune doctor`` fails
        when they span orders of magnitude).
    mask_padding: set the replicated edge padding around the real crop to 0.
    pairs: ``random`` draws fresh pairs each step; ``all`` walks the all-vs-all list.
    use_unlabelled: also train on ``imagesTs/`` images (unsupervised terms only).
    labels: the foreground label values scored and used by the Dice loss; any other
        value in a label map is reported and mapped to background.
    """

    root: str | None = None
    downsample: int = 2
    val_subjects: int = 20
    val_pairs: int = 40
    test_subjects: int = 40
    test_pairs: int = 100
    split_seed: int = 0
    clip_low: float = 1.0
    clip_high: float = 99.0
    normalise: bool = True
    mask_padding: bool = False
    pairs: str = "random"
    use_unlabelled: bool = False
    labels: tuple[int, ...] = (1, 2)

    def __post_init__(self) -> None:
        _check(self.downsample in (1, 2, 4), "data.downsample", f"must be 1, 2 or 4, got {self.downsample}")
        _check(self.val_subjects >= 2, "data.val_subjects", f"must be >= 2, got {self.val_subjects}")
        _check(self.val_pairs >= 1, "data.val_pairs", f"must be >= 1, got {self.val_pairs}")
        _check(self.test_subjects == 0 or self.test_subjects >= 2, "data.test_subjects",
               f"must be 0 (no test split) or >= 2, got {self.test_subjects}")
        _check(self.test_pairs >= 1, "data.test_pairs", f"must be >= 1, got {self.test_pairs}")
        _check(0 <= self.clip_low < self.clip_high <= 100, "data.clip_low/clip_high",
               f"need 0 <= clip_low < clip_high <= 100, got {self.clip_low}, {self.clip_high}")
        _check(len(self.labels) >= 1 and all(v > 0 for v in self.labels) and len(set(self.labels)) == len(self.labels),
               "data.labels", f"need distinct positive label values, got {self.labels}")
        _check(self.pairs in PAIR_MODES, "data.pairs", f"must be one of {PAIR_MODES}, got {self.pairs!r}")


@dataclass(frozen=True)
class ModelConfig:
    """VoxelMorph-style U-Net.

    enc, dec: channel widths of the encoder levels and the decoder layers. Twice the default
        widths cost 2.7x a step in fp32, 1.04-1.08x the default's fp32 step in bf16 on a CPU
        with AMX; they need lr 5e-4 (at 1e-3 the field stays at zero for ~200 steps) and gave
        +0.002 to +0.006 test Dice at 15 and 30 minutes, 2-3 seeds (benchmarks/README.md).
    int_steps: > 0 makes the model diffeomorphic (scaling-and-squaring integration of a
        stationary velocity field v; the inverse transform is exp(-v)); 0 = plain displacement.
    int_downsize: integrate the velocity on a grid this many times coarser than the
        training grid and upsample the displacement (VoxelMorph's diffeomorphic default is
        2): smoother, more regular fields and cheaper integration.
    symmetric: the velocity is 0.5 * (g(moving, fixed) - g(fixed, moving)) for the U-Net g:
        swapping the images gives exactly the inverse transform and identical images give
        exactly the identity. Costs a second U-Net pass per pair (training and inference);
        needs int_steps > 0.
    """

    enc: tuple[int, ...] = (16, 32, 32, 32)
    dec: tuple[int, ...] = (32, 32, 32, 32, 32, 16, 16)
    int_steps: int = 7
    int_downsize: int = 1
    symmetric: bool = False

    def __post_init__(self) -> None:
        _check(len(self.enc) >= 1 and all(c > 0 for c in self.enc), "model.enc", f"need positive widths, got {self.enc}")
        _check(len(self.dec) >= len(self.enc) and all(c > 0 for c in self.dec), "model.dec",
               f"need at least len(enc)={len(self.enc)} positive widths, got {self.dec}")
        _check(0 <= self.int_steps <= 12, "model.int_steps", f"must be in [0, 12], got {self.int_steps}")
        _check(self.int_downsize in (1, 2, 4), "model.int_downsize", f"must be 1, 2 or 4, got {self.int_downsize}")
        _check(not (self.symmetric and self.int_steps == 0), "model.symmetric",
               "needs a diffeomorphic model (model.int_steps > 0): the swapped pair's transform is exp(-v)")


@dataclass(frozen=True)
class LossConfig:
    """loss = sim_weight * similarity + reg_weight * regulariser + dice_weight * (1 - Dice)
    + jacobian_weight * mean(relu(-det J)) + ic_weight * inverse-consistency error.

    jacobian_weight: penalty on negative Jacobian determinants (folding) of the field on
        the training grid (0 = off).
    ncc_eps: NCC's stabiliser, on the scale of VoxelMorph's and MONAI's window *sums*
        (cc = cross^2 / (var_f var_w + ncc_eps)); regtune before the fix added 1e-5 to the
        *mean* moments instead, the same as ncc_eps = 1e-5 * window^6 (5.3 at window 9).
    dice_full_res: compute the Dice term at full resolution when training on a
        downsampled grid (``data.downsample`` > 1): the field is upsampled as evaluation
        does and warps the full-resolution label maps, so the loss sees the boundaries the
        score is computed on (costs a full-resolution label warp per pair).
    label_loss: the form of the label term weighted by ``dice_weight``: ``dice`` (soft
        Dice) or ``sqerr`` (squared error of the warped label maps over twice the fixed
        label volume: 1 - Dice for hard maps of equal volume, and a proper score for the
        soft maps training uses, so magnifying the moving labels does not pay).
    ic_weight: penalty on |u_fwd(x) + u_bwd(x + u_fwd(x))|^2, the composition of the
        forward field with the network's own field for the swapped pair (an extra pass over
        the swapped pairs, batched with the first; a ``model.symmetric`` network needs none,
        its swapped field is exp(-v) and the penalty sees only integration error); 0 = off.
    """

    similarity: str = "ncc"
    sim_weight: float = 1.0
    ncc_window: int = 9
    ncc_eps: float = 1e-5
    mi_bins: int = 32
    regulariser: str = "diffusion"
    reg_weight: float = 1.0
    dice_weight: float = 3.0
    dice_full_res: bool = False
    label_loss: str = "dice"
    jacobian_weight: float = 0.0
    ic_weight: float = 0.0

    def __post_init__(self) -> None:
        _check(self.similarity in SIMILARITIES, "loss.similarity", f"must be one of {SIMILARITIES}, got {self.similarity!r}")
        _check(self.regulariser in REGULARISERS, "loss.regulariser", f"must be one of {REGULARISERS}, got {self.regulariser!r}")
        _check(self.label_loss in LABEL_LOSSES, "loss.label_loss", f"must be one of {LABEL_LOSSES}, got {self.label_loss!r}")
        _check(self.ncc_window >= 3 and self.ncc_window % 2 == 1, "loss.ncc_window", f"must be an odd int >= 3, got {self.ncc_window}")
        _check(math.isfinite(self.ncc_eps) and self.ncc_eps > 0, "loss.ncc_eps", f"must be a finite number > 0, got {self.ncc_eps}")
        _check(4 <= self.mi_bins <= 256, "loss.mi_bins", f"must be in [4, 256], got {self.mi_bins}")
        for k in ("sim_weight", "reg_weight", "dice_weight", "jacobian_weight", "ic_weight"):
            v = getattr(self, k)
            _check(math.isfinite(v) and v >= 0, f"loss.{k}", f"must be a finite number >= 0, got {v}")


@dataclass(frozen=True)
class AugConfig:
    """On-the-fly augmentation of training pairs, batched on the training device (no NIfTI
    work per step). Spatial augmentation moves image and label maps together; each image
    of a pair gets its own random draw except ``flip``, which flips both images of a pair
    the same way (the pair stays a plausible pair). All 0 = off. The defaults (rotation 5°,
    scale 5 %, gamma 0.1, noise 0.01) are the 15-minute CPU ablation's best measured
    augmentation (benchmarks/README.md); flips and shear stay off (not measured there).

    flip: probability, per axis, of flipping a pair.
    rotate: maximum rotation in degrees (uniform in [-rotate, rotate] about each axis).
    scale: maximum relative scaling (uniform log-scale in [-scale, scale] per axis).
    shear: maximum shear (uniform in [-shear, shear] per off-diagonal term).
    gamma: maximum |log gamma| of a random intensity gamma (images are in [0, 1]).
    noise: standard deviation of additive Gaussian noise (images are in [0, 1]).
    """

    flip: float = 0.0
    rotate: float = 5.0
    scale: float = 0.05
    shear: float = 0.0
    gamma: float = 0.1
    noise: float = 0.01

    def __post_init__(self) -> None:
        _check(0 <= self.flip <= 1, "aug.flip", f"must be a probability in [0, 1], got {self.flip}")
        _check(0 <= self.rotate <= 45, "aug.rotate", f"must be in [0, 45] degrees, got {self.rotate}")
        for k, hi in (("scale", 0.5), ("shear", 0.5), ("gamma", 1.0), ("noise", 0.5)):
            v = getattr(self, k)
            _check(math.isfinite(v) and 0 <= v <= hi, f"aug.{k}", f"must be in [0, {hi}], got {v}")

    @property
    def spatial(self) -> bool:
        return self.rotate > 0 or self.scale > 0 or self.shear > 0

    @property
    def any(self) -> bool:
        return self.flip > 0 or self.spatial or self.gamma > 0 or self.noise > 0


@dataclass(frozen=True)
class AmortiseConfig:
    """Loss weights the network is conditioned on (HyperMorph-style amortisation, see
    :mod:`regtune.amortise`); empty ``ranges`` = an ordinary network.

    ranges: ``KEY=LOW:HIGH[:log]`` per amortised loss weight (``loss.reg_weight``,
        ``loss.sim_weight``, ``loss.dice_weight``, ``loss.jacobian_weight``,
        ``loss.ic_weight``); ``regtune train --amortise`` sets it. The config's own value of
        an amortised weight is not used: each training sample draws its own.
    method: ``film`` (per-channel scale and shift of every conv block from a small MLP of
        the weights) or ``hyper`` (a HyperMorph hypernetwork: every conv's weights are
        W + H(MLP(weights)), per sample).
    hidden / depth: width and number of hidden layers of the MLP.
    film_head: with ``film``, also scale the velocity head's three output channels per
        sample, ``(1 + gamma) * head(x)``: a direct knob on the field's size (and so its
        smoothness), which the weights' ends pull apart most. ``null`` (the default): on for
        ``film``, off for ``hyper`` (which has no head to scale); see :meth:`head_scaled`.
    end_prob: fraction of the draws put exactly on an end of a range.
    end_high: the share of those on the high end (0.5: half on each end). The high end of
        a regulariser's weight is the slowest regime to learn (strong smoothing of large
        deformations), so by default it gets all of them (``end_prob 0.5, end_high 1``: half
        the draws exactly on the high end, the other half spread over the range, the low end
        included, none exactly on it; the head scaled). Against the split of 65 % on the high
        end (the default until 2026-12-07), the same network, seed and training length
        registered as well or better at every weight measured and with smoother fields below
        the high end: over four paired runs on the real data (``reg_weight`` [0.01, 10]; 3T
        and 6T, fp32 and wide bf16) +0.003 to +0.009 Dice at 10, within 0.003 at 0.01 and
        0.316 with SDlogJ 0.73-0.83x (docs/amortised.md, item 12). The price is the weight's
        meaning: below the high end the network is smoother than an ordinary network trained
        at the same weight (0.59-0.72x its SDlogJ at 0.316), so choose the weight on the
        network itself (``regtune search-weights``), not from an ordinary network's.
    high_first: a curriculum: for this share of the run (its progress, as the learning-rate
        schedule counts it: steps of ``epochs x steps_per_epoch`` or the ``max_minutes``
        clock), half the draws sit on the high end of every range and none on the low end
        (``end_prob 0.5, end_high 1``); after it, ``end_prob`` / ``end_high`` as set. The
        slow high end gets its head start, and the low end its own draws back for the rest
        (with the defaults, ``end_prob 0.5, end_high 1``, the two phases draw alike).
    normalise: divide each training sample's loss by the sum of its loss weights, so the
        loss is a convex combination of the terms (HyperMorph's ``(1 - l) sim + l reg``)
        and samples that drew large weights do not dominate the batch's gradient. Each
        sample's minimiser is unchanged (a positive factor per sample).
    stratify: stratified draws within a batch: the batch's n samples take one draw from
        each n-th of the draw distribution (in a random order, per range), so every step
        sees both ends and the middle in their shares; each sample's distribution is the
        same as without it. Less gradient noise from the weights, not a different target.
    """

    ranges: tuple[str, ...] = ()
    method: str = "film"
    hidden: int = 64
    depth: int = 2
    film_head: bool | None = None
    end_prob: float = 0.5
    end_high: float = 1.0
    high_first: float = 0.0
    normalise: bool = False
    stratify: bool = False

    @property
    def head_scaled(self) -> bool:
        """Whether a FiLM network scales its velocity head (``film_head``; ``None``: yes)."""
        return self.method == "film" and self.film_head is not False

    def __post_init__(self) -> None:
        from .amortise import METHODS, parse_ranges

        parse_ranges(self.ranges)
        _check(self.method in METHODS, "amortise.method", f"must be one of {METHODS}, got {self.method!r}")
        _check(1 <= self.hidden <= 1024, "amortise.hidden", f"must be in [1, 1024], got {self.hidden}")
        _check(1 <= self.depth <= 8, "amortise.depth", f"must be in [1, 8], got {self.depth}")
        _check(not self.film_head or self.method == "film", "amortise.film_head",
               f"scales the head of a FiLM network only; set amortise.method=film or film_head=false (method {self.method!r})")
        _check(0 <= self.end_prob < 1, "amortise.end_prob", f"must be in [0, 1), got {self.end_prob}")
        _check(0 <= self.end_high <= 1, "amortise.end_high", f"must be in [0, 1], got {self.end_high}")
        _check(0 <= self.high_first < 1, "amortise.high_first", f"must be in [0, 1), got {self.high_first}")
