"""Built-in training profiles, one YAML file each (``quick``, ``cpu60``, ``best``)."""

PROFILES = ("quick", "cpu60", "best")
