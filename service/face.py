"""`serve --face`, kept for compatibility: the face step itself travels with the checkpoint
(``spec.face_align`` and ``spec.face_on_miss``, applied by the Embedder to indexed images and
queries alike); the flag only states what the operator expects of it, and a checkpoint that
says otherwise is refused at start-up instead of serving queries preprocessed unlike its index."""

from __future__ import annotations

from training.models.spec import DETECTING_FACE_STEPS, ModelSpec

FACE_MODES = ("off", "require", "fallback")  # "off": as the checkpoint says


def check_face_mode(mode: str) -> str:
    if mode not in FACE_MODES:
        raise ValueError(f"unknown face mode {mode!r}; valid: {', '.join(FACE_MODES)}")
    return mode


def check_face_matches_spec(mode: str, spec: ModelSpec) -> str:
    """``mode`` if it agrees with the checkpoint's face step, else ValueError saying how to
    put the step into the checkpoint. "off" (the default) serves the spec as it is."""
    check_face_mode(mode)
    if mode == "off" or (spec.face_align in DETECTING_FACE_STEPS and spec.face_on_miss == mode):
        return mode
    step = spec.face_step()
    fix = f"--face {spec.face_align}" if spec.face_align in DETECTING_FACE_STEPS \
        else "--face haar-crop"
    raise ValueError(
        f"--face {mode} contradicts the checkpoint, whose face step is {step}: the face step "
        f"travels with the checkpoint so that the index and the queries get the same one; run "
        f"`imgsim checkpoint set-face CKPT {fix} --on-miss {mode}`, rebuild the index with "
        f"it, and serve without --face (or with --face {mode})")
