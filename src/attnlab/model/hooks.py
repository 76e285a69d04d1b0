"""The hook points and their utilities, re-exported from ``attnlab.hook_points`` (where they live, at the bottom)."""

from attnlab.hook_points import HookPoint, capture, hook_points, hooks

__all__ = ["HookPoint", "capture", "hook_points", "hooks"]
