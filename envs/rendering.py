"""Offscreen rendering: pick the GL backend before MuJoCo loads, and a small egocentric camera renderer.

`configure_gl()` must run before the first `import mujoco` in a process (envs.tabletop calls it at
import). It keeps MUJOCO_GL if the user set it; otherwise it picks EGL (GPU or Mesa's software EGL)
and falls back to OSMesa when no libEGL is found.
"""
from __future__ import annotations

import ctypes.util
import os

import numpy as np

from envs.errors import EnvError

_INSTALL_HINT = ("install Mesa's offscreen GL (Debian/Ubuntu: `apt-get install libegl-mesa0` for EGL or "
                 "`apt-get install libosmesa6` for OSMesa) or set MUJOCO_GL to a working backend")


def configure_gl() -> str:
    """Choose MUJOCO_GL (egl, else osmesa) if unset; returns the backend in use."""
    backend = os.environ.get("MUJOCO_GL", "").strip().lower()
    if not backend:
        if ctypes.util.find_library("EGL"):
            backend = "egl"
        elif ctypes.util.find_library("OSMesa"):
            backend = "osmesa"
        else:
            backend = "egl"  # fails with a clear EnvError when a renderer is created
        os.environ["MUJOCO_GL"] = backend
    if backend in ("egl", "osmesa"):
        os.environ.setdefault("PYOPENGL_PLATFORM", backend)
    return backend


def _gl_context_class(backend: str):
    """The GLContext class of a backend, imported directly (not through mujoco.gl_context, which is
    frozen at the first `import mujoco` and may have picked GLFW)."""
    if backend == "egl":
        from mujoco.egl import GLContext
    elif backend == "osmesa":
        from mujoco.osmesa import GLContext
    elif backend == "glfw":
        from mujoco.glfw import GLContext
    else:
        raise EnvError(f"MUJOCO_GL={backend!r} is not supported for offscreen rendering; use egl or osmesa")
    return GLContext


class EgoRenderer:
    """Renders one named camera to uint8 (H, W, 3) with shadows, reflections and skybox off.

    Create it lazily, in the process (and ideally the thread) that renders: GL contexts do not survive
    fork or pickling. The context is made current before every frame, so other threads may use it.
    """

    def __init__(self, model, height: int, width: int, camera: str = "ego") -> None:
        import mujoco

        backend = configure_gl()
        try:
            self._ctx = _gl_context_class(backend)(width, height)
            self._ctx.make_current()
            self._mjr = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_100)
        except EnvError:
            raise
        except Exception as e:  # GL missing or broken: say what to install
            raise EnvError(f"cannot create an offscreen renderer with MUJOCO_GL={backend!r} "
                           f"({type(e).__name__}: {e}); {_INSTALL_HINT}") from e
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._mjr)
        self._model = model
        self._scene = mujoco.MjvScene(model, maxgeom=1000)
        self._scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        self._scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        self._scene.flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = 0
        self._opt = mujoco.MjvOption()
        self._cam = mujoco.MjvCamera()
        self._cam.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self._cam.fixedcamid = model.camera(camera).id
        self._rect = mujoco.MjrRect(0, 0, width, height)
        self._shape = (height, width, 3)
        self._mujoco = mujoco

    def render(self, data) -> np.ndarray:
        """The camera image (H, W, 3) uint8 of `data`'s current state."""
        mj = self._mujoco
        self._ctx.make_current()
        mj.mjv_updateScene(self._model, data, self._opt, None, self._cam, mj.mjtCatBit.mjCAT_ALL, self._scene)
        mj.mjr_render(self._rect, self._scene, self._mjr)
        out = np.empty(self._shape, dtype=np.uint8)
        mj.mjr_readPixels(out, None, self._rect, self._mjr)
        return out[::-1]  # OpenGL rows start at the bottom

    def close(self) -> None:
        if self._ctx is not None:
            self._mjr.free()
            self._ctx.free()
            self._ctx = None
