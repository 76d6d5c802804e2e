"""Issue 19 §3: requirements.lock pins, with hashes, every runtime dependency pyproject.toml
names (and what they need), within pyproject's floors; the image installs from it alone.

A dependency added to pyproject.toml without `pip-compile` (README "Dependency notes") fails
here, not in an image build that resolves it live."""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.paths import ROOT

LOCK = ROOT / "requirements.lock"
BUILD_LOCK = ROOT / "requirements-build.lock"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def _pins(path: str) -> dict[str, tuple[Version, int]]:
    """name -> (pinned version, number of hashes) of a pip-compile output."""
    pins: dict[str, tuple[Version, int]] = {}
    current: str | None = None
    for line in ROOT.joinpath(path).read_text(encoding="utf-8").splitlines():
        found = _PIN.match(line)
        if found:
            current = str(canonicalize_name(found[1]))
            pins[current] = (Version(found[2]), 0)
        elif current is not None and line.strip().startswith("--hash=sha256:"):
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
    return pins


def _runtime_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return [Requirement(text) for text in project["dependencies"]]


def test_the_lock_pins_every_runtime_dependency_within_its_floor() -> None:
    pins = _pins(LOCK.name)
    for requirement in _runtime_requirements():
        name = str(canonicalize_name(requirement.name))
        assert name in pins, f"{requirement.name} is in pyproject.toml but not in the lock"
        version, _ = pins[name]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{requirement.name}: the lock's {version} is outside {requirement.specifier}"
        )


def test_every_pin_has_hashes() -> None:
    for path in (LOCK.name, BUILD_LOCK.name):
        pins = _pins(path)
        assert pins, path
        for name, (_, hashes) in pins.items():
            assert hashes >= 1, f"{path}: {name} has no --hash"


def test_the_lock_holds_the_extras_dependencies() -> None:
    # sqlalchemy[asyncio] needs greenlet: an extra's dependencies must be in the lock as well.
    assert "greenlet" in _pins(LOCK.name)


def test_the_floors_exclude_the_known_advisories() -> None:
    floors = {str(canonicalize_name(r.name)): r.specifier for r in _runtime_requirements()}
    assert not floors["aiohttp"].contains("3.12.13")  # CVE-2025-53643
    assert not floors["aiohttp"].contains("3.10.10")  # GHSA-8495-4g3g-x7pr
    assert floors["aiohttp"].contains("3.12.14")
    assert not floors["cryptography"].contains("44.0.0")
    assert not floors["orjson"].contains("3.9.14")


def test_the_image_installs_from_the_locks_with_hashes_only() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert "--require-hashes -r requirements.lock" in text
    assert "--require-hashes -r requirements-build.lock" in text
    # The project itself goes in without resolving anything live.
    for line in re.findall(r"pip install[^\n\\]*", text):
        assert "--require-hashes" in line or "--no-deps" in line, line
