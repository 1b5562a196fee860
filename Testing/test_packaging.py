"""Extension packaging: what CMake installs exists, and everything the module needs is installed."""

from __future__ import annotations

import ast
import hashlib
import json
import re
import struct
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from conftest import PROJECT_ROOT

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
    if registry.is_file():
        assert "Resources/Models/registry.json" in resources
        for entry in json.loads(registry.read_text())["models"]:
            assert f"Resources/Models/{entry['file']}" in resources


def test_extension_descriptions_agree():
    cmake = (PROJECT_ROOT / "CMakeLists.txt").read_text()
    s4ext = dict(line.split(" ", 1) for line in (PROJECT_ROOT / "SparseImplant.s4ext").read_text().splitlines()
                 if line.strip() and not line.startswith("#"))
    catalog = json.loads((PROJECT_ROOT / "SparseImplant.json").read_text())
    assert 'set(EXTENSION_CATEGORY "Segmentation")' in cmake
    assert s4ext["category"] == catalog["category"] == "Segmentation"
    assert "set(EXTENSION_DEPENDS PyTorch)" in cmake and s4ext["depends"] == "PyTorch"
    assert catalog["build_dependencies"] == ["PyTorch"]
    assert s4ext["scmurl"] == catalog["scm_url"]
    assert f'set(EXTENSION_ICONURL "{s4ext["iconurl"]}")' in cmake


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


def test_module_source_compiles_and_sample_checksum_matches():
    source = (MODULE_DIR / "SparseImplant.py").read_text()
    ast.parse(source)
    checksum = re.search(r'SAMPLE_SHA256 = "SHA256:([0-9a-f]{64})"', source).group(1)
    sample = PROJECT_ROOT / "Resources" / "SampleData" / re.search(r'SAMPLE_FILE = "(.+?)"', source).group(1)
    assert hashlib.sha256(sample.read_bytes()).hexdigest() == checksum
    ast.parse((PROJECT_ROOT / "Testing" / "Python" / "SparseImplantSelfTest.py").read_text())
    assert "slicer_add_python_unittest(SCRIPT" in (PROJECT_ROOT / "Testing" / "Python" / "CMakeLists.txt").read_text()
