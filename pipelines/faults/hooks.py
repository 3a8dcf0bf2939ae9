"""The explicit seams where tests may step into production code: hook lists, empty unless a
test (``fault_injection.install``) fills them. The code that calls them knows nothing of faults.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

BEFORE_REPLACE: list[Callable[[Path], None]] = []
"""Called by ``atomic.atomic_path`` with the target path once the temporary file is complete
(written, closed, its mode set), right before it replaces the target."""

EPOCH_END: list[Callable[[int], None]] = []
"""Called by the training loop in every worker with the epoch number, after that epoch was
reported (its checkpoint saved)."""
