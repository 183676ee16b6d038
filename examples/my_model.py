"""A user's own model, as it would be written outside deploy-attn: a small MobileNetV3-style
classifier whose hard activations are written by hand, ``x * ReLU6(x + 3) / 6``, and an
SE gate with a hand-written hard sigmoid. Nothing here knows about deploy-attn.

    deploy-attn export examples/my_model.py:build --input-size 224 224 --precision fp16,int8
    deploy-attn export examples/my_model.py:build --model-arg num_classes=10 --model-arg width=24

The export turns every hand-written h_swish into one HardSwish op and every hard sigmoid
into one HardSigmoid op (graph passes), and checks each artifact against this module.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def h_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return F.relu6(x + 3) / 6


class HSwish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * F.relu6(x + 3) / 6


class SEGate(nn.Module):
    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.relu(self.fc1(x.mean((2, 3), keepdim=True)))
        return x * h_sigmoid(self.fc2(s))


class Block(nn.Module):
    """Depthwise 3x3 -> BN -> h_swish -> SE -> pointwise 1x1 -> BN, residual when it fits."""

    def __init__(self, inp: int, oup: int, stride: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False)
        self.bn1 = nn.BatchNorm2d(inp)
        self.act = HSwish()
        self.se = SEGate(inp)
        self.pw = nn.Conv2d(inp, oup, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(oup)
        self.residual = stride == 1 and inp == oup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.pw(self.se(self.act(self.bn1(self.dw(x))))))
        return x + y if self.residual else y


class MyNet(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1, bias=False),
                                  nn.BatchNorm2d(width), HSwish())
        self.blocks = nn.Sequential(Block(width, width, 1), Block(width, 2 * width, 2),
                                    Block(2 * width, 2 * width, 1), Block(2 * width, 4 * width, 2))
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def build(num_classes: int = 10, width: int = 16) -> MyNet:
    """The factory deploy-attn calls (``FILE.py:build``); keyword arguments come from
    ``--model-arg KEY=VALUE``."""
    return MyNet(num_classes=num_classes, width=width)


if __name__ == "__main__":
    # The Python API does the same as the command line, on the object itself:
    import deploy_attn

    result = deploy_attn.export(build(), input_shape=(1, 3, 224, 224),
                                out_dir="export/my_model", precisions=("fp16", "int8"))
    print(result.report["status"], result.report["files"])
