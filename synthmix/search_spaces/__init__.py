"""Studies: the YAML schema and its validation, grid expansion into cells and generator keys,
and the preset studies shipped with synthmix.

``load_study(path or preset name) -> Study``; ``expand_study(study, manifest) -> Plan``.
"""

from synthmix.search_spaces.schema import Study, load_study, validate_study  # noqa: F401
