"""Trajectory representation, normalisers, windows and temporal networks (control domain)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sciffusion.domains.control.temporal_transformer import TemporalTransformer
from sciffusion.domains.control.temporal_unet import TemporalUNet1D
from sciffusion.domains.control.value_net import TemporalValueNet
from sciffusion.registry import NETS
from sciffusion.domains.control.trajectory import (
    EpisodeWindows,
    GaussianNormalizer,
    LimitsNormalizer,
    TrajectoryError,
    TrajectorySpec,
    fit_normalizer,
    inpaint_states,
    normalizer_from_state,
)


@pytest.mark.parametrize("kind", ["limits", "gaussian", "identity"])
def test_normalizer_round_trip_numpy_and_torch(kind: str) -> None:
    rng = np.random.default_rng(0)
    data = rng.normal([3.0, -1.0, 100.0], [0.5, 2.0, 30.0], size=(500, 3))
    norm = fit_normalizer(kind, data)
    back = norm.unnormalize(norm.normalize(data))
    np.testing.assert_allclose(back, data, rtol=1e-12, atol=1e-9)
    t = torch.as_tensor(data, dtype=torch.float32)
    torch.testing.assert_close(norm.unnormalize(norm.normalize(t)), t, rtol=1e-5, atol=1e-3)
    again = normalizer_from_state(norm.state_dict())
    np.testing.assert_allclose(again.normalize(data), norm.normalize(data))


def test_limits_normalizer_maps_to_unit_box_and_gaussian_standardises() -> None:
    data = np.stack([np.linspace(-2.0, 6.0, 101), np.full(101, 4.0)], axis=1)  # second dim constant
    y = LimitsNormalizer.fit(data).normalize(data)
    assert y[:, 0].min() == pytest.approx(-1.0) and y[:, 0].max() == pytest.approx(1.0)
    np.testing.assert_allclose(y[:, 1], 0.0)
    z = GaussianNormalizer.fit(data).normalize(data)
    assert z[:, 0].mean() == pytest.approx(0.0, abs=1e-12) and z[:, 0].std() == pytest.approx(1.0)


def test_normalizer_rejects_wrong_width() -> None:
    norm = LimitsNormalizer.fit(np.zeros((4, 3)))
    with pytest.raises(TrajectoryError, match="3 dimensions"):
        norm.normalize(np.zeros((2, 5)))


def _two_episodes() -> tuple[dict[str, np.ndarray], np.ndarray]:
    steps = np.arange(10, dtype=np.float64)
    obs = np.stack([steps, steps * 10, np.ones(10), np.ones(10)], axis=1)  # x, y, vx, vy
    act = np.stack([steps + 0.5, -steps], axis=1)
    return {"obs": obs, "act": act}, np.array([6, 10])


def test_windows_pad_history_and_future_by_repeating_edges() -> None:
    arrays, ends = _two_episodes()
    w = EpisodeWindows(arrays, ends, horizon=4, pad_before=1, pad_after=2)
    first = w[0]  # starts one step before episode 0
    np.testing.assert_array_equal(first["obs"][:, 0], [0, 0, 1, 2])
    np.testing.assert_array_equal(first["valid"], [0, 1, 1, 1])
    # the last window of episode 1 (steps 6..9) runs two steps past its end
    e1 = [i for i in range(len(w)) if w.index[i][0] == 1]
    last = w[e1[-1]]
    np.testing.assert_array_equal(last["obs"][:, 0], [8, 9, 9, 9])
    np.testing.assert_array_equal(last["valid"], [1, 1, 0, 0])
    # window counts: episode 0 has 6 steps -> starts -1..4 (6), episode 1 has 4 steps -> starts -1..2 (4)
    assert len(w) == 10


def test_windows_absorbing_terminal_zeroes_velocities_and_strides() -> None:
    arrays, ends = _two_episodes()
    w = EpisodeWindows(arrays, ends, horizon=3, stride=2, terminals=np.array([True, False]),
                       absorbing_terminal=True, zero_on_pad={"obs": (2, 4)})
    # episode 0 (terminal) may be padded by up to horizon-1 tokens; episode 1 may not be padded at all
    starts0 = w.index[w.index[:, 0] == 0, 1]
    starts1 = w.index[w.index[:, 0] == 1, 1]
    assert starts0.min() == 0 and starts0.max() == 5
    assert len(starts1) == 0  # a window spans (3 - 1) * 2 + 1 = 5 steps > 4, and non-terminal episodes are not padded
    item = w[int(np.nonzero((w.index[:, 0] == 0) & (w.index[:, 1] == 4))[0][0])]
    np.testing.assert_array_equal(item["obs"][:, 0], [4, 5, 5])  # raw steps 4, 6 -> 5, 8 -> 5
    np.testing.assert_array_equal(item["obs"][:, 2], [1, 0, 0])  # velocity zeroed in the absorbing padding
    np.testing.assert_array_equal(item["valid"], [1, 0, 0])


def test_windows_reject_horizon_longer_than_episodes() -> None:
    arrays, ends = _two_episodes()
    with pytest.raises(TrajectoryError, match="longer than the longest episode"):
        EpisodeWindows(arrays, ends, horizon=8)


def test_inpaint_states_pins_chosen_tokens_only() -> None:
    spec = TrajectorySpec(state_dim=4, action_dim=2, horizon=8)
    start = torch.arange(4.0)[None].repeat(3, 1)
    goal = torch.tensor([[7.0, 8.0]]).repeat(3, 1)
    values, mask = inpaint_states(spec, {0: start}, 3)
    v2, m2 = inpaint_states(spec, {-1: goal}, 3, dims=[0, 1])
    assert mask.shape == (3, 8, 6) and mask[:, 0, :4].all() and mask[:, 0, 4:].sum() == 0 and mask[:, 1:].sum() == 0
    assert m2[:, -1, :2].all() and m2.sum() == 3 * 2
    torch.testing.assert_close(values[:, 0, :4], start)
    torch.testing.assert_close(v2[:, -1, :2], goal)
    with pytest.raises(TrajectoryError):
        inpaint_states(spec, {8: start}, 3)


def test_temporal_unet_shapes_film_and_null_condition() -> None:
    torch.manual_seed(0)
    net = TemporalUNet1D(6, dim=8, dim_mults=(1, 2, 4), cond_dims={"obs": 10}, field="action")
    x = {"action": torch.randn(5, 16, 6)}
    t = torch.rand(5)
    c1, c2 = {"obs": torch.randn(5, 2, 5)}, {"obs": torch.randn(5, 2, 5)}
    out1 = net(x, t, c1)["action"]
    assert out1.shape == (5, 16, 6)
    assert not torch.allclose(out1, net(x, t, c2)["action"])  # FiLM condition changes the output
    drop = torch.ones(5, dtype=torch.bool)
    n1, n2 = net(x, t, net.drop_condition(c1, drop))["action"], net(x, t, net.drop_condition(c2, drop))["action"]
    torch.testing.assert_close(n1, n2)  # dropped rows all see the same null condition
    assert torch.isfinite(n1).all()
    with pytest.raises(ValueError, match="divisible"):
        net({"action": torch.randn(2, 10, 6)}, torch.rand(2), {"obs": torch.randn(2, 10)})


def test_transformer_and_value_net_shapes_and_registry() -> None:
    tr = TemporalTransformer(4, horizon=12, d_model=32, n_heads=2, n_layers=1)
    assert tr({"traj": torch.randn(3, 12, 4)}, torch.rand(3))["traj"].shape == (3, 12, 4)
    v = TemporalValueNet(4, horizon=12, dim=8)
    assert v(torch.randn(3, 12, 4), torch.rand(3)).shape == (3,)
    for name in ("temporal_unet1d", "temporal_transformer", "temporal_value"):
        assert name in NETS
