"""Configuration of the video diffusion world model."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class WorldModelConfig:
    """A Wan-family video diffusion transformer with flow matching. `tiny` trains on 2 CPU cores.

    The tiny default works in pixel space (identity VAE) with a (1, 8, 8) patch: a 64x64 frame is
    8x8 = 64 tokens, so a 9-frame clip is 576 tokens. `full` is the same code path with a Wan VAE,
    a pretrained text encoder and transformer weights loaded from local directories.
    """

    size: str = "tiny"
    pretrained_path: str | None = None  # local Wan transformer dir (or its parent with transformer/)
    vae: str = "identity"  # identity | kl2d | wan
    vae_path: str | None = None  # local dir: required for wan, optional initialisation for kl2d
    text_encoder: str = "small"  # small (trained with the model) | pretrained (local path)
    text_encoder_path: str | None = None
    image_size: int = 64
    num_frames: int = 9  # frames per clip including the conditioning start frame
    cond_frames: int = 1  # start frames given as the image condition during training
    patch_size: tuple[int, int, int] = (1, 8, 8)
    num_layers: int = 2
    num_attention_heads: int = 2
    attention_head_dim: int = 32
    ffn_dim: int = 256
    freq_dim: int = 64  # sinusoidal timestep embedding size
    text_dim: int = 64
    max_text_tokens: int = 32
    text_layers: int = 2  # small text encoder depth
    text_vocab_size: int = 4096  # word-hash buckets of the small text encoder
    # the small text encoder also reads each number word as its value (sinusoidal features of it, projected and
    # added to the word's embedding): "47 cm" lies next to "45 cm" instead of in an unrelated hash bucket, so
    # finely quantised positions and angles (`policy.caption_upsampler=task_pose_fine`) are learnable
    text_numbers: bool = False
    kl_block_out_channels: tuple[int, ...] = (32, 64, 64)  # kl2d: downsample 2**(len-1)
    kl_latent_channels: int = 4
    action_dim: int = 16
    action_conditioning: bool = True
    normalize_actions: bool = False  # standardise actions with per-joint stats fitted from data
    action_hidden: int = 0  # 0: the action chunk is embedded linearly; > 0: by an MLP of this width
    action_layers: int = 1  # hidden layers of that MLP (joint targets -> where the arm is drawn is far from linear)
    action_dropout: float = 0.5  # training: drop the action chunk so one model serves both modes
    text_dropout: float = 0.1  # training: empty caption, for classifier-free guidance
    # the masked-mean pooled caption, through a zero-initialised MLP, is added to the timestep embedding that
    # drives every block's adaptive norm (SD3 adds its pooled CLIP embedding there). Wan hears the caption only
    # through cross-attention, where one word of 80 ("left hand") has to win a token's attention; the adaptive
    # norm hands every token the whole caption at every layer and noise level (docs/BENCHMARKS.md, session 18)
    caption_adaln: bool = False
    # how `caption_adaln` pools the caption's token states: "mean" (masked mean: one word of 60 is 1/60 of it)
    # or "attention" (a learned query's softmax over the tokens, starting uniform, i.e. as the mean: the model
    # can learn to weight the words that decide the future, such as the hand)
    caption_pool: str = "mean"
    # training: actions are dropped (imagine mode) only on clips of episodes that succeeded (the batch's
    # `episode_success`); failed rollouts and play still train evaluation mode. Imagine mode is what the
    # planner asks for the robot to *do* with a caption that says it completes the task, and a failure's
    # future under that caption teaches it to imagine failing (arms that stay put)
    imagine_from_success: bool = False
    # training: on imagine-mode clips (actions dropped) a linear head reads the action chunk that leads into
    # each latent frame off the mean of that frame's tokens after block `imagine_action_block` (negative
    # counts from the end), with this weight on its MSE: the targets relative to the joint positions at the
    # clip's start (the batch's start_pose), in units of each joint's action std. In imagine mode the model has
    # to decide what the robot does before it can draw it; the pixel loss alone is a weak signal for that
    # decision, the head supervises it directly. 0: no head
    imagine_action_loss: float = 0.0
    imagine_action_block: int = -2
    # the model's future carries the robot's joint positions as well as its frames: `action_dim` more latent
    # channels, each a joint's standardised position broadcast over its frame, diffused with the video (the
    # start frame's from the measured joints, as its pixels). Imagine mode then says where the joints go, not
    # only how the arm looks: the IDM reads the imagined joints (`InverseDynamicsModel.extract_joints`) where a
    # 64x64 smear of an arm holds under a pixel of a wrist's motion. Training clips need the joints of every
    # frame (the batch's `poses`); sampling needs the measured ones (`pose`)
    imagine_joints: bool = False
    joint_loss_weight: float = 0.1  # weight of the joint channels' MSE against the frames' (per element)
    # how the joint channels are noised. "frame": one draw per joint and frame, constant over the plane as the
    # joint is, so a noise level hides a joint as it hides one pixel. "pixel" (sessions 17-19): a draw per
    # position; averaging the plane's h*w draws then reads the clean joints through almost any noise level, and
    # training never had to decide where the joints go (the model read it off its noisy input; from pure noise
    # at sampling it had learned nothing to go on: session 20, docs/BENCHMARKS.md)
    joint_noise: str = "frame"
    # the planner also gives the joints at which the scripted expert would grasp the task's object (computed from
    # the scene description and the robot's kinematics: `envs.goals.grasp_goal`) as `action_dim` more
    # conditioning channels, standardised as the joint channels and constant over the clip, plus a flag channel
    # (0 where a task has no such goal, or training dropped it: `goal_dropout`). Needs imagine_joints (their
    # units); training clips need the batch's `goal` (B, A), NaN rows for none (session 31, docs/BENCHMARKS.md)
    goal_joints: bool = False
    goal_dropout: float = 0.1
    # how many of `envs.goals.task_goals`' rows: 1, the grasp; 2, the grasp and where the expert carries the object
    # (a place's release, a pick's lift). Each row is its own planes and flag
    goal_count: int = 1
    success_head: bool = True
    success_hidden: int = 64
    success_loss_weight: float = 0.5
    flow_shift: float = 1.0  # FlowMatchEulerDiscreteScheduler shift
    pos_embed: bool = False  # learned spatial position embedding added to the tokens (see PatchEmbedWithActions)
    # every token reads the action MLP's hidden features through its own linear map (needs pos_embed and
    # action_hidden > 0): "is the arm over this token for these actions" becomes one linear readout
    action_map: bool = False
    residual: bool = True  # diffuse the change from the start-frame latent (False: plain latents, as Wan)
    # what the transformer outputs: "velocity" (noise - x0, as Wan; needed for pretrained weights) or
    # "sample" (x0, turned into a velocity (x_t - x0) / t). A narrow model cannot reproduce
    # high-dimensional noise through its hidden width, but can reproduce the clean, low-dimensional
    # data: "sample" is what makes the tiny model's frames clean (see bench/bench_wm_quality.py).
    prediction: str = "velocity"
    # sampling steps of evaluation mode (`predict`) when the caller gives none. Given the actions the future
    # is nearly determined, and one step from pure noise returns the model's mean estimate of it; more steps
    # commit the sample to one guess. Imagine mode (many futures) always takes the caller's steps.
    predict_steps: int = 8

    def __post_init__(self) -> None:
        self.patch_size = tuple(int(p) for p in self.patch_size)  # YAML/JSON give lists
        self.kl_block_out_channels = tuple(int(c) for c in self.kl_block_out_channels)
        if self.size not in ("tiny", "full"):
            raise ValueError(f"world_model.size must be tiny or full, got {self.size!r}")
        if self.vae not in ("identity", "kl2d", "wan"):
            raise ValueError(f"world_model.vae must be identity, kl2d or wan, got {self.vae!r}")
        if self.text_encoder not in ("small", "pretrained"):
            raise ValueError(f"world_model.text_encoder must be small or pretrained, got {self.text_encoder!r}")
        if self.text_numbers and self.text_encoder != "small":
            raise ValueError("world_model.text_numbers needs text_encoder=small (a pretrained encoder has its own "
                             "reading of numbers)")
        if self.caption_pool not in ("mean", "attention"):
            raise ValueError(f"world_model.caption_pool must be mean or attention, got {self.caption_pool!r}")
        if self.prediction not in ("velocity", "sample"):
            raise ValueError(f"world_model.prediction must be velocity or sample, got {self.prediction!r}")
        if self.num_frames < 2:
            raise ValueError(f"world_model.num_frames must be >= 2, got {self.num_frames}")
        if not 1 <= self.cond_frames < self.num_frames:
            raise ValueError(f"world_model.cond_frames must be in [1, num_frames), got {self.cond_frames}")
        if len(self.patch_size) != 3:
            raise ValueError(f"world_model.patch_size must have 3 entries (t, h, w), got {self.patch_size}")
        side = self.latent_size
        if self.image_size % self.spatial_factor or side % self.patch_size[1] or side % self.patch_size[2]:
            raise ValueError(
                f"world_model.image_size={self.image_size} must be divisible by the VAE factor "
                f"{self.spatial_factor} times the patch {self.patch_size[1:]}"
            )
        if self.vae == "wan" and (self.num_frames - 1) % 4:
            raise ValueError(f"world_model.num_frames must be 1 + 4k with the Wan VAE, got {self.num_frames}")
        if self.action_map and not (self.action_conditioning and self.action_hidden > 0 and self.pos_embed):
            raise ValueError("world_model.action_map needs action_conditioning, action_hidden > 0 and pos_embed")
        if self.imagine_action_loss < 0:
            raise ValueError(f"world_model.imagine_action_loss must be >= 0, got {self.imagine_action_loss}")
        if self.imagine_action_loss and not self.action_conditioning:
            raise ValueError("world_model.imagine_action_loss needs action_conditioning (it predicts the actions)")
        if self.imagine_action_loss and not -self.num_layers <= self.imagine_action_block < self.num_layers:
            raise ValueError(f"world_model.imagine_action_block must index one of the {self.num_layers} blocks, "
                             f"got {self.imagine_action_block}")
        if self.imagine_joints and self.pretrained_path:
            raise ValueError("world_model.imagine_joints adds output channels a pretrained transformer does not have")
        if self.imagine_joints and self.cond_frames != 1:
            raise ValueError(f"world_model.imagine_joints needs cond_frames=1 (the measured joints of one start "
                             f"frame), got {self.cond_frames}")
        if self.joint_noise not in ("frame", "pixel"):
            raise ValueError(f"world_model.joint_noise must be 'frame' or 'pixel', got {self.joint_noise!r}")
        if self.joint_loss_weight < 0:
            raise ValueError(f"world_model.joint_loss_weight must be >= 0, got {self.joint_loss_weight}")
        if self.predict_steps < 1:
            raise ValueError(f"world_model.predict_steps must be >= 1, got {self.predict_steps}")
        if self.action_layers < 1:
            raise ValueError(f"world_model.action_layers must be >= 1, got {self.action_layers}")
        if self.goal_joints and not self.imagine_joints:
            raise ValueError("world_model.goal_joints needs imagine_joints (the goal is given in the joint channels' units)")
        if self.goal_count not in (1, 2):
            raise ValueError(f"world_model.goal_count must be 1 or 2, got {self.goal_count}")
        for name in ("action_dropout", "text_dropout", "goal_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"world_model.{name} must be in [0, 1], got {getattr(self, name)}")

    @property
    def spatial_factor(self) -> int:
        """Spatial downsampling of the VAE (pixels per latent cell)."""
        return {"identity": 1, "kl2d": 2 ** (len(self.kl_block_out_channels) - 1), "wan": 8}[self.vae]

    @property
    def temporal_factor(self) -> int:
        """Temporal downsampling of the VAE (frames per latent frame after the first)."""
        return 4 if self.vae == "wan" else 1

    @property
    def latent_size(self) -> int:
        return self.image_size // self.spatial_factor
