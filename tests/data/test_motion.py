"""Language motion primitives on synthetic trajectories."""

import numpy as np
import pytest

from instructvla.data.motion import motion_primitives, quantize_motion, relative_euler, verbalize


def _traj(t: int, step=(0.0, 0.0, 0.0), yaw_step: float = 0.0, pitch_step: float = 0.0, grip=None) -> np.ndarray:
    s = np.zeros((t, 8))
    for i in range(t):
        s[i, :3] = np.asarray(step) * i
        yaw, pitch = yaw_step * i, pitch_step * i
        # quaternion xyzw of R = Rz(yaw) @ Ry(pitch)
        cy, sy, cp, sp = np.cos(yaw / 2), np.sin(yaw / 2), np.cos(pitch / 2), np.sin(pitch / 2)
        s[i, 3:7] = (-sy * sp, cy * sp, sy * cp, cy * cp)
        s[i, 7] = 0.0 if grip is None else grip[i]
    return s


def test_forward_motion_and_final_stops():
    words = motion_primitives(_traj(6, step=(0.03, 0.0, 0.0)))
    assert words == ["move forward"] * 4 + ["stop", "stop"]


def test_merged_translation_words():
    assert motion_primitives(_traj(4, step=(-0.02, -0.02, 0.0)))[0] == "move backward right"
    assert motion_primitives(_traj(4, step=(0.0, 0.015, 0.015)))[0] == "move left up"
    # three equal axes: the L1 clip leaves each exactly at theta, which does not count
    assert motion_primitives(_traj(4, step=(0.02, 0.02, 0.02)))[0] == "stop"


def test_l1_clip_suppresses_minor_axis():
    # y moves 0.03 over the window (> theta) but is tiny next to x: clipping the L1 norm to 3*theta removes it
    words = motion_primitives(_traj(4, step=(0.2, 0.015, 0.0)))
    assert words[0] == "move forward"


def test_closing_gripper_and_conventions():
    closing = [1, 1, 0, 0, 0]  # openness falls: the gripper closes (the env's state convention)
    assert motion_primitives(_traj(5, grip=closing)) == ["close gripper"] * 2 + ["stop"] * 3
    assert motion_primitives(_traj(5, grip=closing), gripper="closedness")[0] == "open gripper"


def test_rotation_terms():
    # yaw of 0.1 rad per frame -> 0.2 over the window -> yaw/5 = 0.04 > theta -> counterclockwise
    assert motion_primitives(_traj(4, yaw_step=0.1))[0] == "rotate counterclockwise"
    assert motion_primitives(_traj(4, yaw_step=-0.1))[0] == "rotate clockwise"
    # positive pitch -> term -pitch/3 negative -> "tilt down"
    assert motion_primitives(_traj(4, pitch_step=0.05))[0] == "tilt down"
    assert motion_primitives(_traj(4, pitch_step=0.02))[0] == "stop"  # 0.04/3 < theta


def test_parts_comma_joined():
    s = _traj(4, step=(0.0, 0.0, -0.03), grip=[0, 0.5, 1, 1])  # closedness rising
    assert motion_primitives(s, gripper="closedness")[0] == "move down, close gripper"


def test_still_is_stop_and_short_episodes():
    assert motion_primitives(_traj(5)) == ["stop"] * 5
    assert motion_primitives(_traj(2, step=(0.1, 0, 0))) == ["stop", "stop"]
    assert motion_primitives(np.zeros((0, 8))) == []


def test_relative_euler_identity_and_quaternion_sign():
    q = np.array([[0.0, 0.0, np.sin(0.3), np.cos(0.3)]])
    assert np.allclose(relative_euler(q, q), 0.0)
    assert np.allclose(relative_euler(np.array([[0, 0, 0, 1.0]]), -q), [[0, 0, 0.6]])


def test_verbalize_and_bad_input():
    assert verbalize(np.array([0, 0, 0, 1, -1, -1])) == "tilt up, rotate clockwise, open gripper"
    assert verbalize(np.zeros(6)) == "stop"
    with pytest.raises(ValueError, match="shape"):
        motion_primitives(np.zeros((4, 7)))
    bad = _traj(4)
    bad[1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        quantize_motion(bad)
    with pytest.raises(ValueError, match="gripper"):
        quantize_motion(_traj(4), gripper="width")
