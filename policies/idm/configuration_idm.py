"""Configuration of the inverse dynamics model."""
from __future__ import annotations

from dataclasses import dataclass

BACKBONES = ("small_cnn", "depth_anything")
TARGETS = ("absolute", "delta", "pose")


@dataclass
class IDMConfig:
    """Two frames `window` steps apart in, the `window` actions between them out.

    `small_cnn` is trained from scratch (tiny); `depth_anything` loads a transformers Depth Anything
    checkpoint from the local directory `backbone_path` (never downloaded).
    """

    size: str = "tiny"
    backbone: str = "small_cnn"  # small_cnn (from scratch) | depth_anything (local path)
    backbone_path: str | None = None
    freeze_backbone: bool = False  # keep pretrained backbone weights fixed while training
    image_size: int = 64  # frames are resized to (image_size, image_size) before the backbone
    cnn_channels: int = 32  # width of the first small_cnn stage (doubled per stage)
    feature_dim: int = 128  # per-frame feature size after the backbone projection
    keypoints: int = 0  # small_cnn: spatial-softmax keypoints from the H/4 feature maps (0: none)
    window: int = 8  # W
    action_dim: int = 16
    proprio_dim: int = 32
    hidden_dim: int = 128
    head_layers: int = 3  # transformer blocks of the flow head (one token per action step)
    head_heads: int = 4
    flow_steps: int = 4  # Euler steps at sampling time
    noise_samples: int = 8  # K draws averaged at extraction
    proprio_passes: int = 2  # extraction passes; later passes re-estimate the proprio of later windows
    control_dt: float = 0.1  # seconds between actions (1 / env.control_hz), for the qvel estimate
    max_batch: int = 4096  # largest head batch (windows x K) run in one forward pass
    # What the flow head denoises. "absolute": the W joint targets, normalised by global stats.
    # "delta": the W joint targets *and* the W next joint positions, both relative to the joint
    # positions at the window's first frame (normalised per step); extraction then chains the windows,
    # each window's first joint positions estimated by the windows before it.
    # "pose": no flow head and no proprio input. The backbone reads the joint positions (A) off the frames,
    # relative to the video's first frame: with `pose_input` "pair" it sees [frame s, frame t, frame t - frame s]
    # and regresses q_t - q_s (t - s <= W, chained every W frames); with "frame" it regresses q_t from frame t
    # alone and differences are taken. Extraction anchors the estimates at the measured q_0 and turns the
    # joint positions into targets: a_t = q_{t+1} + lead * (q_{t+1} - q_t), `lead` fitted per joint on the
    # training data (how far a position target runs ahead of where the joint gets). Every output is read from
    # the frames: nothing can be predicted from the state alone (see proprio_input). K noise draws are K
    # copies of the video with Gaussian pixel noise of std `pose_noise` (also the training augmentation).
    target: str = "absolute"
    pose_input: str = "pair"  # pose target: "pair" | "frame"
    pose_noise: float = 0.02
    # Pose target, training only: with this probability a pair gets a random colour change, the same on both
    # frames: its RGB channels permuted and each channel scaled by a gain in [1 - pose_color_gain,
    # 1 + pose_color_gain]. The grey robot barely changes; the table, floor and objects change colour, so the
    # reader learns the arm's motion rather than the scene's colours (the ood_objects split has tables and
    # floors of colours no training scene has).
    pose_color_aug: float = 0.0
    pose_color_gain: float = 0.2
    # Pose target: the read joint positions are smoothed in time before they become targets, by a local
    # quadratic fit over the frames within `pose_smooth` of each frame (0: no smoothing). Each frame is read
    # with an error of a few hundredths of a radian; differenced into targets, that jitter alone breaks the
    # planner's velocity / acceleration / jerk limits.
    pose_smooth: int = 2
    # Pose target, grips: "regress" reads the finger positions like the joints and snaps them (gripper_snap);
    # "classify" has a head that reads, per frame, whether the grip command that led to it was closed (below
    # the open/closed midpoint), trained with cross-entropy: a finger opening is a pixel or two at 64x64, and
    # the regressed positions blur a grasp's timing.
    pose_grip: str = "regress"
    # Pose target, classified grips: frame t is labelled with the grip command `pose_grip_lag` steps before the
    # one that led to it, and extraction reads the command of step j off frame j + 1 + lag (the video's last
    # frame where it ends sooner). A finger closing on a wide object moves under a pixel at 64x64, but a few
    # steps later the object is carried with the hand (or, after a release, left behind): the consequence is
    # what the frames show.
    pose_grip_lag: int = 0
    # How the two frames meet. "late": one backbone pass per frame, features concatenated (frames are
    # encoded once per video at extraction). "early" (small_cnn only): one pass over the stacked pair
    # [frame0, frame1, frame1 - frame0], so the convolutions see the motion itself.
    fusion: str = "late"
    # What of the proprio the network sees: "full" (joint positions and velocities), "position" (the
    # velocities zeroed) or "none". The delta target still adds its output to the measured joint positions.
    # With the proprio, a demonstration's next action is predictable from the state alone, and the network
    # can learn that (a behaviour-cloning shortcut) instead of reading the motion from the frames.
    proprio_input: str = "full"
    proprio_noise: float = 0.0  # training only: std (rad) of noise on the joint positions in the proprio input
    # Gripper decoding. The demonstrations command a gripper fully open or fully closed, but while it holds
    # an object its fingers stop at the object's width: a delta-target IDM then reads "no change" and
    # commands that width, which squeezes with no force, and the object slips out on the way (place fails).
    # With `gripper_snap` > 0 the extracted commands of `gripper_dims` snap to `gripper_closed` below that
    # fraction of the closed -> open range and to `gripper_open` at or above it (0: no snapping).
    gripper_dims: tuple[int, ...] = (14, 15)
    gripper_closed: float = 0.0
    gripper_open: float = 0.045
    gripper_snap: float = 0.0
    # `extract_joints` (a world model that imagines the joint positions): a grip's command at step t is closed
    # when its finger's imagined position at frame t + 1 is below this fraction of the closed -> open range. A
    # finger closes in one step and stops at the object: on a cube at 0.47 of the opening, on the mug at 0.69
    joint_grip_closed_below: float = 0.85

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"idm.backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.target not in TARGETS:
            raise ValueError(f"idm.target must be one of {TARGETS}, got {self.target!r}")
        if self.pose_input not in ("pair", "frame"):
            raise ValueError(f"idm.pose_input must be 'pair' or 'frame', got {self.pose_input!r}")
        if self.pose_grip not in ("regress", "classify"):
            raise ValueError(f"idm.pose_grip must be 'regress' or 'classify', got {self.pose_grip!r}")
        if self.pose_grip_lag < 0 or self.pose_grip_lag >= self.window:
            raise ValueError(f"idm.pose_grip_lag must be in [0, idm.window), got {self.pose_grip_lag}")
        if self.pose_grip_lag and self.pose_grip != "classify":
            raise ValueError("idm.pose_grip_lag needs idm.pose_grip='classify' (the lag labels the grip head)")
        if self.pose_smooth < 0:
            raise ValueError(f"idm.pose_smooth must be >= 0, got {self.pose_smooth}")
        if not 0.0 <= self.pose_color_aug <= 1.0:
            raise ValueError(f"idm.pose_color_aug must be a probability in [0, 1], got {self.pose_color_aug}")
        if not 0.0 <= self.pose_color_gain < 1.0:
            raise ValueError(f"idm.pose_color_gain must be in [0, 1), got {self.pose_color_gain}")
        if self.pose_noise < 0:
            raise ValueError(f"idm.pose_noise must be >= 0, got {self.pose_noise}")
        if self.target == "pose" and self.pose_input == "pair" and self.backbone != "small_cnn":
            raise ValueError("idm.pose_input='pair' needs idm.backbone='small_cnn' (a pretrained backbone sees one frame)")
        if self.fusion not in ("late", "early"):
            raise ValueError(f"idm.fusion must be 'late' or 'early', got {self.fusion!r}")
        if self.fusion == "early" and self.backbone != "small_cnn":
            raise ValueError("idm.fusion='early' needs idm.backbone='small_cnn' (a pretrained backbone sees one frame)")
        if self.proprio_input not in ("full", "position", "none"):
            raise ValueError(f"idm.proprio_input must be full, position or none, got {self.proprio_input!r}")
        if self.proprio_noise < 0:
            raise ValueError(f"idm.proprio_noise must be >= 0, got {self.proprio_noise}")
        if self.window < 1:
            raise ValueError(f"idm.window must be >= 1, got {self.window}")
        if self.noise_samples < 1 or self.flow_steps < 1:
            raise ValueError("idm.noise_samples and idm.flow_steps must be >= 1")
        if self.proprio_passes < 1:
            raise ValueError(f"idm.proprio_passes must be >= 1, got {self.proprio_passes}")
        if self.control_dt <= 0:
            raise ValueError(f"idm.control_dt must be > 0, got {self.control_dt}")
        if self.hidden_dim % self.head_heads:
            raise ValueError(
                f"idm.hidden_dim ({self.hidden_dim}) must be a multiple of idm.head_heads ({self.head_heads})"
            )
        self.gripper_dims = tuple(int(d) for d in self.gripper_dims)  # YAML/JSON give lists
        if any(not 0 <= d < self.action_dim for d in self.gripper_dims):
            raise ValueError(f"idm.gripper_dims must index the {self.action_dim} actions, got {self.gripper_dims}")
        if not 0.0 < self.joint_grip_closed_below < 1.0:
            raise ValueError(f"idm.joint_grip_closed_below must be in (0, 1), got {self.joint_grip_closed_below}")
        if not 0.0 <= self.gripper_snap < 1.0:
            raise ValueError(f"idm.gripper_snap must be in [0, 1), got {self.gripper_snap}")
        if self.gripper_snap > 0 and self.gripper_open == self.gripper_closed:
            raise ValueError("idm.gripper_open and idm.gripper_closed must differ to snap gripper commands")
        if self.image_size < 16:
            raise ValueError(f"idm.image_size must be >= 16, got {self.image_size}")
