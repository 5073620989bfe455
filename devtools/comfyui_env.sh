#!/usr/bin/env bash
# Build (or bring up to date) the separate Python environment that the ComfyUI tests
# (tests/comfyui/) run in. Idempotent: rerunning on a finished venv only checks it.
#
#   devtools/comfyui_env.sh VENV_DIR [COMFYUI_DIR]
#
# Why a second environment: ComfyUI imports torchvision at start (comfy/sd.py), and PyPI's
# torchvision wheels are built against PyPI's default (CUDA-enabled) torch, so they fail to load
# next to the CPU-only torch the project pins ("operator torchvision::nms does not exist").
# PyPI's default torch/torchvision pair runs fine on a CPU. `--isolated` makes pip ignore this
# machine's pip settings (which prefer a local CPU-only torch wheel).
# Then: ComfyUI's requirements.txt minus torch/torchvision/torchaudio (its audio nodes then fail to
# import, harmlessly), `requests` (ComfyUI imports it without listing it), pytest, Playwright (the
# browser test drives Debian's chromium), and this
# project (editable, without re-resolving torch) with its ComfyUI node pack.
set -euo pipefail
venv="${1:?usage: devtools/comfyui_env.sh VENV_DIR [COMFYUI_DIR]}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
comfy="${2:-${COMFYUI_PATH:-$repo/../shared/vendor/ComfyUI}}"
[ -f "$comfy/requirements.txt" ] || { echo "no ComfyUI at $comfy (requirements.txt missing)" >&2; exit 2; }
start=$(date +%s)
pipi=(pip install --isolated --quiet)
[ -f /etc/ssl/certs/ca-certificates.crt ] && pipi+=(--cert /etc/ssl/certs/ca-certificates.crt)

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py="$venv/bin/python"
# what the environment was built from: when none of it changed, only the check below runs
stamp="$venv/.multidiffusion-comfyui-env"
inputs="$(cat "$0" "$comfy/requirements.txt" "$repo/pyproject.toml" "$repo/comfyui-multidiffusion/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$inputs" ]; then
  rm -f "$stamp"
  "$py" -m "${pipi[@]}" torch==2.13.0 torchvision==0.28.0
  reqs="$(mktemp)"
  trap 'rm -f "$reqs"' EXIT
  grep -vE '^[[:space:]]*(torch|torchvision|torchaudio)[[:space:]]*$' "$comfy/requirements.txt" >"$reqs"
  "$py" -m "${pipi[@]}" -r "$reqs" requests "pytest>=8" "playwright>=1.65,<2"
  # our package: torch is already satisfied, so pip keeps the pair above (checked below)
  "$py" -m "${pipi[@]}" -e "$repo" -e "$repo/comfyui-multidiffusion"
fi

"$py" - <<'PY'
import torch, torchvision
assert torch.__version__.split("+")[0] == "2.13.0", f"torch changed to {torch.__version__}"
torchvision.ops.nms  # the operator that fails to load against a mismatched torch
import multidiffusion, multidiffusion_comfy  # noqa: F401
print(f"torch {torch.__version__} torchvision {torchvision.__version__} (cuda build {torch.version.cuda})")
PY
echo "$inputs" >"$stamp"
printf "comfyui env ready: %s  (%s min, %s on disk)\n" "$py" "$(awk -v s="$start" -v e="$(date +%s)" 'BEGIN{printf "%.1f", (e-s)/60}')" "$(du -sh "$venv" | cut -f1)"
