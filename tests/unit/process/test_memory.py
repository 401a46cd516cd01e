"""Freed memory goes back to the system: release_freed asks the allocator the process runs on."""

import sys

from pipeline.process import memory


def test_release_freed_asks_the_allocator_in_use():
    assert memory.release_freed() is (sys.platform == "linux")
