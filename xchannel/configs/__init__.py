"""Named training configurations shipped with xchannel (``xchannel train NAME``): YAML files in this folder."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def named_configs() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files(__name__).iterdir() if p.name.endswith(".yaml"))


def resolve(spec: str) -> Path:
    """A path to a YAML file, or the name of a shipped configuration."""
    p = Path(spec)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    candidate = resources.files(__name__).joinpath(f"{spec}.yaml")
    if candidate.is_file():
        return Path(str(candidate))
    from xchannel.errors import UserError

    raise UserError(f"{spec}: neither a config file nor a named config ({', '.join(named_configs())})")
