"""Features of trained and baseline networks for the benchmarks.

:func:`load_encoder` turns a user's spec (a checkpoint, ``gaussian``, ``kmeans``, ``torchvision-alexnet:PATH``,
``timm:NAME[:PATH]``, ``state_dict:PATH[:ARCH]``) into an :class:`Encoder` with its input convention and named
feature taps; :mod:`xchannel.features.cache` stores pooled features on disk so that repeated probes of the same
encoder and data skip the network.
"""

from xchannel.features.encoders import ENCODERS, INPUT_MODES, Encoder, load_encoder, parse_spec

__all__ = ["ENCODERS", "INPUT_MODES", "Encoder", "load_encoder", "parse_spec"]
