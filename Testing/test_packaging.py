"""Extension packaging: what CMake installs exists, and everything the module needs is installed."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from conftest import PROJECT_ROOT, load_utility

MODULE_DIR = PROJECT_ROOT / "SparseImplant"


def cmake_list(path: Path, variable: str, substitutions: dict[str, str] | None = None) -> list[str]:
    """Entries of ``set(VARIABLE ...)`` in a CMakeLists.txt."""
    text = path.read_text()
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, f"{path} does not set {variable}"
    entries = [line.split("#")[0].strip() for line in match.group(1).splitlines()]
    for key, value in (substitutions or {}).items():
        entries = [entry.replace("${" + key + "}", value) for entry in entries]
    return [entry for entry in entries if entry]


def library_scripts() -> list[str]:
    return cmake_list(PROJECT_ROOT / "CMakeLists.txt", "LIBRARY_PYTHON_SCRIPTS")


def test_every_listed_file_exists():
    module = {"MODULE_NAME": "SparseImplant"}
    listed = [PROJECT_ROOT / p for p in library_scripts()]
    listed += [PROJECT_ROOT / p for p in cmake_list(PROJECT_ROOT / "CMakeLists.txt", "LIBRARY_RESOURCES")]
    listed += [MODULE_DIR / p for p in cmake_list(MODULE_DIR / "CMakeLists.txt", "MODULE_PYTHON_SCRIPTS", module)]
    listed += [MODULE_DIR / p for p in cmake_list(MODULE_DIR / "CMakeLists.txt", "MODULE_PYTHON_RESOURCES", module)]
    missing = [str(p.relative_to(PROJECT_ROOT)) for p in listed if not p.is_file()]
    assert not missing, f"listed in CMake but missing: {missing}"


def test_every_python_file_of_module_and_library_is_installed():
    listed = set(library_scripts())
    library = {str(p.relative_to(PROJECT_ROOT)) for p in (PROJECT_ROOT / "SparseImplantLib").rglob("*.py")}
    assert library - listed == set(), "add these to LIBRARY_PYTHON_SCRIPTS in CMakeLists.txt"
    module_scripts = set(cmake_list(MODULE_DIR / "CMakeLists.txt", "MODULE_PYTHON_SCRIPTS", {"MODULE_NAME": "SparseImplant"}))
    assert {p.name for p in MODULE_DIR.glob("*.py")} == module_scripts


def test_bundled_weights_are_installed():
    resources = set(cmake_list(PROJECT_ROOT / "CMakeLists.txt", "LIBRARY_RESOURCES"))
    registry = PROJECT_ROOT / "Resources" / "Models" / "registry.json"
    assert registry.is_file(), "the bundled model registry is part of the extension"
    assert "Resources/Models/registry.json" in resources
    for entry in json.loads(registry.read_text())["models"]:
        assert f"Resources/Models/{entry['file']}" in resources


def extension_urls():
    """Utilities/extension_urls.py, which writes every URL from the catalog's repository address."""
    return load_utility("extension_urls")


def s4ext_fields() -> dict[str, str]:
    lines = (PROJECT_ROOT / "SparseImplant.s4ext").read_text().splitlines()
    return dict((line.split(" ", 1) + [""])[:2] for line in lines if line.strip() and not line.startswith("#"))


def cmake_value(variable: str) -> str:
    """A literal ``set(VARIABLE "value")``, read as ExtensionsIndex's check reads it (text, not CMake)."""
    match = re.search(rf'set\s*\({variable}\s*"([^"]+)"\s*\)', (PROJECT_ROOT / "CMakeLists.txt").read_text())
    assert match, f"CMakeLists.txt has no literal set({variable} \"...\")"
    return match.group(1)


# The catalog entry schema (Slicer/Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json): its
# required keys and the type of every key it allows.
CATALOG_REQUIRED = {"$schema", "category", "scm_url"}
CATALOG_TYPES = {"$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": str,
                 "build_dependencies": list, "build_subdirectory": str, "enabled": bool, "tier": int}


def test_description_files_pass_the_extensions_index_checks():
    """What ExtensionsIndex's check_description_files.py checks, offline: the catalog entry against its
    schema, category, repository name and URL scheme, the project name, literal icon and screenshot
    URLs, a licence file; plus what it can only check online: the files those URLs name exist here."""
    catalog = json.loads((PROJECT_ROOT / "SparseImplant.json").read_text())
    assert CATALOG_REQUIRED <= set(catalog) and set(catalog) <= set(CATALOG_TYPES)
    assert all(isinstance(value, CATALOG_TYPES[key]) for key, value in catalog.items())
    assert catalog["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.1.json#")
    assert catalog.get("tier", 5) in (1, 3, 5) and catalog.get("scm_type", "git") in ("git", "local")
    assert catalog["category"] == "Segmentation"  # one of ExtensionsIndex's accepted categories
    scm = urlsplit(catalog["scm_url"])
    assert scm.scheme in ("git", "https") and "slicer" in Path(scm.path).stem.lower()
    project = re.search(r"project\s*\(\s*([^\s)]+)", (PROJECT_ROOT / "CMakeLists.txt").read_text()).group(1)
    assert project == "SparseImplant" == Path("SparseImplant.json").stem
    icon, screenshots = cmake_value("EXTENSION_ICONURL"), cmake_value("EXTENSION_SCREENSHOTURLS").split()
    assert all(url.startswith("https://") for url in [icon, *screenshots]) and screenshots
    assert (PROJECT_ROOT / "LICENSE").is_file()
    urls = extension_urls()
    for path in urls.files_in_tree(urls.derived_urls(catalog["scm_url"], catalog["scm_revision"]), catalog["scm_revision"]):
        assert (PROJECT_ROOT / path).is_file(), f"a description URL names {path}, which is not in the tree"


def test_every_url_is_derived_from_the_repository_address():
    urls = extension_urls()
    for path, text in urls.described_files().items():
        assert path.read_text() == text, f"run python Utilities/extension_urls.py: {path.name} disagrees with scm_url"
    catalog = json.loads((PROJECT_ROOT / "SparseImplant.json").read_text())
    moved = urls.described_files({**catalog, "scm_url": "https://github.com/someone/SlicerSparseImplant.git"})
    assert all("https://github.com/someone/SlicerSparseImplant" in text or "raw.githubusercontent.com/someone/" in text
               for text in moved.values())
    assert "SparseImplant/SlicerSparseImplant" not in "".join(moved.values())


def test_extension_descriptions_agree():
    cmake = (PROJECT_ROOT / "CMakeLists.txt").read_text()
    s4ext = s4ext_fields()
    catalog = json.loads((PROJECT_ROOT / "SparseImplant.json").read_text())
    assert cmake_value("EXTENSION_CATEGORY") == s4ext["category"] == catalog["category"]
    assert "set(EXTENSION_DEPENDS PyTorch)" in cmake and s4ext["depends"] == "PyTorch"
    assert catalog["build_dependencies"] == ["PyTorch"]
    assert s4ext["scmurl"] == catalog["scm_url"] and s4ext["scmrevision"] == catalog["scm_revision"]
    assert s4ext["iconurl"] == cmake_value("EXTENSION_ICONURL") and s4ext["homepage"] == cmake_value("EXTENSION_HOMEPAGE")
    module = (MODULE_DIR / "SparseImplant.py").read_text()
    assert 'translate("qSlicerAbstractCoreModule", "Segmentation")' in module


def test_the_extension_describes_its_grid_honestly():
    texts = [cmake_value("EXTENSION_DESCRIPTION"), s4ext_fields()["description"], (MODULE_DIR / "SparseImplant.py").read_text()]
    for text in texts:
        assert "full CT resolution" not in text and "2 mm" in text


def test_icon_is_128_pixels_square():
    header = (MODULE_DIR / "Resources" / "Icons" / "SparseImplant.png").read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", header[16:24]) == (128, 128)


def test_widget_uses_only_widgets_that_the_ui_file_defines():
    tree = ElementTree.parse(MODULE_DIR / "Resources" / "UI" / "SparseImplant.ui")
    names = {widget.get("name") for widget in tree.iter("widget")}
    source = (MODULE_DIR / "SparseImplant.py").read_text()
    used = set(re.findall(r"self\.ui\.(\w+)", source))
    assert used and used <= names, f"not in the .ui file: {sorted(used - names)}"
    bound = {prop.find("string").text for prop in tree.iter("property") if prop.get("name") == "SlicerParameterName"}
    parameters = re.search(r"class SparseImplantParameterNode:(.*?)\n\n\n", source, re.S).group(1)
    assert bound and all(re.search(rf"^\s+{name}:", parameters, re.M) for name in bound)
    assert {"logCollapsibleButton", "logTextEdit"} <= names


def module_function(name: str):
    """A top-level function of SparseImplant.py, which imports Qt and so cannot be imported here."""
    tree = ast.parse((MODULE_DIR / "SparseImplant.py").read_text())
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    namespace = {"Path": Path, "Tuple": tuple}
    exec(compile(ast.Module(body=[node], type_ignores=[]), "SparseImplant.py", "exec"), namespace)
    return namespace[name]


def install_tree(root: Path) -> Path:
    """The module folder as CMake installs it: module and library scripts and every resource, in one
    folder (ctkMacroCompilePythonScript and slicerMacroBuildScriptedModule keep relative paths)."""
    module = {"MODULE_NAME": "SparseImplant"}
    files = [(PROJECT_ROOT / p, p) for p in library_scripts() + cmake_list(PROJECT_ROOT / "CMakeLists.txt", "LIBRARY_RESOURCES")]
    files += [(MODULE_DIR / p, p) for p in cmake_list(MODULE_DIR / "CMakeLists.txt", "MODULE_PYTHON_SCRIPTS", module)
              + cmake_list(MODULE_DIR / "CMakeLists.txt", "MODULE_PYTHON_RESOURCES", module)]
    for source, relative in files:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, root / relative)
    return root


def test_the_module_finds_library_and_resources_in_both_installs(tmp_path):
    find_layout = module_function("findLayout")
    # From source: Additional module paths -> SparseImplant/ of this tree.
    assert find_layout(MODULE_DIR) == (PROJECT_ROOT, PROJECT_ROOT / "Resources")
    # A CMake package: everything in the scripted-modules folder.
    installed = install_tree(tmp_path / "qt-scripted-modules")
    assert find_layout(installed) == (installed, installed / "Resources")
    for sample in re.findall(r'"(SkullFix_050_\w+\.nrrd)"', (MODULE_DIR / "SparseImplant.py").read_text()):
        assert (installed / "Resources" / "SampleData" / sample).is_file()
    for resource in re.findall(r'resourcePath\("([^"]+)"\)', (MODULE_DIR / "SparseImplant.py").read_text()):
        assert (installed / "Resources" / resource).is_file()
    with pytest.raises(ImportError, match="reinstall the extension"):
        find_layout(tmp_path / "elsewhere")
    # The installed library finds its bundled model, whose checksum holds, run from another folder.
    check = ("from SparseImplantLib.models.registry import find_model, sha256_of\n"
             "info = find_model(); assert sha256_of(info.path) == info.sha256; print(info.path)")
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "SPARSEIMPLANT_MODEL_DIR")}
    done = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(installed)!r})\n{check}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).parent == installed / "Resources" / "Models"


def test_the_self_test_is_registered_once_from_the_module():
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text()
    assert re.search(r"slicer_add_python_unittest\(SCRIPT \$\{MODULE_NAME\}\.py\)", cmake)
    assert not (PROJECT_ROOT / "Testing" / "Python").exists()  # a wrapper importing the test case ran it twice
    assert "add_subdirectory(Testing)" not in (PROJECT_ROOT / "CMakeLists.txt").read_text()


def test_module_source_compiles_and_sample_checksums_match():
    source = (MODULE_DIR / "SparseImplant.py").read_text()
    ast.parse(source)
    samples = re.findall(r'\("[^"]+", "(\w+)", "(SkullFix_050_\w+\.nrrd)",\s*"([0-9a-f]{64})"\)', source)
    assert [name for name, _, _ in samples] == ["SkullFix050Defective", "SkullFix050Implant"]
    for _, file_name, checksum in samples:
        data = (PROJECT_ROOT / "Resources" / "SampleData" / file_name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == checksum


def test_the_module_imports_no_library_code_at_slicer_start():
    """Every Slicer start imports SparseImplant.py; the library (numpy, scipy, VTK filters) loads on first use."""
    tree = ast.parse((MODULE_DIR / "SparseImplant.py").read_text())
    top_level = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    names = [alias.name for node in top_level for alias in node.names] + [
        node.module or "" for node in top_level if isinstance(node, ast.ImportFrom)]
    assert not any(name.startswith("SparseImplantLib") for name in names)


def test_every_model_file_is_installed():
    """The weights, the registry and the templates the pipeline loads (pose, priors) ship with the module."""
    listed = set(cmake_list(PROJECT_ROOT / "CMakeLists.txt", "LIBRARY_RESOURCES"))
    models = {str(p.relative_to(PROJECT_ROOT)) for p in (PROJECT_ROOT / "Resources" / "Models").iterdir() if p.is_file()}
    assert models - listed == set(), "add these to LIBRARY_RESOURCES in CMakeLists.txt"
