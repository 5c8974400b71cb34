"""The classifier every backbone becomes: ``features`` → seed head, with named layers."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError, WeightsUnavailableError


#: Global pooling of the last feature map (``create_model(global_pool=...)``, ``model.global_pool``).
GLOBAL_POOLS = ("avg", "gem")


class GeneralizedMeanPool(nn.Module):
    """Generalised-mean (GeM) pooling, ``mean(x ** p) ** (1 / p)`` over the map, with a fixed ``p``.

    ``p = 1`` is average pooling and ``p → ∞`` max pooling; ``p = 3`` (Radenović et al. 2018)
    leans towards the strongest responses, so a class score needs evidence somewhere on the map
    rather than a small shift everywhere. No parameters: the state dict is the same as with
    average pooling. Computed in float32 (the cube of a bfloat16 activation loses too much).
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p, self.eps = p, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().clamp(min=self.eps).pow(self.p).mean((2, 3), keepdim=True).pow(1.0 / self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def make_global_pool(kind: str) -> nn.Module:
    if kind == "avg":
        return nn.AdaptiveAvgPool2d(1)
    if kind == "gem":
        return GeneralizedMeanPool()
    raise ConfigError(f"unknown global pool {kind!r}; expected one of {', '.join(GLOBAL_POOLS)}")


class SeedHead(nn.Module):
    """The seed's head: GAP → Dropout(0.4) → Dense(hidden, ReLU) → Dropout(0.3) → Dense(classes).

    :meth:`Classifier.set_global_pool` can replace the GAP (``gem``: :class:`GeneralizedMeanPool`).
    """

    def __init__(self, in_features: int, num_classes: int = 2, hidden: int = 128) -> None:
        super().__init__()
        self.pool = make_global_pool("avg")
        self.drop1 = nn.Dropout(0.4)
        self.fc1 = nn.Linear(in_features, hidden)
        self.act = nn.ReLU()
        self.drop2 = nn.Dropout(0.3)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pool(x).flatten(1)
        x = self.drop2(self.act(self.fc1(self.drop1(x))))
        return x if pre_logits else self.fc2(x)

    @property
    def l2_params(self) -> list[nn.Parameter]:
        """Kernels the seed regularises with L2 (Keras ``kernel_regularizer`` on Dense(128))."""
        return [self.fc1.weight]


class Classifier(nn.Module):
    """A backbone's feature extractor followed by the seed head.

    Attributes:
        features: ``nn.Sequential`` producing the last feature map.
        head: :class:`SeedHead`.
        layer_names: friendly (Keras-style) layer name → module path, e.g.
            ``block5_conv3`` → ``features.33``. Module paths work everywhere names do.
        arch: registry name, set by :func:`create_model`.
    """

    def __init__(
        self,
        features: nn.Sequential,
        feature_channels: int,
        layer_names: dict[str, str],
        num_classes: int = 2,
        hidden: int = 128,
    ) -> None:
        super().__init__()
        self.features = features
        self.head = SeedHead(feature_channels, num_classes, hidden)
        self.layer_names = dict(layer_names)
        self.arch = ""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        self.head.fc2 = nn.Linear(self.head.fc2.in_features, num_classes)

    @property
    def global_pool(self) -> str:
        """How the head pools the last feature map: ``avg`` or ``gem``."""
        return "gem" if isinstance(self.head.pool, GeneralizedMeanPool) else "avg"

    def set_global_pool(self, kind: str) -> None:
        """Pool the last feature map with ``kind`` (one of :data:`GLOBAL_POOLS`); no weights change."""
        self.head.pool = make_global_pool(kind)

    def set_trainable(self, trainable_from: str | None) -> None:
        """Freeze the backbone up to ``trainable_from`` (None: all frozen; ``all``: none;
        ``finetune``: the backbone's own fine-tuning start, e.g. ``block5_conv1`` for VGG19).

        The head always trains. Freezing works on ``features`` children: the child that
        holds ``trainable_from`` and everything after it train.
        """
        if trainable_from == "finetune":
            trainable_from = self.finetune_from
        for p in self.parameters():
            p.requires_grad_(False)
        for p in self.head.parameters():
            p.requires_grad_(True)
        if trainable_from is None:
            return
        children = list(self.features.children())
        if trainable_from == "all":
            start = 0
        else:
            path = self.module_path(trainable_from)
            parts = path.split(".")
            child_names = [n for n, _ in self.features.named_children()]
            if parts[0] != "features" or len(parts) < 2 or parts[1] not in child_names:
                raise ConfigError(f"trainable_from {trainable_from!r} is not inside the backbone")
            start = child_names.index(parts[1])
            # Friendly VGG names point at the ReLU after a conv; the conv itself (and its
            # batch norm) must train too, so step back to the conv that opens the unit.
            while (
                start > 0
                and not isinstance(children[start], nn.Conv2d)
                and isinstance(children[start - 1], (nn.Conv2d, nn.BatchNorm2d, nn.ReLU))
            ):
                start -= 1
        for child in children[start:]:
            for p in child.parameters():
                p.requires_grad_(True)

    @property
    def finetune_from(self) -> str:
        """The layer this backbone's second, seed-style stage trains from (its registry entry)."""
        from .registry import get_model_info

        if not self.arch:
            raise ConfigError("trainable_from 'finetune' needs a registered backbone; name a layer instead")
        return get_model_info(self.arch).finetune_from

    def module_path(self, name: str) -> str:
        """Resolve a friendly name or a module path to a module path; error lists valid names."""
        if name in self.layer_names:
            return self.layer_names[name]
        modules = dict(self.named_modules())
        if name in modules and name:
            return name
        raise ConfigError(
            f"unknown layer {name!r} for {self.arch or type(self).__name__}; "
            f"valid layers: {', '.join(self.layer_names)} (or a module path such as features.0)"
        )


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """The module whose output is the explanation map (``block5_conv3`` → VGG19 ReLU 33)."""
    if isinstance(model, Classifier):
        path = model.module_path(name)
    else:
        path = name
    modules = dict(model.named_modules())
    if path not in modules:
        names = getattr(model, "layer_names", None) or [n for n, _ in model.named_modules() if n]
        raise ConfigError(f"unknown layer {name!r}; valid layers: {', '.join(names)}")
    return modules[path]


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a local weights file without unpickling arbitrary objects."""
    p = Path(path)
    if not p.is_file():
        raise WeightsUnavailableError(
            f"{p}: weights file not found; expected --weights imagenet, none, or a path to a local file"
        )
    try:
        if p.suffix == ".safetensors" or _is_safetensors(p):
            from safetensors.torch import load_file

            return load_file(str(p))
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is the file's fault
        raise WeightsUnavailableError(
            f"{p}: not a readable weights file (expected a safetensors or torch state dict): "
            f"{str(exc).splitlines()[0][:200]}"
        ) from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsUnavailableError(f"{p}: expected a state dict of tensors")
    return obj


def _is_safetensors(p: Path) -> bool:
    with open(p, "rb") as fh:
        head = fh.read(9)
    return len(head) == 9 and head[8:9] == b"{"
