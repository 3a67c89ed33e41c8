# Sourced by scripts/*: makes .venv and installs the project with its test extra and the system
# packages the tests need, so that every command works on a fresh clone as root.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
need_apt=()
command -v socat >/dev/null 2>&1 || need_apt+=(socat)
command -v tshark >/dev/null 2>&1 || need_apt+=(tshark)
command -v strace >/dev/null 2>&1 || need_apt+=(strace)
command -v prlimit >/dev/null 2>&1 || need_apt+=(util-linux)
command -v softhsm2-util >/dev/null 2>&1 || need_apt+=(softhsm2)  # the PKCS#11 token of tests/host
if [ ${#need_apt[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing ${need_apt[*]} with apt-get" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}") >/dev/null 2>&1 \
    || echo "setup: apt-get could not install ${need_apt[*]}; tests that need it will say so" >&2
fi
stamp=.venv/.posemu-installed
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  python3 -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing posemu and its test extra into .venv" >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
  .venv/bin/python -c "import protocol, cryptography, serial, construct, hypothesis, psec, iso8583, pkcs11"
  touch "$stamp"
fi
export PATH="$ROOT/.venv/bin:$PATH"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
# The suite starts pos-host and pos-terminal as real processes hundreds of times; with
# PYTHONDONTWRITEBYTECODE set (as some CI images do) each would compile the sources again, about
# 40% of a start-up. Compiling once here is kept in __pycache__ and checked against the sources.
python -m compileall -q -j 0 protocol host terminal scripts >/dev/null || true
