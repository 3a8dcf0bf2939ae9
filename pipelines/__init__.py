"""The pipeline around ``lincore``: DVC stages (``stages``), user commands (``commands``),
training under Ray Train (``training``) and the pieces they share (``common``)."""
