import sys

from tune_cifar.bench.cli import main

sys.exit(main())
