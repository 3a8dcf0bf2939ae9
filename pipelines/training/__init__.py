"""Training's one home: the session protocol (``session``), the epoch loop (``loop``), its
schedules (``schedule``), the checkpointed state (``state``) and the Ray Train driver
(``driver``); ``timed_fit`` trains in the calling process for the commands."""
