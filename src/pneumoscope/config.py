"""Run configuration: dataclasses first, then YAML, then command-line overrides.

A configuration is fully described by :class:`Config`. ``configs/*.yaml`` set values on top
of the dataclass defaults, and flags (``--image-size 224``) or ``--set train.batch_size=16``
override the YAML. The resolved configuration is written next to every run (``config.yaml``)
and into the checkpoint, so a run can always be reproduced from its own outputs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from .distributed import ACCELERATORS, STRATEGIES, DistributedConfig
from .errors import ConfigError
from .models.base import GLOBAL_POOLS
from .runtime import PRECISIONS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class AugmentConfig:
    """Training-time augmentation, applied to whole batches on the model's device.

    The first four are the seed's (flip, rotation, zoom, fill mode). The rest default to off and
    model how radiographs from another site differ: position (``translate``), exposure and
    detector response (``gamma``, ``contrast``, ``brightness``), focus and processing
    (``sharpness``: negative blurs, positive sharpens) and quantum noise (``noise``).
    """

    hflip: bool = True
    rotation_deg: float = 18.0  # Keras RandomRotation(0.05) = 0.05 of a full turn
    zoom: float = 0.1  # scale in [1 - zoom, 1 + zoom] (Keras RandomZoom(0.1)), about the centre
    # [lo, hi]: scale log-uniform in [lo, hi] instead of ``zoom`` (> 1 zooms in); [0, 0] = off
    zoom_range: tuple[float, float] = (0.0, 0.0)
    aspect: float = 0.0  # stretch x against y by a factor log-uniform in [1/(1 + aspect), 1 + aspect]
    random_crop: bool = False  # a zoomed-in view may come from anywhere in the image, not just its centre
    translate: float = 0.0  # shift up to this fraction of the image size, per axis
    padding_mode: str = "reflection"  # Keras' default fill_mode is "reflect"; zeros | border
    gamma: float = 0.0  # gamma log-uniform in [1/(1 + gamma), 1 + gamma]
    contrast: float = 0.0  # contrast factor in [1 - contrast, 1 + contrast] about the image mean
    brightness: float = 0.0  # additive shift in [-brightness, brightness] (intensities in [0, 1])
    sharpness: float = 0.0  # unsharp-mask weight in [-sharpness, sharpness]
    noise: float = 0.0  # Gaussian noise, std drawn uniformly in [0, noise]
    # Random erasing (Zhong et al. 2020): with this probability per image, one rectangle of 2-25 %
    # of the image (aspect 1/3-3) is filled with a flat grey drawn uniformly, so no one small region
    # (a marker, a corner, burned-in text) can decide the label alone.
    erase: float = 0.0
    # With this probability per image, a bright "R" or "L" lead marker (5-15 % of the side high)
    # is burned in near a random corner, on both classes alike, so a marker's style or place
    # cannot carry the label (in the Kaggle train split a large top-left marker is several times
    # as common on PNEUMONIA images).
    markers: float = 0.0


@dataclass
class DataConfig:
    """Where images come from and how they become tensors."""

    image_size: int = 256
    val_source: str = "split"  # split (patient-level split of train) | val | test (the seed's leak)
    val_fraction: float = 0.1
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    intensity: str = "none"  # none | equalize (per-image histogram equalisation; see Preprocessing)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # Loader worker processes per training process when streaming from a store (`pneumoscope
    # prepare`); 0 reads chunks in the training process. The in-memory cache never needs any.
    loader_workers: int = 0


@dataclass
class ModelConfig:
    """Backbone, its initial weights and the Grad-CAM layer."""

    backbone: str = "vgg19"
    weights: str = "imagenet"  # imagenet | none | PATH
    cam_layer: str | None = None  # None: the backbone's default
    global_pool: str = "avg"  # avg (the seed's GAP) | gem (generalised mean, p = 3)


@dataclass
class StageConfig:
    """One fine-tuning stage: what trains, at what rate, for how long."""

    name: str = "stage1"
    epochs: int = 7
    lr: float = 3e-4
    # None: backbone frozen, head only; "all": everything; a layer name: that layer on;
    # "finetune": the backbone's own fine-tuning start (listed by `pneumoscope models`), which
    # for VGG19 is block5_conv1, the seed's.
    trainable_from: str | None = None
    grad_clip_norm: float | None = None
    weight_decay: float = 0.0
    # adam (L2 as Keras/torch Adam add it) | adamw (decoupled decay) | sgd (momentum 0.9,
    # Nesterov, L2 decay)
    optimizer: str = "adam"
    # plateau: x plateau_factor when val_loss stalls (the seed's); onecycle: warm up for
    # warmup_fraction of the stage's steps, then cosine-anneal to ~0, per batch.
    schedule: str = "plateau"
    warmup_fraction: float = 0.15
    early_stopping_patience: int = 5
    plateau_patience: int = 2
    plateau_factor: float = 0.5
    min_lr: float = 1e-6
    # Progressive resizing: train and validate this stage at a lower side in pixels (the batch
    # is resampled on the model's device); None: ``data.image_size``. Only stages at the full
    # size may become ``best.ckpt``, so the last stage must run at it.
    image_size: int | None = None
    # Progressive resizing inside the stage's one learning-rate schedule: its first
    # ``start_epochs`` epochs train at ``start_size`` pixels, the rest at the stage's size.
    # Validation always runs at the stage's size. None / 0: every epoch at the stage's size.
    start_size: int | None = None
    start_epochs: int = 0
    # This stage's numeric precision (auto | fp32 | bf16); None: train.precision.
    precision: str | None = None
    # The stage's last ``late_epochs`` epochs train from ``late_trainable_from`` on, inside the
    # same learning-rate schedule: the layers before it freeze (their BatchNorm statistics still
    # adapt), and the step skips their backward pass. It only ever freezes more than
    # ``trainable_from``. 0: every epoch trains what ``trainable_from`` says.
    late_epochs: int = 0
    late_trainable_from: str | None = None


@dataclass
class TrainConfig:
    """Optimisation settings shared by all stages."""

    batch_size: int = 32
    seed: int = 42
    label_smoothing: float = 0.05
    class_weights: str | None = "balanced"  # balanced (N / (2 N_c)) | none
    head_l2: float = 1e-4  # L2 on the hidden Dense kernel, as Keras' kernel_regularizer
    # > 0: validate and export an exponential moving average of the weights (per optimiser
    # step, e.g. 0.995); it smooths out the epoch-to-epoch swings of a noisy from-scratch run.
    ema_decay: float = 0.0
    # > 0: mixup (Zhang et al. 2018) with mixing weights drawn from Beta(mixup, mixup) per batch:
    # each training batch is blended with a shuffled copy of itself and the loss with both labels.
    mixup: float = 0.0
    # Which training images an epoch shows: "all" (each once, shuffled); "balanced" (every image
    # of the smallest class and as many drawn afresh from each other class, shuffled: shorter
    # epochs in which the classes are equal, so the loss weights stay 1). In-memory data only.
    epoch_sampling: str = "all"
    # Which weights become best.ckpt: "best" = lowest val_loss over all epochs and stages (the
    # seed's, Keras' restore_best_weights); "last" = the end of the schedule (one-cycle runs,
    # whose short-lived low-loss epochs early on are noise rather than a better model);
    # "pointing" = the full-size epoch whose Grad-CAM maxima land on the most validation lesions,
    # then the lowest val_loss (needs lesion ground truth: see lesion_masks).
    select: str = "best"
    # Where "pointing" finds the validation lesions: a folder of lesion-mask PNGs named like the
    # images (any layout), or an RSNA-format CSV of boxes (patientId,x,y,width,height,Target), as
    # explain-eval's --masks / --boxes. None: DATA/masks/<split>/<class>/, as `pneumoscope synth` writes.
    lesion_masks: str | None = None
    threshold: float = 0.5
    precision: str = "auto"
    device: str = "auto"
    limit_train_batches: float | int = 1.0  # Lightning semantics: fraction or count per epoch
    limit_val_batches: float | int = 1.0
    # > 0: also save the resumable state every N optimiser steps, so `--resume` continues a long
    # epoch from where it stopped (streamed stores restore their loader position); 0: per epoch.
    checkpoint_every_n_steps: int = 0
    stages: list[StageConfig] = field(
        default_factory=lambda: [
            StageConfig(name="stage1", epochs=7, lr=3e-4, trainable_from=None, min_lr=1e-6),
            StageConfig(
                name="stage2",
                epochs=14,
                lr=1e-5,
                trainable_from="finetune",  # block5_conv1 on the default VGG19, the seed's
                grad_clip_norm=1.0,
                min_lr=1e-7,
            ),
        ]
    )


@dataclass
class CalibrationConfig:
    """Temperature scaling fitted on the validation split after training."""

    temperature: bool = True  # false: keep T = 1 (raw softmax probabilities)
    n_bins: int = 15  # equal-width bins of P(PNEUMONIA) for the calibration error


@dataclass
class OperatingPointConfig:
    """How the decision threshold is chosen on the validation split after training."""

    method: str = "youden"  # youden | sensitivity | fixed (fixed uses train.threshold)
    target_sensitivity: float = 0.95  # for method sensitivity
    sensitivity_margin: float = 0.0  # aim for target + margin on validation, for safety on new data
    # > 0: choose the threshold on the validation images seen this many times through the
    # training augmentation (data.augment) rather than once as they are. The augmentation models
    # other sites' framing and exposure, so the threshold is one that holds up under such shift
    # instead of one tuned to the training site's validation images. 0: plain validation.
    augment_draws: int = 0


@dataclass
class Config:
    """Everything needed to reproduce a training run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    operating_point: OperatingPointConfig = field(default_factory=OperatingPointConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def to_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))

    def validate(self) -> "Config":
        """Check values a user can get wrong; raise :class:`ConfigError` naming the key."""
        if self.data.val_source not in ("split", "val", "test"):
            raise ConfigError(f"data.val_source must be split, val or test, not {self.data.val_source!r}")
        if not 0.0 < self.data.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in (0, 1), not {self.data.val_fraction}")
        if self.data.image_size < 1:
            raise ConfigError(f"data.image_size must be positive, not {self.data.image_size}")
        if self.train.batch_size < 1:
            raise ConfigError(f"train.batch_size must be positive, not {self.train.batch_size}")
        check_seed(self.train.seed, "train.seed")
        for key in ("limit_train_batches", "limit_val_batches"):
            if not getattr(self.train, key) > 0:
                raise ConfigError(
                    f"train.{key} must be above 0 (a fraction up to 1, or a count of batches), not {getattr(self.train, key)}"
                )
        if not 0.0 <= self.train.label_smoothing < 1.0:
            raise ConfigError("train.label_smoothing must be in [0, 1)")
        if self.train.class_weights not in ("balanced", None, "none"):
            raise ConfigError("train.class_weights must be 'balanced' or 'none'")
        if self.train.select not in ("best", "last", "pointing"):
            raise ConfigError(f"train.select must be best, last or pointing, not {self.train.select!r}")
        if self.train.lesion_masks and self.train.select != "pointing":
            raise ConfigError(f"train.lesion_masks is read only by train.select: pointing, and select is "
                              f"{self.train.select!r}; set both or neither")
        if self.train.epoch_sampling not in ("all", "balanced"):
            raise ConfigError(f"train.epoch_sampling must be all or balanced, not {self.train.epoch_sampling!r}")
        if self.train.mixup < 0:
            raise ConfigError(f"train.mixup must be >= 0 (0 = off), not {self.train.mixup}")
        if not 0.0 <= self.train.ema_decay < 1.0:
            raise ConfigError(f"train.ema_decay must be in [0, 1), not {self.train.ema_decay}")
        if not 0.0 < self.train.threshold < 1.0:
            raise ConfigError("train.threshold must be in (0, 1)")
        if self.model.global_pool not in GLOBAL_POOLS:
            raise ConfigError(f"model.global_pool must be one of {', '.join(GLOBAL_POOLS)}, not {self.model.global_pool!r}")
        if self.data.intensity not in ("none", "equalize"):
            raise ConfigError(f"data.intensity must be none or equalize, not {self.data.intensity!r}")
        aug = self.data.augment
        if aug.padding_mode not in ("reflection", "zeros", "border"):
            raise ConfigError(f"data.augment.padding_mode must be reflection, zeros or border, not {aug.padding_mode!r}")
        for key in ("rotation_deg", "zoom", "aspect", "translate", "gamma", "contrast", "brightness", "sharpness", "noise"):
            if getattr(aug, key) < 0:
                raise ConfigError(f"data.augment.{key} must be >= 0, not {getattr(aug, key)}")
        for key in ("erase", "markers"):
            if not 0.0 <= getattr(aug, key) <= 1.0:
                raise ConfigError(f"data.augment.{key} is a probability per image, in [0, 1], not {getattr(aug, key)}")
        if not aug.zoom < 1.0:
            raise ConfigError(f"data.augment.zoom must be < 1 (scale 1 ± zoom), not {aug.zoom}; use zoom_range for more")
        lo, hi = aug.zoom_range
        if (lo, hi) != (0.0, 0.0) and not 0.0 < lo <= hi:
            raise ConfigError(f"data.augment.zoom_range must be [lo, hi] with 0 < lo <= hi (or [0, 0] for off), not {[lo, hi]}")
        op = self.operating_point
        if op.method not in ("youden", "sensitivity", "fixed"):
            raise ConfigError(f"operating_point.method must be youden, sensitivity or fixed, not {op.method!r}")
        if not 0.0 < op.target_sensitivity <= 1.0:
            raise ConfigError(f"operating_point.target_sensitivity must be in (0, 1], not {op.target_sensitivity}")
        if op.augment_draws < 0:
            raise ConfigError(f"operating_point.augment_draws must be >= 0, not {op.augment_draws}")
        if not 0.0 <= op.sensitivity_margin < 1.0:
            raise ConfigError(f"operating_point.sensitivity_margin must be in [0, 1), not {op.sensitivity_margin}")
        if self.calibration.n_bins < 1:
            raise ConfigError(f"calibration.n_bins must be positive, not {self.calibration.n_bins}")
        if self.data.loader_workers < 0:
            raise ConfigError(f"data.loader_workers must be >= 0, not {self.data.loader_workers}")
        if self.train.checkpoint_every_n_steps < 0:
            raise ConfigError(f"train.checkpoint_every_n_steps must be >= 0, not {self.train.checkpoint_every_n_steps}")
        dist = self.distributed
        # Only what the values themselves can get wrong: whether this machine has the GPUs is
        # checked when a Trainer is built (a config read on another machine stays valid).
        if dist.accelerator not in ACCELERATORS:
            raise ConfigError(f"distributed.accelerator must be one of {', '.join(ACCELERATORS)}, not {dist.accelerator!r}")
        if dist.strategy not in STRATEGIES:
            raise ConfigError(f"distributed.strategy must be one of {', '.join(STRATEGIES)}, not {dist.strategy!r}")
        if dist.devices < 1 or dist.num_nodes < 1:
            raise ConfigError(f"distributed.devices and num_nodes must be >= 1, not {dist.devices} and {dist.num_nodes}")
        if not self.train.stages:
            raise ConfigError("train.stages must list at least one stage")
        for st in self.train.stages:
            if st.epochs < 0 or st.lr <= 0:
                raise ConfigError(f"stage {st.name!r}: epochs must be >= 0 and lr > 0")
            if st.optimizer not in ("adam", "adamw", "sgd"):
                raise ConfigError(f"stage {st.name!r}: optimizer must be adam, adamw or sgd, not {st.optimizer!r}")
            if st.precision is not None and st.precision not in PRECISIONS:
                raise ConfigError(
                    f"stage {st.name!r}: precision must be one of {', '.join(PRECISIONS)} (or unset), not {st.precision!r}"
                )
            if st.schedule not in ("plateau", "onecycle"):
                raise ConfigError(f"stage {st.name!r}: schedule must be plateau or onecycle, not {st.schedule!r}")
            if not 0.0 < st.warmup_fraction < 1.0:
                raise ConfigError(f"stage {st.name!r}: warmup_fraction must be in (0, 1)")
            if st.image_size is not None and not 0 < st.image_size <= self.data.image_size:
                raise ConfigError(
                    f"stage {st.name!r}: image_size must be between 1 and data.image_size "
                    f"({self.data.image_size}), not {st.image_size}"
                )
            if (st.start_size is None) != (st.start_epochs == 0):
                raise ConfigError(f"stage {st.name!r}: start_size and start_epochs go together (both set or neither)")
            if st.start_size is not None and not 0 < st.start_size <= (st.image_size or self.data.image_size):
                raise ConfigError(
                    f"stage {st.name!r}: start_size must be between 1 and the stage's size "
                    f"({st.image_size or self.data.image_size}), not {st.start_size}"
                )
            if (st.late_trainable_from is None) != (st.late_epochs == 0):
                raise ConfigError(
                    f"stage {st.name!r}: late_epochs and late_trainable_from go together (both set or neither)"
                )
            if not 0 <= st.late_epochs <= st.epochs:
                raise ConfigError(f"stage {st.name!r}: late_epochs must be between 0 and epochs ({st.epochs}), not {st.late_epochs}")
            if not 0 <= st.start_epochs <= st.epochs:
                raise ConfigError(f"stage {st.name!r}: start_epochs must be between 0 and epochs ({st.epochs}), not {st.start_epochs}")
        last = self.train.stages[-1]
        if last.image_size not in (None, self.data.image_size):
            raise ConfigError(
                f"stage {last.name!r}: the last stage must train at data.image_size ({self.data.image_size}), "
                f"not {last.image_size}; only full-size stages can become best.ckpt"
            )
        if not any(st.epochs > 0 for st in self.train.stages if st.image_size in (None, self.data.image_size)):
            raise ConfigError(
                "no stage at data.image_size has an epoch to train, so there would be no checkpoint; "
                "give the last stage at least 1 epoch"
            )
        return self


def check_seed(seed: Any, name: str = "seed") -> None:
    """Refuse a seed NumPy and torch cannot take: an integer from 0 to 2**32 - 1."""
    import numbers

    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**32:
        raise ConfigError(f"{name} must be an integer from 0 to 4294967295 (2**32 - 1), not {seed!r}")


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Convert a YAML/flag value to the dataclass field's declared type."""
    origin = get_origin(hint)
    if is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return _build(hint, value, key)
    if origin in (list,) and get_args(hint) and is_dataclass(get_args(hint)[0]):
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_build(get_args(hint)[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(float(v) for v in value)
    args = get_args(hint)
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(f"{key}: must not be empty")
    types = [a for a in args if a is not type(None)] or [hint]
    if isinstance(value, str):
        for t in types:
            if t is bool:
                low = value.lower()
                if low in ("true", "yes", "1", "on"):
                    return True
                if low in ("false", "no", "0", "off"):
                    return False
            elif t in (int, float):
                try:
                    return t(value)
                except ValueError:
                    continue
            elif t is str:
                return None if (type(None) in args and value.lower() in ("null", "none", "~")) else value
        raise ConfigError(f"{key}: cannot read {value!r} as {' or '.join(t.__name__ for t in types)}")
    for t in types:
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value) if int not in types else value
        if isinstance(value, t):
            return value
    raise ConfigError(f"{key}: expected {' or '.join(t.__name__ for t in types)}, got {value!r}")


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown config key {where}{unknown[0]}; valid keys: {', '.join(sorted(names))}")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in values.items()}
    return cls(**kwargs)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def config_from_dict(values: dict[str, Any]) -> Config:
    """Build a validated :class:`Config` from nested plain values over the defaults."""
    merged = _merge(Config().to_dict(), values or {})
    return _build(Config, merged, "").validate()


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults ← YAML file ← ``overrides`` (dotted keys, e.g. ``{"data.image_size": 224}``).

    ``path`` may also be the name of a bundled config (``seed``, ``offline``, ``demo``).
    """
    values: dict[str, Any] = {}
    if path is not None:
        values = read_yaml(resolve_config_path(path))
    return config_with_overrides(values, overrides)


def config_with_overrides(values: dict[str, Any], overrides: dict[str, Any] | None = None) -> Config:
    """Nested ``values`` (a YAML's or a checkpoint's config) ← dotted ``overrides`` → validated Config."""
    import copy

    values = copy.deepcopy(values)
    for dotted, v in (overrides or {}).items():
        if v is None:
            continue
        cursor: Any = values
        parts = dotted.split(".")
        for i, p in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(cursor, list):  # a list of sections (train.stages): index it, e.g. train.stages.0.lr
                if not p.isdigit() or int(p) >= len(cursor):
                    raise ConfigError(f"cannot set {dotted}: {'.'.join(parts[:i])} has {len(cursor)} entries, "
                                      f"indexed 0..{len(cursor) - 1}")
                p = int(p)
            elif not isinstance(cursor, dict):
                raise ConfigError(f"cannot set {dotted}: {'.'.join(parts[:i])} is not a section")
            if last:
                cursor[p] = copy.deepcopy(v)  # a later override may index into it; the caller's stays as it was
                continue
            if isinstance(cursor, dict) and p not in cursor and parts[i + 1].isdigit():
                cursor[p] = _default_value(parts[: i + 1])  # e.g. the default stages, to index into
            cursor = cursor.setdefault(p, {}) if isinstance(cursor, dict) else cursor[p]
    return config_from_dict(values)


def _default_value(path: list[str]) -> Any:
    """The default config's value at ``path`` (dotted parts), as plain data."""
    import dataclasses

    value: Any = dataclasses.asdict(Config())
    for p in path:
        value = value[int(p)] if isinstance(value, list) else value[p]
    return value


def resolve_config_path(path: str | Path) -> Path:
    """A file path, or the name of a config shipped with the package (``seed`` → seed.yaml)."""
    p = Path(path)
    if p.is_file():
        return p
    bundled = Path(__file__).parent / "configs" / f"{p.stem}.yaml"
    # A bare name is a bundled config even when a folder of that name sits in the working
    # directory (`pneumoscope demo --out demo` makes one).
    if p.suffix in ("", ".yaml", ".yml") and bundled.is_file() and not p.is_file():
        return bundled
    raise ConfigError(f"{path}: config file not found (expected a YAML file or one of: {', '.join(bundled_configs())})")


def bundled_configs() -> list[str]:
    return sorted(p.stem for p in (Path(__file__).parent / "configs").glob("*.yaml"))


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (data, model, train, calibration, operating_point, distributed)")
    return data


def parse_set_overrides(items: list[str] | None) -> dict[str, Any]:
    """Parse ``--set key.path=value`` items; values are YAML scalars/lists."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.batch_size=16")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: cannot parse value") from exc
    return out


def dump_config(cfg: Config, path: Path) -> None:
    """Write the resolved configuration as YAML."""
    from .fileio import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def replace(obj: Any, **changes: Any) -> Any:
    return dataclasses.replace(obj, **changes)
