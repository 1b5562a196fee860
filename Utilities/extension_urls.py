"""Every URL in the extension's description files, derived from the one repository address.

The repository is ``scm_url`` in ``SparseImplant.json`` (the ExtensionsIndex catalog entry). The URLs
in ``CMakeLists.txt`` and ``SparseImplant.s4ext`` must stay literal text, because the ExtensionsIndex
checks read them as text, so this script writes them:

    python Utilities/extension_urls.py https://github.com/OWNER/SlicerSparseImplant.git   # new address
    python Utilities/extension_urls.py                                                     # rewrite from the JSON
    python Utilities/extension_urls.py --check                                             # report only

``Testing/test_packaging.py`` fails while any URL disagrees with the address.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
CATALOG = ROOT / "SparseImplant.json"
CMAKE = ROOT / "CMakeLists.txt"
S4EXT = ROOT / "SparseImplant.s4ext"
ICON = "SparseImplant/Resources/Icons/SparseImplant.png"
SCREENSHOTS = ("Resources/Screenshots/three_panel.png",)
GITHUB = "https://github.com/"


def derived_urls(scm_url: str, revision: str) -> Dict[str, str]:
    """Homepage, icon and screenshot URLs of a GitHub repository at ``revision``."""
    if not scm_url.startswith(GITHUB):
        raise ValueError(f"scm_url '{scm_url}' is not a {GITHUB} repository: give its https address")
    base = scm_url[:-len(".git")] if scm_url.endswith(".git") else scm_url
    raw = "https://raw.githubusercontent.com/" + base[len(GITHUB):] + f"/{revision}/"
    return {"scm_url": scm_url, "homepage": base + "#readme", "icon": raw + ICON,
            "screenshots": " ".join(raw + path for path in SCREENSHOTS)}


def files_in_tree(urls: Dict[str, str], revision: str) -> List[str]:
    """Repository paths that the icon and screenshot URLs name."""
    marker = f"/{revision}/"
    return [url.split(marker, 1)[1] for url in [urls["icon"], *urls["screenshots"].split()]]


def _set_cmake(text: str, variable: str, value: str) -> str:
    return re.sub(rf'set\({variable} "[^"]*"\)', f'set({variable} "{value}")', text, count=1)


def _set_s4ext(text: str, key: str, value: str) -> str:
    return re.sub(rf"^{key} .*$", f"{key} {value}", text, count=1, flags=re.M)


def described_files(catalog: Optional[dict] = None) -> Dict[Path, str]:
    """CMakeLists.txt and SparseImplant.s4ext as they must read for the catalog's address."""
    catalog = catalog or json.loads(CATALOG.read_text(encoding="utf-8"))
    urls = derived_urls(catalog["scm_url"], catalog["scm_revision"])
    cmake = CMAKE.read_text(encoding="utf-8")
    for variable, key in (("EXTENSION_HOMEPAGE", "homepage"), ("EXTENSION_ICONURL", "icon"),
                          ("EXTENSION_SCREENSHOTURLS", "screenshots")):
        cmake = _set_cmake(cmake, variable, urls[key])
    s4ext = S4EXT.read_text(encoding="utf-8")
    for key, value in (("scmurl", urls["scm_url"]), ("scmrevision", catalog["scm_revision"]),
                       ("homepage", urls["homepage"]), ("iconurl", urls["icon"]), ("screenshoturls", urls["screenshots"])):
        s4ext = _set_s4ext(s4ext, key, value)
    return {CMAKE: cmake, S4EXT: s4ext}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repository", nargs="?", help="new repository address (https://github.com/OWNER/NAME.git)")
    parser.add_argument("--check", action="store_true", help="only report files that disagree (exit code 1)")
    args = parser.parse_args(argv)
    catalog = json.loads(CATALOG.read_text(encoding="utf-8"))
    if args.repository:
        catalog["scm_url"] = args.repository
    try:
        files = described_files(catalog)
    except ValueError as error:
        print(f"extension_urls: error: {error}", file=sys.stderr)
        return 1
    stale = [path for path, text in files.items() if path.read_text(encoding="utf-8") != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(ROOT)} disagrees with scm_url {catalog['scm_url']}")
        return 1 if stale else 0
    if args.repository:
        CATALOG.write_text(json.dumps(catalog, indent=2) + "\n", encoding="utf-8")
    for path in stale:
        path.write_text(files[path], encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
