"""The contract between the web tier and the model workers.

Settings, Redis key names, message formats and the atomic queue scripts live here and
nowhere else. Nothing in this package imports Flask or TensorFlow.
"""
