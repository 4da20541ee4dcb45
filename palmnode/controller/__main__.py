"""``python -m palmnode.controller``: the same as ``palmnode controller``."""
import argparse
import sys

from palmnode.controller.command import DESCRIPTION, add_arguments, main

parser = argparse.ArgumentParser(prog="palmnode controller", description=DESCRIPTION)
sys.exit(main(add_arguments(parser).parse_args()))
