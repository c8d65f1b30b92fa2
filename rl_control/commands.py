"""Handlers of ``rlctl train / eval / export / demo``."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    del sub  # filled in as the commands arrive
