"""xchannel: cross-channel encoders (colorization as self-supervision) and the benchmarks that test them.

Data flows one way through the package:
``color`` (colour space, bins, targets, decoding) -> ``data`` (images, VOC, embedded set) -> ``models`` ->
``pretext`` training -> ``features`` -> task heads (``probe``, ``pascal``) -> ``metrics`` -> ``reports``.
"""

__version__ = "0.1.0"
