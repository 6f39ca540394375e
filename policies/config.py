"""Configuration of the policy that a worker runs."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

# the per-candidate scores policy.score_weights may weight (policies.imagine_then_act)
SCORE_NAMES = ("success", "feasibility", "idm_spread", "consistency", "consensus", "goal_progress")
CAPTION_UPSAMPLERS = ("scene", "task", "task_pose", "task_pose_fine", "openai")


@dataclass
class PolicyConfig:
    """`name` is a key of the policy registry: imagine_then_act, scripted_expert, random."""

    name: str = "imagine_then_act"
    n_candidates: int = 4  # best-of-N
    horizon: int = 8  # actions executed per plan (H)
    imagine_frames: int = 9  # frames imagined per candidate, including the start frame
    sampling_steps: int = 8
    guidance: float = 2.0
    # classifier-free guidance on the task goals of a world model with world_model.goal_joints (1.0: none; the
    # other branch imagines with the goals unknown, as its training's goal_dropout did): one extra batch branch. It
    # guides the imagined futures only, not the consistency score's action-conditioned prediction
    goal_guidance: float = 1.0
    # best-of-N across goal guidance: the N candidates' goal guidance is evenly spaced from goal_guidance to
    # goal_guidance + goal_guidance_spread (candidate 0 keeps goal_guidance, so N=1 is unchanged). A source of
    # diversity for a goal model, whose futures barely differ with the starting noise alone
    goal_guidance_spread: float = 0.0
    # share of the noise drawn fresh at every world-model sampling step (WorldModel.imagine's churn): 0 is the
    # deterministic sampler, where the N candidates differ only by their starting noise
    sampling_churn: float = 0.0
    min_feasibility: float = 0.5
    min_success_prob: float = 0.0
    # rejection sampling: when no candidate of a batch is acceptable, imagine a fresh batch (new seed) up
    # to this many more times before holding (0: hold at once)
    resample_rounds: int = 2
    # weights of the scores in the combined score; empty: the measured default (policies.imagine_then_act)
    score_weights: dict[str, float] | None = field(default_factory=dict)
    # frames of context the world model imagines from: the current one and the ones observed just before
    # it (None: as many as the world model was trained with, world_model.cond_frames)
    context_frames: int | None = None
    # score each candidate by how well the world model's action-conditioned prediction of its extracted
    # actions reproduces the imagined video (one extra batched world-model pass per planning step)
    consistency: bool = False
    # imagine by deciding, then drawing (WorldModel.imagine(plan=True)): needs a world model with an action head
    # (world_model.imagine_action_loss > 0); the planner refuses to start with one that has none
    imagine_plan: bool = False
    # what the IDM reads each candidate's actions off: "frames" (the imagined video), "joints" (the joint
    # positions a world model with world_model.imagine_joints imagines with it) or "auto" (joints when the
    # world model imagines them)
    extract_from: str = "auto"
    # imagined joint positions past the robot's joint range are read as at the limit (where the robot stops)
    # before the IDM reads targets off them; off, a candidate imagined past a limit is rejected for it
    clamp_imagined_joints: bool = False
    expert_noise: float = 0.0
    # "scene", "task", "task_pose" or "task_pose_fine" (grounded, no model; task_pose adds the task objects' position
    # to 5 cm and yaw to 15 degrees, task_pose_fine to 1 cm and 5 degrees), or
    # "openai" (VLM endpoint)
    caption_upsampler: str = "scene"
    upsampler_url: str | None = None
    upsampler_model: str = "default"  # the model name sent to the endpoint (servers that check it need theirs)

    def __post_init__(self) -> None:
        if self.n_candidates < 1:
            raise ValueError(f"policy.n_candidates must be >= 1, got {self.n_candidates}")
        if self.context_frames is not None and self.context_frames < 1:
            raise ValueError(f"policy.context_frames must be >= 1, got {self.context_frames}")
        if self.resample_rounds < 0:
            raise ValueError(f"policy.resample_rounds must be >= 0, got {self.resample_rounds}")
        if self.extract_from not in ("auto", "frames", "joints"):
            raise ValueError(f"policy.extract_from must be auto, frames or joints, got {self.extract_from!r}")
        if not 0.0 <= self.sampling_churn <= 1.0:
            raise ValueError(f"policy.sampling_churn must be in [0, 1], got {self.sampling_churn}")
        if self.horizon < 1:
            raise ValueError(f"policy.horizon must be >= 1, got {self.horizon}")
        if self.imagine_frames < 2:
            raise ValueError(f"policy.imagine_frames must be >= 2 (the start frame and a future), "
                             f"got {self.imagine_frames}")
        if self.sampling_steps < 1:  # 0 would return the starting noise as the imagined future
            raise ValueError(f"policy.sampling_steps must be >= 1, got {self.sampling_steps}")
        for name in ("guidance", "goal_guidance", "goal_guidance_spread"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"policy.{name} must be a finite number >= 0, got {value}")
        for name in ("min_feasibility", "min_success_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:  # (NaN fails too: it would switch the threshold off)
                raise ValueError(f"policy.{name} must be in [0, 1], got {value}")
        if not (math.isfinite(self.expert_noise) and self.expert_noise >= 0):
            raise ValueError(f"policy.expert_noise must be a finite number >= 0, got {self.expert_noise}")
        for key, weight in (self.score_weights or {}).items():
            if key not in SCORE_NAMES:  # a typo would silently leave that score out of the ranking
                raise ValueError(f"policy.score_weights has an unknown score {key!r}; the scores are "
                                 f"{', '.join(SCORE_NAMES)}")
            if not math.isfinite(weight):
                raise ValueError(f"policy.score_weights.{key} must be finite, got {weight}")
        if self.caption_upsampler not in CAPTION_UPSAMPLERS:
            raise ValueError(f"policy.caption_upsampler must be one of {', '.join(CAPTION_UPSAMPLERS)}, "
                             f"got {self.caption_upsampler!r}")
        if self.caption_upsampler == "openai" and not self.upsampler_url:
            raise ValueError("policy.caption_upsampler=openai needs policy.upsampler_url (an http(s) URL of an "
                             "OpenAI-compatible endpoint)")
