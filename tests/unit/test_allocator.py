"""mpidl.allocator's choices (what they do to a process: tests/e2e/test_allocator.py)."""

import pytest

from mpidl import allocator


def test_unknown_choice_is_refused():
    with pytest.raises(ValueError, match="allocator must be one of"):
        allocator.configure("jemalloc")


def test_system_reports_what_is_in_effect(monkeypatch):
    """"system" asked for after "keep" in the same process: keep is still in effect, and said so."""
    monkeypatch.setattr(allocator, "_applied", True)
    assert allocator.configure("system") == "keep"
    monkeypatch.setattr(allocator, "_applied", None)
    assert allocator.configure("system") == "system"
