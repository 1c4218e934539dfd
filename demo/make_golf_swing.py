"""Make the demo golf swing: a face-on kinematic model of a right-handed golfer -> OpenPose JSON.

    python demo/make_golf_swing.py            # writes demo/golf_swing.json and demo/golf_swing_poses.mp4

The swing is driven by one angle, the arms' angle from vertical (negative: away from the target,
which is on the viewer's right). Its keyframes follow a real swing's phases and rhythm (a slow
backswing, a fast downswing): address, takeaway, top of backswing, downswing, impact,
follow-through, finish. Shoulders and hips turn with the arms (seen face-on, a turn narrows
them), weight shifts back then through, and the trail knee releases after impact.
"""
import math
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import pose_extract  # noqa: E402
from common import video_io  # noqa: E402

CANVAS = 512
FPS = 30
# (frame, arm angle in degrees, phase): 64 frames, about 2.1 s.
KEYFRAMES = (
    (0, 0.0, "address"), (8, 0.0, "address"), (18, -50.0, "takeaway"), (28, -110.0, "backswing"),
    (36, -150.0, "top"), (41, -80.0, "downswing"), (44, 5.0, "impact"), (50, 95.0, "follow-through"),
    (57, 150.0, "finish"), (63, 160.0, "finish"),
)
NUM_FRAMES = KEYFRAMES[-1][0] + 1
ARM_LENGTH = 118.0
HIP_Y, NECK_Y, KNEE_Y, ANKLE_Y = 300.0, 196.0, 392.0, 470.0
CENTRE_X = CANVAS / 2


def arm_angle(frame):
    """Arm angle (radians) at a frame: cosine-eased between keyframes (no jerks at the keys)."""
    for (f0, a0, _), (f1, a1, _) in zip(KEYFRAMES, KEYFRAMES[1:]):
        if f0 <= frame <= f1:
            u = 0.0 if f1 == f0 else (frame - f0) / (f1 - f0)
            eased = (1 - math.cos(math.pi * u)) / 2
            return math.radians(a0 + (a1 - a0) * eased)
    return math.radians(KEYFRAMES[-1][1])


def golfer(frame):
    """COCO-18 keypoints (18, 3) in pixels of a 512x512 canvas at one frame."""
    alpha = arm_angle(frame)
    shoulder_turn = max(-1.5, min(1.5, 0.6 * alpha))  # the shoulders turn up to ~86 degrees
    hip_turn = 0.45 * shoulder_turn
    shift = 14.0 * math.sin(alpha) if alpha < 0 else 18.0 * math.sin(min(alpha, math.pi / 2))
    hip_x = CENTRE_X + shift
    neck = np.array([hip_x + 0.4 * shift + 6.0, NECK_Y])  # spine tilted away from the target at address
    shoulder_half = 46.0 * (0.35 + 0.65 * math.cos(shoulder_turn))
    hip_half = 30.0 * (0.4 + 0.6 * math.cos(hip_turn))
    # The golfer faces the camera, so their right side is on the viewer's left.
    r_shoulder, l_shoulder = neck + (-shoulder_half, 4.0), neck + (shoulder_half, 4.0)
    r_hip, l_hip = np.array([hip_x - hip_half, HIP_Y]), np.array([hip_x + hip_half, HIP_Y])
    hands = neck + (ARM_LENGTH * math.sin(alpha), ARM_LENGTH * math.cos(alpha) + 10.0)
    bend = 14.0 * abs(math.sin(alpha))  # elbows fold away from the swing plane at the top and finish
    perpendicular = np.array([math.cos(alpha), -math.sin(alpha)])
    r_elbow = (r_shoulder + hands) / 2 - bend * perpendicular * (1.0 if alpha < 0 else 0.3)
    l_elbow = (l_shoulder + hands) / 2 + bend * perpendicular * (0.3 if alpha < 0 else 1.0)
    r_ankle, l_ankle = np.array([CENTRE_X - 40.0, ANKLE_Y]), np.array([CENTRE_X + 40.0, ANKLE_Y])
    release = max(0.0, math.sin(min(alpha, math.pi / 2))) * 30.0  # trail knee drives toward the target
    r_knee = np.array([(r_hip[0] + r_ankle[0]) / 2 + release, KNEE_Y])
    l_knee = np.array([(l_hip[0] + l_ankle[0]) / 2 + 4.0, KNEE_Y])
    head_turn = max(0.0, alpha - 1.5) * 20.0  # the head stays down until well after impact
    nose = neck + (head_turn, -42.0)
    r_eye, l_eye = nose + (-9.0, -9.0), nose + (9.0, -9.0)
    r_ear, l_ear = nose + (-19.0, -3.0), nose + (19.0, -3.0)
    points = [nose, neck, r_shoulder, r_elbow, hands + (-4.0, 0.0), l_shoulder, l_elbow, hands + (4.0, 0.0),
              r_hip, r_knee, r_ankle, l_hip, l_knee, l_ankle, r_eye, l_eye, r_ear, l_ear]
    keypoints = np.array([[p[0], p[1], 1.0] for p in points], dtype=np.float32)
    if head_turn > 8.0:  # turned towards the target: the right ear is hidden
        keypoints[16, 2] = 0.0
    return keypoints


def main():
    keypoints = np.stack([golfer(f) for f in range(NUM_FRAMES)])
    sequence = pose_extract.PoseSequence(keypoints, (CANVAS, CANVAS), float(FPS))
    pose_extract.write_poses(os.path.join(HERE, "golf_swing.json"), sequence)
    maps = (pose_extract.draw_openpose(k, CANVAS, CANVAS) for k in keypoints)
    video_io.write_video(os.path.join(HERE, "golf_swing_poses.mp4"), maps, FPS)
    print(f"wrote {NUM_FRAMES} frames to demo/golf_swing.json and demo/golf_swing_poses.mp4")


if __name__ == "__main__":
    main()
