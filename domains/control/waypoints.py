"""Waypoints for composing short plans: shortest paths on a graph of the data set's own states.

The planner is trained on windows of at most one data episode, so it cannot reach a goal many cells
away in one plan. :class:`StateGraph` links the places the data visits: states are binned on a square
grid of side ``cell`` (one node per occupied bin, at the mean of its states), and two nodes are joined
when one episode passes from one to the other within ``link_steps`` steps (edge length: the distance of
the two node centres; the point agent can drive a link either way). No maze map is used: walls are
only known through where the data went. :meth:`StateGraph.waypoints` returns, for each agent, the node
furthest along a shortest path to its goal that is at most ``reach`` away along the path (or the goal
itself when it is closer); the planner then plans from the agent's state to that waypoint.
:meth:`StateGraph.typical_distance` measures how far along the graph the data itself gets in one plan's span: a
waypoint at about that distance asks the planner for a trajectory like the data's (navigate data moves ~17 graph
units in 121 steps, stitch data ~7.5).
"""
from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import shortest_path


class StateGraph:
    """Graph over binned data states.

    Args:
        observations: ``(N, 2)`` positions, episodes concatenated.
        episode_ends: ``(E,)`` exclusive episode ends.
        cell: bin side.
        link_steps: largest step gap within an episode that links two bins.

    Attributes:
        nodes: ``(M, 2)`` node positions.
        dist: ``(M, M)`` shortest-path lengths (inf between unconnected nodes).
        pred: ``(M, M)`` predecessors: ``pred[g, v]`` is the node after ``v`` on a shortest path from ``v`` to ``g``.
    """

    def __init__(self, observations: np.ndarray, episode_ends: np.ndarray, cell: float = 1.0, link_steps: int = 5) -> None:
        obs = np.asarray(observations, dtype=np.float64)
        bins = np.floor(obs / cell).astype(np.int64)
        keys, node_of = np.unique(bins, axis=0, return_inverse=True)
        node_of = node_of.reshape(-1)
        m = len(keys)
        counts = np.bincount(node_of, minlength=m)
        self.nodes = np.stack([np.bincount(node_of, obs[:, k], m) / counts for k in range(2)], axis=1)
        episode = np.repeat(np.arange(len(episode_ends)), np.diff(np.concatenate([[0], episode_ends])))
        src, dst = [], []
        for d in range(1, link_steps + 1):
            same = episode[d:] == episode[:-d]
            a, b = node_of[:-d][same], node_of[d:][same]
            keep = a != b
            src.append(a[keep])
            dst.append(b[keep])
        pairs = np.unique(np.sort(np.stack([np.concatenate(src), np.concatenate(dst)], axis=1), axis=1), axis=0)
        length = np.linalg.norm(self.nodes[pairs[:, 0]] - self.nodes[pairs[:, 1]], axis=1)
        adj = coo_matrix((length, (pairs[:, 0], pairs[:, 1])), shape=(m, m)).tocsr()
        self.dist, pred = shortest_path(adj, method="D", directed=False, return_predecessors=True)
        self.pred = pred
        self.n_edges = len(pairs)

    def typical_distance(self, observations: np.ndarray, episode_ends: np.ndarray, span: int, samples: int = 4000,
                         seed: int = 0) -> float:
        """Median graph distance between the nodes of two states ``span - 1`` steps apart in one episode, over
        ``samples`` pairs drawn with ``seed`` (positions ``(N, 2)``, exclusive episode ends ``(E,)``). Pairs in
        unconnected nodes are left out; NaN when no episode is ``span`` steps long."""
        starts = np.concatenate([[0], episode_ends[:-1]])
        long_enough = np.flatnonzero(episode_ends - starts >= span)
        if len(long_enough) == 0:
            return float("nan")
        rng = np.random.default_rng(seed)
        episodes = rng.choice(long_enough, size=samples)
        room = episode_ends[episodes] - starts[episodes] - span + 1  # first steps a pair can start at
        first = starts[episodes] + (rng.random(samples) * room).astype(np.int64)
        obs = np.asarray(observations, dtype=np.float64)
        dist = self.dist[self.nearest(obs[first]), self.nearest(obs[first + span - 1])]
        return float(np.median(dist[np.isfinite(dist)]))

    def nearest(self, xy: np.ndarray) -> np.ndarray:
        """Index ``(B,)`` of the node nearest to each point ``(B, 2)``."""
        d = np.linalg.norm(np.asarray(xy)[:, None, :] - self.nodes[None], axis=-1)
        return np.argmin(d, axis=1)

    def waypoints(self, xy: np.ndarray, goals: np.ndarray, reach: float) -> np.ndarray:
        """Waypoints ``(B, 2)`` for agents at ``xy`` ``(B, 2)`` heading to ``goals`` ``(B, 2)``."""
        starts, ends = self.nearest(xy), self.nearest(goals)
        out = np.array(goals, dtype=np.float64, copy=True)
        for b, (s, g) in enumerate(zip(starts, ends)):
            if not np.isfinite(self.dist[g, s]) or self.dist[g, s] <= reach:
                continue  # unconnected (plan straight at the goal) or close enough
            v = s
            while self.pred[g, v] >= 0 and self.dist[g, s] - self.dist[g, self.pred[g, v]] <= reach:
                v = self.pred[g, v]
            out[b] = self.nodes[v]
        return out
