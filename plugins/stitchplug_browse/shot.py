"""Screenshots of the browser's pages in Debian's headless Chromium (Selenium; the ``test`` extra).

``python -m stitchplug_browse.shot RUN/browse --latent 812 --out docs/browse.png`` opens
``latent.html?i=812`` from disk (no server) and saves a PNG of the page; the browser test uses
:func:`driver` too.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def missing() -> str | None:
    """Why the browser cannot start here, or None."""
    for path, pkg in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not Path(path).exists() and not shutil.which(Path(path).name):
            return f"{path} is missing (Debian package {pkg}; `make setup` installs it as root)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


def driver(width: int = 1500, height: int = 1100):
    """A headless Chromium WebDriver (Debian's chromium and chromedriver)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--allow-file-access-from-files"):
        opts.add_argument(arg)
    service = Service(CHROMEDRIVER if Path(CHROMEDRIVER).exists() else shutil.which("chromedriver"))
    return webdriver.Chrome(options=opts, service=service)


def wait_ready(drv, what: str, timeout: float = 30.0) -> None:
    """Wait until the page's script has rendered (``<body data-ready=what>``)."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(drv, timeout).until(lambda d: d.find_element("tag name", "body").get_attribute("data-ready") == what)


def full_page(drv, out: str | Path, width: int = 1500, max_height: int = 4000) -> Path:
    """PNG of the whole page (Chromium's DevTools protocol: the layout's full height, at most ``max_height``)."""
    import base64

    metrics = drv.execute_cdp_cmd("Page.getLayoutMetrics", {})
    height = min(int((metrics.get("cssContentSize") or metrics["contentSize"])["height"]) + 8, max_height)
    drv.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
    try:
        shot = drv.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    finally:
        drv.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(base64.b64decode(shot["data"]))
    return out


def screenshot(site: str | Path, out: str | Path, latent: int | None = None, width: int = 1500,
               height: int = 1100) -> Path:
    site = Path(site).resolve()
    page = f"latent.html?i={latent}" if latent is not None else "index.html"
    drv = driver(width, height)
    try:
        drv.get(site.as_uri() + "/" + page)
        wait_ready(drv, "latent" if latent is not None else "index")
        return full_page(drv, out, width)
    finally:
        drv.quit()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Screenshot a page of RUN/browse in headless Chromium.")
    p.add_argument("site", help="the RUN/browse folder")
    p.add_argument("--latent", type=int, default=None, help="a latent's page (default: the index)")
    p.add_argument("--out", default="browse.png")
    a = p.parse_args(argv)
    why = missing()
    if why:
        raise SystemExit(f"Error: {why}")
    print(screenshot(a.site, a.out, a.latent))


if __name__ == "__main__":
    main()
