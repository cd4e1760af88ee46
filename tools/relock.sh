#!/usr/bin/env bash
# Regenerate requirements.lock from pyproject.toml with pip-tools (pip-compile).
#
# Upgrading a dependency is a deliberate act:
#   1. change its pin/range in pyproject.toml (torch, torchaudio and torchvision move together:
#      one release set whose native libraries load together);
#   2. bash tools/relock.sh --upgrade-package NAME   (or --upgrade for everything);
#   3. run the README's full test command on a fresh venv (rm -rf .venv first);
#   4. commit pyproject.toml and requirements.lock together.
# Without arguments it only adds what pyproject.toml gained and keeps every other pin.
set -euo pipefail
cd "$(dirname "$0")/.."
tool=$(mktemp -d)
trap 'rm -rf "$tool"' EXIT
python3 -m venv "$tool/venv"
"$tool/venv/bin/pip" install -q "pip-tools==7.6.2"
CUSTOM_COMPILE_COMMAND="bash tools/relock.sh" "$tool/venv/bin/pip-compile" --quiet --extra test --strip-extras --no-emit-index-url \
    --no-emit-find-links --no-emit-trusted-host \
    --output-file requirements.lock "$@" pyproject.toml
echo "requirements.lock regenerated; now run the README's test command on a fresh venv"
