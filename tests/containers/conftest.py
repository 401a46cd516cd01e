import sys
from pathlib import Path

# The stack's process helpers (tests/stack/stack_processes.py) are shared with the container tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stack"))
