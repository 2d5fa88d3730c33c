#!/usr/bin/env bash
# A local Flower deployment of fedkd: one SuperLink and N SuperNodes as separate processes on
# 127.0.0.1, the app submitted with `flwr run`, everything stopped at the end (see docs/deployment.md).
#
#   simulations/local_deployment.sh [N] [fedkd deploy options...]
#
#   simulations/local_deployment.sh                      # 3 SuperNodes, a short run, plain HTTP
#   simulations/local_deployment.sh 4 --run-config 'rounds=3 alpha=0.1 out="runs/deploy-4"'
#   SECURE=1 simulations/local_deployment.sh 3           # TLS + SuperNode authentication, keys in runs/certs
#
# PYTHON picks the interpreter (default: python3 on PATH, e.g. the project's virtual environment).
set -euo pipefail

PYTHON="${PYTHON:-python3}"
N="${1:-3}"
[[ $# -gt 0 ]] && shift

args=("$N")
if [[ "${SECURE:-0}" == "1" ]]; then
    args+=(--secure --certs-dir "${CERTS_DIR:-runs/certs}" --probe-unenrolled)
fi
if [[ ! " $* " == *" --run-config "* ]]; then
    args+=(--run-config "rounds=2 local-epochs=5 distill-epochs=20 out=\"runs/deploy-$N\"")
fi

exec "$PYTHON" -m fedkd.deploy "${args[@]}" "$@"
