"""`python -m fedkd.deploy N ...`: the same command as `fedkd deploy N ...` (see `fedkd.deploy.cli`)."""

import sys

from fedkd.deploy.cli import build_parser, main

sys.exit(main(build_parser().parse_args()))
