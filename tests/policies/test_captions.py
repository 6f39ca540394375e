"""Caption upsampling: grounded captions name the scene; the VLM upsampler talks to a local fake server."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import pytest

from policies.captions import (
    MAX_CAPTION_WORDS,
    MAX_REPLY_BYTES,
    OpenAICaptionUpsampler,
    SceneCaptionUpsampler,
    TaskCaptionUpsampler,
    make_upsampler,
)
from policies.errors import PolicyError

SCENE = {
    "objects": [
        {"name": "cube_red", "shape": "cube", "colour": "red", "position": [0.45, 0.2, 0.8]},
        {"name": "bowl", "shape": "bowl", "colour": "white", "position": [0.5, -0.2, 0.8]},
        {"name": "parked", "shape": "mug", "colour": "blue", "position": [9, 9, 0], "visible": False},
    ],
    "relations": ["red cube left of bowl"],
}


def test_scene_caption_is_grounded_and_deterministic():
    up = SceneCaptionUpsampler()
    cap = up.upsample("put the red cube in the bowl", SCENE)
    assert cap == up.upsample("put the red cube in the bowl", SCENE)
    assert "put the red cube in the bowl" in cap and "red cube" in cap and "white bowl" in cap
    assert "left" in cap and "mug" not in cap  # hidden objects are not described
    assert "red cube left of bowl" in cap


def test_task_caption_leads_with_the_task_and_its_hand():
    scene = dict(SCENE, task={"family": "place", "objects": {"object": "cube_red", "target": "bowl"}, "params": {}})
    scene["objects"] = [dict(o) for o in SCENE["objects"]] + [
        {"name": "cube_green", "shape": "cube", "colour": "green", "position": [0.35, 0.0, 0.8]}]
    up = make_upsampler("task")
    assert isinstance(up, TaskCaptionUpsampler)
    cap = up.upsample("put the red cube in the bowl.", scene)
    assert cap == up.upsample("put the red cube in the bowl.", scene)
    assert cap.startswith("put the red cube in the bowl. The robot reaches with its ")
    # the cube is on the robot's left (y 0.2), the bowl on its right (y -0.2): their mean is 0, the left hand
    assert "its left hand for the red cube at the middle left of the table, then brings it to the white bowl at " \
        "the middle right of the table." in cap
    assert cap.endswith("Also on the table: green cube at the near centre of the table.")
    assert "mug" not in cap and "Relations" not in cap
    scene["objects"][1]["position"] = [0.5, -0.3, 0.8]
    assert "its right hand for the red cube" in up.upsample("put the red cube in the bowl", scene)


def test_task_pose_caption_adds_the_task_objects_position_and_yaw():
    """`task_pose`: the task's objects get their position to 5 cm and their yaw to 15 degrees, folded by the
    shape's symmetry (a cube every quarter turn, a bowl has none); other objects and a scene without yaw keep
    the `task` wording; `task` itself is unchanged."""
    scene = dict(SCENE, task={"family": "place", "objects": {"object": "cube_red", "target": "bowl"}, "params": {}})
    scene["objects"] = [dict(o) for o in SCENE["objects"]] + [
        {"name": "cube_green", "shape": "cube", "colour": "green", "position": [0.35, 0.0, 0.8], "yaw_deg": 40.0}]
    scene["objects"][0]["yaw_deg"] = 32.0
    scene["objects"][1]["yaw_deg"] = 70.0
    up = make_upsampler("task_pose")
    assert up.name == "task_pose"
    cap = up.upsample("put the red cube in the bowl", scene)
    assert "the red cube at the middle left of the table, 45 cm ahead, 20 cm left, turned 30 degrees " \
        "counterclockwise, then brings it to the white bowl at the middle right of the table, 50 cm ahead, " \
        "20 cm right." in cap
    assert cap.endswith("Also on the table: green cube at the near centre of the table.")  # not a task object
    scene["objects"][0]["yaw_deg"] = 80.0  # a cube turned 80 degrees looks turned -10: 15 clockwise to 15 degrees
    assert "turned 15 degrees clockwise," in up.upsample("put the red cube in the bowl", scene)
    scene["objects"][0]["yaw_deg"] = 91.0
    assert "20 cm left, square," in up.upsample("put the red cube in the bowl", scene)
    del scene["objects"][0]["yaw_deg"]
    assert "20 cm left, then brings" in up.upsample("put the red cube in the bowl", scene)
    scene["objects"][0].update(shape="sphere", yaw_deg=30.0)  # a round shape has no yaw to tell
    assert "20 cm left, then brings" in up.upsample("put the red cube in the bowl", scene)
    plain = make_upsampler("task").upsample("put the red cube in the bowl", scene)
    assert "cm" not in plain and "turned" not in plain


def test_task_pose_fine_caption_gives_cm_and_5_degrees():
    """`task_pose_fine`: the same words as `task_pose`, to 1 cm and 5 degrees (folded by the same symmetry)."""
    scene = dict(SCENE, task={"family": "pick", "objects": {"object": "cube_red"}, "params": {}})
    scene["objects"] = [dict(o) for o in SCENE["objects"]]
    scene["objects"][0].update(position=[0.437, 0.184, 0.8], yaw_deg=-77.0)  # a cube: -77 looks like +13
    up = make_upsampler("task_pose_fine")
    assert up.name == "task_pose_fine"
    cap = up.upsample("pick up the red cube", scene)
    assert "the red cube at the middle left of the table, 44 cm ahead, 18 cm left, turned 15 degrees " \
        "counterclockwise." in cap, cap
    coarse = make_upsampler("task_pose").upsample("pick up the red cube", scene)
    assert "45 cm ahead, 20 cm left, turned 15 degrees counterclockwise" in coarse


def test_task_caption_without_roles_or_with_a_handover():
    up = TaskCaptionUpsampler()
    cap = up.upsample("tidy up", SCENE)  # no task: no reach sentence, every visible object listed
    assert cap == "tidy up. Also on the table: red cube at the middle left of the table; white bowl at the " \
        "middle right of the table."
    scene = dict(SCENE, task={"family": "handover", "objects": {"object": "cube_red"},
                              "params": {"from": "right", "to": "left"}})
    assert "its right hand for the red cube" in up.upsample("pass the red cube to the left hand", scene)
    scene["task"] = {"family": "drawer", "objects": {"object": "lunchbox"}}  # a role this scene has no object for
    assert "reaches" not in up.upsample("open the lunchbox drawer", scene)


def test_env_scene_relations_become_words():
    """The env describes relations as {"subject", "relation", "object"} dicts: the caption names them."""
    from envs.tabletop import HumanoidTabletopEnv
    from envs.tasks import sample_task

    env = HumanoidTabletopEnv()
    env.reset(seed=3, options={"task": sample_task(None, 3)})
    scene = env.scene_description()
    assert scene["relations"] and all(isinstance(r, dict) for r in scene["relations"])
    cap = SceneCaptionUpsampler().upsample("do the task", scene)
    first = scene["relations"][0]
    assert f"{first['subject']} {first['relation']} {first['object']}" in cap
    assert "subject relation object" not in cap
    env.close()


def test_tiny_world_model_reads_whole_captions():
    """The tiny world model's text length holds the demo's captions of many tasks (a truncated caption loses
    the objects' positions, the part that grounds the task)."""
    from envs.tabletop import HumanoidTabletopEnv
    from envs.tasks import sample_task
    from flywheel.compose import compose
    from policies.world_model.modeling_text_encoder import hash_tokenize

    cfg, joints = compose(["preset=demo"]), compose(["preset=joints"])
    env = HumanoidTabletopEnv()
    ups = [(make_upsampler(cfg.policy.caption_upsampler), cfg.world_model.max_text_tokens),
           (make_upsampler(joints.policy.caption_upsampler), joints.world_model.max_text_tokens),
           (make_upsampler("task_pose"), 96),  # preset=joints with task_pose needs world_model.max_text_tokens=96
           (make_upsampler("task_pose_fine"), 96)]
    for seed in range(40):
        env.reset(seed=seed, options={"task": sample_task(None, seed)})
        for up, limit in ups:
            cap = up.upsample(env.task.instruction, env.scene_description())
            ids = hash_tokenize([cap], 1 << 20, 10_000)[0]
            assert int((ids != 0).sum()) < limit, cap
    env.close()


class _Fake(BaseHTTPRequestHandler):
    reply: object = None
    status = 200
    seen: ClassVar[list] = []  # (path, body, authorization) of each request

    def do_POST(self):
        n = int(self.headers["Content-Length"])
        body = json.loads(self.rfile.read(n))
        assert body["messages"][0]["role"] == "user"
        type(self).seen.append((self.path, body, self.headers.get("Authorization")))
        reply = type(self).reply
        data = reply if isinstance(reply, bytes) else json.dumps(reply).encode()
        self.send_response(type(self).status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


@pytest.fixture
def fake_server():
    srv = HTTPServer(("127.0.0.1", 0), _Fake)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    _Fake.status, _Fake.seen = 200, []
    yield srv
    srv.shutdown()
    srv.server_close()


def test_openai_upsampler_against_local_server(fake_server):
    _Fake.reply = {"choices": [{"message": {"content": "  A robot   places the red cube\ninto the white bowl. "}}]}
    up = OpenAICaptionUpsampler(f"http://127.0.0.1:{fake_server.server_port}")
    assert up.upsample("put the red cube in the bowl", SCENE) == "A robot places the red cube into the white bowl."


def test_openai_upsampler_malformed_reply(fake_server):
    _Fake.reply = {"nope": 1}
    up = OpenAICaptionUpsampler(f"http://127.0.0.1:{fake_server.server_port}")
    with pytest.raises(PolicyError, match="malformed"):
        up.upsample("pick the cube", SCENE)


def test_openai_upsampler_unreachable_and_bad_url():
    with pytest.raises(PolicyError, match="unreachable"):
        OpenAICaptionUpsampler("http://127.0.0.1:1", timeout_s=1).upsample("x", {})
    with pytest.raises(PolicyError, match="http"):
        make_upsampler("openai", "ftp://x")
    with pytest.raises(PolicyError, match="unknown caption upsampler"):
        make_upsampler("gpt")


def test_openai_upsampler_bad_replies_are_one_clear_error(fake_server):
    up = OpenAICaptionUpsampler(f"http://127.0.0.1:{fake_server.server_port}")
    cases = [  # (status, reply, what the error says)
        (500, {"error": "overloaded"}, "answered HTTP 500"),
        (200, b"not json at all", "malformed"),
        (200, b"[" * 100_000, "malformed"),  # deeply nested JSON
        (200, b"x" * (MAX_REPLY_BYTES + 10), "reply over"),  # not read into memory whole
        (200, {"choices": [{"message": {"content": "   "}}]}, "empty caption"),
        (200, {"choices": [{"message": {"content": 7}}]}, "empty caption"),
    ]
    for status, reply, match in cases:
        _Fake.status, _Fake.reply = status, reply
        with pytest.raises(PolicyError, match=match):
            up.upsample("pick the cube", SCENE)


def test_openai_upsampler_url_model_key_and_content_parts(fake_server, monkeypatch):
    monkeypatch.setenv("FLYWHEEL_UPSAMPLER_API_KEY", "sk-local")
    _Fake.reply = {"choices": [{"message": {"content": [{"type": "text", "text": "A robot picks"},
                                                         {"type": "image_url", "image_url": {"url": "x"}},
                                                         {"type": "text", "text": "the red cube."}]}}]}
    base = f"http://127.0.0.1:{fake_server.server_port}"
    for url in (base, base + "/v1", base + "/v1/", base + "/v1/chat/completions"):
        up = make_upsampler("openai", url, model="qwen-vl")
        assert up.upsample("pick the cube", SCENE) == "A robot picks the red cube."
    assert {path for path, _, _ in _Fake.seen} == {"/v1/chat/completions"}  # never /v1/v1/...
    assert all(body["model"] == "qwen-vl" and auth == "Bearer sk-local" for _, body, auth in _Fake.seen)
    _Fake.reply = {"choices": [{"message": {"content": "word " * 5000}}]}
    assert len(up.upsample("pick the cube", SCENE).split()) == MAX_CAPTION_WORDS


class _Drip(BaseHTTPRequestHandler):
    """Answers 200 at once, then its body one byte every 50 ms: each read is quick, the whole reply is not."""

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", "10000")
        self.end_headers()
        try:
            for _ in range(10_000):
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.05)
        except OSError:  # the client gave up
            pass

    def log_message(self, *a):
        pass


def test_openai_upsampler_timeout_bounds_the_whole_reply():
    srv = HTTPServer(("127.0.0.1", 0), _Drip)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        up = OpenAICaptionUpsampler(f"http://127.0.0.1:{srv.server_port}", timeout_s=0.5)
        t0 = time.monotonic()
        with pytest.raises(PolicyError, match="no complete reply within 0.5 s"):
            up.upsample("pick the cube", SCENE)
        assert time.monotonic() - t0 < 2.0  # the 500 s drip was cut off at the deadline
    finally:
        srv.shutdown()
        srv.server_close()
