"""The ``queuenet`` command: run the service on one machine, or one of its processes."""
