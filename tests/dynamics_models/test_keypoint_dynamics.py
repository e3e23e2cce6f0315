"""The keypoint dynamics model: contract, invariances, augmentation, learning."""
import math

import numpy as np
import pytest
import torch

import dynamics_models
from dynamics_models.keypoint import KeypointDynamics
from toy_pushing import pushing_episodes

K, D = 5, 12


@pytest.fixture(scope="module")
def windows():
    """Toy pushing windows: states [W, 4, 12], actions [W, 3, 2]."""
    model = KeypointDynamics()
    ss, aa = [], []
    for ep in pushing_episodes(12, steps=12, seed=3):
        s, a = model.episode_states(ep)
        ss.append(s.unfold(0, 4, 1).transpose(1, 2))
        aa.append(a.unfold(0, 3, 1).transpose(1, 2))
    return {"states": torch.cat(ss), "actions": torch.cat(aa)}


def fitted(windows, **kw) -> KeypointDynamics:
    torch.manual_seed(0)
    model = KeypointDynamics(hidden=32, layers=2, **kw)
    model.fit_normalisation(windows)
    return model


def rigid(states: torch.Tensor, actions: torch.Tensor, angle: float, shift=(0.3, -0.2)):
    c, s = math.cos(angle), math.sin(angle)
    rot = torch.tensor([[c, -s], [s, c]])
    pts = states.unflatten(-1, (K + 1, 2)) @ rot.T + torch.tensor(shift)
    return pts.flatten(-2), actions @ rot.T


def test_registry():
    assert "keypoint" in dynamics_models.available()
    model = dynamics_models.make("keypoint", hidden=16)
    assert isinstance(model, KeypointDynamics) and model.name == "keypoint"
    assert model.env_names == ("push-box",)
    assert dynamics_models.make("keypoint", **model.config()).config() == model.config()
    with pytest.raises(dynamics_models.UnknownModelError, match="available: .*keypoint"):
        dynamics_models.make("no-such-model")


def test_encode_batched_and_unbatched():
    model = KeypointDynamics(hidden=16)
    kp = np.arange(10, dtype=np.float64).reshape(5, 2)
    s = model.encode({"keypoints": kp, "pusher": np.array([7.0, 8.0])})
    assert s.shape == (1, D) and s.dtype == torch.float32
    assert torch.equal(model.state_keypoints(s)[0], torch.as_tensor(kp, dtype=torch.float32))
    assert model.state_pusher(s)[0].tolist() == [7.0, 8.0]
    # batched, with the env's z column dropped
    kp3 = torch.zeros(4, 5, 3)
    kp3[..., 2] = 0.025
    s = model.encode({"keypoints": kp3, "pusher": torch.ones(4, 2)})
    assert s.shape == (4, D) and float(s[:, :10].abs().max()) == 0.0
    with pytest.raises(ValueError, match="keypoints"):
        model.encode({"keypoints": np.zeros((4, 2)), "pusher": np.zeros(2)})


def test_rollout_shapes_broadcast_and_gradient(windows):
    model = fitted(windows)
    state = windows["states"][:1, 0]  # [1, D]
    actions = (torch.rand(7, 4, 2) * 0.06 - 0.03).requires_grad_(True)
    out = model.rollout(state, actions)
    assert out.shape == (7, 4, D)
    # entry h is the state after action h: the first entry is one step from the start
    assert torch.allclose(out[:, 0], model.step(state.expand(7, -1), actions[:, 0]))
    out[:, -1, :10].sum().backward()  # keypoints at the end of the horizon
    g = actions.grad
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    assert g[:, 0].abs().sum() > 0  # the first action influences the last state
    assert model.rollout(state, actions[:, :0]).shape == (7, 0, D)


@pytest.mark.parametrize("frame,angle", [
    ("object", 1.1),  # the object frame makes the model rigidly equivariant (rotation and translation)
    ("world", 0.0),  # world axes: translation invariance by construction
])
def test_model_predictions_move_with_the_scene(windows, frame, angle):
    model = fitted(windows, frame=frame)
    s0, a = windows["states"][:20, 0], windows["actions"][:20]
    with torch.no_grad():
        pred = model.rollout(s0, a)
        s0_t, a_t = rigid(s0, a, angle=angle)
        pred_t = model.rollout(s0_t, a_t)
    expected, _ = rigid(pred, a, angle=angle)
    assert torch.allclose(pred_t, expected, atol=1e-5)


def test_augmentation_is_a_rigid_transform(windows):
    model = KeypointDynamics()
    s, a = windows["states"], windows["actions"]
    s_aug, a_aug = model.augment(s, a, generator=torch.Generator().manual_seed(1))
    assert s_aug.shape == s.shape and a_aug.shape == a.shape
    assert not torch.allclose(s_aug, s)

    def pairwise(x):  # distances between all keypoints and the pusher, per window and time
        pts = x.unflatten(-1, (K + 1, 2))
        return (pts.unsqueeze(-2) - pts.unsqueeze(-3)).norm(dim=-1)

    assert torch.allclose(pairwise(s_aug), pairwise(s), atol=1e-6)
    assert torch.allclose(a_aug.norm(dim=-1), a.norm(dim=-1), atol=1e-7)
    # The pusher's motion keeps its relation to the (rotated) action: same rotation for both.
    dp, dp_aug = s[:, 1:, 10:] - s[:, :-1, 10:], s_aug[:, 1:, 10:] - s_aug[:, :-1, 10:]
    cross = lambda u, v: u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]  # noqa: E731
    assert torch.allclose((dp * a).sum(-1), (dp_aug * a_aug).sum(-1), atol=1e-6)
    assert torch.allclose(cross(dp, a), cross(dp_aug, a_aug), atol=1e-6)
    # one transform per window: rotation angles differ between windows
    angle = lambda x: torch.atan2(x[:, 0, 3] - x[:, 0, 1], x[:, 0, 2] - x[:, 0, 0])  # noqa: E731
    turned = torch.remainder(angle(s_aug) - angle(s), 2 * math.pi)
    assert turned.std() > 0.5


def test_normalisation_buffers_are_saved(windows):
    model = fitted(windows)
    sd = model.state_dict()
    for name in ("in_mean", "in_std", "out_mean", "out_std"):
        assert name in sd
    assert (model.in_std >= 1e-2).all() and (model.out_std >= 1e-3).all()
    # with the object frame, the rigid box's corner features are constants: std at the floor
    assert torch.allclose(model.in_std[:8], torch.full((8,), 1e-2))
    fresh = KeypointDynamics(hidden=32, layers=2)
    fresh.load_state_dict(sd)
    assert torch.equal(fresh.out_std, model.out_std)


def test_multistep_loss_trains_past_do_nothing(windows):
    torch.manual_seed(0)
    model = KeypointDynamics(hidden=64, layers=2)
    model.fit_normalisation(windows)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(150):
        idx = torch.randint(0, windows["states"].shape[0], (64,))
        loss, info = model.loss({k: v[idx] for k, v in windows.items()})
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert set(info) == {"loss", "err_1step_m", "err_3step_m"}
    model.eval()
    with torch.no_grad():
        s = windows["states"]
        pred = model.rollout(s[:, 0], windows["actions"])[:, -1]
        err = model.position_error(pred, s[:, -1]).mean()
        base = model.position_error(s[:, 0], s[:, -1]).mean()
    assert err < base / 3, (float(err), float(base))


def test_toy_box_stays_rigid():
    ep = pushing_episodes(2, steps=10, seed=0)[0]
    kp = ep["keypoints"]
    side = np.linalg.norm(kp[:, 1] - kp[:, 2], axis=-1)
    assert np.allclose(side, 0.1, atol=1e-5)
    assert ep["actions"].shape == (10, 2) and np.abs(ep["actions"]).max() <= 0.03 + 1e-7
    assert np.abs(np.diff(kp[:, 0], axis=0)).max() > 0.005  # the box does get pushed
