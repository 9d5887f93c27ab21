"""Estimate pi by Monte Carlo. Run on three nodes with --confidence 3: the job completes only if all
three produce byte-identical results, which they do because Shoal seeds randomness from the job."""

import random

N = 200_000
inside = sum(1 for _ in range(N) if random.random() ** 2 + random.random() ** 2 <= 1.0)
print(f"pi ~ {4 * inside / N:.5f} from {N} samples")
