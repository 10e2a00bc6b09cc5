"""The Shapley value of one leaf for one (row, reference) pair: the game every explainer path sums.

For a reference row z, a leaf with value v reached with coalition S (features taken
from x, the rest from z) is the game "v if A is inside S and B is outside S", where,
per distinct feature on the leaf's path (all its conditions on one feature together),
A are the features on which only x goes the leaf's way and B those on which only z
does; a feature on which neither does makes the game 0. Its Shapley values are
+v (|A|-1)! |B|! / (|A|+|B|)! for each feature of A and -v |A|! (|B|-1)! / (|A|+|B|)!
for each of B. Averaging over the background gives interventional SHAP, equal to
shap.TreeExplainer(feature_perturbation="interventional") (tested).
"""

from __future__ import annotations

from math import comb

import numpy as np

# Masks over a leaf's distinct path features are int64 bit sets.
MAX_PATH_FEATURES = 62


def shapley_coefficients(width: int = MAX_PATH_FEATURES) -> tuple[np.ndarray, np.ndarray]:
    """(for_a, for_b), each (width+1, width+1): the weight of one feature of A, of B, given |A|, |B|.

    (a-1)! b! / (a+b)! = 1 / (a C(a+b, a)), computed from exact integers; 0 where the side is empty.
    """
    for_a = np.zeros((width + 1, width + 1))
    for_b = np.zeros((width + 1, width + 1))
    for a in range(width + 1):
        for b in range(width + 1):
            if a:
                for_a[a, b] = 1.0 / (a * comb(a + b, a))
            if b:
                for_b[a, b] = 1.0 / (b * comb(a + b, b))
    return for_a, for_b


FOR_A, FOR_B = shapley_coefficients()
