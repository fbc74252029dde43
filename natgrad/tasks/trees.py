"""Small trees to embed in the Poincare disk: a balanced tree and a small taxonomy of animals.

    from natgrad.tasks.trees import balanced_tree, taxonomy
    tree = taxonomy()            # Tree(names, parent): parent[i] is the index of i's parent, -1 for the root
    tree.closure()               # (child, ancestor) index pairs: the transitive closure of "is a"

The taxonomy is written for this course (common-knowledge zoology, simplified to a
tree); the balanced tree has ``branching ** d`` nodes at depth ``d``. Both are small
enough (at most a few dozen nodes) that the embedding loss of Nickel & Kiela (2017,
arXiv 1705.08039) can use every negative example instead of sampling them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

__all__ = ["TAXONOMY", "Tree", "balanced_tree", "make_tree", "taxonomy"]

# child: parent, in breadth-first order from the root
TAXONOMY: dict[str, str | None] = {
    "animal": None,
    "mammal": "animal", "bird": "animal", "fish": "animal", "reptile": "animal", "insect": "animal",
    "carnivore": "mammal", "ungulate": "mammal", "cetacean": "mammal", "primate": "mammal",
    "songbird": "bird", "raptor": "bird", "waterbird": "bird",
    "shark": "fish", "salmon": "fish", "tuna": "fish",
    "snake": "reptile", "lizard": "reptile", "turtle": "reptile",
    "ant": "insect", "bee": "insect", "beetle": "insect", "butterfly": "insect",
    "dog": "carnivore", "cat": "carnivore", "bear": "carnivore",
    "horse": "ungulate", "cow": "ungulate", "deer": "ungulate",
    "whale": "cetacean", "dolphin": "cetacean",
    "gorilla": "primate", "chimpanzee": "primate",
    "sparrow": "songbird", "robin": "songbird",
    "eagle": "raptor", "hawk": "raptor", "owl": "raptor",
    "duck": "waterbird", "penguin": "waterbird",
}


@dataclass(frozen=True)
class Tree:
    names: tuple[str, ...]
    parent: tuple[int, ...]  # parent[i]: index of node i's parent; -1 for the root

    def __post_init__(self):
        if len(self.names) != len(self.parent) or self.parent.count(-1) != 1:
            raise ValueError("a tree needs one parent per node and exactly one root")
        for i in range(len(self.parent)):  # every chain of parents reaches the root without a cycle
            seen, j = set(), i
            while j != -1:
                if j in seen:
                    raise ValueError(f"node {self.names[i]!r} is on a cycle")
                seen.add(j)
                j = self.parent[j]

    @property
    def size(self) -> int:
        return len(self.names)

    def ancestors(self, i: int) -> list[int]:
        out, j = [], self.parent[i]
        while j != -1:
            out.append(j)
            j = self.parent[j]
        return out

    def depth(self, i: int) -> int:
        return len(self.ancestors(i))

    def edges(self) -> list[tuple[int, int]]:
        """(child, parent) pairs."""
        return [(i, p) for i, p in enumerate(self.parent) if p != -1]

    def closure(self) -> list[tuple[int, int]]:
        """(child, ancestor) pairs: the transitive closure of the parent relation, the training pairs."""
        return [(i, a) for i in range(self.size) for a in self.ancestors(i)]

    @cached_property
    def related(self) -> np.ndarray:
        """(n, n) bool: ``related[u, v]`` when u == v or one is an ancestor of the other."""
        r = np.eye(self.size, dtype=bool)
        for i, a in self.closure():
            r[i, a] = r[a, i] = True
        return r


def make_tree(child_to_parent: dict[str, str | None]) -> Tree:
    names = tuple(child_to_parent)
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted(p for p in child_to_parent.values() if p is not None and p not in index)
    if unknown:
        raise ValueError(f"parents that are not nodes: {unknown}")
    return Tree(names, tuple(-1 if p is None else index[p] for p in child_to_parent.values()))


def taxonomy() -> Tree:
    """The animal taxonomy above: 40 nodes, depth 3."""
    return make_tree(TAXONOMY)


def balanced_tree(branching: int = 3, depth: int = 3) -> Tree:
    """Every inner node has ``branching`` children, leaves at ``depth``; nodes named by their path ("r", "r.0.2")."""
    nodes = depth + 1 if branching == 1 else (branching ** (depth + 1) - 1) // (branching - 1)
    if branching < 1 or depth < 0 or nodes > 400:
        raise ValueError(f"need branching >= 1, depth >= 0 and at most 400 nodes, got {branching}, {depth}")
    names, parent, frontier = ["r"], [-1], [0]
    for _ in range(depth):
        nxt = []
        for p in frontier:
            for c in range(branching):
                names.append(f"{names[p]}.{c}")
                parent.append(p)
                nxt.append(len(names) - 1)
        frontier = nxt
    return Tree(tuple(names), tuple(parent))
