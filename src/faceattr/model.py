"""FaceNet: a ResNet-18 trunk sized for 48x48 faces, with one linear head per task.

The residual blocks are torchvision's ``BasicBlock``, restated here (same layers, same
parameter names, so torchvision-built checkpoints load) because prediction must not pay for
importing torchvision; only the stem (no 7x7 conv, optional max-pool) and the stage widths
differ from ``torchvision.models.resnet18``.
"""

from __future__ import annotations

from torch import Tensor, nn

STEMS = ("s1", "s1pool", "s2", "s2pool")
DEFAULT_HEADS = {"gender": 2, "ethnicity": 5}
BLOCKS_PER_STAGE = (2, 2, 2, 2)


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """ResNet's two-conv residual block, (B, C, H, W) -> (B, planes, H / stride, W / stride)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def _make_stage(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    # As torchvision's ResNet._make_layer, a method tied to ResNet's fixed widths.
    downsample = None
    if stride != 1 or inplanes != planes:
        downsample = nn.Sequential(conv1x1(inplanes, planes, stride), nn.BatchNorm2d(planes))
    layers = [BasicBlock(inplanes, planes, stride, downsample)]
    layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class FaceNet(nn.Module):
    """ResNet-18 (blocks [2, 2, 2, 2], widths w, 2w, 4w, 8w) with a small-image stem.

    Stems, and the map size each gives at layer4 for a 48x48 input:
    ``s1`` 3x3 conv stride 1 (6x6), ``s1pool`` plus a 3x3/2 max-pool (3x3),
    ``s2`` 3x3 conv stride 2 (3x3), ``s2pool`` stride 2 plus max-pool (2x2).

    >>> import torch
    >>> net = FaceNet(stem="s2", width=8)
    >>> {k: tuple(v.shape) for k, v in net(torch.zeros(4, 1, 48, 48)).items()}
    {'gender': (4, 2), 'ethnicity': (4, 5)}
    """

    def __init__(
        self,
        in_channels: int = 1,
        width: int = 64,
        stem: str = "s1pool",
        dropout: float = 0.3,
        heads: dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        if width < 1 or in_channels < 1:
            raise ValueError(f"width and in_channels must be >= 1, got {width} and {in_channels}")
        heads = dict(DEFAULT_HEADS if heads is None else heads)
        if not heads:
            raise ValueError("heads must name at least one task, got an empty dict")
        self.in_channels, self.width, self.stem_name = in_channels, width, stem
        self.dropout_p, self.head_sizes = dropout, heads

        stem_layers: list[nn.Module] = [
            conv3x3(in_channels, width, stride=2 if stem.startswith("s2") else 1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        if stem.endswith("pool"):
            stem_layers.append(nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        self.stem = nn.Sequential(*stem_layers)

        widths = [width * 2**i for i in range(4)]
        self.layer1 = _make_stage(width, widths[0], BLOCKS_PER_STAGE[0], stride=1)
        self.layer2 = _make_stage(widths[0], widths[1], BLOCKS_PER_STAGE[1], stride=2)
        self.layer3 = _make_stage(widths[1], widths[2], BLOCKS_PER_STAGE[2], stride=2)
        self.layer4 = _make_stage(widths[2], widths[3], BLOCKS_PER_STAGE[3], stride=2)
        self.num_features = widths[3]
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({name: nn.Linear(self.num_features, n) for name, n in heads.items()})
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's ResNet init with zero_init_residual=True: each block starts as the
        # identity, which helps from-scratch training with large batches.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.constant_(m.bn2.weight, 0)

    def forward_features(self, x: Tensor) -> Tensor:
        """Normalised images (B, C, H, W) -> layer4 map (B, 8w, h, w), for embeddings."""
        x = self.stem(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def pool(self, feats: Tensor) -> Tensor:
        """Global average pool: (B, 8w, h, w) -> (B, 8w)."""
        return feats.mean(dim=(2, 3))

    def embed(self, x: Tensor) -> Tensor:
        """Normalised images (B, C, H, W) -> pooled embedding (B, 8w), pre-dropout."""
        return self.pool(self.forward_features(x))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Normalised images (B, C, H, W) -> {head name: logits (B, n_classes)}."""
        z = self.dropout(self.embed(x))
        return {name: head(z) for name, head in self.heads.items()}


def model_args(model: FaceNet) -> dict:
    """The constructor arguments that rebuild ``model``; checkpoints store this dict."""
    return {
        "in_channels": model.in_channels,
        "width": model.width,
        "stem": model.stem_name,
        "dropout": model.dropout_p,
        "heads": dict(model.head_sizes),
    }


def build_model(cfg: dict) -> FaceNet:
    """A FaceNet from a plain dict with ``model_args`` keys; missing keys take defaults."""
    known = {"in_channels", "width", "stem", "dropout", "heads"}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"unknown model config keys {unknown}; expected some of {sorted(known)}")
    return FaceNet(**cfg)
