"""Sweep specifications: a grid of jobs described in YAML, expanded into concrete jobs with stable ids.

A sweep is what the paper's Figure 7 and Table 2 are made of: the same benchmark run for several encoders, input
modes (gray L or colour), tasks, layers and seeds. A spec names the axes of that grid once and says, per group of
jobs, which job kind runs (:mod:`xchannel.sweep.jobs`), from which base configuration, over which axes.

File format (every key is checked: an unknown or misspelt key is an error naming the file and the key)::

    name: figure7                      # the sweep's name (default: the file name); results go to results/<name>/
    description: ...
    variables:                         # ${NAME} anywhere below is replaced by the value; --var NAME=VALUE overrides
      imagenet: null                   # null = must be given on the command line (an error names it otherwise)
      protocol: zhang16
    variable_sets:                     # defaults chosen by which variables are set (see below)
      full: {when: [imagenet], values: {epochs: 28}}
      small: {values: {epochs: 2}}
    axes:                              # shared axes: NAME -> {LABEL: {config key: value, ...}, ...}
      encoder:
        gaussian: {encoder: gaussian}
        kmeans: {encoder: kmeans}
      input:
        gray: {input_mode: gray}
        color: {input_mode: color}
      seed: {key: seed, values: [0, 1], label: "s{}"}   # short form: LABEL = label.format(value)
      task: {registry: pretext, config: demo}            # one label per registered pretext task (see below)
    groups:                            # each group is the product of its axes
      - kind: probe                    # a job kind of xchannel.sweep.jobs (train, probe, pascal-cls, ...)
        tag: probe                     # first part of the job ids (default: the kind)
        config: {data: "${imagenet}", layers: [conv1, conv2]}   # the group's base config (the kind's fields)
        axes: [encoder, input, seed]   # shared axis names, or inline {NAME: {LABEL: {...}}} mappings
        exclude: [{encoder: kmeans, input: gray}]                # combinations to leave out
        rules: [{match: {encoder: supervised, input: color}, set: {input_mode: rgb}}]   # per-combination fixes
        set: ["${probe}", {epochs: 2}] # config keys set on every job, last (mappings, or variables holding them)
        needs: {encoder: train}        # config key <- the run folder of a job of an earlier group (see below)
        resources: {timeout_min: 240}  # cluster profile fields for this group's jobs (xchannel.sweep.cluster)
    report: [figure7]                  # what `xchannel report` draws from the results

Config keys may be dotted (``optim.lr: 0.01``); values merge recursively over the group's base config in axis
order, then rules apply, then the group's ``set``. A job config may name a ``preset`` of its kind (a named training
config for ``train``, the task's presets for the PASCAL kinds) under which the rest is merged.

Variable sets: each entry of ``variable_sets`` (in file order) may list variables under ``when``; the first entry
whose ``when`` variables are all set (not null, by the file or ``--var``) is chosen, and its ``values`` fill the
variables that ``--var`` does not give. An entry with some but not all of its ``when`` variables set is an error (a
half-given data set), and an entry without ``when`` is the fallback. So one spec runs on the embedded data set by
default and on ImageNet with ``--var imagenet=... --var voc=...``.

Registry axes: ``{registry: pretext}`` has one label per pretext task registered in :data:`xchannel.pretext.TASKS`
when the spec is expanded (a task added to the registry joins without a spec edit); with ``config: SCALE``
(``demo`` or ``imagenet``) each label sets ``preset`` to that task's shipped training config
(:func:`xchannel.pretext.task_config`), without it the labels set nothing (for groups that evaluate the tasks).

Dependencies: ``needs: {KEY: TAG}`` makes every job of the group depend on the one job of the earlier group
``TAG`` whose labels agree with its own on the axes the two share (exactly one must); the job's config key ``KEY``
(dotted) holds ``sweep-job:<that job's id>`` (so the id, and the dependent's hash, change with the dependency's
config) and is set, when the job runs, to that job's run folder (:func:`xchannel.sweep.jobs.resolve_needs`). The
runners start a job only once its dependencies have results (:mod:`xchannel.sweep.runner`).

Job ids are human-readable and stable: ``<tag>-<label>-<label>...-<hash>``, e.g. ``probe-gaussian-gray-s0-1f3a9c2e``,
where the hash is the first 8 hex digits of the SHA-256 of the kind and the job's resolved config as the spec gives
it (keys sorted; defaults of the kind's dataclass are not included, so upgrading xchannel does not rename jobs).
Changing a job's config makes it a new job; an unchanged job keeps its id, folder and result.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from xchannel.errors import UserError
from xchannel.utils.config import from_dict, load_yaml, merge

#: the packaged named sweeps: ``xchannel/sweep/specs/<name>.yaml`` (package data of ``xchannel.sweep``)
SPEC_PACKAGE = "xchannel.sweep"
SPEC_FOLDER = "specs"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: How a job config refers to another job's run folder until it runs (``needs``; module docstring).
JOB_REF = "sweep-job:"
_LABEL_BAD = re.compile(r"[^A-Za-z0-9._+-]+")
HASH_LENGTH = 8


# --------------------------------------------------------------------------------------------------------------
# The YAML file, as typed dataclasses (strict keys through xchannel.utils.config.from_dict)


@dataclass
class GroupSpec:
    """One group of jobs: a job kind, a base config and the axes whose product makes the jobs."""

    kind: str = ""
    tag: str | None = None
    description: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    axes: list[Any] = field(default_factory=list)
    exclude: list[dict[str, Any]] = field(default_factory=list)
    rules: list[dict[str, Any]] = field(default_factory=list)
    set: Any = field(default_factory=dict)  # a mapping of config keys ("${VARIABLE}" holding one), or a list of them
    needs: dict[str, str] = field(default_factory=dict)  # config key -> tag of an earlier group
    resources: Any = field(default_factory=dict)  # cluster profile fields (or "${VARIABLE}" holding them)


@dataclass
class VariableSet:
    """Defaults of some variables, chosen when every variable of ``when`` is set (module docstring)."""

    when: list[str] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class SpecFile:
    """The top level of a sweep spec file."""

    name: str = ""
    description: str = ""
    variables: dict[str, Any] = field(default_factory=dict)
    variable_sets: dict[str, Any] = field(default_factory=dict)  # name -> VariableSet fields
    axes: dict[str, Any] = field(default_factory=dict)
    groups: list[GroupSpec] = field(default_factory=list)
    report: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------------------
# The expanded sweep


@dataclass(frozen=True)
class Axis:
    """A named axis: ordered ``(label, config overrides)`` pairs."""

    name: str
    values: tuple[tuple[str, dict[str, Any]], ...]

    @property
    def labels(self) -> list[str]:
        return [label for label, _ in self.values]


@dataclass
class Job:
    """One concrete job of a sweep: what runs (``kind`` + ``config``), under which id, with which resources."""

    id: str
    kind: str
    tag: str
    labels: dict[str, str]  # axis name -> label, in axis order
    config: dict[str, Any]  # the job's config as the spec resolves it (the kind's dataclass validates it)
    resources: dict[str, Any] = field(default_factory=dict)  # cluster profile fields for this job
    config_hash: str = ""
    needs: dict[str, str] = field(default_factory=dict)  # config key -> id of the job whose run folder it takes

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "job") -> "Job":
        return from_dict(cls, data, where)


@dataclass
class Sweep:
    """An expanded sweep: its name, where it came from, the variables used and every job, in spec order."""

    name: str
    description: str = ""
    source: str = ""
    variables: dict[str, Any] = field(default_factory=dict)
    variable_set: str = ""  # the chosen entry of the spec's variable_sets ("" when it has none)
    given: dict[str, Any] = field(default_factory=dict)  # the variables given on the command line (--var)
    report: list[str] = field(default_factory=list)
    jobs: list[Job] = field(default_factory=list)

    def job(self, job_id: str) -> Job:
        for j in self.jobs:
            if j.id == job_id:
                return j
        raise UserError(f"sweep {self.name}: no job {job_id!r} (jobs: {', '.join(j.id for j in self.jobs[:8])}"
                        f"{', ...' if len(self.jobs) > 8 else ''})")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "source": self.source,
                "variables": self.variables, "variable_set": self.variable_set, "given": self.given,
                "report": list(self.report),
                "jobs": [j.to_dict() for j in self.jobs]}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "sweep") -> "Sweep":
        if not isinstance(data, dict) or "jobs" not in data:
            raise UserError(f"{where}: not an expanded sweep (no 'jobs')")
        jobs = [Job.from_dict(j, f"{where}: jobs[{i}]") for i, j in enumerate(data["jobs"])]
        rest = {k: v for k, v in data.items() if k != "jobs"}
        sweep = from_dict(cls, rest, where)
        sweep.jobs = jobs
        return sweep


# --------------------------------------------------------------------------------------------------------------
# Finding and loading specs


def named_specs() -> list[str]:
    """Names of the sweeps that ship with xchannel (``figure7``, ``table2``, ``demo``, ...)."""
    folder = resources.files(SPEC_PACKAGE).joinpath(SPEC_FOLDER)
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml")) if folder.is_dir() else []


def resolve_spec_path(spec: str | Path) -> Path:
    """A YAML file, or the name of a packaged sweep."""
    p = Path(spec)
    if p.is_file():
        return p
    if p.suffix in (".yaml", ".yml") or p.exists():
        raise UserError(f"{p}: no such sweep spec file")
    candidate = resources.files(SPEC_PACKAGE).joinpath(SPEC_FOLDER, f"{spec}.yaml")
    if candidate.is_file():
        return Path(str(candidate))
    raise UserError(f"{spec}: neither a sweep spec file nor a named sweep ({', '.join(named_specs())})")


def spec_name(spec: str | Path) -> str:
    """The name of a spec (its ``name`` key, else the file name) without expanding it: enough to find its folder."""
    path = resolve_spec_path(spec)
    data = load_yaml(path)
    name = data.get("name") if isinstance(data, dict) else None
    return str(name) if name else path.stem


def parse_var_overrides(items: list[str]) -> dict[str, Any]:
    """``["imagenet=/data/in1k", "seeds=[0,1]"]`` -> dict; values are YAML scalars or lists, never code."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            raise UserError(f"--var {item!r}: expected NAME=VALUE")
        if name in out:
            raise UserError(f"--var {name} given twice")
        try:
            out[name] = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as err:
            raise UserError(f"--var {item!r}: cannot parse the value ({err})") from None
    return out


def load_spec(spec: str | Path, variables: dict[str, Any] | None = None) -> Sweep:
    """Read a spec (a file or a packaged name), substitute its variables (``variables`` override the file's),
    validate every job config with its kind's dataclass and expand the grid. Errors name the file and the place."""
    path = resolve_spec_path(spec)
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: a sweep spec must be a mapping at the top level")
    return expand_spec(data, where=str(path), variables=variables, default_name=path.stem)


def expand_spec(data: dict[str, Any], where: str = "sweep spec", variables: dict[str, Any] | None = None,
                default_name: str = "sweep") -> Sweep:
    """Expand a spec given as a dict (the YAML file's content); see :func:`load_spec`."""
    raw = from_dict(SpecFile, data, where)
    given = dict(variables or {})
    unknown = sorted(set(given) - set(raw.variables))
    if unknown:
        raise UserError(f"{where}: --var {', '.join(unknown)}: no such variable; the spec's variables are "
                        f"{', '.join(sorted(raw.variables)) or '(none)'}")
    chosen, defaults = choose_variable_set(raw, given, where)
    merged = {**raw.variables, **defaults, **given}
    values = resolve_variables(merged, where)
    used = referenced_variables([raw.axes, [dataclasses.asdict(g) for g in raw.groups]])
    unset = sorted(n for n in used if n in merged and merged[n] is None)  # null in the file, not given
    if unset:
        notes = _variable_notes(where, unset)
        raise UserError(f"{where}: variable(s) {', '.join(unset)} not set: give "
                        + " ".join(f"--var {n}=VALUE" for n in unset) + (f" ({'; '.join(notes)})" if notes else ""))
    name = raw.name or default_name
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise UserError(f"{where}: name {name!r} may only hold letters, digits, '.', '_' and '-'")
    shared = {axis: parse_axis(axis, spec, f"{where}: axes.{axis}") for axis, spec in
              substitute(raw.axes, values, f"{where}: axes").items()}
    if not raw.groups:
        raise UserError(f"{where}: no groups: a sweep needs at least one group of jobs")
    jobs: list[Job] = []
    seen: dict[str, str] = {}
    for gi, group in enumerate(raw.groups):
        gwhere = f"{where}: groups[{gi}]" + (f" ({group.tag or group.kind})" if group.kind else "")
        for job in expand_group(group, shared, values, gwhere, earlier=jobs):
            if job.id in seen:
                raise UserError(f"{gwhere}: job {job.id} is also made by {seen[job.id]}: two jobs with the same kind, "
                                f"tag, labels and config would share one folder; give the groups different tags")
            seen[job.id] = gwhere
            jobs.append(job)
    return Sweep(name=name, description=raw.description.strip(), source=where,
                 variables={k: v for k, v in values.items()}, variable_set=chosen, given=given,
                 report=list(raw.report), jobs=jobs)


# --------------------------------------------------------------------------------------------------------------
# Variables


def choose_variable_set(raw: SpecFile, given: dict[str, Any], where: str) -> tuple[str, dict[str, Any]]:
    """The first entry of ``raw.variable_sets`` whose ``when`` variables are all set (module docstring) and its
    values: ``("", {})`` when none applies. An entry whose ``when`` variables are only partly set is an error."""
    current = {**raw.variables, **given}
    for name, fields in raw.variable_sets.items():
        swhere = f"{where}: variable_sets.{name}"
        entry = from_dict(VariableSet, fields if isinstance(fields, dict) else {"values": fields}, swhere)
        unknown = sorted((set(entry.when) | set(entry.values)) - set(raw.variables))
        if unknown:
            raise UserError(f"{swhere}: {', '.join(unknown)}: not a variable of the spec (declare it under "
                            f"'variables')")
        unset = [v for v in entry.when if current.get(v) is None]
        if entry.when and len(unset) < len(entry.when) and unset:
            have = [v for v in entry.when if v not in unset]
            raise UserError(f"{swhere}: {', '.join(have)} given without {', '.join(unset)}: this set of "
                            f"variables needs " + " ".join(f"--var {v}=VALUE" for v in entry.when))
        if not unset:
            return name, dict(entry.values)
    return "", {}


def resolve_variables(variables: dict[str, Any], where: str) -> dict[str, Any]:
    """Resolve ``${NAME}`` references between variables (a cycle is an error). ``null`` values stay unset."""
    done: dict[str, Any] = {}

    def value(name: str, stack: tuple[str, ...]) -> Any:
        if name in done:
            return done[name]
        if name in stack:
            raise UserError(f"{where}: variables refer to each other in a cycle: {' -> '.join(stack + (name,))}")
        v = variables[name]
        if v is not None:
            v = _substitute_value(v, lambda n: value(n, stack + (name,)) if n in variables else _missing(n),
                                  f"{where}: variables.{name}")
        done[name] = v
        return v

    def _missing(n: str) -> Any:
        raise UserError(f"{where}: variable ${{{n}}} is used by another variable but not defined")

    for name in variables:
        value(name, ())
    return done


def referenced_variables(obj: Any) -> set[str]:
    """Names of the variables that the strings of ``obj`` refer to."""
    if isinstance(obj, dict):
        return set().union(*(referenced_variables(v) for v in obj.values())) if obj else set()
    if isinstance(obj, (list, tuple)):
        return set().union(*(referenced_variables(v) for v in obj)) if obj else set()
    if isinstance(obj, str):
        return {m.group(1) for part in obj.split("$$") for m in _VAR.finditer(part)}
    return set()


def _variable_notes(where: str, names: list[str]) -> list[str]:
    """The comments next to ``names`` in the spec file's ``variables:`` block (what each variable is), if any."""
    try:
        lines = Path(where).read_text().splitlines()
    except OSError:
        return []
    notes = []
    for name in names:
        for line in lines:
            m = re.match(rf"\s+{re.escape(name)}:[^#]*#\s*(.+)$", line)
            if m:
                notes.append(f"{name}: {m.group(1).strip()}")
                break
    return notes


def substitute(obj: Any, variables: dict[str, Any], where: str) -> Any:
    """Replace ``${NAME}`` in every string of ``obj`` (recursively). A string that is exactly ``${NAME}`` takes the
    variable's value with its type (a number, a list); ``$$`` is a literal ``$``. An unset (null) or unknown
    variable is an error that names it and where it is used."""

    def lookup(name: str) -> Any:
        if name not in variables:
            raise UserError(f"{where}: unknown variable ${{{name}}}; the spec's variables are "
                            f"{', '.join(sorted(variables)) or '(none)'}")
        if variables[name] is None:
            raise UserError(f"{where}: variable {name!r} is not set: give it with --var {name}=VALUE")
        return variables[name]

    return _substitute_value(obj, lookup, where)


def _substitute_value(obj: Any, lookup, where: str) -> Any:
    if isinstance(obj, dict):
        return {k: _substitute_value(v, lookup, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, list):
        return [_substitute_value(v, lookup, f"{where}[{i}]") for i, v in enumerate(obj)]
    if not isinstance(obj, str) or "$" not in obj:
        return obj
    whole = _VAR.fullmatch(obj)
    if whole:
        return copy.deepcopy(lookup(whole.group(1)))
    parts = obj.split("$$")
    out = []
    for part in parts:
        out.append(_VAR.sub(lambda m: _as_text(lookup(m.group(1)), m.group(1), where), part))
    return "$".join(out)


def _as_text(value: Any, name: str, where: str) -> str:
    if isinstance(value, (dict, list)):
        raise UserError(f"{where}: variable {name!r} holds a {type(value).__name__} and cannot be part of a string")
    return str(value)


# --------------------------------------------------------------------------------------------------------------
# Axes, groups and jobs


def parse_axis(name: str, spec: Any, where: str) -> Axis:
    """An axis from ``{LABEL: {key: value}}`` or the short form ``{key: K, values: [...], label: "fmt{}"}``."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(name)):
        raise UserError(f"{where}: axis name {name!r} must be an identifier")
    if isinstance(spec, dict) and "registry" in spec:
        items = registry_axis(spec, where)
    elif isinstance(spec, dict) and "values" in spec and set(spec) <= {"key", "values", "label"}:
        if "key" not in spec or not isinstance(spec["values"], list):
            raise UserError(f"{where}: the short form of an axis is {{key: CONFIG_KEY, values: [...], "
                            f"label: FORMAT}}")
        fmt = str(spec.get("label", "{}"))
        if "{}" not in fmt:
            raise UserError(f"{where}: label {fmt!r} must contain {{}} (where the value goes)")
        items = [(fmt.replace("{}", _value_label(v)), {str(spec["key"]): v}) for v in spec["values"]]
    elif isinstance(spec, dict):
        items = []
        for label, overrides in spec.items():
            if overrides is None:
                overrides = {}
            if not isinstance(overrides, dict):
                raise UserError(f"{where}.{label}: expected a mapping of config keys, got {overrides!r}")
            items.append((str(label), overrides))
    else:
        raise UserError(f"{where}: an axis is a mapping LABEL -> {{config key: value}}, got {spec!r}")
    if not items:
        raise UserError(f"{where}: the axis has no values")
    labels = [clean_label(label, where) for label, _ in items]
    dupes = sorted({label for label in labels if labels.count(label) > 1})
    if dupes:
        raise UserError(f"{where}: label(s) {', '.join(dupes)} appear more than once")
    return Axis(str(name), tuple((label, expand_dotted(o, f"{where}.{label}")) for label, (_, o) in
                                 zip(labels, items)))


def registry_axis(spec: dict[str, Any], where: str) -> list[tuple[str, dict[str, Any]]]:
    """The values of ``{registry: pretext[, config: SCALE]}``: one per task of :data:`xchannel.pretext.TASKS` as it
    is now, each setting ``preset`` to the task's shipped config for ``SCALE`` when given (module docstring)."""
    from xchannel.pretext import TASKS, task_config

    if set(spec) - {"registry", "config"} or spec["registry"] != "pretext":
        raise UserError(f"{where}: a registry axis is {{registry: pretext, config: SCALE}} (config optional), "
                        f"got {spec!r}")
    scale = spec.get("config")
    try:
        return [(name, {} if scale is None else {"preset": task_config(name, str(scale))}) for name in TASKS]
    except UserError as err:
        raise UserError(f"{where}: {err}") from None


def _value_label(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "+".join(_value_label(v) for v in value)
    return str(value)


def clean_label(label: str, where: str) -> str:
    """A label as it appears in job ids: letters, digits, '.', '_', '+' and '-' (other runs of characters become '_')."""
    out = _LABEL_BAD.sub("_", str(label)).strip("_")
    if not out:
        raise UserError(f"{where}: label {label!r} has no letters or digits")
    return out


def expand_dotted(overrides: dict[str, Any], where: str) -> dict[str, Any]:
    """``{"optim.lr": 0.1, "model": {"width": 0.5}}`` -> nested dicts (a key given twice is an error)."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        parts = str(key).split(".")
        if not all(parts):
            raise UserError(f"{where}: bad config key {key!r}")
        nested: Any = expand_dotted(value, f"{where}.{key}") if isinstance(value, dict) else value
        for p in reversed(parts[1:]):
            nested = {p: nested}
        head = parts[0]
        if head in out and isinstance(out[head], dict) and isinstance(nested, dict):
            overlap = set(out[head]) & set(nested)
            if overlap:
                raise UserError(f"{where}: {key!r} sets {head}.{sorted(overlap)[0]} a second time")
            out[head] = merge(out[head], nested)
        elif head in out:
            raise UserError(f"{where}: {key!r} sets {head!r} a second time")
        else:
            out[head] = nested
    return out


def _group_axes(group: GroupSpec, shared: dict[str, Axis], variables: dict[str, Any], where: str) -> list[Axis]:
    axes: list[Axis] = []
    for i, item in enumerate(group.axes):
        if isinstance(item, str):
            if item not in shared:
                raise UserError(f"{where}: axes[{i}]: no shared axis {item!r}; the spec's axes are "
                                f"{', '.join(sorted(shared)) or '(none)'}")
            axes.append(shared[item])
        elif isinstance(item, dict) and len(item) == 1:
            (name, spec), = item.items()
            axes.append(parse_axis(name, substitute(spec, variables, f"{where}: axes[{i}]"),
                                   f"{where}: axes[{i}].{name}"))
        else:
            raise UserError(f"{where}: axes[{i}]: give a shared axis name or one inline {{NAME: {{LABEL: ...}}}}, "
                            f"got {item!r}")
    names = [a.name for a in axes]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UserError(f"{where}: axis {', '.join(dupes)} is used twice")
    return axes


def _matcher(spec: Any, axes: list[Axis], where: str) -> dict[str, set[str]]:
    """``{axis: label or [labels]}`` -> ``{axis: {labels}}``, checking that every axis and label exists."""
    if not isinstance(spec, dict) or not spec:
        raise UserError(f"{where}: expected a mapping {{AXIS: LABEL or [LABELS]}}, got {spec!r}")
    by_name = {a.name: a for a in axes}
    out: dict[str, set[str]] = {}
    for axis, labels in spec.items():
        if axis not in by_name:
            raise UserError(f"{where}: the group has no axis {axis!r} (its axes: {', '.join(by_name) or 'none'})")
        wanted = {str(x) for x in (labels if isinstance(labels, list) else [labels])}
        missing = sorted(wanted - set(by_name[axis].labels))
        if missing:
            raise UserError(f"{where}: axis {axis!r} has no label(s) {', '.join(missing)} "
                            f"(labels: {', '.join(by_name[axis].labels)})")
        out[str(axis)] = wanted
    return out


def _matches(matcher: dict[str, set[str]], labels: dict[str, str]) -> bool:
    return all(labels[axis] in wanted for axis, wanted in matcher.items())


def expand_group(group: GroupSpec, shared: dict[str, Axis], variables: dict[str, Any], where: str,
                 earlier: list[Job] = ()) -> list[Job]:
    """The jobs of one group: the product of its axes, minus exclusions, each config validated by its kind;
    ``earlier``: the jobs of the groups before it (what ``needs`` refers to)."""
    from xchannel.sweep.jobs import get_kind, resource_fields

    if not group.kind:
        raise UserError(f"{where}: 'kind' is missing")
    kind = get_kind(group.kind, where)
    tag = clean_label(group.tag or group.kind, f"{where}: tag")
    base = expand_dotted(substitute(group.config, variables, f"{where}: config"), f"{where}: config")
    managed = sorted(set(kind.managed) & set(base))
    if managed:
        raise UserError(f"{where}: config.{managed[0]} is set by the sweep (every job writes into its own folder); "
                        f"remove it")
    axes = _group_axes(group, shared, variables, where)
    excludes = [_matcher(e, axes, f"{where}: exclude[{i}]") for i, e in enumerate(group.exclude)]
    rules = []
    for i, rule in enumerate(group.rules):
        rwhere = f"{where}: rules[{i}]"
        if not isinstance(rule, dict) or set(rule) != {"match", "set"} or not isinstance(rule["set"], dict):
            raise UserError(f"{rwhere}: a rule is {{match: {{AXIS: LABEL}}, set: {{config key: value}}}}")
        rules.append((_matcher(rule["match"], axes, rwhere),
                      expand_dotted(substitute(rule["set"], variables, rwhere), rwhere)))
    last: dict[str, Any] = {}
    given = substitute(group.set, variables, f"{where}: set")
    for i, part in enumerate(given if isinstance(given, list) else [given]):
        if not isinstance(part, dict):
            raise UserError(f"{where}: set must be a mapping of config keys, a variable holding one, or a list of "
                            f"them, got {part!r}")
        last = merge(last, expand_dotted(part, f"{where}: set[{i}]"))
    resources = substitute(group.resources, variables, f"{where}: resources")
    if not isinstance(resources, dict):
        raise UserError(f"{where}: resources must be a mapping of cluster profile fields, got {resources!r}")
    unknown = sorted(set(resources) - set(resource_fields()))
    if unknown:
        raise UserError(f"{where}: resources: unknown field(s) {', '.join(map(repr, unknown))}; cluster profile "
                        f"fields are {', '.join(resource_fields())}")
    jobs = []
    for combo in itertools.product(*[a.values for a in axes]) if axes else [()]:
        labels = {a.name: label for a, (label, _) in zip(axes, combo)}
        if any(_matches(m, labels) for m in excludes):
            continue
        config = base
        for _, overrides in combo:
            config = merge(config, overrides)
        for matcher, overrides in rules:
            if _matches(matcher, labels):
                config = merge(config, overrides)
        config = merge(config, last)
        label_text = "-".join(labels.values())
        jwhere = f"{where}: job {tag}{'-' + label_text if label_text else ''}"
        managed = sorted(set(kind.managed) & set(config))
        if managed:
            raise UserError(f"{jwhere}: config.{managed[0]} is set by the sweep; remove it from the axes")
        needs = {key: _needed_job(dep_tag, labels, earlier, f"{jwhere}: needs.{key}").id
                 for key, dep_tag in group.needs.items()}
        for key, dep_id in needs.items():
            if _has_dotted(config, key):
                raise UserError(f"{jwhere}: config.{key} is set by 'needs' (the run folder of {dep_id}); remove it "
                                f"from the config and axes")
            config = merge(config, expand_dotted({key: JOB_REF + dep_id}, f"{jwhere}: needs"))
        kind.build(config, jwhere)  # validate now: a typo fails before anything is submitted
        digest = config_hash(kind.name, config)
        job_id = "-".join([tag, *labels.values(), digest])
        jobs.append(Job(id=job_id, kind=kind.name, tag=tag, labels=labels, config=config,
                        resources=dict(resources), config_hash=digest, needs=needs))
    if not jobs:
        raise UserError(f"{where}: every combination is excluded: the group makes no job")
    return jobs


def _needed_job(tag: str, labels: dict[str, str], earlier: list[Job], where: str) -> Job:
    """The one job of the earlier group ``tag`` whose labels agree with ``labels`` on their shared axes."""
    group = [j for j in earlier if j.tag == tag]
    if not group:
        tags = sorted({j.tag for j in earlier})
        raise UserError(f"{where}: no earlier group with tag {tag!r} (earlier tags: {', '.join(tags) or 'none'})")
    hits = [j for j in group if all(labels[a] == v for a, v in j.labels.items() if a in labels)]
    if len(hits) != 1:
        what = ", ".join(f"{a}={v}" for a, v in labels.items()) or "no labels"
        found = "none" if not hits else ", ".join(j.id for j in hits)
        raise UserError(f"{where}: exactly one job of group {tag!r} must match {what} on the axes they share; "
                        f"found {found}")
    return hits[0]


def _has_dotted(config: dict[str, Any], key: str) -> bool:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def config_hash(kind: str, config: dict[str, Any]) -> str:
    """First :data:`HASH_LENGTH` hex digits of SHA-256 over the kind and the config as canonical JSON."""
    canonical = json.dumps({"kind": kind, "config": config}, sort_keys=True, separators=(",", ":"),
                           ensure_ascii=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:HASH_LENGTH]


__all__ = ["Axis", "GroupSpec", "JOB_REF", "Job", "SPEC_PACKAGE", "SpecFile", "Sweep", "VariableSet",
           "choose_variable_set", "clean_label", "config_hash", "expand_dotted", "expand_group", "expand_spec",
           "load_spec", "named_specs", "parse_axis", "parse_var_overrides", "registry_axis", "resolve_spec_path",
           "resolve_variables", "spec_name", "substitute"]
