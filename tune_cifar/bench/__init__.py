"""Speed of our pipeline against the report's own, measured side by side in one run.

    python -m tune_cifar.bench [--device cpu|cuda] [--json PATH] [--data-dir DIR] [--skip-tune]

The baseline is the course template: torchvision's per-image PIL transforms in a DataLoader, an fp32
NCHW loop that reads loss and accuracy with `.item()` every step, one trial per device. Parts, one
module each: 1. augmentation + batching (augment.py), 2. training steps (training.py), 3. K training
processes sharing one device (pack.py), 4. Ray Tune's overhead per trial (tune.py, only where Ray is
installed), 5. K configurations trained as one fused model against K in turn and K processes (fused.py).
baseline.py is the report's pipeline, common.py what the parts share, report.py the
projection and the printed table, cli.py the entry point. The table goes to stdout, progress to
stderr, every figure to --json. Without --data-dir the images are generated, of CIFAR-100's shape.
"""
