"""The report of a tiny finished run, opened in headless Chromium: it renders (a screenshot
is taken), requests nothing outside the page, and every figure decodes.

Needs a `chromium` binary (Debian: `apt-get install -y chromium`); skipped without one.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml

from genft.api import run
from test_report import CONFIG
from test_run_fakes import make_backends

BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome")
                if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no chromium binary (Debian: "
                                                        "apt-get install -y chromium)")

# Any load that is not the page itself or a data: URI is refused by this policy and
# reported as a violation; the probe also reads what the page fetched and how its images decoded.
PROBE = """<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:;
style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<script>
const blocked = [];
document.addEventListener("securitypolicyviolation", e => blocked.push(e.blockedURI));
window.addEventListener("load", () => {
  const imgs = [...document.images];
  const probe = document.createElement("pre");
  probe.id = "probe";
  probe.textContent = JSON.stringify({
    images: imgs.length,
    decoded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    blocked: blocked,
    fetched: performance.getEntriesByType("resource").map(e => e.name)});
  document.body.appendChild(probe);
});
</script>"""


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    d = tmp_path_factory.mktemp("browser")
    backends = make_backends()

    def param_change(base, path):  # with fidelity's per-layer numbers, so that figure is drawn
        stats = {"params": 10, "mean_abs_change": 1e-4, "relative_change": 0.01,
                 "max_abs_change": 0.1}
        layers = {str(i): {**stats, "relative_change": 0.01 * (1 + i)} for i in range(4)}
        return {"overall": stats, "by_module": {"q_proj": stats}, "by_layer": layers}

    backends.param_change = param_change
    (d / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    run(d / "c.yaml", d / "out", backends=backends, progress=False, echo=lambda s: None)
    return d / "out"


def _chromium(tmp_path, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", *args],
        capture_output=True, text=True, timeout=120)


def test_report_renders_offline_with_every_figure(out, tmp_path):
    html = (out / "report.html").read_text()
    probed = tmp_path / "probed.html"
    probed.write_text(html.replace("<head>", "<head>" + PROBE, 1))
    r = _chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom", probed.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', r.stdout, re.S)
    assert found, r.stderr[-2000:]
    probe = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert probe["blocked"] == [] and probe["fetched"] == []
    figures = len(re.findall(r"!\[[^\]]*\]\(report_files/", (out / "report.md").read_text()))
    # heatmaps (2), k-shot, sizes, over training, loss curves, per-layer change
    assert figures >= 7
    assert probe["images"] == figures and probe["decoded"] == figures

    shot = tmp_path / "report.png"
    r = _chromium(tmp_path, "--window-size=1300,2400", f"--screenshot={shot}",
                  (out / "report.html").as_uri())
    assert shot.is_file(), r.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000  # a page, not a blank
