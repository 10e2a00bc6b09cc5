"""LightGBM trees as the explainer reads them: nodes in a fixed order, leaves with their paths,
and LightGBM's missing-value rule, stated once for numpy and for the compiled kernel."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MISSING_CODES = {"None": 0, "Zero": 1, "NaN": 2}
# Codes of the packed trees that both executions read (kernel.py compiled, vectorized.py numpy).
# numba freezes them into kernel.py's cached code, which only a change of kernel.py refreshes:
# after changing one, clear src/rifml/explain/__pycache__.
PATTERN, LEAVES = 0, 1  # how a tree is explained: patterns.py or leaves.py
ARGMAX = -1  # class code asking for the row's highest-margin class to be explained


def stand_in(missing: int, default_left: bool) -> tuple[float, bool]:
    """LightGBM's missing-value rule for one node as (value that missing cells read as, zeros count as missing).

    "NaN" missing type: NaN follows default_left, so it reads as -inf (left) or +inf (right);
    "Zero": NaN and |x| < 1e-35 do the same; "None": NaN reads as 0.0. A node's decision is
    then one comparison, ``value <= threshold``, in numpy here and in the scoring kernel.
    """
    if missing == 0:
        return 0.0, False
    return (-np.inf if default_left else np.inf), missing == 1


def go_left(values: np.ndarray, threshold: float, default_left: bool, missing: int) -> np.ndarray:
    """LightGBM's numerical decision for one node, on a column of values."""
    value, zeros_too = stand_in(missing, default_left)
    stands_in = np.isnan(values) | (zeros_too & (np.abs(values) < 1e-35))
    return np.where(stands_in, value, values) <= threshold


@dataclass
class SplitNodes:
    """A tree's internal nodes in pre-order and what each one tests: every form of a tree routes by these.

    Attributes
    ----------
    features : ndarray of int (n_nodes,)
        Model feature index tested at each internal node.
    thresholds : ndarray of float (n_nodes,)
    default_left : ndarray of bool (n_nodes,)
    missing : ndarray of int (n_nodes,)
        :data:`MISSING_CODES`: 0 = "None" (NaN is read as 0.0), 1 = "Zero", 2 = "NaN".
    """

    features: np.ndarray
    thresholds: np.ndarray
    default_left: np.ndarray
    missing: np.ndarray

    @property
    def n_nodes(self) -> int:
        return len(self.features)

    def decisions(self, X: np.ndarray) -> np.ndarray:
        """(rows, nodes) bool: does each row go left at each internal node."""
        out = np.empty((len(X), self.n_nodes), dtype=bool)
        for j in range(self.n_nodes):
            out[:, j] = go_left(X[:, self.features[j]], self.thresholds[j], bool(self.default_left[j]), int(self.missing[j]))
        return out


@dataclass
class Branches(SplitNodes):
    """Split nodes with their children: ``left``/``right`` hold a child's internal-node index, or ``~leaf``
    (negative) for a leaf."""

    left: np.ndarray
    right: np.ndarray


@dataclass
class ParsedTree(Branches):
    """One tree of ``Booster.dump_model()``: internal nodes in pre-order, leaves in depth-first order.

    ``leaf_paths[l]`` lists ``(node, goes_left)`` from the root to leaf ``l``.
    """

    leaf_values: np.ndarray
    leaf_paths: list[list[tuple[int, bool]]]


def parse_tree(structure: dict) -> ParsedTree:
    nodes: list[dict] = []
    children: list[list[int]] = []
    leaf_values: list[float] = []
    leaf_paths: list[list[tuple[int, bool]]] = []

    def walk(node: dict, path: list[tuple[int, bool]]) -> int:
        if "leaf_value" in node:
            leaf_values.append(float(node["leaf_value"]))
            leaf_paths.append(path)
            return ~(len(leaf_values) - 1)
        if node.get("decision_type", "<=") != "<=":
            raise NotImplementedError("categorical splits are not supported by the explainer")
        position = len(nodes)
        nodes.append(node)
        children.append([0, 0])
        children[position][0] = walk(node["left_child"], path + [(position, True)])
        children[position][1] = walk(node["right_child"], path + [(position, False)])
        return position

    walk(structure, [])
    pairs = np.array(children, dtype=np.int64).reshape(-1, 2)
    return ParsedTree(
        features=np.array([n["split_feature"] for n in nodes], dtype=np.int64),
        thresholds=np.array([n["threshold"] for n in nodes], dtype=float),
        default_left=np.array([bool(n["default_left"]) for n in nodes], dtype=bool),
        missing=np.array([MISSING_CODES[n.get("missing_type", "None")] for n in nodes], dtype=np.int64),
        left=pairs[:, 0].copy(),
        right=pairs[:, 1].copy(),
        leaf_values=np.array(leaf_values, dtype=float),
        leaf_paths=leaf_paths,
    )
