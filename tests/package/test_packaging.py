"""pyproject.toml ships every package and data file, the extras match their pinned file, CI
installs the extras, and no script edits sys.path to find the packages."""
import fnmatch
import re
import tomllib
from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_and_data_file_is_shipped():
    """Fails if `pip install .` would miss a subpackage (e.g. vtab.mini) or a data file the code
    reads at run time (vtab/reference.csv, the shipped plans glora/configs/*.yaml)."""
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    shipped = set(find_packages(where=str(ROOT), include=include))
    on_disk = {str(p.parent.relative_to(ROOT)).replace("/", ".") for top in ("glora", "vtab")
               for p in (ROOT / top).rglob("__init__.py")}
    assert shipped == on_disk and {"glora", "vtab", "vtab.mini"} <= shipped
    data = PYPROJECT["tool"]["setuptools"]["package-data"]
    for top in ("glora", "vtab"):
        files = [p for p in (ROOT / top).rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")
                 and "__pycache__" not in p.parts]
        for file in files:
            relative = str(file.relative_to(ROOT / top))
            assert any(fnmatch.fnmatch(relative, pattern) for pattern in data.get(top, [])), \
                f"{file} is not in package-data"


def requirement_names(path: Path) -> set[str]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return {re.split(r"[=<>]", line)[0].lower() for line in lines if line and not line.startswith("-r")}


def test_extras_are_pinned_installed_by_ci_and_declared():
    """Fails if an optional extra (transformers, peft, submitit) is declared in pyproject.toml but
    not pinned in requirements-extras.txt, or if CI (requirements-dev.txt) does not install the
    extras, so that their tests would be skipped there."""
    declared = {re.split(r"[=<>\[]", dep)[0].lower()
                for dep in PYPROJECT["project"]["optional-dependencies"]["all"]}
    assert declared == {"transformers", "peft", "submitit", "tensorboard", "matplotlib"}
    assert declared <= requirement_names(ROOT / "requirements-extras.txt")
    assert "-r requirements-extras.txt" in (ROOT / "requirements-dev.txt").read_text().splitlines()


def test_no_script_edits_sys_path():
    """Fails if a benchmark, example or entry point finds glora by editing sys.path instead of
    importing the installed package."""
    scripts = [*ROOT.glob("benchmarks/*.py"), *ROOT.glob("examples/*.py"), *ROOT.glob("scripts/*.py"),
               ROOT / "supernet.py", ROOT / "evolution.py"]
    assert len(scripts) > 6
    offenders = [str(p.relative_to(ROOT)) for p in scripts if "sys.path" in p.read_text()]
    assert offenders == []
