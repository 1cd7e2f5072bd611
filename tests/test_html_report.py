"""`gpushare report --html` from committed H200 results (capacity and interference) and a
hand-written plan, checked in headless Chromium over the DevTools protocol: no console error,
no request outside the page, every image decoded, every Plotly figure drawn with a hover that
shows values, the abstract present, a table sorted by a click; a screenshot is kept
(build/html-report.png). One report build for the whole file."""

import asyncio
import base64
import io
import json
import os
import re
import shutil
import signal
import subprocess
import time
from contextlib import redirect_stdout
from pathlib import Path

import aiohttp
import pytest

from gpushare import cli
from gpushare.measure.plan_doc import GpuDoc, PlanDoc, SeatDoc, write_plan_doc
from gpushare.reporting.html import latex_text, markdown_table, tex_abstract

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results" / "h200"
SCREENSHOT = ROOT / "build" / "html-report.png"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed; `make chromium` (as root) "
                                                              "installs Debian's")


def plan_folder(tmp: Path) -> Path:
    """A `plan --out` folder with a plan.json by hand: one H200 under MPS seating chat and batch, proven."""
    folder = tmp / "plans" / "pair"
    folder.mkdir(parents=True)
    seats = [SeatDoc(tenant="chat", slice=None, target=12.0, unit="req/s", capacity=18.0, headroom=0.26,
                     attainment_target=0.99, attainment=0.996, wilson_low=0.991, good=996, total=1000),
             SeatDoc(tenant="batch", slice=None, target=8.0, unit="requests in flight", capacity=16.0, headroom=0.44,
                     attainment_target=0.99, attainment=1.0, wilson_low=0.996, good=1000, total=1000)]
    gpu = GpuDoc(index=0, gpu="H200", placement="mps", proven=True, energy_per_token_j=0.31,
                 proof_run_dir=str(folder / "proofs" / "gpu0" / "proof"), seats=seats)
    doc = PlanDoc(plan="pair", status="proven", why="every GPU was proven", gpus_used=1, dedicated=2, lower_bound=1,
                  method="exact", optimal=True, margin=0.1, rounds=1, gpus=[gpu], refuted=[], profiles=[],
                  store=str(folder / "profiles"))
    write_plan_doc(folder, doc, "# Plan pair\n")
    return folder.parent


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """report --html over the committed capacity and interference results and a plan: (out
    folder, stdout lines)."""
    tmp = tmp_path_factory.mktemp("html")
    out = tmp / "report"
    printed = io.StringIO()
    with redirect_stdout(printed):
        code = cli.main(["report", "--html", "--runs", str(RESULTS / "capacity"), str(RESULTS / "interference"),
                         str(plan_folder(tmp)), "--out", str(out)])
    assert code == 0
    return out, printed.getvalue().split()


def test_the_page_is_self_contained_and_holds_every_section(built):
    out, printed = built
    page = (out / "report.html").read_text()
    assert str(out / "report.html") in printed
    # the markup, each script's body left out (plotly.js names URLs in its strings)
    markup = re.sub(r"(<script\b[^>]*>).*?</script>", r"\1</script>", page, flags=re.DOTALL)
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", markup), "the page links outside itself"
    assert not re.search(r"<script\b[^>]*\bsrc=", markup) and "<link" not in markup
    for section in ("summary", "introduction", "method", "results", "isolation", "plan", "observations", "limits"):
        assert f'<section id="{section}">' in page, section
    # the prose worded once in report.tex, read back: the Method's and the Limits' own sentences
    assert "Failed requests are counted, never dropped." in page and "is not hardware isolation" in page
    # run names only in tables: none in a paragraph, a caption or the run facts
    names = {row[0] for row in markdown_table(out / "figures" / "summary.md")[1]}
    prose = " ".join(text for _, text in re.findall(r"<(p|dd|figcaption)\b[^>]*>(.*?)</\1>", page, flags=re.DOTALL))
    assert len(names) > 3 and [name for name in names if name in prose] == []
    for table in ("summary", "capacity_table", "interference_table", "plan_table"):
        assert f'id="table-{table}"' in page, table
    assert page.count("data:image/png;base64,") >= 8
    assert 'id="plotly-capacity"' in page and 'id="plotly-noisy_neighbour"' in page
    # the capacity sentences and the isolation observations, as text (no TeX left in them)
    assert "beside batch=16" in page and "isolated chat best" in page
    assert "The plan pair packs 2 tenants onto 1 GPU (1 H200) against 2 dedicated" in page
    assert 'id="figure-plan"' in page
    assert "\\%" not in page.split('id="abstract">')[1].split("</p>")[0]


def test_tex_text_reads_as_plain_text():
    assert latex_text(r"h200\_a -49\% at 1.5$\times$ in Table~\ref{tab:x}\label{y} \emph{MPS}") == \
        "h200_a -49% at 1.5× in the table MPS"
    assert latex_text(r"a \& b \textasciitilde{} c, 5--6") == "a & b ~ c, 5–6"


def test_markdown_tables_read_back_with_their_notes(tmp_path):
    path = tmp_path / "t.md"
    path.write_text("| A | B |\n|---|---|\n| x | 1,081 |\n| y | – |\n\n* unresolved: y\n")
    assert markdown_table(path) == (["A", "B"], [["x", "1,081"], ["y", "–"]], ["* unresolved: y"])


# --- in the browser -----------------------------------------------------------------------------

CHECKS = """(async () => {
  const until = Date.now() + 20000;
  const plots = () => [...document.querySelectorAll('.plotly-graph-div')];
  while (Date.now() < until && !(plots().every(d => d.querySelector('svg.main-svg'))
         && [...document.images].every(i => i.complete))) {
    await new Promise(r => setTimeout(r, 100));
  }
  const hovered = {};
  for (const d of plots()) {  // hover each figure's first point: its values show
    Plotly.Fx.hover(d, [{curveNumber: 0, pointNumber: 0}]);
    await new Promise(r => setTimeout(r, 100));
    hovered[d.id] = [...d.querySelectorAll('.hoverlayer .hovertext')].map(t => t.textContent).join(' | ');
    Plotly.Fx.unhover(d);
  }
  const table = document.getElementById('table-capacity_table');
  const column = (t, n) => [...t.tBodies[0].rows].map(r => r.cells[n].textContent);
  const before = column(table, 0);
  const alone = [...table.tHead.rows[0].cells].findIndex(th => th.textContent.startsWith('Alone'));
  table.tHead.rows[0].cells[alone].click();
  const ascending = column(table, alone);
  table.tHead.rows[0].cells[alone].click();
  const descending = column(table, alone);
  return {
    images: [...document.images].map(i => ({alt: i.alt.slice(0, 40), width: i.naturalWidth})),
    plots: plots().map(d => ({id: d.id, svg: !!d.querySelector('svg.main-svg'),
                              points: d.querySelectorAll('.scatterlayer .point').length})),
    abstract: (document.getElementById('abstract') || {}).textContent || '',
    hovered, before, ascending, descending,
    height: document.documentElement.scrollHeight,
  };
})()"""


class Browser:
    """Headless Chromium in its own process group, driven over the DevTools protocol."""

    def __init__(self, profile: Path):
        self.profile = profile
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--remote-debugging-port=0", f"--user-data-dir={profile}",
             "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--disable-background-networking", "--window-size=1280,900", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)

    def port(self, timeout_s: float = 30) -> int:
        """The DevTools port, from the DevToolsActivePort file Chromium writes once listening."""
        file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode}: "
                                   f"{self.proc.stderr.read().decode(errors='replace')[-2000:]}")
            if file.exists() and file.read_text().strip():
                return int(file.read_text().split()[0])
            time.sleep(0.1)
        raise TimeoutError(f"chromium wrote no {file} in {timeout_s:g} s")

    def stop(self) -> None:
        """The whole process group: SIGTERM, then SIGKILL after 5 s."""
        for sig, wait_s in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        self.proc.stderr.close()


async def inspect(port: int, url: str, screenshot: Path) -> dict:
    """Open `url` in the browser's page, run CHECKS, keep a full-page screenshot; with every
    console error, uncaught exception and error log entry the page raised, and every URL other
    than its own and data: URLs that it requested."""
    errors: list[str] = []
    fetched: list[str] = []  # what the page asked the network for: nothing but itself and data: URLs
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/json/list") as reply:
            pages = [t for t in await reply.json() if t["type"] == "page"]
        async with http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            ids = iter(range(1, 1 << 30))
            waiting: dict[int, asyncio.Future] = {}
            loaded = asyncio.get_running_loop().create_future()

            async def read() -> None:
                async for message in ws:
                    event = json.loads(message.data)
                    if "id" in event and event["id"] in waiting:
                        waiting.pop(event["id"]).set_result(event)
                    method, params = event.get("method"), event.get("params", {})
                    if method == "Runtime.exceptionThrown":
                        details = params["exceptionDetails"]
                        errors.append(f"exception: {details.get('exception', {}).get('description', details['text'])}")
                    elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                        errors.append("console: " + " ".join(str(a.get("value", a.get("description")))
                                                             for a in params["args"]))
                    elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                        errors.append(f"log ({params['entry']['source']}): {params['entry']['text']}")
                    elif method == "Network.requestWillBeSent":
                        if not params["request"]["url"].startswith(("data:", url, "about:")):
                            fetched.append(params["request"]["url"])
                    elif method == "Page.loadEventFired" and not loaded.done():
                        loaded.set_result(True)

            async def call(method: str, **params) -> dict:
                n = next(ids)
                waiting[n] = asyncio.get_running_loop().create_future()
                await ws.send_json({"id": n, "method": method, "params": params})
                reply = await asyncio.wait_for(waiting[n], 60)
                assert "error" not in reply, f"{method}: {reply['error']}"
                return reply["result"]

            reader = asyncio.create_task(read())
            try:
                for domain in ("Runtime", "Log", "Page", "Network"):
                    await call(f"{domain}.enable")
                await call("Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1,
                           mobile=False)
                await call("Page.navigate", url=url)
                await asyncio.wait_for(loaded, 60)
                result = await call("Runtime.evaluate", expression=CHECKS, awaitPromise=True, returnByValue=True)
                assert "exceptionDetails" not in result, result["exceptionDetails"]
                found = result["result"]["value"]
                height = min(int(found["height"]), 16000)
                shot = await call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                                  clip={"x": 0, "y": 0, "width": 1280, "height": height, "scale": 1})
                screenshot.write_bytes(base64.b64decode(shot["data"]))
                await asyncio.sleep(0.2)  # let late console events arrive
            finally:
                reader.cancel()
    return {**found, "errors": errors, "fetched": fetched}


@needs_chromium
def test_the_page_renders_in_chromium_without_an_error(built, tmp_path):
    out, _ = built
    browser = Browser(tmp_path / "profile")
    try:
        found = asyncio.run(inspect(browser.port(), (out / "report.html").as_uri(), tmp_path / "report.png"))
    finally:
        browser.stop()
    SCREENSHOT.parent.mkdir(exist_ok=True)
    shutil.copyfile(tmp_path / "report.png", SCREENSHOT)
    assert found["errors"] == []
    assert found["fetched"] == []
    assert len(found["images"]) >= 8 and all(image["width"] > 0 for image in found["images"]), found["images"]
    assert {p["id"] for p in found["plots"]} == {"plotly-capacity", "plotly-noisy_neighbour"}
    assert all(p["svg"] and p["points"] > 0 for p in found["plots"]), found["plots"]
    hovered = found["hovered"]
    assert re.search(r"alone: \d+ req/s, infeasible from \d+", hovered["plotly-capacity"]), hovered
    assert re.search(r"batch's concurrency \(requests in flight\): 0.*chat's P99 TTFT: [\d.]+ ms",
                     hovered["plotly-noisy_neighbour"]), hovered
    # the abstract (the decision the runs were made for) as the PDF words it, with its numbers
    abstract = found["abstract"]
    assert abstract == tex_abstract((out / "report.tex").read_text()) and len(abstract) > 100 and re.search(r"\d", abstract)
    # sorting by the capacity alone: ascending puts 18 first, descending last
    key = [float(re.match(r"[\d.]+", cell).group()) for cell in found["ascending"]]
    assert key == sorted(key) and key != sorted(key, reverse=True)
    assert [float(re.match(r"[\d.]+", c).group()) for c in found["descending"]] == sorted(key, reverse=True)
    assert (tmp_path / "report.png").stat().st_size > 10_000
