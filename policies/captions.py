"""Caption upsampling: the short instruction plus the scene -> the detailed caption the world model
is trained on. Train-time captions come from the same upsampler, so train and test match.

`SceneCaptionUpsampler` (`scene`) is grounded on `scene_description()` and needs no model: the view, the
instruction, every object's place and their relations. `TaskCaptionUpsampler` (`task`) is grounded on the same
description but puts the task first: which hand reaches for which object, where that object is and where it
goes, then the other objects; no boilerplate, no relations.
`OpenAICaptionUpsampler` asks a vision-language model behind an OpenAI-compatible chat endpoint.
"""
from __future__ import annotations

import http.client
import json
import os
import time
import urllib.parse
from typing import Any

from policies.config import CAPTION_UPSAMPLERS
from policies.errors import PolicyError


def _side(x: float) -> str:
    return "left" if x > 0.05 else "right" if x < -0.05 else "centre"


def _depth(y: float) -> str:
    return "near" if y < 0.40 else "far" if y > 0.55 else "middle"


def _position(obj: dict[str, Any]) -> Any:
    """The object's (x, y, ...) position, or None when the scene gives fewer than two coordinates."""
    pos = obj.get("position") or obj.get("pos")
    return pos if pos is not None and len(pos) >= 2 else None


def _describe_object(obj: dict[str, Any]) -> str:
    colour = obj.get("colour") or obj.get("color") or ""
    shape = obj.get("shape") or obj.get("name", "object")
    words = f"{colour} {shape}".strip()
    pos = _position(obj)
    if pos is not None:
        # robot frame: x forward (depth), y left; fall back gracefully on other conventions
        words += f" at the {_depth(float(pos[0]))} {_side(float(pos[1]))} of the table"
    return words


# the env's shapes' rotational symmetry about the vertical in degrees (envs/tasks.py: a cube looks the same every
# quarter turn, a box every half turn); round shapes have no yaw to tell, any other shape (a mug) a full turn
_SYMMETRY = {"cube": 90.0, "lunchbox": 180.0, "tissue_box": 180.0,
             "sphere": 0.0, "cylinder": 0.0, "bowl": 0.0, "plate": 0.0}


def _pose_words(obj: dict[str, Any], cm: int = 5, deg: int = 15) -> str:
    """", 45 cm ahead, 10 cm left, turned 30 degrees clockwise": the object's table position to `cm` and its
    yaw to `deg` degrees (folded by its shape's symmetry), for what the expert's grasp depends on and the coarse
    "middle left of the table" leaves out. Empty where the scene gives neither."""
    words = []
    pos = _position(obj)
    if pos is not None:
        ahead, side = cm * round(100 * float(pos[0]) / cm), cm * round(100 * abs(float(pos[1])) / cm)
        words.append(f"{ahead} cm ahead")
        words.append(f"{side} cm {'left' if float(pos[1]) >= 0 else 'right'}" if side else "centred")
    yaw, sym = obj.get("yaw_deg"), _SYMMETRY.get(str(obj.get("shape")), 360.0)
    if yaw is not None and sym > 0:
        folded = (float(yaw) + sym / 2) % sym - sym / 2
        turn = deg * round(folded / deg)
        # yaw is counterclockwise seen from above; mirroring the scene swaps the two words (flywheel.data)
        words.append("square" if turn == 0 else f"turned {abs(turn)} degrees "
                     f"{'counterclockwise' if turn > 0 else 'clockwise'}")
    return "".join(f", {w}" for w in words)


def _relation_text(r: Any) -> str:
    """A relation as words: the env's {"subject", "relation", "object"} dict, a (subject, relation, object)
    sequence, or text already."""
    if isinstance(r, str):
        return r
    if isinstance(r, dict):
        return " ".join(str(r[k]) for k in ("subject", "relation", "object") if r.get(k) is not None)
    return " ".join(str(x) for x in r)


class SceneCaptionUpsampler:
    """Deterministic, grounded captions: robot view, the instruction, the objects and their relations."""

    name = "scene"

    def upsample(self, instruction: str, scene: dict[str, Any] | None) -> str:
        scene = scene or {}
        objects = [o for o in scene.get("objects", []) if o.get("visible", True)]
        parts = [f"Egocentric view from a humanoid robot's head camera at a table. The robot's task: {instruction.strip().rstrip('.')}."]
        if objects:
            parts.append("On the table: " + "; ".join(_describe_object(o) for o in objects) + ".")
        relations = scene.get("relations") or []
        rel_txt = [_relation_text(r) for r in relations[:6]]
        if rel_txt:
            parts.append("Relations: " + "; ".join(rel_txt) + ".")
        parts.append("The robot's arms move smoothly and complete the task.")
        return " ".join(parts)


def _hand_for(ys: list[float]) -> str:
    """The hand on the side of the task's objects (their mean lateral position; y is the robot's left)."""
    return "left" if sum(ys) / len(ys) >= 0 else "right"


class TaskCaptionUpsampler:
    """Deterministic, grounded captions that lead with the task's objects and the hand that reaches for them.

    "pick up the red cube. The robot reaches with its left hand for the red cube at the middle left of the
    table. Also on the table: green cube at the near centre of the table."

    The hand is the one on the side of the task's objects (for a place or push, the mean of the object and
    its target); a handover names the hand it starts from. On 120 training tasks this agrees with the arm
    the scripted expert moves first on 105 (pick 61/65, place 44/55; the expert picks an arm by its
    inverse-kinematics error, docs/BENCHMARKS.md)."""

    name = "task"

    def __init__(self, pose: bool = False, fine: bool = False) -> None:
        """`pose` (the `task_pose` upsampler): the task's objects also get their position to 5 cm and their yaw
        to 15 degrees (`_pose_words`): the expert's grasp turns the wrist to the object's yaw, which a 64x64
        frame barely shows (docs/BENCHMARKS.md, session 28). `fine` (`task_pose_fine`): to 1 cm and 5 degrees,
        for a text encoder that reads numbers as values (`world_model.text_numbers`)."""
        self.pose_steps = (1, 5) if fine else (5, 15) if pose else None  # (cm, degrees) the pose is given to
        if self.pose_steps:
            self.name = "task_pose_fine" if fine else "task_pose"

    def _describe(self, obj: dict[str, Any]) -> str:
        return _describe_object(obj) + (_pose_words(obj, *self.pose_steps) if self.pose_steps else "")

    def upsample(self, instruction: str, scene: dict[str, Any] | None) -> str:
        scene = scene or {}
        objects = [o for o in scene.get("objects", []) if o.get("visible", True)]
        by_name = {o.get("name"): o for o in objects}
        task = scene.get("task") or {}
        roles = task.get("objects") or {}
        params = task.get("params") or {}
        parts = [instruction.strip().rstrip(".") + "."]
        main, target = by_name.get(roles.get("object")), by_name.get(roles.get("target"))
        if main is not None:
            ys = [float(p[1]) for o in (main, target) if o is not None and (p := _position(o)) is not None]
            hand = params.get("from") or (_hand_for(ys) if ys else None)
            reach = f"The robot reaches with its {hand} hand for" if hand else "The robot reaches for"
            text = f"{reach} the {self._describe(main)}"
            if target is not None:
                text += f", then brings it to the {self._describe(target)}"
            parts.append(text + ".")
        others = [o for o in objects if o is not main and o is not target]
        if others:
            parts.append("Also on the table: " + "; ".join(_describe_object(o) for o in others) + ".")
        return " ".join(parts)


MAX_REPLY_BYTES = 1 << 20  # a chat-completions reply larger than this is refused, not read into memory
MAX_CAPTION_WORDS = 400  # a longer caption is cut (the world model reads at most max_text_tokens anyway)
API_KEY_ENV = "FLYWHEEL_UPSAMPLER_API_KEY"


def chat_completions_url(url: str) -> str:
    """The endpoint for a base URL given as `http://host:port`, `.../v1` or the full `.../chat/completions`."""
    base = url.rstrip("/")
    if base.endswith("/chat/completions"):
        return base
    return base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")


class OpenAICaptionUpsampler:
    """Calls an OpenAI-compatible `/v1/chat/completions` endpoint (e.g. a local VLM server).

    Falls back to nothing: an unreachable, erroring or malformed endpoint raises PolicyError with the URL.
    The API key, if the server needs one, comes from `api_key` or the FLYWHEEL_UPSAMPLER_API_KEY variable."""

    name = "openai"

    def __init__(self, url: str, model: str = "default", timeout_s: float = 10.0, api_key: str | None = None):
        if not url or not url.startswith(("http://", "https://")):
            raise PolicyError(f"policy.upsampler_url must be an http(s) URL, got {url!r}")
        if not (timeout_s > 0):
            raise PolicyError(f"the caption upsampler's timeout must be > 0 s, got {timeout_s}")
        self.url = chat_completions_url(url)
        self.model, self.timeout_s = model, timeout_s
        self.api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        self._grounded = SceneCaptionUpsampler()

    def upsample(self, instruction: str, scene: dict[str, Any] | None) -> str:
        prompt = (
            "Rewrite the robot instruction as one detailed caption of the egocentric video that would show it "
            "being done, naming objects, colours and positions. Reply with the caption only.\n"
            f"Instruction: {instruction}\nScene: {self._grounded.upsample(instruction, scene)}"
        )
        body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": prompt}],
                           "temperature": 0}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        try:
            raw = self._post(body, headers)
            text = _reply_text(json.loads(raw.decode()))
        except PolicyError:
            raise
        except TimeoutError:
            raise PolicyError(f"caption upsampler at {self.url} sent no complete reply within {self.timeout_s} s") from None
        except (OSError, http.client.HTTPException) as exc:
            raise PolicyError(f"caption upsampler at {self.url} is unreachable or broke off: "
                              f"{type(exc).__name__}: {exc}") from None
        except (ValueError, KeyError, IndexError, TypeError, AttributeError, RecursionError):
            raise PolicyError(f"caption upsampler at {self.url} returned a malformed reply") from None
        words = text.split() if isinstance(text, str) else []
        if not words:
            raise PolicyError(f"caption upsampler at {self.url} returned an empty caption")
        return " ".join(words[:MAX_CAPTION_WORDS])


    def _post(self, body: bytes, headers: dict[str, str]) -> bytes:
        """POST `body` and return the reply's bytes. The whole exchange (connect, send, status, body) must end
        within `timeout_s`: every socket wait gets only what is left of it, so a server that drips its reply
        byte by byte cannot hold a worker (TimeoutError). A reply over MAX_REPLY_BYTES or a non-2xx status
        raises PolicyError."""
        deadline = time.monotonic() + self.timeout_s

        def left() -> float:
            rest = deadline - time.monotonic()
            if rest <= 0:
                raise TimeoutError
            return rest

        parts = urllib.parse.urlsplit(self.url)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = kind(parts.hostname, parts.port, timeout=left())
        try:
            conn.connect()
            sock = conn.sock  # kept: the connection hands it to the response and forgets it
            conn.request("POST", path, body=body, headers=headers)
            sock.settimeout(left())
            resp = conn.getresponse()
            if not 200 <= resp.status < 300:
                raise PolicyError(f"caption upsampler at {self.url} answered HTTP {resp.status} {resp.reason}")
            chunks, size = [], 0
            while True:
                sock.settimeout(left())
                chunk = resp.read1(1 << 16)
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_REPLY_BYTES:
                    raise PolicyError(f"caption upsampler at {self.url} sent a reply over {MAX_REPLY_BYTES} bytes")
        finally:
            conn.close()


def _reply_text(payload: Any) -> Any:
    """The message content of a chat-completions reply: a string, or a list of parts whose text parts
    are joined."""
    content = payload["choices"][0]["message"]["content"]
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and p.get("type") == "text")
    return content


def make_upsampler(
    name: str = "scene", url: str | None = None, model: str = "default"
) -> SceneCaptionUpsampler | TaskCaptionUpsampler | OpenAICaptionUpsampler:
    """`scene`, `task`, `task_pose` or `task_pose_fine` (no model), or `openai` (needs `url`; `model` is the name the server is asked for)."""
    if name == "scene":
        return SceneCaptionUpsampler()
    if name == "task":
        return TaskCaptionUpsampler()
    if name == "task_pose":
        return TaskCaptionUpsampler(pose=True)
    if name == "task_pose_fine":
        return TaskCaptionUpsampler(fine=True)
    if name == "openai":
        return OpenAICaptionUpsampler(url or "", model=model)
    raise PolicyError(f"unknown caption upsampler {name!r}; use one of {', '.join(CAPTION_UPSAMPLERS)}")
