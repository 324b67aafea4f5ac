"""``python -m mdssd.model <preset> [--num-classes K] [--bn]``: print the model summary."""

import argparse

from .config import PRESETS, get_config
from .summary import format_summary


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mdssd.model", description=__doc__)
    parser.add_argument("preset", choices=sorted(PRESETS))
    parser.add_argument("--num-classes", type=int, default=21)
    parser.add_argument("--bn", action="store_true", help="BatchNorm after every backbone conv")
    args = parser.parse_args(argv)
    print(format_summary(get_config(args.preset, num_classes=args.num_classes, batch_norm=args.bn)))


if __name__ == "__main__":
    main()
