"""Play a video to its end in headless Chromium (Debian's package) and report what the page saw."""

from __future__ import annotations

import http.server
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

PAGE = """<!doctype html><html><body>
<video id="v" src="video.mp4" muted playsinline></video>
<script>
const v = document.getElementById('v');
function report(text) { fetch('/result?' + encodeURIComponent(text)); }
v.addEventListener('ended', () => {
  const q = v.getVideoPlaybackQuality();
  report('ended ' + v.duration.toFixed(3) + ' ' + q.totalVideoFrames + ' ' + q.droppedVideoFrames + ' '
         + v.videoWidth + 'x' + v.videoHeight);
});
v.addEventListener('error', () => report('error ' + (v.error ? v.error.code + ' ' + v.error.message : '')));
v.playbackRate = 4;
v.play().catch(e => report('playfail ' + e));
</script></body></html>"""


def play_to_end(video: Path, timeout: float = 90.0) -> str:
    """'ended DURATION FRAMES DROPPED WxH', 'error CODE MESSAGE', or 'timeout'."""
    root = Path(tempfile.mkdtemp(prefix="montage-browser-"))
    shutil.copy(video, root / "video.mp4")
    (root / "index.html").write_text(PAGE)
    results: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):  # noqa: N802
            if self.path.startswith("/result?"):
                results.append(urllib.parse.unquote(self.path.split("?", 1)[1]))
                self.send_response(204)
                self.end_headers()
                return
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/index.html"
    browser = subprocess.Popen(
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
         f"--user-data-dir={root / 'profile'}", "--autoplay-policy=no-user-gesture-required", url],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while not results and time.monotonic() < deadline and browser.poll() is None:
            time.sleep(0.2)
    finally:
        browser.kill()
        browser.wait()
        server.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    return results[0] if results else "timeout"
