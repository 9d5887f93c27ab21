"""A Monte Carlo pricer of European calls over a 2-D grid of (spot, volatility), through ``Client.map``.

    python pricer.py           # numpy, in the shoal/python-sci image (`shoal images build` first)
    python pricer.py --pure    # pure Python, on the default python engine (Pyodide): no image needed

Each grid point is one index of one sweep: ``price(s0=..., vol=...)`` runs on whichever node
claimed it, and the values come back in grid order, as a pandas DataFrame when pandas is
installed here (a column per axis, then ``price``, ``stderr`` and the Black-Scholes price), or
as printed rows otherwise. The paths are seeded, so every node, and every rerun, gives the same
numbers.
"""

from __future__ import annotations

import math
import random
import sys

STRIKE = 100.0
RATE = 0.03
MATURITY = 1.0  # years
PATHS = 20_000
SEED = 7
GRID = {"s0": [80.0, 90.0, 100.0, 110.0, 120.0], "vol": [0.1, 0.2, 0.3, 0.4]}


def price_numpy(s0: float, vol: float) -> dict:
    """The discounted mean payoff over PATHS seeded paths, and its standard error (numpy)."""
    import numpy as np

    z = np.random.default_rng(SEED).standard_normal(PATHS)
    end = s0 * np.exp((RATE - 0.5 * vol**2) * MATURITY + vol * math.sqrt(MATURITY) * z)
    payoff = np.maximum(end - STRIKE, 0.0) * math.exp(-RATE * MATURITY)
    return {"price": float(payoff.mean()), "stderr": float(payoff.std(ddof=1) / math.sqrt(PATHS)),
            "black_scholes": black_scholes(s0, vol)}


def price_pure(s0: float, vol: float) -> dict:
    """The same estimate in pure Python (slower; runs on Pyodide)."""
    rng = random.Random(SEED)
    drift, spread, discount = (RATE - 0.5 * vol**2) * MATURITY, vol * math.sqrt(MATURITY), math.exp(-RATE * MATURITY)
    total = squares = 0.0
    for _ in range(PATHS):
        payoff = max(s0 * math.exp(drift + spread * rng.gauss(0.0, 1.0)) - STRIKE, 0.0) * discount
        total += payoff
        squares += payoff * payoff
    mean = total / PATHS
    variance = (squares - PATHS * mean * mean) / (PATHS - 1)
    return {"price": mean, "stderr": math.sqrt(max(variance, 0.0) / PATHS), "black_scholes": black_scholes(s0, vol)}


def black_scholes(s0: float, vol: float) -> float:
    """The closed-form price the estimates should come close to."""
    d1 = (math.log(s0 / STRIKE) + (RATE + 0.5 * vol**2) * MATURITY) / (vol * math.sqrt(MATURITY))
    d2 = d1 - vol * math.sqrt(MATURITY)
    return s0 * _normal_cdf(d1) - STRIKE * math.exp(-RATE * MATURITY) * _normal_cdf(d2)


def _normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def main(argv: list[str]) -> None:
    import importlib.util

    import shoal

    pure = "--pure" in argv
    as_frame = importlib.util.find_spec("pandas") is not None
    with shoal.Client() as client:
        result = client.map(price_pure if pure else price_numpy, grid=GRID, as_frame=as_frame,
                            image=None if pure else "shoal/python-sci", job={"resources": {"memory": "256MiB"}})
    if as_frame:
        print(result.to_string(index=False))
        return
    points = [(s0, vol) for s0 in GRID["s0"] for vol in GRID["vol"]]
    print(f"{'s0':>6} {'vol':>5} {'price':>9} {'stderr':>7} {'black_scholes':>13}")
    for (s0, vol), row in zip(points, result, strict=True):
        print(f"{s0:6.1f} {vol:5.2f} {row['price']:9.4f} {row['stderr']:7.4f} {row['black_scholes']:13.4f}")


if __name__ == "__main__":
    main(sys.argv[1:])
