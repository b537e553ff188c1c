"""Click-to-first-output in JupyterLab: through jkp (a warm kernel) vs straight to EG (cold).

    .venv/bin/python bench/lab.py [--notebooks 5]

Starts a real Redis, Enterprise Gateway and jkp (dev/localstack.py, jkp as a process), and two
JupyterLabs (.venv-lab) in gateway mode, as user alice: one at jkp, its root her directory in
jkp's share, one at EG. In headless Chromium (Debian's, driven by Playwright) it opens
``--notebooks`` notebooks in each from the launcher, one at a time, and times from the click on
*Notebook* until Lab says the kernel is idle, and until the output of ``1+1`` shows (run as soon
as the kernel is idle). Through jkp each click finds the pool refilled. Prints each figure and
the medians.

In gateway mode Jupyter Server selects no websocket subprotocol, so Chromium rejects Lab's first
kernel websocket and Lab retries with the same session, which EG may answer only after tens of
seconds (issue #24). Here the page offers no subprotocol, for both Labs, so that stall does not
skew the comparison.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "dev"))

import localstack  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

POOL_SIZE = 2
# Lab's kernel websocket without a subprotocol (see the module's docstring).
NO_SUBPROTOCOL = """(() => {
  const Native = window.WebSocket;
  window.WebSocket = class extends Native { constructor(url) { super(url); } };
})();"""


def start_jkp(workdir: Path, redis, gateway, shared: Path) -> tuple[subprocess.Popen, str]:
    """jkpmanager with a pool of POOL_SIZE, as a process; (process, URL) once it is ready."""
    port = localstack.free_port()
    log = open(workdir / "jkp.log", "wb")
    proc = subprocess.Popen(
        [
            str(REPO / ".venv" / "bin" / "jkpmanager"),
            f"--ip={localstack.HOST}",
            f"--port={port}",
            f"--RedisStore.redis_url={redis.url}",
            f"--GatewayClient.url={gateway.url}",
            f"--PoolManager.working_dir={shared}",
            "--PoolManager.nfs_volume_server=",
            f"--PoolManager.max_pending_kernels={POOL_SIZE}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={k: v for k, v in os.environ.items() if not k.startswith("JKP_")},
        start_new_session=True,
    )
    url = f"http://{localstack.HOST}:{port}"
    wait(lambda: answers(url + "/api/ready"), 60, "jkp to be ready")
    return proc, url


def answers(url: str) -> bool:
    try:
        return localstack.http_request("GET", url, timeout=1.0)[0] == 200
    except OSError:
        return False


def pool_full(jkp_url: str) -> bool:
    """Whether jkp's pool holds POOL_SIZE idle kernels."""
    status, body = localstack.http_request("GET", jkp_url + "/api/pool")
    return status == 200 and body["idle"] >= POOL_SIZE and body["starting"] == 0


def wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def click_to_output(page, first: bool) -> tuple[float, float]:
    """Open a notebook from the launcher (a new one but for the first notebook); seconds from
    the click to an idle kernel and to the output of ``1+1``."""
    if not first:
        page.get_by_role("menuitem", name="File", exact=True).click()
        page.locator(".lm-Menu-item", has_text="New Launcher").first.click()
    card = page.locator(".jp-Launcher .jp-LauncherCard[data-category='Notebook']")
    card.wait_for()
    clicked = time.perf_counter()
    card.click()
    status = page.locator(".jp-StatusBar-TextItem[title^='Change kernel for']")
    status.filter(has_text=re.compile(r"\| Idle$")).wait_for(timeout=60_000)
    idle = time.perf_counter() - clicked
    notebook = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
    cell = notebook.locator(".jp-Cell").first
    cell.locator(".cm-content").click()
    page.keyboard.type("1+1")
    page.keyboard.press("Shift+Enter")
    cell.locator(".jp-OutputArea-output").wait_for(timeout=60_000)
    output = time.perf_counter() - clicked
    page.get_by_role("menuitem", name="Kernel", exact=True).click()
    page.locator(".lm-Menu-item", has_text="Shut Down Kernel").first.click()
    return idle, output


def measure(browser, lab, notebooks: int, before_each) -> list[tuple[float, float]]:
    page = browser.new_context().new_page()
    page.add_init_script(NO_SUBPROTOCOL)
    page.goto(lab.lab_url)
    page.locator(".jp-Launcher").wait_for(timeout=60_000)
    figures = []
    for n in range(notebooks):
        before_each()
        figures.append(click_to_output(page, first=n == 0))
    page.context.close()
    return figures


def report(name: str, figures: list[tuple[float, float]]) -> None:
    ms = [(round(i * 1000), round(o * 1000)) for i, o in figures]
    idle = statistics.median(i for i, _ in ms)
    output = statistics.median(o for _, o in ms)
    print(f"{name:<22} click->idle {idle:6.0f} ms   click->first output {output:6.0f} ms (median)")
    print(f"{'':<22} each (idle, output) ms: {ms}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notebooks", type=int, default=5, help="notebooks per Lab")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="jkp-bench-lab-") as tmp:
        work = Path(tmp)
        shared = work / "shared"
        (shared / "alice").mkdir(parents=True)
        (work / "eg-root").mkdir()
        servers = []
        jkp = None
        try:
            redis = localstack.RedisServer(work / "redis").start()
            servers.append(redis)
            gateway = localstack.EnterpriseGateway(work / "eg").start()
            servers.append(gateway)
            jkp, jkp_url = start_jkp(work, redis, gateway, shared)
            via_jkp = localstack.JupyterLab(work / "lab-jkp", jkp_url, shared / "alice").start()
            servers.append(via_jkp)
            via_eg = localstack.JupyterLab(work / "lab-eg", gateway.url, work / "eg-root").start()
            servers.append(via_eg)
            args_ = [*localstack.CHROMIUM_ARGS, *(["--no-sandbox"] if os.geteuid() == 0 else [])]
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=localstack.CHROMIUM, args=args_)
                refilled = lambda: wait(lambda: pool_full(jkp_url), 60, "the pool")  # noqa: E731
                through_jkp = measure(browser, via_jkp, args.notebooks, refilled)
                straight = measure(browser, via_eg, args.notebooks, lambda: time.sleep(1))
                browser.close()
            report("Lab -> jkp (warm)", through_jkp)
            report("Lab -> EG (cold)", straight)
        finally:
            for server in reversed(servers[2:]):
                server.stop()
            if jkp is not None:
                jkp.terminate()
                jkp.wait(timeout=15)
            for server in reversed(servers[:2]):
                server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
