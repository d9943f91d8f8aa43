"""The device application: configuration, the read-sign-buffer-publish loop,
and the wiring of real hardware from the config (``app``)."""
