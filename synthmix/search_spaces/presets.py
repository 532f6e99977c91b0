"""The preset studies shipped inside the package (``synthmix/search_spaces/presets/*.yaml``):
list them, find one by name, read its header."""

from __future__ import annotations

from pathlib import Path

from synthmix.errors import StudyError

PRESET_DIR = Path(__file__).with_name("presets")


def preset_names() -> list[str]:
    """Names of the shipped presets (file stems), sorted."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    """The YAML file of preset ``name``; StudyError listing the presets when there is none."""
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise StudyError([f"{name!r} is neither a study file nor a preset; presets: "
                          f"{', '.join(preset_names())}"], source=str(name))
    return path


def preset_text(name: str) -> str:
    """The preset's YAML, header comment included."""
    return preset_path(name).read_text()


def preset_header(name: str) -> str:
    """The leading comment block of the preset, without the '# ' markers."""
    lines = []
    for line in preset_text(name).splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    return "\n".join(lines).strip()


def preset_summary(name: str) -> str:
    """The first line of the preset's header: what it runs."""
    header = preset_header(name)
    return header.splitlines()[0] if header else ""
