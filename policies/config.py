"""Configuration of the policy that a worker runs."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PolicyConfig:
    """`name` is a key of the policy registry: imagine_then_act, scripted_expert, random."""

    name: str = "imagine_then_act"
    n_candidates: int = 4  # best-of-N
    horizon: int = 8  # actions executed per plan (H)
    imagine_frames: int = 9  # frames imagined per candidate, including the start frame
    sampling_steps: int = 8
    guidance: float = 2.0
    min_feasibility: float = 0.5
    min_success_prob: float = 0.0
    score_weights: dict[str, float] | None = None
    expert_noise: float = 0.0
    caption_upsampler: str = "scene"  # "scene" (grounded, no model) or "openai" (VLM endpoint)
    upsampler_url: str | None = None

    def __post_init__(self) -> None:
        if self.n_candidates < 1:
            raise ValueError(f"policy.n_candidates must be >= 1, got {self.n_candidates}")
        if self.horizon < 1:
            raise ValueError(f"policy.horizon must be >= 1, got {self.horizon}")
