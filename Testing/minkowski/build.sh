#!/usr/bin/env bash
# Build MinkowskiEngine 0.5.4 CPU-only into a cached wheel and install it into $PYTHON's environment.
# ME is the reference oracle of Testing/test_sparse_minkowski.py and of the benchmarks; SparseImplant
# never needs it at run time. Takes ~6 min on 2 cores; later runs reuse the wheel.
#   PYTHON=.venv/bin/python bash Testing/minkowski/build.sh
set -euo pipefail

PYTHON=$(realpath -s "$(command -v "${PYTHON:-python3}")")  # absolute: the build runs in another folder
# The wheel links against libtorch: reusable only with the same Python and torch, so key the cache on both.
ABI=$("$PYTHON" -c 'import sys, torch; print(f"py{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__}")')
CACHE=${SPARSEIMPLANT_WHEEL_CACHE:-$HOME/.cache/sparseimplant/wheels}/$ABI
VERSION=0.5.4
SHA256=b1879c00d0b0b1d30ba622cce239886a7e3c78ee9da1064cdfe2f64c2ab15f94  # of the sdist MinkowskiEngine-0.5.4.tar.gz

# Recent setuptools names the wheel minkowskiengine-*, older ones MinkowskiEngine-*.
find_wheel() { ls "$CACHE"/[Mm]inkowski[Ee]ngine-"$VERSION"-*.whl 2>/dev/null | head -n 1 || true; }

wheel=$(find_wheel)
if [ -z "$wheel" ]; then
  dpkg -s libopenblas-dev >/dev/null 2>&1 || { echo "build.sh: needs OpenBLAS headers: apt-get install -y libopenblas-dev" >&2; exit 1; }
  "$PYTHON" -c "import torch" || { echo "build.sh: install torch==2.13.0 into $PYTHON first (make venv)" >&2; exit 1; }
  "$PYTHON" -m pip install -q wheel ninja
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  # The sdist comes from whatever index pip is set up for (a mirror or a proxy too). pip reads its
  # metadata by running ME's setup.py, which needs torch and OpenBLAS: so without build isolation and
  # with the stdlib distutils, as the build below runs it (setup.py also uninstalls any installed ME,
  # as the build does; the end of this script installs the new one).
  SETUPTOOLS_USE_DISTUTILS=stdlib "$PYTHON" -m pip download -q --no-deps --no-binary :all: --no-build-isolation \
    "MinkowskiEngine==$VERSION" -d "$work"
  archive=$(ls "$work"/[Mm]inkowski[Ee]ngine-"$VERSION".tar.gz)
  echo "$SHA256  $archive" | sha256sum -c --quiet -
  tar xzf "$archive" -C "$work"
  src="$work/MinkowskiEngine-$VERSION"

  # Fix 1: Python >= 3.10 has Sequence only in collections.abc (the package and its utils/).
  sources=$(find "$src/MinkowskiEngine" -name '*.py')
  sed -i -e 's/^from collections import Sequence, namedtuple$/from collections import namedtuple\nfrom collections.abc import Sequence/' \
         -e 's/^from collections import Sequence$/from collections.abc import Sequence/' $sources
  if grep -n "^from collections import Sequence" $sources; then echo "build.sh: Sequence fix incomplete" >&2; exit 1; fi

  # Fix 2: an empty kernel map (everything pruned) was returned by reference to a temporary, which
  # crashes later; keep it in the manager's cache and return that reference instead.
  perl -0pi -e 's/return (detail::empty_map_functor<coordinate_type, TemplatedAllocator,\s*CoordinateMapType, kernel_map_type>\(\)\(\));/m_kernel_maps[kernel_map_key] = $1;\n      return m_kernel_maps[kernel_map_key];/' \
    "$src/src/coordinate_map_manager.cpp"
  grep -q "m_kernel_maps\[kernel_map_key\] = detail::empty_map_functor" "$src/src/coordinate_map_manager.cpp"

  # Fix 3: union_map (adding two tensors with different voxels) walks an input's hash table for
  # `capacity` slots from begin(); for an empty (pruned) map begin() is end() and the walk segfaults.
  # Stop once all N rows were visited.
  perl -pi -e 's/for \(auto iter_in = in_map\.m_map\.begin\(\); iter_in\.num_steps\(\) < capacity;/for (auto iter_in = in_map.m_map.begin(); offset < N && iter_in.num_steps() < capacity;/' \
    "$src/src/coordinate_map_cpu.hpp"
  grep -q "begin(); offset < N && iter_in.num_steps() < capacity;" "$src/src/coordinate_map_cpu.hpp"

  mkdir -p "$CACHE"
  (cd "$src" && SETUPTOOLS_USE_DISTUTILS=stdlib MAX_JOBS=${MAX_JOBS:-2} "$PYTHON" setup.py -q bdist_wheel --cpu_only --blas=openblas -d "$CACHE")
  wheel=$(find_wheel)
fi
"$PYTHON" -m pip install -q --no-deps --force-reinstall "$wheel"
"$PYTHON" -c "import MinkowskiEngine as ME; print('MinkowskiEngine', ME.__version__, 'from', '$wheel')"
