"""A task module for tests/test_executor.py's preload test: importing it
imports colorsys, which nothing in gmpd or its tests imports otherwise."""

import colorsys


def hue(r: float, g: float, b: float) -> float:
    return colorsys.rgb_to_hsv(r, g, b)[0]
