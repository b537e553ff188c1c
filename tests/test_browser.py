"""JupyterLab pointed at jkp, clicked through in headless Chromium as a user would.

Real Redis, EG, jkp and ipykernel kernels; JupyterLab 4 from .venv-lab in gateway mode, with
``KERNEL_USERNAME=alice`` and its ``root_dir`` (alice's directory) inside jkp's share.
"""

from __future__ import annotations

import asyncio
import re

from tests.conftest import wait_until

LABS = 2
NOTEBOOKS_PER_LAB = 3
POOL_SIZE = 2
# Seconds. A pooled kernel is idle in Lab and answers a cell within a second or two of the
# click; a notebook that takes longer than this is not usable at the first try.
USABLE_WITHIN = 15


async def menu(page, top, item):
    """Click ``item`` in Lab's ``top`` menu (File, Kernel, ...)."""
    await page.get_by_role("menuitem", name=top, exact=True).click()
    await page.locator(".lm-Menu-item", has_text=item).first.click()


async def run_cell(page, notebook, index, code, lab) -> str:
    """Type ``code`` into the notebook's cell ``index``, run it with Shift+Enter: its output."""
    cell = notebook.locator(".jp-Cell").nth(index)
    await cell.locator(".cm-content").click()
    await page.keyboard.type(code)
    await page.keyboard.press("Shift+Enter")
    output = cell.locator(".jp-OutputArea-output")
    await shown(output, page, lab, f"the output of {code!r}")
    return await output.inner_text()


async def kernel_idle(page, lab):
    """Wait for Lab's status bar to say the current notebook's kernel is connected and idle.

    Lab drops a cell run before the notebook has its kernel (the prompt stays "[ ]"); the
    toolbar's execution indicator says idle from the start, the status bar only once it is."""
    status = page.locator(".jp-StatusBar-TextItem[title^='Change kernel for']")
    await shown(status.filter(has_text=re.compile(r"\| Idle$")), page, lab, "an idle kernel")


async def shown(locator, page, lab, what):
    """Wait until ``locator`` is on the page; else fail with a screenshot and Lab's log."""
    try:
        await locator.wait_for(timeout=USABLE_WITHIN * 1000)
    except Exception as e:
        screenshot = lab.workdir / "failed.png"
        await page.screenshot(path=screenshot)
        log = "\n".join(line[:200] for line in lab.log_tail(12).splitlines())
        raise AssertionError(
            f"waited {USABLE_WITHIN} s in vain for {what} in Lab (the page: {screenshot})\n"
            f"--- Lab's log ---\n{log}"
        ) from e


async def prompt(notebook, index) -> str:
    """The execution count Lab shows beside cell ``index``, e.g. ``[1]:``."""
    return await notebook.locator(".jp-Cell").nth(index).locator(".jp-InputPrompt").inner_text()


async def listed_ids(jkp):
    status, models = await jkp.request("GET", "/api/kernels")
    assert status == 200, models
    return {m["id"] for m in models}


async def test_lab_notebooks_get_pooled_kernels_in_the_users_directory_through_restart_and_shutdown(
    redis_server, gateway, jkp_factory, shared_dir, lab_factory, browser
):
    jkp = await jkp_factory(redis_server, gateway, f"--PoolManager.max_pending_kernels={POOL_SIZE}")
    home = shared_dir / "alice"
    home.mkdir()
    served = []

    for _ in range(LABS):
        lab = await lab_factory(jkp.url, home)
        page = await (await browser.new_context()).new_page()  # fresh cookies and storage
        await page.goto(lab.lab_url)
        known = set()

        for n in range(NOTEBOOKS_PER_LAB):
            pooled = set(await jkp.wait_for_idle(POOL_SIZE))
            if n:
                await menu(page, "File", "New Launcher")
            await page.locator(".jp-Launcher .jp-LauncherCard[data-category='Notebook']").click()
            notebook = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
            await kernel_idle(page, lab)

            cwd = await run_cell(page, notebook, 0, "import os; os.getcwd()", lab)
            two = await run_cell(page, notebook, 1, "1+1", lab)

            assert (cwd, two) == (repr(str(home)), "2")
            status, sessions = await asyncio.to_thread(lab.request, "GET", "/api/sessions")
            assert status == 200, sessions
            (kernel_id,) = {s["kernel"]["id"] for s in sessions} - known
            known.add(kernel_id)
            assert kernel_id in pooled
            assert jkp.logged(f"Create served warm: kernel {kernel_id} as {kernel_id}")
            assert kernel_id in await listed_ids(jkp)

            await menu(page, "Kernel", "Restart Kernel…")
            await page.locator(".jp-Dialog .jp-mod-accept").click()
            cwd = await run_cell(page, notebook, 2, "import os; os.getcwd()", lab)

            assert cwd == repr(str(home))
            assert await prompt(notebook, 2) == "[1]:"  # a fresh kernel process counts from 1

            await menu(page, "Kernel", "Shut Down Kernel")

            await wait_until(
                lambda kid=kernel_id: _not_listed(jkp, kid), 10, f"{kernel_id} gone from jkp"
            )
            assert kernel_id not in gateway.list_kernel_ids()
            served.append(kernel_id)

        await page.context.close()

    assert len(set(served)) == LABS * NOTEBOOKS_PER_LAB
    assert not jkp.logged("Create started cold") and not jkp.logged("Create not served warm")


async def _not_listed(jkp, kernel_id):
    return kernel_id not in await listed_ids(jkp)
