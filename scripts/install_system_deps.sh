#!/usr/bin/env bash
# Installs the Debian packages dfstream needs, only those missing; quick when all are present.
#   redis-server        embedded Redis (no URL configured) and the test suite's real Redis
#   ffmpeg              reference decoder for `dfstream bench ingest`, encodes benchmark media
#   python3-gi + gir1.2-gst-rtsp-server-1.0 + gstreamer1.0-*
#                       GStreamer's RTSP server: serves sample streams for `make demo` and tests
#   chromium            headless browser for the dashboard and WebRTC tests
set -euo pipefail

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v ffmpeg >/dev/null || missing+=(ffmpeg)
command -v chromium >/dev/null || missing+=(chromium)
if ! /usr/bin/python3 -c "import gi; gi.require_version('GstRtspServer', '1.0'); \
from gi.repository import GstRtspServer" 2>/dev/null; then
  missing+=(python3-gi gir1.2-gst-rtsp-server-1.0 gir1.2-gst-plugins-base-1.0)
fi
if ! command -v gst-inspect-1.0 >/dev/null \
   || ! gst-inspect-1.0 rtph264pay >/dev/null 2>&1 \
   || ! gst-inspect-1.0 h264parse >/dev/null 2>&1 \
   || ! gst-inspect-1.0 qtdemux >/dev/null 2>&1; then
  missing+=(gstreamer1.0-rtsp gstreamer1.0-tools gstreamer1.0-plugins-good
            gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly)
fi
[ ${#missing[@]} -eq 0 ] && exit 0

echo "installing system packages: ${missing[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
