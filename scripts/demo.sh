#!/usr/bin/env bash
# The LD3 demo: build the environment if needed, start a headless ComfyUI with this pack, learn schedules
# for the exact Gaussian-mixture demo model at NFE 4, 6 and 8, and print learned vs built-in errors.
# Arguments go to scripts/demo.py (e.g. --timeout 1200). Output images: .cache/demo_output/ld3/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/setup.sh

PY="$ROOT/.venv/bin/python"
OUT="$ROOT/.cache/demo_output"
RUN="$(mktemp -d "${TMPDIR:-/tmp}/ld3_demo.XXXXXX")"
LOG="$RUN/comfyui.log"
mkdir -p "$OUT" "$RUN/input" "$RUN/temp" "$RUN/user"
PORT="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"

SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 30); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$RUN"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "==> starting ComfyUI on 127.0.0.1:$PORT (CPU; log: $LOG)"
bash scripts/run_comfyui.sh --cpu --listen 127.0.0.1 --port "$PORT" --disable-auto-launch \
  --output-directory "$OUT" --input-directory "$RUN/input" --temp-directory "$RUN/temp" \
  --user-directory "$RUN/user" --database-url "sqlite:///:memory:" >"$LOG" 2>&1 &
SERVER_PID=$!

READY=0
for _ in $(seq 1 240); do
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "demo.sh: ComfyUI exited at start:" >&2; tail -n 40 "$LOG" >&2; exit 1
  fi
  if "$PY" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/system_stats', timeout=2)" 2>/dev/null; then
    READY=1; break
  fi
  sleep 0.5
done
if [ "$READY" != 1 ]; then
  echo "demo.sh: ComfyUI did not answer in 120 s:" >&2; tail -n 40 "$LOG" >&2; exit 1
fi

echo "==> running the demo graph"
if ! "$PY" scripts/demo.py --url "http://127.0.0.1:$PORT" --output-dir "$OUT" "$@"; then
  echo "demo.sh: the demo failed; ComfyUI's log:" >&2; tail -n 60 "$LOG" >&2; exit 1
fi
