"""How much of the report's result is MobileNet: its best settings on MobileNetV2 and ResNet-18 too."""

from search_spaces._report_best import BEST

TITLE = "Architectures"
DESCRIPTION = ("MobileNet vs MobileNetV2 vs ResNet-18 (CIFAR variants) at the report's best: lr 0.05, cosine, "
               "wd 5e-4, mixup 0.2, 300 epochs.")
BASE = dict(BEST)
SPACE = {"model": ["mobilenet", "mobilenetv2", "resnet18"]}
METRIC, MODE = "val_acc", "max"
