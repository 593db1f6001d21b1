"""Debian's chromium driven by Selenium for the console's tests and screenshots: headless, the system's chromium
and chromedriver (nothing downloaded), a fake microphone playing a WAV file and no permission prompt."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def browser_available() -> bool:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return False
    return shutil.which(CHROMIUM) is not None and shutil.which(CHROMEDRIVER) is not None


def chromium(microphone: Path | None = None, size: tuple[int, int] = (1280, 720)) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",  # tests run as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={size[0]},{size[1]}",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        "--autoplay-policy=no-user-gesture-required",
    ):
        options.add_argument(flag)
    if microphone is not None:
        options.add_argument(f"--use-file-for-fake-audio-capture={microphone}")
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    # the window size includes the browser's frame: the page itself gets exactly ``size``
    metrics = {"width": size[0], "height": size[1], "deviceScaleFactor": 1, "mobile": False}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    return driver
