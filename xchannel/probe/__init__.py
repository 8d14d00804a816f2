"""Linear probes of frozen encoders (Sec. 3.2, Fig. 7): protocols (pooling + schedule), heads, and the runner.

``run_probe(ProbeConfig(...))`` is the Python API behind ``xchannel probe`` / ``xchannel-probe``.
"""

from xchannel.probe.heads import LinearHead, ProbeHeads
from xchannel.probe.protocols import PROTOCOLS, PoolSpec, Protocol, Schedule, get_protocol
from xchannel.probe.run import ProbeConfig, fit_probe, format_dims, probe_dims, run_probe

__all__ = ["PROTOCOLS", "LinearHead", "PoolSpec", "ProbeConfig", "ProbeHeads", "Protocol", "Schedule",
           "fit_probe", "format_dims", "get_protocol", "probe_dims", "run_probe"]
