"""Common vision architectures in plain torch, tiny (no torchvision, no downloads): the
blocks real exports are made of, for the ONNX twin's architecture matrix."""

from __future__ import annotations

import torch
from torch import nn


def _bn(channels: int) -> nn.BatchNorm2d:
    """BatchNorm with non-trivial running statistics, so the exported graph's folding (or
    not) of the normalisation is actually exercised."""
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    return bn


class BasicBlock(nn.Module):
    """ResNet basic block: conv-bn-relu-conv-bn plus a (strided, 1x1 conv) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = _bn(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = _bn(cout)
        self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _bn(cout))
                      if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(h)) + self.short(x))


class TinyResNet(nn.Module):
    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), _bn(8), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        self.layers = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 12, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(12, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2: 1x1 expand, 3x3 depthwise, 1x1 project (linear), ReLU6, residual."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.block = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), _bn(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), _bn(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False), _bn(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_res else self.block(x)


class TinyMobileNetV2(nn.Module):
    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1, bias=False), _bn(8), nn.ReLU6(),
            InvertedResidual(8, 8, 1, 2), InvertedResidual(8, 12, 2, 3), InvertedResidual(12, 12, 1, 3))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(12, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(h, 1))


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation with a configurable gate (HardSigmoid in V3, Sigmoid in EfficientNet)."""

    def __init__(self, channels: int, squeeze: int, gate: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.act, self.gate = act, gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.fc2(self.act(self.fc1(scale))))


class V3Block(nn.Module):
    """MobileNetV3: expand, depthwise (5x5 here), SE with HardSigmoid, HardSwish, project."""

    def __init__(self, cin: int, hidden: int, cout: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.use_res = stride == 1 and cin == cout
        self.block = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), _bn(hidden), nn.Hardswish(),
            nn.Conv2d(hidden, hidden, kernel, stride, kernel // 2, groups=hidden, bias=False),
            _bn(hidden), nn.Hardswish(),
            SqueezeExcite(hidden, max(2, hidden // 4), nn.Hardsigmoid(), nn.ReLU()),
            nn.Conv2d(hidden, cout, 1, bias=False), _bn(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_res else self.block(x)


class TinyMobileNetV3(nn.Module):
    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1, bias=False), _bn(8), nn.Hardswish(),
            V3Block(8, 16, 8, 3, 1), V3Block(8, 24, 12, 5, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(12, 16), nn.Hardswish(), nn.Linear(16, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class MBConv(nn.Module):
    """EfficientNet MBConv: expand, depthwise, SE (SiLU + Sigmoid), project; SiLU throughout."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.block = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), _bn(hidden), nn.SiLU(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), _bn(hidden), nn.SiLU(),
            SqueezeExcite(hidden, max(2, cin // 4), nn.Sigmoid(), nn.SiLU()),
            nn.Conv2d(hidden, cout, 1, bias=False), _bn(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_res else self.block(x)


class TinyEfficientNet(nn.Module):
    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), _bn(8), nn.SiLU())
        self.blocks = nn.Sequential(MBConv(8, 8, 1, 1), MBConv(8, 12, 2, 4))
        # a grouped (not depthwise) conv, as in RegNet / ResNeXt heads
        self.head = nn.Sequential(nn.Conv2d(12, 16, 3, 1, 1, groups=4, bias=False), _bn(16), nn.SiLU())
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(self.blocks(self.stem(x)))
        return self.fc(h.mean((2, 3)))


class TinyViT(nn.Module):
    """A vision transformer: patch embedding, class token, learned positions, pre-norm
    blocks with MatMul/Softmax attention and exact (Erf) GELU, a causal-style mask built
    from Range/Where/Expand so those operators appear in the export."""

    def __init__(self, classes: int = 5, dim: int = 16, heads: int = 2, depth: int = 2,
                 patch: int = 4, size: int = 12) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        tokens = (size // patch) ** 2 + 1
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.1)
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.1)
        self.heads = heads
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"ln1": nn.LayerNorm(dim), "qkv": nn.Linear(dim, 3 * dim), "proj": nn.Linear(dim, dim),
                           "ln2": nn.LayerNorm(dim), "fc1": nn.Linear(dim, 2 * dim), "fc2": nn.Linear(2 * dim, dim)})
            for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.patch(x).flatten(2).transpose(1, 2)
        n, t, d = h.shape
        h = torch.cat([self.cls.expand(n, -1, -1), h], 1) + self.pos
        t = t + 1
        # a band mask: tokens more than 3 apart do not attend (built with Range/Where/Expand)
        idx = torch.arange(t, device=x.device)
        far = (idx[None, :] - idx[:, None]).abs() > 3
        far = far & (idx[:, None] != 0) & (idx[None, :] != 0)  # the class token sees everything
        bias = torch.where(far, torch.full_like(far, -1e4, dtype=x.dtype),
                           torch.zeros_like(far, dtype=x.dtype)).expand(n, self.heads, t, t)
        for block in self.blocks:
            q, k, v = block["qkv"](block["ln1"](h)).chunk(3, -1)
            q, k, v = (z.reshape(n, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
            att = torch.softmax(q @ k.transpose(-2, -1) / (d // self.heads) ** 0.5 + bias, -1)
            h = h + block["proj"]((att @ v).transpose(1, 2).reshape(n, t, d))
            h = h + block["fc2"](nn.functional.gelu(block["fc1"](block["ln2"](h))))
        return self.head(self.norm(h)[:, 0])


ARCHITECTURES = {
    "resnet": TinyResNet,
    "mobilenet_v2": TinyMobileNetV2,
    "mobilenet_v3": TinyMobileNetV3,
    "efficientnet": TinyEfficientNet,
    "vit": TinyViT,
}


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return ARCHITECTURES[name]().eval()
